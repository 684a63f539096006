//! The real scheduler (`offpeak serve`'s placement service) in process on 127.0.0.1:0, with a
//! manual clock and a small fixed signal table: one zone `A` with two 8-GPU V100 nodes
//! (`A-v100-0`, `A-v100-1`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use offpeak_operator::reconcile::{Clock, Context};
use offpeak_proto::v1::{GetPlanRequest, JobPlan};
use offpeak_scheduler::placement::{
    Clock as _, ManualClock, PlacementConfig, Settings, SignalRows, TableFeed,
};
use offpeak_scheduler::scenario::{Profile, ProfilePoint};
use offpeak_scheduler::service::{self, CommandCenter, CurveStore, NodeRegistry, ServiceConfig};
use offpeak_scheduler::units::Watts;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running scheduler.
pub struct Scheduler {
    pub clock: ManualClock,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), service::ServiceError>>>,
}

fn v100() -> Profile {
    let point = |limit, throughput, draw| ProfilePoint {
        power_limit: Watts(limit),
        throughput,
        draw: Watts(draw),
    };
    Profile {
        name: "v100/resnet50".into(),
        points: vec![point(100.0, 0.72, 98.9), point(250.0, 1.0, 220.7)],
    }
}

impl Scheduler {
    /// Starts a scheduler at `t0` with hourly `(price per MWh, gCO2e/kWh)` rows from `t0`.
    pub async fn start(t0: DateTime<Utc>, hourly: &[(f64, f64)]) -> Self {
        Self::start_on("127.0.0.1:0", t0, hourly).await
    }

    /// As [`Scheduler::start`], listening on `grpc_addr` (a restart on the same port).
    pub async fn start_on(grpc_addr: &str, t0: DateTime<Utc>, hourly: &[(f64, f64)]) -> Self {
        let clock = ManualClock::new(t0);
        let rows = SignalRows::hourly(t0, hourly).expect("signal rows");
        let settings = Settings {
            debounce: Duration::from_millis(5),
            currency: "EUR".into(),
            ..Settings::default()
        };
        let placement = PlacementConfig::new(Arc::new(clock.clone()))
            .with_settings(settings)
            .with_zone("A", 1.2)
            .with_nodes("A", "v100", 8, 2)
            .with_profile(v100())
            .with_signals(TableFeed::new(None).zone("A", rows));
        let registry = NodeRegistry::new();
        let bound = service::bind(ServiceConfig {
            grpc_addr: grpc_addr.parse().expect("addr"),
            admin_addr: "127.0.0.1:0".parse().expect("addr"),
            commands: CommandCenter::new(registry.clone()),
            curves: CurveStore::new(),
            registry,
            reports: None,
            placement: Some(placement),
        })
        .await
        .expect("scheduler binds");
        let address = format!("http://{}", bound.addrs().grpc);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
        Self {
            clock,
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Submits `job` directly, as an earlier reconcile would have; returns the plan.
    pub async fn submit(
        &self,
        job: &offpeak_operator::crd::TrainingJob,
    ) -> offpeak_proto::v1::JobPlan {
        let resolved = offpeak_operator::policy::resolve(&job.spec, &[]);
        let submission =
            offpeak_operator::submission::build(job, &resolved, self.clock.now(), true)
                .expect("a valid job");
        super::fixtures::placement(&self.address)
            .submit_job(offpeak_proto::v1::SubmitJobRequest {
                job: Some(submission.spec),
            })
            .await
            .expect("submitted")
            .into_inner()
    }

    /// The job's plan as the scheduler holds it now.
    pub async fn plan(&self) -> JobPlan {
        super::fixtures::placement(&self.address)
            .get_plan(GetPlanRequest {
                key: super::fixtures::KEY.into(),
            })
            .await
            .expect("the plan")
            .into_inner()
    }

    /// A reconcile context over the mock API `client`, on this scheduler and its clock.
    pub fn context(&self, client: kube::Client) -> Arc<Context> {
        super::fixtures::context_on(client, &self.address, self.operator_clock())
    }

    /// The operator's clock, reading the scheduler's.
    pub fn operator_clock(&self) -> Clock {
        let clock = self.clock.clone();
        Arc::new(move || clock.now())
    }

    /// Stops the scheduler and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("scheduler task").expect("scheduler ran");
        }
    }
}
