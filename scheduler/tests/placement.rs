//! The placement API end to end over loopback gRPC: a real `offpeak serve` (in-process, on
//! 127.0.0.1:0) with a small fixed signal set and a manual clock, driven by a tonic client.
//!
//! Time: the scheduler's clock is a `ManualClock` the tests move; the cycle plans at each slot
//! boundary the clock reaches. The only real waiting is for the runtime to carry messages and
//! for the cycle's debounce (a few milliseconds here).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use chrono::{DateTime, Utc};
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use offpeak_proto::v1::{
    CancelJobRequest, GetPlanRequest, JobPlan, JobSpec, JobState, JobStateReport, PlanPhase,
    SubmitJobRequest, WatchPlansRequest,
};
use offpeak_scheduler::placement::{ManualClock, PlacementConfig, Settings, SignalRows, TableFeed};
use offpeak_scheduler::scenario::{Profile, ProfilePoint};
use offpeak_scheduler::service::{self, BoundAddrs, NodeRegistry, ServiceConfig};
use offpeak_scheduler::units::Watts;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// Long enough for anything on loopback; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);
const T0: &str = "2024-01-01T00:00:00Z";

fn t0() -> DateTime<Utc> {
    T0.parse().expect("T0 parses")
}

fn at(hours: f64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds((hours * 3600.0) as i64)
}

/// Hourly (price, carbon) from T0: `hours` hours at `high`, except the `cheap` ones at `low`.
fn prices(hours: usize, high: f64, low: f64, cheap: std::ops::Range<usize>) -> Vec<(f64, f64)> {
    (0..hours)
        .map(|h| {
            if cheap.contains(&h) {
                (low, 100.0)
            } else {
                (high, 300.0)
            }
        })
        .collect()
}

fn v100() -> Profile {
    Profile {
        name: "v100/resnet50".into(),
        points: vec![
            ProfilePoint {
                power_limit: Watts(100.0),
                throughput: 0.72,
                draw: Watts(98.9),
            },
            ProfilePoint {
                power_limit: Watts(250.0),
                throughput: 1.0,
                draw: Watts(220.7),
            },
        ],
    }
}

/// A scheduler under test: one zone `A` with two 8-GPU V100 nodes.
struct Fixture {
    clock: ManualClock,
    signals: Vec<(f64, f64)>,
    store: Option<PathBuf>,
    registry: NodeRegistry,
}

impl Fixture {
    fn new(signals: Vec<(f64, f64)>) -> Self {
        Self {
            clock: ManualClock::new(t0()),
            signals,
            store: None,
            registry: NodeRegistry::new(),
        }
    }

    fn config(&self) -> anyhow::Result<PlacementConfig> {
        let rows = SignalRows::hourly(t0(), &self.signals).context("signal rows")?;
        let settings = Settings {
            debounce: Duration::from_millis(5),
            ..Settings::default()
        };
        let mut cfg = PlacementConfig::new(Arc::new(self.clock.clone()))
            .with_settings(settings)
            .with_zone("A", 1.2)
            .with_nodes("A", "v100", 8, 2)
            .with_profile(v100())
            .with_signals(TableFeed::new(None).zone("A", rows));
        cfg.store.clone_from(&self.store);
        Ok(cfg)
    }

    async fn start(&self) -> anyhow::Result<Scheduler> {
        let registry = self.registry.clone();
        let bound = service::bind(ServiceConfig {
            grpc_addr: "127.0.0.1:0".parse()?,
            admin_addr: "127.0.0.1:0".parse()?,
            commands: service::CommandCenter::new(registry.clone()),
            curves: service::CurveStore::new(),
            registry,
            reports: None,
            placement: Some(self.config()?),
        })
        .await?;
        let addrs = bound.addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
        let client = PlacementServiceClient::connect(format!("http://{}", addrs.grpc)).await?;
        Ok(Scheduler {
            _addrs: addrs,
            stop,
            task,
            client,
        })
    }
}

struct Scheduler {
    _addrs: BoundAddrs,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), service::ServiceError>>,
    client: PlacementServiceClient<Channel>,
}

