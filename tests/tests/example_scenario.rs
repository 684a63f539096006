//! `offpeak simulate` on the example scenario shipped in the repository: every policy gives a
//! valid schedule, the figures it reports are those of the schedule it wrote, and the offpeak
//! policy beats both references.

use std::path::PathBuf;

use offpeak_scheduler::cli::{SimulateArgs, simulate};
use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::scenario;
use offpeak_scheduler::schedule::Schedule;
use offpeak_scheduler::validate;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/de-gb-2023-03")
}

/// Prices a schedule file from scratch: energy = gpus × watts × hours × PUE; cost = kWh ×
/// price; carbon = kWh × intensity (the spec's rule 7).
fn price(sc: &scenario::Scenario, s: &Schedule) -> (f64, f64, f64) {
    let (mut kwh, mut cost, mut kg) = (0.0, 0.0, 0.0);
    let slot = |t: &str| sc.grid.position(t.parse().expect("time")).round() as usize;
    for j in &s.jobs {
        let job = sc.jobs.iter().find(|x| x.id == j.id).expect("job");
        let profile = &sc.profiles[job.profile];
        for r in &j.runs {
            let z = sc.zones.iter().find(|z| z.name == r.zone).expect("zone");
            let w = profile
                .points
                .iter()
                .find(|p| p.power_limit.0 as u32 == r.power_limit_watts)
                .expect("point")
                .draw
                .0;
            let per_slot = f64::from(job.gpus) * w / 1000.0 * 0.25 * z.pue;
            for s in slot(&r.start)..slot(&r.end) {
                kwh += per_slot;
                cost += per_slot * z.price[s].0 / 1000.0;
                kg += per_slot * z.carbon[s].0 / 1000.0;
            }
        }
    }
    (kwh, cost, kg)
}

#[test]
fn every_policy_gives_a_valid_priced_schedule_and_offpeak_wins() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let sc = scenario::load(&example_dir())?;
    let mut objectives = Vec::new();
    for policy in [PolicyKind::Offpeak, PolicyKind::Asap, PolicyKind::Threshold] {
        let out = tmp.path().join(format!("{policy}.json"));
        let args = SimulateArgs {
            scenario: Some(example_dir()),
            out: out.clone(),
            policy,
            json: true,
            no_baseline: policy != PolicyKind::Offpeak,
            no_progress: true,
            ledger: None,
            finance: None,
            report_time_zone: "UTC".into(),
            no_report: true,
        };
        let summary = simulate(&args)?;
        let schedule: Schedule = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
        assert_eq!(schedule.policy, policy.to_string());
        let errors = validate::validate(&sc, &schedule);
        assert!(errors.is_empty(), "{policy}: {errors:?}");
        let (kwh, cost, kg) = price(&sc, &schedule);
        let t = summary.result.totals;
        assert!(
            (t.kwh.0 - kwh).abs() < 1e-6 * kwh.max(1.0),
            "{policy}: kWh {} vs {kwh}",
            t.kwh.0
        );
        assert!(
            (t.cost.0 - cost).abs() < 0.005,
            "{policy}: cost {} vs {cost}",
            t.cost.0
        );
        assert!(
            (t.carbon_kg.0 - kg).abs() < 0.05,
            "{policy}: carbon {} vs {kg}",
            t.carbon_kg.0
        );
        assert_eq!(t.scheduled + t.unscheduled, sc.jobs.len());
        if policy == PolicyKind::Offpeak {
            let saving = summary.saving_vs_asap.expect("baseline ran");
            assert!(saving > 0.15, "offpeak saves {saving:.3} against asap");
            assert_eq!(t.late, 0);
        }
        objectives.push(t.objective.0);
    }
    assert!(
        objectives[0] < objectives[1] && objectives[0] < objectives[2],
        "objectives {objectives:?}"
    );
    Ok(())
}
