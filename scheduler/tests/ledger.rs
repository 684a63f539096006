//! The ledger filled from a simulator replay: its totals are the simulator's to the cent,
//! replaying is idempotent, corrections are new records, the schema survives a reopen.

use std::path::PathBuf;

use offpeak_scheduler::ledger::{self, Fixed, LedgerStore, SqliteLedger};
use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::scenario;
use offpeak_scheduler::schedule;
use offpeak_scheduler::sim;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/de-gb-2023-03")
}

fn cents(x: f64) -> i64 {
    (x * 100.0).round() as i64
}

#[test]
fn replay_totals_equal_the_simulators_to_the_cent_and_replay_is_idempotent() -> anyhow::Result<()> {
    let sc = scenario::load(&example_dir())?;
    let replay = sim::simulate(&sc, PolicyKind::Offpeak.build().as_ref(), &mut |_, _| {})?;
    let want = schedule::totals(&sc, &replay);
    let records = ledger::from_replay(&sc, &replay);
    assert!(!records.is_empty());

    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("ledger.sqlite");
    let first = ledger::write_replay(&path, &sc, &replay)?;
    assert_eq!(first, records.len());
    let store = SqliteLedger::open(&path)?;
    let (n, got) = store.totals()?;
    assert_eq!(n, records.len());
    for (name, ledger_value, sim_value) in [
        ("cost", got.cost.to_f64(), want.cost.0),
        ("carbon kg", got.carbon_kg.to_f64(), want.carbon_kg.0),
        ("facility kWh", got.facility_kwh.to_f64(), want.kwh.0),
    ] {
        assert!(
            (ledger_value - sim_value).abs() < 1e-6,
            "{name}: ledger {ledger_value} vs simulator {sim_value}"
        );
        assert_eq!(cents(ledger_value), cents(sim_value), "{name} to the cent");
    }
    // IT energy is facility energy without the PUE, so never more than it (PUE >= 1).
    assert!(got.it_kwh <= got.facility_kwh);
    let gpu_hours: f64 = records.iter().map(|r| r.amounts.gpu_hours.to_f64()).sum();
    assert!((got.gpu_hours.to_f64() - gpu_hours).abs() < 1e-6);

    // Replaying the same run appends nothing and changes no total.
    drop(store);
    assert_eq!(ledger::write_replay(&path, &sc, &replay)?, 0);
    let mut store = SqliteLedger::open(&path)?;
    assert_eq!(store.append(&records)?, 0);
    assert_eq!(store.totals()?, (n, got));
    assert_eq!(store.schema_version()?, 2);
    Ok(())
}

#[test]
fn corrections_are_new_records_and_ids_are_deterministic() -> anyhow::Result<()> {
    let mut store = SqliteLedger::open_in_memory()?;
    let start = "2023-03-01T00:00:00Z".parse()?;
    let end = "2023-03-01T00:15:00Z".parse()?;
    let original = ledger::LedgerRecord {
        id: ledger::record_id("test", "job-1", "2023-03-01T00:00:00Z"),
        source: "test".into(),
        namespace: "ml".into(),
        job: "job-1".into(),
        zone: "GB".into(),
        start,
        end,
        gpus: 8,
        price: offpeak_scheduler::units::PricePerMwh(100.0),
        carbon_intensity: offpeak_scheduler::units::GramsPerKwh(200.0),
        pue: 1.2,
        currency: "USD".into(),
        amounts: ledger::Amounts {
            gpu_hours: Fixed::from_f64(2.0),
            it_kwh: Fixed::from_f64(0.5),
            facility_kwh: Fixed::from_f64(0.6),
            cost: Fixed::from_f64(0.06),
            carbon_kg: Fixed::from_f64(0.12),
        },
        corrects: None,
    };
    assert_eq!(
        original.id,
        ledger::record_id("test", "job-1", "2023-03-01T00:00:00Z")
    );
    assert_eq!(store.append(std::slice::from_ref(&original))?, 1);
    // The meter read 10 % low: the correction adds the difference, the original stays.
    let mut correction = original.clone();
    correction.id = format!("{}|correction-1", original.id);
    correction.corrects = Some(original.id.clone());
    correction.amounts = ledger::Amounts {
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
    let stored = store.records_between(start, end)?;
    assert_eq!(stored, vec![original, correction]);
    Ok(())
}