impl Scheduler {
    async fn submit(&mut self, spec: JobSpec) -> Result<JobPlan, tonic::Status> {
        self.client
            .submit_job(SubmitJobRequest { job: Some(spec) })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn plan(&mut self, key: &str) -> Result<JobPlan, tonic::Status> {
        self.client
            .get_plan(GetPlanRequest { key: key.into() })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn watch(&mut self, prefix: &str) -> anyhow::Result<Streaming<JobPlan>> {
        Ok(self
            .client
            .watch_plans(WatchPlansRequest {
                key_prefix: prefix.into(),
            })
            .await?
            .into_inner())
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .context("the scheduler did not stop")???;
        Ok(())
    }
}

/// A job of `workers` × 8 GPUs doing `work_hours`, due `deadline_h` hours after T0.
fn job(name: &str, workers: u32, work_hours: f64, deadline_h: f64) -> JobSpec {
    JobSpec {
        key: format!("ml/{name}"),
        uid: format!("uid-{name}"),
        namespace: "ml".into(),
        workers,
        gpus_per_worker: 8,
        accelerator: "v100".into(),
        work_hours,
        submit_unix_s: t0().timestamp(),
        deadline_unix_s: at(deadline_h).timestamp(),
        ..JobSpec::default()
    }
}

fn phase(p: &JobPlan) -> PlanPhase {
    PlanPhase::try_from(p.phase).unwrap_or(PlanPhase::Unspecified)
}

/// Reads `stream` until a plan of `key` satisfies `pred`; every plan seen is appended to `seen`.
async fn until(
    stream: &mut Streaming<JobPlan>,
    key: &str,
    seen: &mut Vec<JobPlan>,
    pred: impl Fn(&JobPlan) -> bool,
) -> anyhow::Result<JobPlan> {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(p) = stream.message().await? {
            seen.push(p.clone());
            if p.key == key && pred(&p) {
                return Ok::<_, anyhow::Error>(Some(p));
            }
        }
        Ok(None)
    })
    .await
    .with_context(|| format!("no matching plan of {key} within {PATIENCE:?}; saw {seen:#?}"))??;
    found.with_context(|| format!("the stream ended before a matching plan of {key}"))
}

#[tokio::test]
async fn a_job_waits_for_its_cheap_window_then_runs_when_the_clock_reaches_it() -> anyhow::Result<()>
{
    let f = Fixture::new(prices(48, 80.0, 20.0, 10..14));
    let mut s = f.start().await?;
    let mut watch = s.watch("ml/").await?;
    let plan = s.submit(job("train", 1, 2.0, 20.0)).await?;
    ensure!(phase(&plan) == PlanPhase::Planned, "{plan:?}");
    ensure!(plan.reason.contains("cheaper window"), "{plan:?}");
    let start = plan.start_unix_s;
    ensure!(
        start >= at(10.0).timestamp() && plan.end_unix_s <= at(14.0).timestamp(),
        "planned {}..{}, not inside the cheap window",
        plan.start_unix_s,
        plan.end_unix_s
    );
    ensure!(plan.zone == "A" && plan.currency == "USD", "{plan:?}");
    // 2 h of work at the 100 W point takes 3 h and fits the 4 h window: cheapest per unit of work
    ensure!(plan.power_limit_watts == 100, "{plan:?}");
    ensure!(plan.nodes.len() == 1 && plan.nodes[0].gpus == 8, "{plan:?}");
    // 8 GPUs × 98.9 W × 3 h × PUE 1.2 = 2.848 kWh at 20/MWh
    ensure!((plan.estimated_cost - 0.06).abs() < 0.005, "{plan:?}");
    // against full power from submission: 8 × 220.7 W × 2 h × 1.2 = 4.237 kWh at 80/MWh = 0.34
    ensure!((plan.estimated_saving - 0.28).abs() < 0.011, "{plan:?}");
    ensure!(
        plan.estimated_carbon_kg > 0.0 && !plan.signals_degraded,
        "{plan:?}"
    );

    // The same spec again changes nothing, not even the revision.
    let again = s.submit(job("train", 1, 2.0, 20.0)).await?;
    ensure!(again == plan, "resubmitting changed the plan: {again:?}");

    // An hour before the window nothing starts; at its start the run is committed.
    let mut seen = Vec::new();
    f.clock.set(at(9.0));
    f.clock
        .set(DateTime::<Utc>::from_timestamp(start, 0).context("start")?);
    let run = until(&mut watch, "ml/train", &mut seen, |p| {
        phase(p) == PlanPhase::Run
    })
    .await?;
    ensure!(
        run.start_unix_s == start && run.revision > plan.revision,
        "{run:?}"
    );
    ensure!(run.nodes.len() == 1 && run.nodes[0].gpus == 8, "{run:?}");
    let got = s.plan("ml/train").await?;
    ensure!(
        got == run,
        "GetPlan {got:?} differs from the watched {run:?}"
    );
    s.stop().await
}

