//! The live planning cycle through its Rust handle (`Placement`), without a transport: what
//! is awkward to provoke over a socket (a watcher that falls behind) and the finer rules of a
//! job's life (a new uid replacing a job, a job overrunning its plan, degraded signals, holds
//! by the user and by the namespace's budget, a job's own carbon price). Metered energy comes
//! from a real `NodeRegistry` fed sample batches as the agent service feeds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use offpeak_scheduler::placement::{
    JobRequest, ManualClock, Phase, Placement, PlacementConfig, PlanView, PlanWatch, ReportedState,
    Settings, SignalRows, TableFeed,
};
use offpeak_scheduler::scenario::{Profile, ProfilePoint};
use offpeak_scheduler::service::NodeRegistry;
use offpeak_scheduler::units::Watts;
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(20);

fn t0() -> DateTime<Utc> {
    "2024-01-01T00:00:00Z".parse().expect("time")
}

fn at(hours: f64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds((hours * 3600.0) as i64)
}

/// One zone `A` of two 8-GPU nodes, one full-power-only profile (runs are as long as their
/// work), prices flat at 50 for `hours` hours.
struct Live {
    clock: ManualClock,
    placement: Placement,
    registry: NodeRegistry,
    cycle: JoinHandle<()>,
}

fn config(
    clock: &ManualClock,
    hours: usize,
    settings: Settings,
) -> anyhow::Result<PlacementConfig> {
    let rows = SignalRows::hourly(t0(), &vec![(50.0, 200.0); hours]).context("rows")?;
    Ok(PlacementConfig::new(Arc::new(clock.clone()))
        .with_settings(Settings {
            debounce: Duration::from_millis(2),
            ..settings
        })
        .with_zone("A", 1.0)
        .with_nodes("A", "v100", 8, 2)
        .with_profile(Profile {
            name: "v100/train".into(),
            points: vec![ProfilePoint {
                power_limit: Watts(250.0),
                throughput: 1.0,
                draw: Watts(200.0),
            }],
        })
        .with_signals(TableFeed::new(None).zone("A", rows)))
}

