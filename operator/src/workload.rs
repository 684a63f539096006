//! The Kubernetes objects a running job consists of: one headless Service and `workers` pods.
//!
//! Each worker pod `<job>-worker-<rank>` is pinned to its planned node (node affinity on the
//! node's name: `nodeName` cannot be combined with a scheduling gate), is held behind the
//! [`GANG_GATE`] until every worker exists, and gets the environment torchrun-style launchers
//! read: `MASTER_ADDR` (worker 0's DNS name through the headless Service), `MASTER_PORT`,
//! `WORLD_SIZE` (workers), `RANK` and `NODE_RANK` (the worker's index), `NPROC_PER_NODE`
//! (accelerators per worker). The planned power limit is an annotation for the node agent and an
//! environment variable for the job.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, ExecAction, Lifecycle, LifecycleHandler,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSchedulingGate,
    PodSpec, ResourceRequirements, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use offpeak_proto::v1::{JobPlan, NodeAssignment};
use thiserror::Error;

use crate::crd::{
    ANNOTATION_PLAN_REVISION, ANNOTATION_POWER_LIMIT, ANNOTATION_ZONE, CheckpointSignal, GANG_GATE,
    LABEL_JOB, LABEL_JOB_UID, LABEL_RANK, TrainingJob,
};

/// torchrun's default rendezvous port.
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// Kubernetes' default termination grace period, used when a job sets no checkpoint.
pub const DEFAULT_GRACE_SECONDS: u32 = 30;
/// Environment variable with the planned power limit per accelerator, in watts.
pub const ENV_POWER_LIMIT: &str = "OFFPEAK_POWER_LIMIT_WATTS";
/// Name of the worker container.
pub const CONTAINER: &str = "trainer";

/// Cluster-wide settings of the objects the operator creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSettings {
    /// Rendezvous port (`MASTER_PORT`).
    pub master_port: u16,
    /// Extended resource name of an accelerator (`nvidia.com/gpu`).
    pub gpu_resource: String,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
}

impl Default for WorkloadSettings {
    fn default() -> Self {
        Self {
            master_port: DEFAULT_MASTER_PORT,
            gpu_resource: "nvidia.com/gpu".into(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// A plan whose nodes cannot host the job's workers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "the plan's nodes ({offered} worker slots of {gpus_per_worker} accelerators) cannot host \
     {workers} workers"
)]
pub struct PlanDoesNotFit {
    pub offered: u32,
    pub workers: u32,
    pub gpus_per_worker: u32,
}

/// The node of each rank: a node with `gpus` accelerators hosts `gpus / gpusPerWorker`
/// consecutive ranks, in the plan's node order.
pub fn assign_nodes(
    nodes: &[NodeAssignment],
    workers: u32,
    gpus_per_worker: u32,
) -> Result<Vec<String>, PlanDoesNotFit> {
    let per_worker = gpus_per_worker.max(1);
    let slots: Vec<String> = nodes
        .iter()
        .flat_map(|n| std::iter::repeat_n(n.node.clone(), (n.gpus / per_worker) as usize))
        .collect();
    let offered = u32::try_from(slots.len()).unwrap_or(u32::MAX);
    if offered < workers || nodes.iter().any(|n| n.node.is_empty()) {
        return Err(PlanDoesNotFit {
            offered,
            workers,
            gpus_per_worker,
        });
    }
    Ok(slots.into_iter().take(workers as usize).collect())
}

/// Name of worker `rank`'s pod.
pub fn pod_name(job: &str, rank: u32) -> String {
    format!("{job}-worker-{rank}")
}

/// Name of the job's headless Service (the job's own name).
pub fn service_name(job: &str) -> String {
    job.to_string()
}

/// Labels that select every object of `job`.
pub fn selector_labels(job: &TrainingJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_JOB.to_string(), job.name_any()),
        (LABEL_JOB_UID.to_string(), job.uid().unwrap_or_default()),
    ])
}