#[tokio::test]
async fn cancelling_ends_a_job_and_unknown_keys_are_not_errors() -> anyhow::Result<()> {
    let f = Fixture::new(prices(48, 80.0, 20.0, 10..14));
    let mut s = f.start().await?;
    s.submit(job("a", 1, 2.0, 20.0)).await?;
    let known = s
        .client
        .cancel_job(CancelJobRequest {
            key: "ml/a".into(),
            uid: "uid-a".into(),
        })
        .await?
        .into_inner()
        .known;
    ensure!(known, "the job was not known");
    let plan = s.plan("ml/a").await?;
    ensure!(
        phase(&plan) == PlanPhase::Done && plan.reason == "cancelled",
        "{plan:?}"
    );
    for (key, uid) in [("ml/nothing", ""), ("ml/a", "another-uid")] {
        let r = s
            .client
            .cancel_job(CancelJobRequest {
                key: key.into(),
                uid: uid.into(),
            })
            .await?
            .into_inner();
        ensure!(!r.known, "{key} {uid} reported as known");
    }
    let missing = s.plan("ml/nothing").await.expect_err("unknown key");
    ensure!(missing.code() == Code::NotFound, "{missing:?}");
    s.stop().await
}

#[tokio::test]
async fn watchers_see_every_job_and_each_jobs_revisions_in_order() -> anyhow::Result<()> {
    let f = Fixture::new(prices(48, 80.0, 20.0, 2..6));
    let mut s = f.start().await?;
    let mut early = s.watch("").await?;
    let a = s.submit(job("a", 1, 1.0, 20.0)).await?;
    let b = s.submit(job("b", 1, 1.0, 20.0)).await?;
    // A changed spec is planned again.
    let a2 = s.submit(job("a", 1, 1.5, 20.0)).await?;
    ensure!(a2.revision > a.revision, "{a:?} -> {a2:?}");
    // A watcher arriving now gets the current plans first.
    let mut late = s.watch("ml/b").await?;
    let first = late.message().await?.context("late watcher got nothing")?;
    ensure!(
        first == b || (first.key == "ml/b" && first.revision >= b.revision),
        "{first:?}"
    );
    let mut seen = Vec::new();
    f.clock.set(at(2.0));
    until(&mut early, "ml/a", &mut seen, |p| {
        phase(p) == PlanPhase::Run
    })
    .await?;
    until(&mut early, "ml/b", &mut seen, |p| {
        phase(p) == PlanPhase::Run
    })
    .await?;
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    for p in &seen {
        let prev = last.insert(p.key.clone(), p.revision).unwrap_or(0);
        ensure!(
            p.revision > prev,
            "{} went from revision {prev} to {}",
            p.key,
            p.revision
        );
    }
    ensure!(
        last["ml/a"] >= a2.revision,
        "the watcher missed a's change: {seen:#?}"
    );
    s.stop().await
}

