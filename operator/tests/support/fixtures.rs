//! Small builders for the reconciler scenarios: a TrainingJob as the API server returns it, a
//! context over the mock API server and a placement client, plans, pods, URIs.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::reflector;
use offpeak_operator::crd::{
    Checkpoint, CheckpointSignal, FINALIZER, JobPhase, TrainingJob, TrainingJobSpec,
    TrainingJobStatus,
};
use offpeak_operator::reconcile::{Clock, Context, ContextConfig};
use offpeak_operator::workload::{self, WorkloadSettings};
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use offpeak_proto::v1::{JobPlan, NodeAssignment, PlanPhase};
use tonic::transport::Endpoint;

pub const NS: &str = "ml";
pub const NAME: &str = "bert";
pub const UID: &str = "0b9e5c1e-uid";
pub const KEY: &str = "ml/bert";
pub const FIELD_MANAGER: &str = "offpeak-operator";

/// A TrainingJob of `workers` workers × 4 GPUs, 6 h of work, 36 h max delay, preemptible
/// with a 120 s checkpoint grace, created an hour before `now`.
pub fn job(workers: u32, now: DateTime<Utc>) -> TrainingJob {
    let mut spec = TrainingJobSpec::new("ghcr.io/example/bert:1", workers, 4, 6.0);
    spec.max_delay = Some("36h".parse().expect("duration"));
    spec.preemptible = true;
    spec.checkpoint = Some(Checkpoint {
        signal: CheckpointSignal::SIGTERM,
        grace_period_seconds: 120,
    });
    spec.price_cap_per_mwh = Some(150.0);
    let mut job = TrainingJob::new(NAME, spec);
    job.metadata.namespace = Some(NS.into());
    job.metadata.uid = Some(UID.into());
    job.metadata.generation = Some(1);
    job.metadata.resource_version = Some("100".into());
    job.metadata.creation_timestamp = Some(time(now.timestamp() - 3600));
    job
}

/// The scenarios' gang: [`job`] with 2 workers × 8 GPUs (both of zone `A`'s nodes), 2 h of
/// work and a 12 h max delay, created an hour before `now`.
pub fn gang_job(now: DateTime<Utc>) -> TrainingJob {
    let mut job = job(2, now);
    job.spec.gpus_per_worker = 8;
    job.spec.work_hours = Some(2.0);
    job.spec.max_delay = Some("12h".parse().expect("duration"));
    job
}

pub fn time(unix: i64) -> Time {
    Time(Timestamp::from_second(unix).expect("in range"))
}

/// The job with the operator's finalizer (as after the first reconcile).
pub fn finalized(mut job: TrainingJob) -> TrainingJob {
    job.metadata.finalizers = Some(vec![FINALIZER.into()]);
    job
}

/// The job as it looks once submitted at generation 1, in `phase`.
pub fn submitted(mut job: TrainingJob, phase: JobPhase, reported: Option<&str>) -> TrainingJob {
    job.status = Some(TrainingJobStatus {
        phase: Some(phase),
        submitted_generation: Some(1),
        observed_generation: Some(1),
        reported_state: reported.map(str::to_string),
        ..Default::default()
    });
    job
}

/// A placement client for `address` (not connected until used).
pub fn placement(address: &str) -> PlacementServiceClient<tonic::transport::Channel> {
    let channel = Endpoint::from_shared(address.to_string())
        .expect("address")
        .connect_lazy();
    PlacementServiceClient::new(channel)
}

/// A context over the mock API `client` and the scheduler at `scheduler`, with the clock fixed
/// at `now` and no EnergyPolicies.
pub fn context(client: Client, scheduler: &str, now: DateTime<Utc>) -> Arc<Context> {
    context_on(client, scheduler, Arc::new(move || now))
}

