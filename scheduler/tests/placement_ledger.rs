//! The live cycle's ledger when the ledger fails: through the placement's Rust handle, with a
//! real `NodeRegistry` fed sample batches as the agent service feeds it, and a real SQLite
//! ledger whose folder does not exist at first (every append fails to open it). The failure is
//! counted, planning goes on, and once the folder exists the next cycle appends everything
//! metered meanwhile, exactly. (The end-to-end test over sockets, with agents, restarts and
//! PostgreSQL, is `tests/tests/placement_ledger.rs`.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use offpeak_proto::v1::{Device, PodRef, RegisterRequest, Sample, SampleBatch};
use offpeak_scheduler::ledger::{Fixed, LedgerLocation, LedgerStore as _, SqliteLedger};
use offpeak_scheduler::placement::ledger_sink::LedgerSink;
use offpeak_scheduler::placement::{
    JobRequest, ManualClock, Phase, Placement, PlacementConfig, Settings, SignalRows, TableFeed,
};
use offpeak_scheduler::scenario::{Profile, ProfilePoint};
use offpeak_scheduler::service::NodeRegistry;
use offpeak_scheduler::units::Watts;

const PATIENCE: Duration = Duration::from_secs(20);
const PUE: f64 = 1.5;

fn at(minutes: i64) -> DateTime<Utc> {
    "2024-01-01T00:00:00Z"
        .parse::<DateTime<Utc>>()
        .expect("time")
        + chrono::Duration::minutes(minutes)
}

fn job(name: &str) -> JobRequest {
    JobRequest {
        key: format!("ml/{name}"),
        uid: format!("uid-{name}"),
        workers: 1,
        gpus_per_worker: 8,
        accelerator: "v100".into(),
        work_hours: 2.0,
        submit_unix_s: at(0).timestamp(),
        deadline_unix_s: at(24 * 60).timestamp(),
        ..JobRequest::default()
    }
}

/// `mj` of counter delta on `pod`'s device of a new agent's `node`, in a sample batch timed
/// at `time`.
fn meter_pod(
    registry: &NodeRegistry,
    node: &str,
    pod: &str,
    time: DateTime<Utc>,
    mj: u64,
) -> anyhow::Result<()> {
    let agent = registry.register(&RegisterRequest {
        node: node.into(),
        zone: "A".into(),
        devices: vec![Device {
            uuid: format!("{node}-gpu0"),
            model: "meter".into(),
            ..Device::default()
        }],
    })?;
    let sample = |energy_mj: u64| Sample {
        device_uuid: format!("{node}-gpu0"),
        time_unix_ms: time.timestamp_millis(),
        power_watts: 300.0,
        energy_mj,
        pod: Some(PodRef {
            namespace: "ml".into(),
            pod: pod.into(),
            container: "trainer".into(),
        }),
        ..Sample::default()
    };
    registry.ingest(&SampleBatch {
        agent_id: agent.agent_id.clone(),
        sequence: agent.last_sequence + 1,
        samples: vec![sample(1_000), sample(1_000 + mj)],
        curves: vec![],
    })?;
    Ok(())
}

async fn until(what: &str, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done()? {
        ensure!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_that_fails_is_counted_and_caught_up_without_holding_up_planning()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("not-yet");
    let path = folder.join("ledger.sqlite");
    let clock = ManualClock::new(at(0));
    let rows = SignalRows::hourly(at(0), &vec![(80.0, 300.0); 48]).context("rows")?;
    let config = PlacementConfig::new(Arc::new(clock.clone()))
        .with_settings(Settings {
            debounce: Duration::from_millis(2),
            ..Settings::default()
        })
        .with_zone("A", PUE)
        .with_nodes("A", "v100", 8, 2)
        .with_profile(Profile {
            name: "v100/train".into(),
            points: vec![ProfilePoint {
                power_limit: Watts(250.0),
                throughput: 1.0,
                draw: Watts(200.0),
            }],
        })
        .with_signals(TableFeed::new(None).zone("A", rows));
    let sink = LedgerSink::new(LedgerLocation::Sqlite(path.clone()), &config);
    let counters = sink.counters().clone();
    let registry = NodeRegistry::new();
    let (placement, cycle) = Placement::open(config, registry.clone())?;
    let task = tokio::spawn(cycle.with_ledger(sink).run());

    let plan = placement.submit(job("a")).await?;
    ensure!(plan.phase == Phase::Run, "{plan:?}");
    meter_pod(&registry, "meter-1", "a-worker-0", at(5), 7_000_001)?;

    // Slot 0 closed: the append cannot open the ledger. Counted, and planning goes on.
    clock.set(at(21));
    until("a failed append", || Ok(counters.failures.get() >= 1)).await?;
    let other = tokio::time::timeout(PATIENCE, placement.submit(job("b"))).await??;
    ensure!(
        other.phase == Phase::Planned && other.start == Some(at(30)),
        "{other:?}"
    );
    // Energy metered while the ledger is down is kept too.
    meter_pod(&registry, "meter-2", "a-worker-0", at(16), 2_500_003)?;

    std::fs::create_dir(&folder)?;
    clock.set(at(36));
    until("the energy in the ledger", || {
        if !path.exists() {
            return Ok(false);
        }
        Ok(SqliteLedger::open(&path)?.totals()?.0 == 2)
    })
    .await?;
    let records = SqliteLedger::open(&path)?.records_between(at(0), at(60))?;
    let it: i64 = records.iter().map(|r| r.amounts.it_kwh.0).sum();
    // 9_500_004 mJ = 2_638_890 nano-kWh (3.6 mJ each, rounded half up).
    ensure!(it == 2_638_890, "{records:#?}");
    for r in &records {
        let facility = r.amounts.it_kwh.to_f64() * PUE;
        ensure!(
            r.job == "ml/a"
                && r.team == "unassigned"
                && r.pue == PUE
                && r.price.0 == 80.0
                && r.amounts.facility_kwh == Fixed::from_f64(facility)
                && r.amounts.cost == Fixed::from_f64(facility * 80.0 / 1000.0),
            "{r:#?}"
        );
    }
    ensure!(counters.appended.get() == 2, "{counters:?}");
    ensure!(counters.pending.get() == 0, "{counters:?}");

    placement.shutdown();
    tokio::time::timeout(PATIENCE, task).await??;
    Ok(())
}