#[tokio::test]
async fn a_capped_preemptible_job_is_suspended_above_its_cap_and_resumed_after()
-> anyhow::Result<()> {
    // 20/MWh for two hours, then 90 for two (above the job's cap of 50), then from 30 rising
    // by 1 an hour (so that earlier is cheaper: flat prices leave the policy free to pick
    // any of equally cheap slots).
    let signals: Vec<(f64, f64)> = (0..48)
        .map(|h| match h {
            0 | 1 => (20.0, 100.0),
            2 | 3 => (90.0, 300.0),
            h => (26.0 + f64::from(h), 100.0),
        })
        .collect();
    let f = Fixture::new(signals);
    let mut s = f.start().await?;
    let mut watch = s.watch("ml/").await?;
    let mut spec = job("pre", 1, 3.0, 12.0);
    spec.preemptible = true;
    spec.price_cap_per_mwh = Some(50.0);
    let first = s.submit(spec).await?;
    ensure!(phase(&first) == PlanPhase::Run, "{first:?}");
    ensure!(first.start_unix_s == t0().timestamp(), "{first:?}");
    ensure!(
        first.end_unix_s <= at(2.0).timestamp(),
        "runs into the dear hours: {first:?}"
    );
    let mut seen = Vec::new();
    f.clock
        .set(DateTime::<Utc>::from_timestamp(first.end_unix_s, 0).context("end")?);
    let suspended = until(&mut watch, "ml/pre", &mut seen, |p| {
        phase(p) == PlanPhase::Suspend
    })
    .await?;
    ensure!(
        suspended.reason.contains("above the job's cap"),
        "{suspended:?}"
    );
    ensure!(
        suspended.start_unix_s >= at(4.0).timestamp(),
        "{suspended:?}"
    );
    f.clock.set(at(4.0));
    let resumed = until(&mut watch, "ml/pre", &mut seen, |p| {
        phase(p) == PlanPhase::Run
    })
    .await?;
    ensure!(resumed.start_unix_s == at(4.0).timestamp(), "{resumed:?}");
    ensure!(resumed.revision > suspended.revision, "{resumed:?}");
    // The operator reports the end: the job is done and stays so.
    s.client
        .report_job_state(JobStateReport {
            key: "ml/pre".into(),
            uid: "uid-pre".into(),
            state: JobState::Succeeded as i32,
            message: String::new(),
        })
        .await?;
    let done = s.plan("ml/pre").await?;
    ensure!(
        phase(&done) == PlanPhase::Done && done.reason == "succeeded",
        "{done:?}"
    );
    s.stop().await
}

#[tokio::test]
async fn a_carbon_capped_job_runs_in_clean_hours_or_is_rejected_with_the_lowest_feasible_cap()
-> anyhow::Result<()> {
    // Cheap and dirty 02:00-06:00, clean and dear 10:00-14:00, dear and dirty otherwise.
    let signals: Vec<(f64, f64)> = (0..48)
        .map(|h| match h {
            2..6 => (10.0, 420.0),
            10..14 => (70.0, 120.0),
            _ => (90.0, 380.0),
        })
        .collect();
    let f = Fixture::new(signals);
    let mut s = f.start().await?;
    let free = s.submit(job("free", 1, 1.0, 20.0)).await?;
    ensure!(
        free.start_unix_s >= at(2.0).timestamp() && free.end_unix_s <= at(6.0).timestamp(),
        "uncapped, the cheap hours win: {free:?}"
    );
    let mut capped = job("clean", 1, 1.0, 20.0);
    capped.carbon_cap_g_per_kwh = Some(150.0);
    let plan = s.submit(capped).await?;
    ensure!(phase(&plan) == PlanPhase::Planned, "{plan:?}");
    ensure!(
        plan.start_unix_s >= at(10.0).timestamp() && plan.end_unix_s <= at(14.0).timestamp(),
        "a run under the 150 g cap must lie in 10:00-14:00: {plan:?}"
    );
    let mut too_strict = job("strict", 1, 1.0, 20.0);
    too_strict.carbon_cap_g_per_kwh = Some(100.0);
    let plan = s.submit(too_strict).await?;
    ensure!(phase(&plan) == PlanPhase::Rejected, "{plan:?}");
    ensure!(
        plan.reason
            == "carbon cap 100.00 gCO2e/kWh cannot be met before the deadline; the lowest \
                feasible cap is 120.00",
        "{plan:?}"
    );
    s.stop().await
}

