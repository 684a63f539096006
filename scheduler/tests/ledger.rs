//! The ledger filled from a simulator replay, on every backend (SQLite, PostgreSQL): its
//! totals are the simulator's to the cent, replaying is idempotent, corrections are new
//! records, an append is all or nothing, the schema survives a reopen, and both backends give
//! back exactly what was stored.

mod ledger_common;

use ledger_common::{Backend, backends, example_dir, on_every_backend};
use offpeak_scheduler::ledger::{self, Allocation, Amounts, Batch, Fixed, LedgerRecord, Owner};
use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::scenario;
use offpeak_scheduler::schedule;
use offpeak_scheduler::sim;
use offpeak_scheduler::units::{GramsPerKwh, PricePerMwh};

/// The schema version the migrations bring a ledger to.
const SCHEMA_VERSION: i64 = 4;

fn cents(x: f64) -> i64 {
    (x * 100.0).round() as i64
}

fn allocation() -> Allocation {
    let mut a = Allocation::default();
    a.by_namespace.insert(
        "research".into(),
        Owner {
            team: "ml-research".into(),
            cost_centre: "CC-4100".into(),
        },
    );
    a
}

fn replay_totals_and_idempotence(backend: &Backend) -> anyhow::Result<()> {
    let sc = scenario::load(&example_dir())?;
    let replay = sim::simulate(&sc, PolicyKind::Offpeak.build().as_ref(), &mut |_, _| {})?;
    let want = schedule::totals(&sc, &replay);
    let alloc = allocation();
    let records = ledger::from_replay(&sc, &replay, &alloc);
    assert!(!records.is_empty());

    let fresh = backend.fresh()?;
    let mut store = fresh.open()?;
    let first = ledger::write_replay(store.as_mut(), &sc, &replay, &alloc)?;
    assert_eq!(first.records, records.len());
    assert!(first.counterfactual > 0 && first.market > 0);
    let (n, got) = store.totals()?;
    assert_eq!(n, records.len());
    for (name, ledger_value, sim_value) in [
        ("cost", got.cost.to_f64(), want.cost.0),
        ("carbon kg", got.carbon_kg.to_f64(), want.carbon_kg.0),
        ("facility kWh", got.facility_kwh.to_f64(), want.kwh.0),
    ] {
        assert!(
            (ledger_value - sim_value).abs() < 1e-6,
            "{}: {name}: ledger {ledger_value} vs simulator {sim_value}",
            backend.name()
        );
        assert_eq!(cents(ledger_value), cents(sim_value), "{name} to the cent");
    }
    // IT energy is facility energy without the PUE, so never more than it (PUE >= 1).
    assert!(got.it_kwh <= got.facility_kwh);
    let exact: Amounts = records
        .iter()
        .fold(Amounts::default(), |t, r| t + r.amounts);
    assert_eq!(got, exact, "the store's SUM is the exact integer sum");

    // Who pays, and what the price was.
    let stored = store.records_between(sc.grid.instant(0), sc.grid.instant(sc.n_slots))?;
    assert_eq!(stored.len(), records.len());
    for r in &stored {
        assert_eq!(r.tariff_period, ledger::SPOT);
        let (team, cc) = alloc.owner(&r.namespace);
        assert_eq!((r.team.as_str(), r.cost_centre.as_str()), (team, cc));
    }
    assert!(stored.iter().any(|r| r.team == "ml-research"));
    assert!(stored.iter().any(|r| r.team == ledger::UNASSIGNED));

    // Replaying the same run appends nothing and changes no total, after a reopen too.
    drop(store);
    let mut store = fresh.open()?;
    let again = ledger::write_replay(store.as_mut(), &sc, &replay, &alloc)?;
    assert_eq!(again, ledger::Appended::default());
    assert_eq!(store.append(&records)?, 0);
    assert_eq!(store.totals()?, (n, got));
    assert_eq!(store.schema_version()?, SCHEMA_VERSION);
    Ok(())
}

#[test]
fn replay_totals_equal_the_simulators_to_the_cent_and_replay_is_idempotent() -> anyhow::Result<()> {
    on_every_backend(replay_totals_and_idempotence)
}

fn record(job: &str, start: &str, end: &str) -> anyhow::Result<LedgerRecord> {
    Ok(LedgerRecord {
        id: ledger::record_id("test", job, start),
        source: "test".into(),
        namespace: "ml".into(),
        team: "vision".into(),
        cost_centre: "CC-1".into(),
        job: job.into(),
        zone: "GB".into(),
        tariff_period: "peak".into(),
        start: start.parse()?,
        end: end.parse()?,
        gpus: 8,
        price: PricePerMwh(100.0),
        carbon_intensity: GramsPerKwh(200.0),
        pue: 1.2,
        currency: "USD".into(),
        amounts: Amounts {
            gpu_hours: Fixed::from_f64(2.0),
            it_kwh: Fixed::from_f64(0.5),
            facility_kwh: Fixed::from_f64(0.6),
            cost: Fixed::from_f64(0.06),
            carbon_kg: Fixed::from_f64(0.12),
        },
        corrects: None,
    })
}

