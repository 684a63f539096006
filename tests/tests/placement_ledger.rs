//! The live cycle's ledger: a real `offpeak serve` on loopback with a placement configuration
//! and a ledger (SQLite, and PostgreSQL when `OFFPEAK_TEST_POSTGRES_URL` names one), real
//! agents over simulated GPUs whose kubelets (pod-resources servers on unix sockets) name the
//! job's worker pods, and a manual scheduler clock the test moves past the slots.
//!
//! Checked: once a slot is closed its energy is in the ledger, per slot, priced at the zone's
//! signals with PUE, with the job's namespace, team and cost centre; the job's IT kWh is
//! exactly (integer nano-kWh) what the sources' counters produced on its pods' devices;
//! energy that arrives for a recorded slot (the agents' samples still timed in it) becomes a
//! correction record; the report endpoint shows it; a restarted scheduler on the same ledger
//! appends nothing twice; and once the job succeeded its counterfactual (full power as soon as
//! submitted) gives the report a saving.

mod agent_common;
#[path = "../../scheduler/tests/ledger_common/mod.rs"]
mod ledger_common;
mod placement_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use agent_common::{Energy, PATIENCE, counters_all, tick_all};
use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use ledger_common::{Backend, TestLedger};
use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::{
    Device, JobSpec, JobState, JobStateReport, PlanPhase, PodRef, RegisterRequest, Sample,
    SampleBatch,
};
use offpeak_scheduler::ledger::{Fixed, LedgerRecord, RecordKind};
use offpeak_scheduler::placement::ManualClock;
use offpeak_scheduler::service::NodeRegistry;
use offpeak_scheduler::service::reports_http::Reports;
use placement_common::{
    CARBON, DRAW_WATTS, Live, PRICE, PUE, SIM_MODEL, ZONE, place_pods, placement, sim_job,
    sim_t0 as t0, start_nodes,
};

const KEY: &str = "ml/train";
const UID: &str = "uid-train";
/// The job's gang: two workers of two GPUs.
const GPUS: u32 = 4;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("time")
}

/// `ml/train` of two workers of two GPUs, with its team and cost centre.
fn job() -> JobSpec {
    JobSpec {
        team: "research".into(),
        cost_centre: "cc-42".into(),
        ..sim_job("train", 2, 2)
    }
}

/// A scheduler serving agents, placement and reports, planning in DE-LU on what agents
/// register, recording to `ledger`, its state and placement store in `dir`.
async fn start(ledger: &TestLedger, dir: &Path, clock: ManualClock) -> anyhow::Result<Live> {
    let placement = placement(&clock)?.with_store(dir.join("placement.sqlite"));
    let registry = NodeRegistry::open(&dir.join("state.sqlite"))?;
    let time_zone = offpeak_scheduler::report::parse_time_zone("UTC")?;
    let reports = blocking(|| Reports::open(ledger.location.clone(), time_zone, Vec::new()))?;
    Live::start(clock, placement, registry, Some(reports)).await
}

/// `mj` millijoules in the ledger's unit, nano-kWh (1 nano-kWh = 3.6 mJ = 18/5 mJ), rounded
/// half up: what the job's records must add up to, computed here from the counters alone.
fn nano_kwh(mj: u64) -> i64 {
    i64::try_from((i128::from(mj) * 5 + 9) / 18).expect("in range")
}

/// Runs synchronous database code (the `postgres` client runs a runtime of its own, which
/// may not start, nor close a connection, on an async thread).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The ledger's records of `kind` for the job, on a connection of their own.
fn records_of(ledger: &TestLedger, kind: RecordKind) -> anyhow::Result<Vec<LedgerRecord>> {
    blocking(|| {
        let store = ledger.open()?;
        Ok(store
            .records_of(kind, t0(), t0() + chrono::Duration::days(1))?
            .into_iter()
            .filter(|r| r.job == KEY)
            .collect())
    })
}

/// The ledger's live metered records of the job.
fn job_records(ledger: &TestLedger) -> anyhow::Result<Vec<LedgerRecord>> {
    records_of(ledger, RecordKind::Metered)
}