/// A context over the mock API `client` and the scheduler at `scheduler`, reading `clock`,
/// with no EnergyPolicies.
pub fn context_on(client: Client, scheduler: &str, clock: Clock) -> Arc<Context> {
    let (policies, _writer) = reflector::store();
    let (namespaces, _writer) = reflector::store();
    let config = ContextConfig {
        settings: WorkloadSettings::default(),
        field_manager: FIELD_MANAGER.into(),
    };
    Arc::new(
        Context::new(client, placement(scheduler), policies, namespaces, config).with_clock(clock),
    )
}

/// An address nothing listens on: a port bound, then released.
pub fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A plan for the job in `phase`, starting at `start`, on two nodes of 8 GPUs.
pub fn plan(phase: PlanPhase, start: i64, revision: u64) -> JobPlan {
    JobPlan {
        key: KEY.into(),
        uid: UID.into(),
        phase: phase as i32,
        start_unix_s: start,
        end_unix_s: start + 6 * 3600,
        zone: "DE-LU".into(),
        nodes: vec![
            NodeAssignment {
                node: "gpu-a".into(),
                gpus: 8,
            },
            NodeAssignment {
                node: "gpu-b".into(),
                gpus: 8,
            },
        ],
        power_limit_watts: 250,
        estimated_cost: 41.234,
        currency: "EUR".into(),
        estimated_carbon_kg: 12.5,
        estimated_saving: 9.87,
        reason: String::new(),
        revision,
        signals_degraded: false,
        metered_it_kwh: 0.0,
        metered_cost: 0.0,
        metered_carbon_kg: 0.0,
    }
}

/// Worker `rank`'s pod as the API server returns it, in pod phase `phase`.
pub fn pod(job: &TrainingJob, plan: &JobPlan, rank: u32, phase: &str, gated: bool) -> Pod {
    let node = if rank < 2 { "gpu-a" } else { "gpu-b" };
    let mut pod = workload::worker_pod(job, plan, rank, node, &WorkloadSettings::default());
    if !gated {
        pod.spec.as_mut().expect("spec").scheduling_gates = None;
    }
    pod.metadata.uid = Some(format!("pod-uid-{rank}"));
    pod.status = Some(PodStatus {
        phase: Some(phase.into()),
        ..Default::default()
    });
    pod
}

/// The answer to a status apply: the job with the applied status.
pub fn with_applied_status(
    job: &TrainingJob,
) -> impl FnOnce(&serde_json::Value) -> serde_json::Value + Send + 'static {
    let mut object = serde_json::to_value(job).expect("json");
    move |body| {
        object["status"] = body["status"].clone();
        object
    }
}

/// A pod list response.
pub fn pod_list(pods: &[Pod]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "200"},
        "items": pods,
    })
}

pub mod uri {
    use super::{FIELD_MANAGER, NAME, NS, UID};

    pub fn job() -> String {
        format!("/apis/offpeak.dev/v1alpha1/namespaces/{NS}/trainingjobs/{NAME}?")
    }
    pub fn status() -> String {
        format!(
            "/apis/offpeak.dev/v1alpha1/namespaces/{NS}/trainingjobs/{NAME}/status?&force=true&fieldManager={FIELD_MANAGER}"
        )
    }
    pub fn list_pods() -> String {
        format!(
            "/api/v1/namespaces/{NS}/pods?&labelSelector=offpeak.dev%2Fjob%3D{NAME}%2Coffpeak.dev%2Fjob-uid%3D{UID}"
        )
    }
    pub fn apply_pod(name: &str) -> String {
        format!("/api/v1/namespaces/{NS}/pods/{name}?&fieldManager={FIELD_MANAGER}")
    }
    pub fn pod(name: &str) -> String {
        format!("/api/v1/namespaces/{NS}/pods/{name}?")
    }
    pub fn apply_service() -> String {
        format!("/api/v1/namespaces/{NS}/services/{NAME}?&fieldManager={FIELD_MANAGER}")
    }
    pub fn service() -> String {
        format!("/api/v1/namespaces/{NS}/services/{NAME}")
    }
    pub fn events() -> String {
        format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?")
    }
}