fn corrections(backend: &Backend) -> anyhow::Result<()> {
    let fresh = backend.fresh()?;
    let mut store = fresh.open()?;
    let original = record("job-1", "2023-03-01T00:00:00Z", "2023-03-01T00:15:00Z")?;
    assert_eq!(
        original.id,
        ledger::record_id("test", "job-1", "2023-03-01T00:00:00Z")
    );
    assert_eq!(store.append(std::slice::from_ref(&original))?, 1);
    // The meter read 10 % low: the correction adds the difference, the original stays.
    let mut correction = original.clone();
    correction.id = format!("{}|correction-1", original.id);
    correction.corrects = Some(original.id.clone());
    correction.amounts = Amounts {
        gpu_hours: Fixed(0),
        it_kwh: Fixed::from_f64(0.05),
        facility_kwh: Fixed::from_f64(0.06),
        cost: Fixed::from_f64(0.006),
        carbon_kg: Fixed::from_f64(0.012),
    };
    assert_eq!(store.append(&[original.clone(), correction.clone()])?, 1);
    let (n, t) = store.totals()?;
    assert_eq!(n, 2);
    assert_eq!(t.cost, Fixed::from_f64(0.066));
    // Read back field for field, times included, on either backend.
    let stored = store.records_between(original.start, original.end)?;
    assert_eq!(stored, vec![original, correction]);
    Ok(())
}

#[test]
fn corrections_are_new_records_and_ids_are_deterministic() -> anyhow::Result<()> {
    on_every_backend(corrections)
}

fn all_or_nothing(backend: &Backend) -> anyhow::Result<()> {
    let fresh = backend.fresh()?;
    let mut store = fresh.open()?;
    let good = record("job-1", "2023-03-01T00:00:00Z", "2023-03-01T00:15:00Z")?;
    let mut cf = good.clone();
    cf.source = "counterfactual".into();
    let mut orphan = record("job-2", "2023-03-01T00:15:00Z", "2023-03-01T00:30:00Z")?;
    orphan.corrects = Some("no-such-record".into());
    // The orphan correction breaks the batch after the good rows went in: none may stay.
    let e = store
        .append_batch(&Batch {
            market: &[],
            counterfactual: std::slice::from_ref(&cf),
            records: &[good.clone(), orphan],
        })
        .expect_err("a correction of nothing is refused");
    assert!(e.to_string().contains("appending"), "{e}");
    assert_eq!(
        store.totals()?.0,
        0,
        "{}: half a batch stayed",
        backend.name()
    );
    assert_eq!(store.counterfactual_totals()?.0, 0);
    // The store is still usable, and the good part goes in on its own.
    assert_eq!(store.append(std::slice::from_ref(&good))?, 1);
    Ok(())
}

#[test]
fn a_batch_is_appended_whole_or_not_at_all() -> anyhow::Result<()> {
    on_every_backend(all_or_nothing)
}

#[test]
fn both_backends_store_and_return_the_same_ledger() -> anyhow::Result<()> {
    let all = backends();
    if all.len() < 2 {
        return Ok(()); // skipped loudly by `backends`
    }
    let sc = scenario::load(&example_dir())?;
    let replay = sim::simulate(&sc, PolicyKind::Asap.build().as_ref(), &mut |_, _| {})?;
    let (from, to) = (sc.grid.instant(0), sc.grid.instant(sc.n_slots));
    let mut seen = Vec::new();
    for b in &all {
        let fresh = b.fresh()?;
        let mut store = fresh.open()?;
        ledger::write_replay(store.as_mut(), &sc, &replay, &allocation())?;
        seen.push((
            store.records_between(from, to)?,
            store.counterfactual_between(from, to)?,
            store.market_between(from, to)?,
            store.namespaces()?,
            store.totals()?,
        ));
    }
    let want = ledger::from_replay(&sc, &replay, &allocation());
    assert_eq!(seen[0].0.len(), want.len());
    assert_eq!(seen[0], seen[1], "SQLite and PostgreSQL differ");
    Ok(())
}

#[test]
fn opening_a_ledger_that_cannot_be_reached_names_it_without_its_password() {
    // Nothing listens on port 9 (discard) of loopback in a test environment.
    let location: ledger::LedgerLocation = "postgres://offpeak:hunter2@127.0.0.1:9/ledger"
        .parse()
        .expect("infallible");
    let e = location.open().expect_err("no server");
    let msg = format!("{:#}", anyhow::Error::from(e));
    assert!(msg.contains("127.0.0.1:9"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    let dir = tempfile::tempdir().expect("tempdir");
    let bad: ledger::LedgerLocation = dir.path().join("no/such/dir/l.sqlite").into();
    let e = bad.open().expect_err("no directory");
    assert!(e.to_string().contains("no/such/dir"), "{e}");
}