fn it_total(records: &[LedgerRecord]) -> i64 {
    records.iter().map(|r| r.amounts.it_kwh.0).sum()
}

/// Waits until the job's records add up to `mj` exactly; returns them.
async fn wait_for_ledger(ledger: &TestLedger, mj: u64) -> anyhow::Result<Vec<LedgerRecord>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let records = job_records(ledger)?;
        if it_total(&records) == nano_kwh(mj) {
            return Ok(records);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the ledger holds {} nano-kWh for {KEY} in {} records, the counters produced {mj} \
             mJ = {} nano-kWh: {records:#?}",
            it_total(&records),
            records.len(),
            nano_kwh(mj)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the registry has metered the job's pods' energy.
async fn wait_until_metered(registry_energy: impl Fn() -> u64, want: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while registry_energy() != want {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "metered {} mJ on the job's pods, the counters produced {want} mJ",
            registry_energy()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// An agent on node-d replaying two samples timed in the 22:15 slot, whose device served the
/// job's first worker then; returns the energy they meter (their counter delta).
async fn late_replay(live: &Live) -> anyhow::Result<u64> {
    let mut agents = AgentServiceClient::connect(live.uri()).await?;
    let agent_id = agents
        .register(RegisterRequest {
            node: "node-d".into(),
            zone: ZONE.into(),
            devices: vec![Device {
                uuid: "GPU-d0".into(),
                model: SIM_MODEL.into(),
                min_power_limit_watts: 100,
                max_power_limit_watts: 250,
                default_power_limit_watts: 250,
            }],
        })
        .await?
        .into_inner()
        .agent_id;
    const DELTA_MJ: u64 = 1_234_567;
    let sample = |second: i64, energy_mj: u64| Sample {
        device_uuid: "GPU-d0".into(),
        time_unix_ms: (at("2023-11-14T22:16:00Z") + chrono::Duration::seconds(second))
            .timestamp_millis(),
        power_watts: 200.0,
        energy_mj,
        pod: Some(PodRef {
            namespace: "ml".into(),
            pod: "train-worker-0".into(),
            container: "trainer".into(),
        }),
        ..Sample::default()
    };
    let batches = [
        (1, sample(0, 5_000_000)),
        (2, sample(6, 5_000_000 + DELTA_MJ)),
    ]
    .map(|(sequence, s)| SampleBatch {
        agent_id: agent_id.clone(),
        sequence,
        samples: vec![s],
        curves: vec![],
    });
    agents.stream_samples(tokio_stream::iter(batches)).await?;
    Ok(DELTA_MJ)
}

/// The cells of the CSV report's `job` row for the job.
fn job_row(csv: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().context("no header")?.split(',').collect();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let row: BTreeMap<String, String> = header
            .iter()
            .zip(&cells)
            .map(|(h, c)| ((*h).to_owned(), (*c).to_owned()))
            .collect();
        if row.get("view").map(String::as_str) == Some("job")
            && row.get("job").map(String::as_str) == Some(KEY)
        {
            return Ok(row);
        }
    }
    anyhow::bail!("no job row for {KEY} in:\n{csv}")
}

/// Energy the sources' counters produced on the job's devices (node-a and node-b) since
/// `baseline`.
fn job_energy(now: &Energy, baseline: &Energy) -> u64 {
    now.iter()
        .filter(|((node, _), _)| node == "node-a" || node == "node-b")
        .map(|(k, v)| v - baseline[k])
        .sum()
}

async fn live_ledger_scenario(backend: &Backend) -> anyhow::Result<()> {
    let ledger = blocking(|| backend.fresh())?;
    let result = scenario_on(&ledger).await;
    blocking(|| drop(ledger));
    result
}

async fn scenario_on(ledger: &TestLedger) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(t0());
    let live = start(ledger, dir.path(), clock.clone()).await?;
    // node-a and node-b run the job's two workers on both their GPUs; node-c's GPU runs a pod
    // of a job the scheduler does not know, whose energy must not be the job's.
    let (mut agents, mut kubelets) = start_nodes(&live.uri(), dir.path(), 20).await?;
    let phase = live.submit(job()).await?;
    ensure!(phase == PlanPhase::Run, "the job is {phase:?}");

    // Samples before the pods name none; from the baseline on, every delta is the pods'.
    tick_all(&mut agents, 1).await?;
    let baseline = counters_all(&mut agents)?;
    tick_all(&mut agents, 1).await?;
    place_pods(&mut agents, &mut kubelets).await?;
    // The agents' clocks run from 22:13:22 to 22:15:30: energy in two slots.
    tick_all(&mut agents, 128).await?;
    let first = counters_all(&mut agents)?;
    tick_all(&mut agents, 1).await?;
    let first_mj = job_energy(&first, &baseline);
    ensure!(first_mj > 0, "no energy on the job's devices");
    let metered = |reg: &NodeRegistry| {
        reg.energy_by_pod()
            .iter()
            .filter(|((ns, pod), _)| ns == "ml" && pod.starts_with("train-worker-"))
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    wait_until_metered(|| metered(live.registry()), first_mj).await?;

    // Both slots closed (22:30 + 5 min): one record each, exactly the counters' energy.
    clock.set(at("2023-11-14T22:36:00Z"));
    let records = wait_for_ledger(ledger, first_mj).await?;
    let starts: Vec<String> = records.iter().map(|r| r.start.to_rfc3339()).collect();
    ensure!(
        starts == ["2023-11-14T22:00:00+00:00", "2023-11-14T22:15:00+00:00"],
        "{starts:?}"
    );
    for r in &records {
        ensure!(
            r.source == "live"
                && r.namespace == "ml"
                && r.team == "research"
                && r.cost_centre == "cc-42"
                && r.zone == ZONE
                && r.tariff_period == "spot"
                && r.price.0 == PRICE
                && r.carbon_intensity.0 == CARBON
                && r.pue == PUE
                && r.gpus == GPUS
                && r.corrects.is_none(),
            "{r:#?}"
        );
        let facility = r.amounts.it_kwh.to_f64() * PUE;
        ensure!(
            r.amounts.facility_kwh == Fixed::from_f64(facility)
                && r.amounts.cost == Fixed::from_f64(facility * PRICE / 1000.0)
                && r.amounts.carbon_kg == Fixed::from_f64(facility * CARBON / 1000.0),
            "{r:#?}"
        );
    }

    // Late energy: the agents' samples are still timed in the 22:15 slot, recorded already;
    // stopping them sends a last batch too.
    tick_all(&mut agents, 20).await?;
    let (last, _) = agent_common::finish_all(agents).await?;
    let last_mj = job_energy(&last, &baseline);
    ensure!(last_mj > first_mj, "no late energy");
    wait_until_metered(|| metered(live.registry()), last_mj).await?;
    clock.set(at("2023-11-14T22:46:00Z"));
    let records = wait_for_ledger(ledger, last_mj).await?;
    let corrections: Vec<&LedgerRecord> = records.iter().filter(|r| r.corrects.is_some()).collect();
    ensure!(records.len() == 3 && corrections.len() == 1, "{records:#?}");
    ensure!(
        corrections[0].corrects.as_deref()
            == Some("live|ml/train#uid-train|DE-LU|2023-11-14T22:15:00Z")
            && corrections[0].start == at("2023-11-14T22:15:00Z")
            && corrections[0].amounts.gpu_hours == Fixed(0),
        "{:#?}",
        corrections[0]
    );
    for (name, want) in [
        ("offpeak_ledger_corrections_appended_total", 1),
        ("offpeak_ledger_records_appended_total", 3),
        ("offpeak_ledger_append_failures_total", 0),
    ] {
        let got = live.metric(name).await?;
        ensure!(got == want, "{name} is {got}, not {want}");
    }

    // The report shows it: the job's IT kWh as the ledger's total, rounded to the printed
    // thousandths.
    let row = job_row(&live.report().await?)?;
    let printed = Fixed(it_total(&records)).round_to(3);
    ensure!(
        ledger_common::units(&row["it_kwh"], 3) == printed
            && row["team"] == "research"
            && row["cost_centre"] == "cc-42",
        "{row:?} vs {printed} thousandths"
    );
    live.stop().await?;

    // A restarted scheduler on the same ledger, placement store and registry state, the job
    // submitted again, and more late energy for the 22:15 slot (another node's agent replaying
    // its buffer): exactly one more record, a correction of exactly that energy, as the
    // restarted scheduler read back what the ledger held.
    let before = job_records(ledger)?;
    let live = start(ledger, dir.path(), clock.clone()).await?;
    // Metered before the job is known again, so that its first view after the restart
    // already holds the late energy.
    let replayed_mj = late_replay(&live).await?;
    wait_until_metered(|| metered(live.registry()), last_mj + replayed_mj).await?;
    live.submit(job()).await?;
    clock.set(at("2023-11-14T23:01:00Z"));
    let after = wait_for_ledger(ledger, last_mj + replayed_mj).await?;
    let new: Vec<&LedgerRecord> = after.iter().filter(|r| !before.contains(r)).collect();
    ensure!(
        after.len() == before.len() + 1
            && new.len() == 1
            && new[0].corrects.as_deref()
                == Some("live|ml/train#uid-train|DE-LU|2023-11-14T22:15:00Z")
            && new[0].amounts.it_kwh.0 == nano_kwh(last_mj + replayed_mj) - nano_kwh(last_mj),
        "{new:#?}"
    );
    let appended = live.metric("offpeak_ledger_records_appended_total").await?;
    ensure!(
        appended == 1,
        "{appended} records appended after the restart"
    );

    // The job succeeds: once its counterfactual's five slots (1 h of work at 0.9 of full
    // speed, from 22:00) are closed, it is recorded, and the report has a saving.
    live.operator()
        .await?
        .report_job_state(JobStateReport {
            key: KEY.into(),
            uid: UID.into(),
            state: JobState::Succeeded.into(),
            message: String::new(),
        })
        .await?;
    clock.set(at("2023-11-14T23:21:00Z"));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let counterfactual = loop {
        let cf = records_of(ledger, RecordKind::Counterfactual)?;
        if !cf.is_empty() {
            break cf;
        }
        ensure!(tokio::time::Instant::now() < deadline, "no counterfactual");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let it_kwh = f64::from(GPUS) * DRAW_WATTS / 1000.0 * 0.25;
    ensure!(
        counterfactual.len() == 5
            && counterfactual[0].start == t0()
            && counterfactual.iter().all(|r| r.job == KEY
                && r.zone == ZONE
                && r.source == "counterfactual/live"
                && r.amounts.it_kwh == Fixed::from_f64(it_kwh)
                && r.amounts.cost == Fixed::from_f64(it_kwh * PUE * PRICE / 1000.0)),
        "{counterfactual:#?}"
    );
    let row = job_row(&live.report().await?)?;
    let cf_cost = counterfactual.iter().map(|r| r.amounts.cost.0).sum::<i64>();
    let cost: i64 = after.iter().map(|r| r.amounts.cost.0).sum();
    ensure!(
        ledger_common::units(&row["saving_vs_full_power_at_submit"], 2)
            == Fixed(cf_cost - cost).round_to(2),
        "{row:?}"
    );
    // Every slot was taken in again before the counterfactual (in the same cycle or an
    // earlier one), and none was appended twice.
    ensure!(job_records(ledger)? == after, "the records changed");
    let appended = live.metric("offpeak_ledger_records_appended_total").await?;
    ensure!(
        appended == 1,
        "{appended} records appended after the restart"
    );
    live.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_jobs_metered_energy_reaches_the_ledger_exactly_once() -> anyhow::Result<()> {
    for backend in ledger_common::backends() {
        live_ledger_scenario(&backend)
            .await
            .map_err(|e| anyhow::anyhow!("on {}: {e:?}", backend.name()))?;
    }
    Ok(())
}