impl Live {
    fn start(hours: usize, settings: Settings) -> anyhow::Result<Self> {
        let clock = ManualClock::new(t0());
        let registry = NodeRegistry::new();
        let (placement, cycle) =
            Placement::open(config(&clock, hours, settings)?, registry.clone())?;
        Ok(Self {
            clock,
            placement,
            registry,
            cycle: tokio::spawn(cycle.run()),
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.placement.shutdown();
        tokio::time::timeout(PATIENCE, self.cycle).await??;
        Ok(())
    }
}

/// `workers` × 8 GPUs for `hours` hours of work, due 20 h after T0.
fn job(name: &str, uid: &str, workers: u32, hours: f64) -> JobRequest {
    JobRequest {
        key: format!("ml/{name}"),
        uid: uid.into(),
        workers,
        gpus_per_worker: 8,
        accelerator: "V100".into(),
        work_hours: hours,
        submit_unix_s: t0().timestamp(),
        deadline_unix_s: at(20.0).timestamp(),
        ..JobRequest::default()
    }
}

async fn until(
    watch: &mut PlanWatch,
    key: &str,
    pred: impl Fn(&PlanView) -> bool,
) -> anyhow::Result<PlanView> {
    tokio::time::timeout(PATIENCE, async {
        while let Some(v) = watch.next().await {
            let v = v?;
            if v.key == key && pred(&v) {
                return Ok(v);
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await
    .with_context(|| format!("no matching plan of {key}"))?
}

#[tokio::test]
async fn a_watcher_that_falls_behind_gets_every_plan_again_never_a_gap() -> anyhow::Result<()> {
    let live = Live::start(
        48,
        Settings {
            watch_buffer: 1,
            ..Settings::default()
        },
    )?;
    let mut watch = live.placement.watch("ml/".into());
    // Not read while these change: the watcher falls behind.
    let mut latest: HashMap<String, u64> = HashMap::new();
    for i in 0..6 {
        let v = live
            .placement
            .submit(job(&format!("j{i}"), "u", 1, 1.0 + f64::from(i)))
            .await?;
        latest.insert(v.key, v.revision);
    }
    for (key, rev) in live
        .placement
        .plans("ml/")
        .iter()
        .map(|v| (v.key.clone(), v.revision))
    {
        latest.insert(key, rev);
    }
    let mut got: HashMap<String, u64> = HashMap::new();
    tokio::time::timeout(PATIENCE, async {
        while got != latest {
            let v = watch.next().await.context("the watch ended")??;
            let prev = got.insert(v.key.clone(), v.revision).unwrap_or(0);
            ensure!(
                v.revision > prev,
                "{} went from revision {prev} to {}",
                v.key,
                v.revision
            );
        }
        Ok(())
    })
    .await
    .with_context(|| format!("the watcher never caught up: {got:?} vs {latest:?}"))??;
    live.stop().await
}

#[tokio::test]
async fn a_new_uid_replaces_the_job_and_frees_its_nodes_at_the_next_boundary() -> anyhow::Result<()>
{
    let live = Live::start(48, Settings::default())?;
    let old = live.placement.submit(job("a", "u1", 2, 3.0)).await?;
    ensure!(
        old.phase == Phase::Run && old.end == Some(at(3.0)),
        "{old:?}"
    );
    live.clock.set(at(0.3));
    let new = live.placement.submit(job("a", "u2", 2, 3.0)).await?;
    ensure!(new.uid == "u2" && new.revision > old.revision, "{new:?}");
    // The old run holds the whole cluster only until the next boundary.
    ensure!(
        new.phase == Phase::Planned && new.start == Some(at(0.5)),
        "{new:?}"
    );
    let mut watch = live.placement.watch("ml/a".into());
    live.clock.set(at(0.5));
    let run = until(&mut watch, "ml/a", |v| v.phase == Phase::Run).await?;
    ensure!(run.uid == "u2" && run.start == Some(at(0.5)), "{run:?}");
    live.stop().await
}

#[tokio::test]
async fn a_job_reported_running_past_its_plan_keeps_its_nodes_until_it_ends() -> anyhow::Result<()>
{
    let live = Live::start(48, Settings::default())?;
    let a = live.placement.submit(job("a", "u", 2, 1.0)).await?;
    ensure!(a.phase == Phase::Run && a.end == Some(at(1.0)), "{a:?}");
    live.placement
        .report("ml/a", "u", ReportedState::Running, "")
        .await?;
    let b = live.placement.submit(job("b", "u", 2, 1.0)).await?;
    ensure!(b.start == Some(at(1.0)), "{b:?}");
    let mut watch = live.placement.watch("ml/".into());
    live.clock.set(at(1.0));
    // Its planned run is over, but it is still running: its pods are not stopped and B waits.
    let a = until(&mut watch, "ml/a", |v| {
        v.reason.contains("waiting for the job's end")
    })
    .await?;
    ensure!(a.phase == Phase::Run, "{a:?}");
    let b = live.placement.plan("ml/b")?;
    ensure!(
        b.phase == Phase::Planned && b.start > Some(at(1.0)),
        "{b:?}"
    );
    live.clock.set(at(1.1));
    live.placement
        .report("ml/a", "u", ReportedState::Failed, "OOM")
        .await?;
    let a = live.placement.plan("ml/a")?;
    ensure!(a.phase == Phase::Done && a.reason == "failed: OOM", "{a:?}");
    let b = live.placement.plan("ml/b")?;
    ensure!(
        b.start == Some(at(1.25)),
        "B should start at the next boundary: {b:?}"
    );
    live.clock.set(at(1.25));
    let b = until(&mut watch, "ml/b", |v| v.phase == Phase::Run).await?;
    ensure!(b.start == Some(at(1.25)), "{b:?}");
    live.stop().await
}

#[tokio::test]
async fn plans_on_estimated_signals_say_so() -> anyhow::Result<()> {
    // Two hours of rows: a three-hour job runs on the seasonal estimate after them.
    let live = Live::start(2, Settings::default())?;
    let v = live.placement.submit(job("a", "u", 1, 3.0)).await?;
    ensure!(v.signals_degraded, "{v:?}");
    ensure!(
        v.reason
            .contains("estimated signals after 2024-01-01T02:00Z"),
        "{v:?}"
    );
    let short = live.placement.submit(job("b", "u", 1, 1.0)).await?;
    ensure!(!short.signals_degraded, "{short:?}");
    // Once the clock passes the rows' end the zone itself is degraded.
    live.clock.set(at(2.5));
    let late = live.placement.submit(job("c", "u", 1, 0.5)).await?;
    ensure!(late.signals_degraded, "{late:?}");
    ensure!(
        late.reason
            .contains("signals degraded: the rows of zone A end at 2024-01-01T02:00Z"),
        "{late:?}"
    );
    live.stop().await
}

#[tokio::test]
async fn provider_chains_feed_the_cycle_and_a_failing_first_choice_degrades_the_plan()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut csv = String::from("time,price,carbon\n");
    for h in 0..48 {
        let price = if (10..14).contains(&h) { 20 } else { 80 };
        let t = t0() + chrono::Duration::hours(h);
        csv.push_str(&format!("{},{price},250\n", t.format("%Y-%m-%dT%H:%M:%SZ")));
    }
    std::fs::write(dir.path().join("A.csv"), csv)?;
    let source = |column: &str, extra: &str| {
        format!(
            "        - csv: {{path: A.csv, value_column: {column}, time_zone: UTC, {extra}, resolution_minutes: 60}}\n"
        )
    };
    let yaml = |first_price: &str| {
        format!(
            "signals:\n  slot_minutes: 60\n  zones:\n    - name: A\n      max_age_hours: 48\n      price:\n{first_price}{}      carbon:\n{}",
            source("price", "unit: per_mwh, currency: USD"),
            source("carbon", "unit: g_per_kwh, basis: direct"),
        )
    };
    for (first, degraded) in [
        (String::new(), false),
        (
            "        - csv: {path: missing.csv, value_column: price, time_zone: UTC, unit: per_mwh, currency: USD, resolution_minutes: 60}\n".to_owned(),
            true,
        ),
    ] {
        let path = dir.path().join("signals.yaml");
        let text = yaml(&first);
        std::fs::write(&path, &text)?;
        let signals = offpeak_scheduler::signals::config::parse(&text, &path)?;
        let clock = ManualClock::new(t0());
        let mut cfg = config(&clock, 2, Settings::default())?;
        cfg.signals = offpeak_scheduler::placement::SignalFeed::Chains(signals);
        let (placement, cycle) = Placement::open(cfg, NodeRegistry::new())?;
        let task = tokio::spawn(cycle.run());
        let v = placement.submit(job("a", "u", 1, 2.0)).await?;
        ensure!(v.phase == Phase::Planned && v.start == Some(at(10.0)), "{v:?}");
        ensure!(v.signals_degraded == degraded, "{v:?}");
        if degraded {
            ensure!(v.reason.contains("missing.csv"), "{v:?}");
        }
        placement.shutdown();
        tokio::time::timeout(PATIENCE, task).await??;
    }
    Ok(())
}

#[tokio::test]
async fn a_held_job_keeps_no_capacity_and_is_planned_again_when_released() -> anyhow::Result<()> {
    let live = Live::start(48, Settings::default())?;
    // The whole cluster, held by its user: planned nowhere.
    let mut big = job("big", "u", 2, 2.0);
    big.held = true;
    let v = live.placement.submit(big.clone()).await?;
    ensure!(
        v.phase == Phase::Planned && v.reason == "held by the user",
        "{v:?}"
    );
    ensure!(v.start.is_none() && v.nodes.is_empty(), "{v:?}");
    // Its capacity is free: another whole-cluster job starts at once.
    let other = live.placement.submit(job("other", "u", 2, 1.0)).await?;
    ensure!(
        other.phase == Phase::Run && other.start == Some(t0()),
        "{other:?}"
    );
    // Released: planned after the other one.
    big.held = false;
    let v = live.placement.submit(big).await?;
    ensure!(
        v.phase == Phase::Planned && v.start == Some(at(1.0)),
        "{v:?}"
    );
    live.stop().await
}

#[tokio::test]
async fn holding_a_running_job_ends_its_run_at_the_next_boundary() -> anyhow::Result<()> {
    // Prices rising by the hour: a preemptible job runs as early as it can.
    let clock = ManualClock::new(t0());
    let rising: Vec<(f64, f64)> = (0..48).map(|h| (50.0 + f64::from(h), 200.0)).collect();
    let rows = SignalRows::hourly(t0(), &rising).context("rows")?;
    let cfg =
        config(&clock, 48, Settings::default())?.with_signals(TableFeed::new(None).zone("A", rows));
    let registry = NodeRegistry::new();
    let (placement, cycle) = Placement::open(cfg, registry.clone())?;
    let live = Live {
        clock,
        placement,
        registry,
        cycle: tokio::spawn(cycle.run()),
    };
    let mut whole = job("whole", "u", 1, 2.0);
    let mut piece = job("piece", "u", 1, 2.0);
    piece.preemptible = true;
    for j in [&whole, &piece] {
        let v = live.placement.submit(j.clone()).await?;
        ensure!(v.phase == Phase::Run && v.end == Some(at(2.0)), "{v:?}");
    }
    live.clock.set(at(0.3));
    whole.held = true;
    piece.held = true;
    for j in [&whole, &piece] {
        let v = live.placement.submit(j.clone()).await?;
        // Still running until the boundary, then held.
        ensure!(v.phase == Phase::Run && v.end == Some(at(0.5)), "{v:?}");
    }
    let mut watch = live.placement.watch("ml/".into());
    live.clock.set(at(0.5));
    until(&mut watch, "ml/whole", |v| v.phase == Phase::Planned).await?;
    // Both changed in the same cycle.
    for key in ["ml/whole", "ml/piece"] {
        let v = live.placement.plan(key)?;
        ensure!(
            v.phase == Phase::Planned && v.reason == "held by the user" && v.start.is_none(),
            "{v:?}"
        );
    }
    live.clock.set(at(0.75));
    whole.held = false;
    piece.held = false;
    // The preemptible job goes on from its checkpoint (1.5 h left); the other starts over.
    let v = live.placement.submit(piece).await?;
    ensure!(
        v.phase == Phase::Run && v.start == Some(at(0.75)) && v.end == Some(at(2.25)),
        "{v:?}"
    );
    let v = live.placement.submit(whole).await?;
    ensure!(
        v.phase == Phase::Run && v.start == Some(at(0.75)) && v.end == Some(at(2.75)),
        "{v:?}"
    );
    live.stop().await
}

/// Feeds the registry one pod's energy as an agent on `node` would: a baseline sample, then
/// one closing `mj` millijoules at `time`.
fn meter_pod(
    registry: &NodeRegistry,
    node: &str,
    pod: (&str, &str),
    time: DateTime<Utc>,
    mj: u64,
) -> anyhow::Result<()> {
    use offpeak_proto::v1::{Device, PodRef, RegisterRequest, Sample, SampleBatch};
    let agent = registry.register(&RegisterRequest {
        node: node.into(),
        zone: "A".into(),
        devices: vec![Device {
            uuid: format!("{node}-gpu0"),
            model: "meter".into(),
            ..Device::default()
        }],
    })?;
    let sample = |t: DateTime<Utc>, energy_mj: u64| Sample {
        device_uuid: format!("{node}-gpu0"),
        time_unix_ms: t.timestamp_millis(),
        power_watts: 300.0,
        energy_mj,
        pod: Some(PodRef {
            namespace: pod.0.into(),
            pod: pod.1.into(),
            container: "trainer".into(),
        }),
        ..Sample::default()
    };
    registry.ingest(&SampleBatch {
        agent_id: agent.agent_id.clone(),
        sequence: agent.last_sequence + 1,
        samples: vec![sample(time, 1_000), sample(time, 1_000 + mj)],
        curves: vec![],
    })?;
    Ok(())
}

#[tokio::test]
async fn a_namespace_over_its_monthly_budget_holds_its_next_jobs() -> anyhow::Result<()> {
    let live = Live::start(48, Settings::default())?;
    let mut watch = live.placement.watch("".into());
    let spent = live.placement.submit(job("spent", "u", 1, 1.0)).await?;
    ensure!(spent.phase == Phase::Run, "{spent:?}");
    // Its pod used 100 kWh in the first slot: 5.00 at 50/MWh (PUE 1).
    meter_pod(
        &live.registry,
        "meter-node",
        ("ml", "spent-worker-0"),
        at(0.1),
        360_000_000_000,
    )?;
    live.clock.set(at(0.25));
    let spent = until(&mut watch, "ml/spent", |v| v.metered.cost.0 > 0.0).await?;
    ensure!(
        (spent.metered.cost.0 - 5.0).abs() < 1e-9 && (spent.metered.energy.0 - 100.0).abs() < 1e-9,
        "{spent:?}"
    );
    // A job whose estimate (8 × 200 W × 1 h at 50/MWh = 0.08) would overrun the budget is
    // held, and keeps no capacity: the one free node goes to a job of another namespace
    // although the held one is more urgent.
    let mut over = job("over", "u", 1, 1.0);
    over.submit_unix_s = at(0.25).timestamp();
    over.deadline_unix_s = at(3.0).timestamp();
    over.monthly_budget = Some(5.05);
    let v = live.placement.submit(over.clone()).await?;
    ensure!(v.phase == Phase::Planned, "{v:?}");
    ensure!(
        v.reason
            == "monthly budget of ml exhausted: 5.00 USD metered this month and 0.08 \
                estimated for this job, against a budget of 5.05",
        "{v:?}"
    );
    ensure!(v.start.is_none() && v.nodes.is_empty(), "{v:?}");
    let mut free = job("free", "u", 1, 1.0);
    free.key = "research/free".into();
    free.submit_unix_s = at(0.25).timestamp();
    let v = live.placement.submit(free).await?;
    ensure!(
        v.phase == Phase::Run && v.start == Some(at(0.25)),
        "another namespace is not held: {v:?}"
    );
    // A job whose estimate fits what is left is planned as usual.
    let mut fits = job("fits", "u", 1, 1.0);
    fits.submit_unix_s = at(0.25).timestamp();
    fits.monthly_budget = Some(5.10);
    let v = live.placement.submit(fits).await?;
    ensure!(
        v.phase == Phase::Planned && v.start == Some(at(1.0)),
        "{v:?}"
    );
    // A raised budget releases the held one.
    over.monthly_budget = Some(6.0);
    let v = live.placement.submit(over).await?;
    ensure!(
        v.phase == Phase::Planned && !v.reason.contains("budget") && v.start.is_some(),
        "{v:?}"
    );
    live.stop().await
}

#[tokio::test]
async fn a_jobs_carbon_price_steers_it_to_the_cleaner_zone() -> anyhow::Result<()> {
    let clock = ManualClock::new(t0());
    let dirty = SignalRows::hourly(t0(), &vec![(40.0, 600.0); 48]).context("rows")?;
    let clean = SignalRows::hourly(t0(), &vec![(60.0, 50.0); 48]).context("rows")?;
    let cfg = config(&clock, 48, Settings::default())?
        .with_zone("B", 1.0)
        .with_nodes("B", "v100", 8, 2)
        .with_signals(TableFeed::new(None).zone("A", dirty).zone("B", clean));
    let (placement, cycle) = Placement::open(cfg, NodeRegistry::new())?;
    let task = tokio::spawn(cycle.run());
    let v = placement.submit(job("plain", "u", 1, 1.0)).await?;
    ensure!(v.zone == "A", "the scheduler's carbon price is 0: {v:?}");
    let mut priced = job("priced", "u", 1, 1.0);
    // 600 g at 100/t add 0.06/kWh: the clean zone is cheaper for this job.
    priced.carbon_price_per_tonne = Some(100.0);
    let v = placement.submit(priced).await?;
    ensure!(v.zone == "B", "{v:?}");
    placement.shutdown();
    tokio::time::timeout(PATIENCE, task).await??;
    Ok(())
}