#[tokio::test]
async fn a_restarted_scheduler_keeps_the_run_that_started() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut f = Fixture::new(prices(48, 20.0, 20.0, 0..0));
    f.store = Some(dir.path().join("placement.sqlite"));
    let mut s = f.start().await?;
    let started = s.submit(job("big", 1, 2.0, 20.0)).await?;
    ensure!(phase(&started) == PlanPhase::Run, "{started:?}");
    s.stop().await?;

    // After the restart the first hours are the cheapest: a job free to start would start now.
    let mut f2 = Fixture::new(prices(48, 200.0, 10.0, 0..4));
    f2.store.clone_from(&f.store);
    f2.clock.set(at(0.5));
    let mut s = f2.start().await?;
    // Before the job is submitted again its run still holds its node: a job wanting the
    // whole cluster cannot start until the run ends.
    let mut whole = job("whole", 2, 1.0, 20.0);
    whole.submit_unix_s = at(0.5).timestamp();
    let w = s.submit(whole).await?;
    ensure!(
        w.start_unix_s == started.end_unix_s,
        "{w:?} should start when {started:?} ends"
    );
    let again = s.submit(job("big", 1, 2.0, 20.0)).await?;
    ensure!(phase(&again) == PlanPhase::Run, "{again:?}");
    ensure!(
        again.start_unix_s == started.start_unix_s
            && again.end_unix_s == started.end_unix_s
            && again.nodes == started.nodes
            && again.power_limit_watts == started.power_limit_watts,
        "the run moved: {started:?} -> {again:?}"
    );
    ensure!(
        again.revision > started.revision,
        "revision went back: {started:?} -> {again:?}"
    );
    s.stop().await
}

#[tokio::test]
async fn bad_specs_are_refused_with_the_field_named() -> anyhow::Result<()> {
    let f = Fixture::new(prices(48, 80.0, 20.0, 0..0));
    let mut s = f.start().await?;
    type Edit = Box<dyn Fn(&mut JobSpec)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("workers", Box::new(|j| j.workers = 0)),
        (
            "deadline_unix_s",
            Box::new(|j| j.deadline_unix_s = j.submit_unix_s - 60),
        ),
        (
            "price_cap_per_mwh",
            Box::new(|j| j.price_cap_per_mwh = Some(-1.0)),
        ),
        ("accelerator", Box::new(|j| j.accelerator = "h100".into())),
        ("gpus_per_worker", Box::new(|j| j.gpus_per_worker = 16)),
        ("work_hours", Box::new(|j| j.work_hours = 0.0)),
        ("key", Box::new(|j| j.key = "no-namespace".into())),
        (
            "carbon_cap_g_per_kwh",
            Box::new(|j| j.carbon_cap_g_per_kwh = Some(-1.0)),
        ),
        (
            "monthly_budget",
            Box::new(|j| j.monthly_budget = Some(-5.0)),
        ),
        (
            "carbon_price_per_tonne",
            Box::new(|j| j.carbon_price_per_tonne = Some(f64::NAN)),
        ),
    ];
    for (field, edit) in cases {
        let mut spec = job("bad", 1, 1.0, 10.0);
        edit(&mut spec);
        let err = s.submit(spec).await.expect_err(field);
        ensure!(err.code() == Code::InvalidArgument, "{field}: {err:?}");
        ensure!(
            err.message().contains(&format!("`{field}`")),
            "{field}: {}",
            err.message()
        );
    }
    let err = s
        .client
        .submit_job(SubmitJobRequest { job: None })
        .await
        .expect_err("no job");
    ensure!(err.code() == Code::InvalidArgument, "{err:?}");
    let err = s
        .client
        .report_job_state(JobStateReport {
            key: "ml/ghost".into(),
            state: JobState::Running as i32,
            ..JobStateReport::default()
        })
        .await
        .expect_err("unknown job");
    ensure!(err.code() == Code::NotFound, "{err:?}");
    s.stop().await
}

#[tokio::test]
async fn watch_streams_end_unavailable_when_the_scheduler_stops() -> anyhow::Result<()> {
    let f = Fixture::new(prices(48, 80.0, 20.0, 0..0));
    let mut s = f.start().await?;
    s.submit(job("a", 1, 1.0, 10.0)).await?;
    let mut watch = s.watch("").await?;
    watch.message().await?.context("the current plan")?;
    let stopping = tokio::spawn(s.stop());
    match tokio::time::timeout(PATIENCE, watch.message()).await? {
        Err(status) if status.code() == Code::Unavailable => {}
        other => bail!("expected UNAVAILABLE, got {other:?}"),
    }
    stopping.await?
}