/// The label selector string of [`selector_labels`].
pub fn selector_string(job: &TrainingJob) -> String {
    selector_labels(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Grace period the workers get on deletion: the checkpoint's, else Kubernetes' default.
pub fn grace_seconds(job: &TrainingJob) -> u32 {
    job.spec
        .checkpoint
        .as_ref()
        .map_or(DEFAULT_GRACE_SECONDS, |c| c.grace_period_seconds)
}

fn meta(job: &TrainingJob, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: job.namespace(),
        labels: Some(labels),
        owner_references: job.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The job's headless Service: gives each worker a stable DNS name, published before the pods
/// are ready because the launchers rendezvous before that.
pub fn service(job: &TrainingJob, settings: &WorkloadSettings) -> Service {
    let mut labels = selector_labels(job);
    labels.extend(job.spec.attribution_labels());
    Service {
        metadata: meta(job, service_name(&job.name_any()), labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(job)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: i32::from(settings.master_port),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Worker `rank`'s pod, on `node`, gated.
pub fn worker_pod(
    job: &TrainingJob,
    plan: &JobPlan,
    rank: u32,
    node: &str,
    settings: &WorkloadSettings,
) -> Pod {
    let name = job.name_any();
    let mut labels = selector_labels(job);
    labels.extend(job.spec.attribution_labels());
    labels.insert(LABEL_RANK.to_string(), rank.to_string());
    let mut metadata = meta(job, pod_name(&name, rank), labels);
    metadata.annotations = Some(BTreeMap::from([
        (
            ANNOTATION_POWER_LIMIT.to_string(),
            plan.power_limit_watts.to_string(),
        ),
        (ANNOTATION_ZONE.to_string(), plan.zone.clone()),
        (
            ANNOTATION_PLAN_REVISION.to_string(),
            plan.revision.to_string(),
        ),
    ]));
    Pod {
        metadata,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            hostname: Some(pod_name(&name, rank)),
            subdomain: Some(service_name(&name)),
            scheduling_gates: Some(vec![PodSchedulingGate {
                name: GANG_GATE.into(),
            }]),
            affinity: Some(pin_to(node)),
            termination_grace_period_seconds: Some(i64::from(grace_seconds(job))),
            volumes: (!job.spec.volumes.is_empty()).then(|| job.spec.volumes.clone()),
            containers: vec![container(job, plan, rank, settings)],
            ..Default::default()
        }),
        status: None,
    }
}

fn container(
    job: &TrainingJob,
    plan: &JobPlan,
    rank: u32,
    settings: &WorkloadSettings,
) -> Container {
    let spec = &job.spec;
    let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        command: nonempty(&spec.command),
        args: nonempty(&spec.args),
        env: Some(environment(job, plan, rank, settings)),
        resources: Some(resources(
            spec.resources.clone(),
            spec.gpus_per_worker,
            settings,
        )),
        volume_mounts: (!spec.volume_mounts.is_empty()).then(|| spec.volume_mounts.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("rendezvous".into()),
            container_port: i32::from(settings.master_port),
            ..Default::default()
        }]),
        lifecycle: checkpoint_hook(job),
        ..Default::default()
    }
}

/// The user's environment followed by the launcher's.
pub fn environment(
    job: &TrainingJob,
    plan: &JobPlan,
    rank: u32,
    settings: &WorkloadSettings,
) -> Vec<EnvVar> {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let master = format!(
        "{}.{}.{namespace}.svc.{}",
        pod_name(&name, 0),
        service_name(&name),
        settings.cluster_domain
    );
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    };
    let mut env = job.spec.env.clone();
    env.extend([
        var("MASTER_ADDR", master),
        var("MASTER_PORT", settings.master_port.to_string()),
        var("WORLD_SIZE", job.spec.workers.to_string()),
        var("RANK", rank.to_string()),
        var("NODE_RANK", rank.to_string()),
        var("NPROC_PER_NODE", job.spec.gpus_per_worker.to_string()),
        var(ENV_POWER_LIMIT, plan.power_limit_watts.to_string()),
    ]);
    env
}

fn resources(
    user: Option<ResourceRequirements>,
    gpus: u32,
    settings: &WorkloadSettings,
) -> ResourceRequirements {
    let mut r = user.unwrap_or_default();
    let gpus = Quantity(gpus.to_string());
    r.limits
        .get_or_insert_with(BTreeMap::new)
        .insert(settings.gpu_resource.clone(), gpus.clone());
    // Extended resources need request == limit; set it when the user set requests at all.
    if let Some(requests) = r.requests.as_mut() {
        requests.insert(settings.gpu_resource.clone(), gpus);
    }
    r
}

fn pin_to(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A preStop hook that sends the checkpoint signal to the training process (PID 1) and waits
/// for it to exit, when that signal is not the SIGTERM Kubernetes sends anyway. Needs `sh` and
/// `kill` in the image.
fn checkpoint_hook(job: &TrainingJob) -> Option<Lifecycle> {
    let signal = job.spec.checkpoint.as_ref()?.signal;
    if signal == CheckpointSignal::SIGTERM {
        return None;
    }
    let script = format!(
        "kill -s {} 1; while kill -0 1 2>/dev/null; do sleep 1; done",
        signal.kill_name()
    );
    Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
