//! The planner's behaviour on small hand-made scenarios: each lever, each rule.

mod common;

use common::{ScenarioFixture, hourly};
use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::scenario::{self, Scenario};
use offpeak_scheduler::schedule::{Schedule, ScheduledJob};
use offpeak_scheduler::units::{GramsPerKwh, PricePerMwh};
use offpeak_scheduler::{sim, validate};

fn run(f: &ScenarioFixture, policy: PolicyKind) -> (Scenario, Schedule) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sc = scenario::load(&f.write(tmp.path())).expect("fixture loads");
    let replay = sim::simulate(&sc, policy.build().as_ref(), &mut |_, _| {}).expect("simulation");
    let schedule = Schedule::from_replay(&sc, &replay);
    let errors = validate::validate(&sc, &schedule);
    assert!(errors.is_empty(), "invalid schedule: {errors:?}");
    (sc, schedule)
}

/// As [`run`], with the loaded scenario edited first (for what the scenario format cannot say,
/// such as a carbon cap).
fn run_edited(
    f: &ScenarioFixture,
    policy: PolicyKind,
    edit: impl FnOnce(&mut Scenario),
) -> (Scenario, Schedule) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut sc = scenario::load(&f.write(tmp.path())).expect("fixture loads");
    edit(&mut sc);
    let replay = sim::simulate(&sc, policy.build().as_ref(), &mut |_, _| {}).expect("simulation");
    let schedule = Schedule::from_replay(&sc, &replay);
    let errors = validate::validate(&sc, &schedule);
    assert!(errors.is_empty(), "invalid schedule: {errors:?}");
    (sc, schedule)
}

fn carbon_cap(sc: &mut Scenario, id: &str, cap: f64) {
    for j in sc.jobs.iter_mut().filter(|j| j.id == id) {
        j.carbon_cap = Some(GramsPerKwh(cap));
    }
}

/// Zone A: cheap but dirty 02:00-06:00 (5/MWh, 400 g), clean 10:00-14:00 (60/MWh, 100 g),
/// dear and dirty otherwise (100/MWh, 450 g); zone B: 50/MWh and 500 g throughout.
fn dirty_cheap_clean_dear() -> ScenarioFixture {
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,1.0,2024-01-01T20:00:00Z,false,,batch",
    ]);
    f.signals[0].1 = hourly(
        &(0..48)
            .map(|h| match h {
                2..6 => (5.0, 400.0),
                10..14 => (60.0, 100.0),
                _ => (100.0, 450.0),
            })
            .collect::<Vec<_>>(),
    );
    f.signals[1].1 = hourly(&vec![(50.0, 500.0); 48]);
    f
}

/// The carbon intensity of every slot a run of `id` used.
fn intensities(sc: &Scenario, s: &Schedule, id: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for r in &job(s, id).runs {
        let zone = sc.zones.iter().find(|z| z.name == r.zone).expect("zone");
        let start: chrono::DateTime<chrono::Utc> = r.start.parse().expect("time");
        let end: chrono::DateTime<chrono::Utc> = r.end.parse().expect("time");
        let (a, b) = (
            sc.grid.last_boundary_at_or_before(start),
            sc.grid.last_boundary_at_or_before(end),
        );
        out.extend((a..b).map(|t| zone.carbon[t as usize].0));
    }
    out
}

#[test]
fn a_carbon_cap_keeps_the_run_out_of_dirty_slots() {
    let f = dirty_cheap_clean_dear();
    // Uncapped, the cheap dirty hours win.
    let (sc, s) = run(&f, PolicyKind::Offpeak);
    let r = &job(&s, "j1").runs[0];
    assert!(
        r.zone == "A" && hour(&r.start) >= 2 && hour(&r.end) <= 6,
        "uncapped: {r:?}"
    );
    assert!(intensities(&sc, &s, "j1").iter().all(|&c| c == 400.0));
    // Capped at 150 g: only the clean hours of A are left.
    for policy in [PolicyKind::Offpeak, PolicyKind::Asap] {
        let (sc, s) = run_edited(&f, policy, |sc| carbon_cap(sc, "j1", 150.0));
        let r = &job(&s, "j1").runs[0];
        assert!(
            r.zone == "A" && hour(&r.start) >= 10 && hour(&r.end) <= 14,
            "{policy}: {r:?}"
        );
        let used = intensities(&sc, &s, "j1");
        assert!(
            !used.is_empty() && used.iter().all(|&c| c <= 150.0),
            "{used:?}"
        );
    }
}

#[test]
fn an_unmeetable_carbon_cap_is_explained_with_the_lowest_feasible_cap() {
    let f = dirty_cheap_clean_dear();
    for policy in [PolicyKind::Offpeak, PolicyKind::Asap] {
        let (_, s) = run_edited(&f, policy, |sc| carbon_cap(sc, "j1", 50.0));
        assert!(s.jobs.is_empty(), "{policy}: {:?}", s.jobs);
        assert_eq!(
            s.unscheduled[0].reason,
            "carbon cap 50.00 gCO2e/kWh cannot be met before the deadline; the lowest feasible \
             cap is 100.00",
            "{policy}"
        );
    }
}

#[test]
fn caps_that_each_could_be_met_but_not_together_name_the_lowest_cap_that_would_do() {
    let f = dirty_cheap_clean_dear();
    // 40/MWh alone is met by the cheap hours and 150 g alone by the clean ones; together, the
    // clean hours need a price cap of 60.
    let (_, s) = run_edited(&f, PolicyKind::Offpeak, |sc| {
        carbon_cap(sc, "j1", 150.0);
        sc.jobs[0].price_cap = Some(PricePerMwh(40.0));
    });
    assert!(s.jobs.is_empty());
    assert_eq!(
        s.unscheduled[0].reason,
        "price cap 40.00 USD/MWh cannot be met before the deadline; the lowest feasible cap is 60.00"
    );
    // Both met: the clean hours, at a price within the cap.
    let (_, s) = run_edited(&f, PolicyKind::Offpeak, |sc| {
        carbon_cap(sc, "j1", 150.0);
        sc.jobs[0].price_cap = Some(PricePerMwh(70.0));
    });
    let r = &job(&s, "j1").runs[0];
    assert!(hour(&r.start) >= 10 && hour(&r.end) <= 14, "{r:?}");
}

#[test]
fn a_carbon_capped_preemptible_job_runs_only_in_clean_slots() {
    // Clean in A 04:00-08:00 and 12:00-20:00; 6 h of work need both stretches.
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,6.0,2024-01-02T00:00:00Z,true,,batch",
    ]);
    f.signals[0].1 = hourly(
        &(0..48)
            .map(|h| match h {
                4..8 | 12..20 => (80.0, 100.0),
                _ => (20.0, 400.0),
            })
            .collect::<Vec<_>>(),
    );
    f.signals[1].1 = hourly(&vec![(10.0, 500.0); 48]);
    for policy in [PolicyKind::Offpeak, PolicyKind::Asap] {
        let (sc, s) = run_edited(&f, policy, |sc| carbon_cap(sc, "j1", 120.0));
        let used = intensities(&sc, &s, "j1");
        assert!(
            used.len() >= 24,
            "{policy}: too few slots: {:?}",
            job(&s, "j1")
        );
        assert!(used.iter().all(|&c| c <= 120.0), "{policy}: {used:?}");
        assert!(job(&s, "j1").runs.len() >= 2, "{policy}: expected a split");
    }
}

fn job<'a>(s: &'a Schedule, id: &str) -> &'a ScheduledJob {
    s.jobs
        .iter()
        .find(|j| j.id == id)
        .unwrap_or_else(|| panic!("{id} not scheduled: {:?}", s.unscheduled))
}

/// `hours` of (price, carbon) with `cheap` hours at `low` and the rest at `high`.
fn profile(hours: usize, cheap: std::ops::Range<usize>, low: f64, high: f64) -> String {
    hourly(
        &(0..hours)
            .map(|h| (if cheap.contains(&h) { low } else { high }, 300.0))
            .collect::<Vec<_>>(),
    )
}

fn hour(t: &str) -> u32 {
    let h: u32 = t[11..13].parse().expect("hour");
    let d: u32 = t[8..10].parse().expect("day");
    (d - 1) * 24 + h
}

#[test]
fn shifts_to_the_cheap_window_at_an_efficient_power_limit() {
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,2.0,2024-01-01T20:00:00Z,false,,research",
    ]);
    f.signals[0].1 = profile(48, 10..14, 20.0, 200.0);
    f.signals[1].1 = profile(48, 0..0, 0.0, 300.0);
    let (_, s) = run(&f, PolicyKind::Offpeak);
    let r = &job(&s, "j1").runs[0];
    assert_eq!(r.zone, "A");
    assert!(
        hour(&r.start) >= 10 && hour(&r.end) <= 14,
        "ran {}..{}",
        r.start,
        r.end
    );
    // 2 h of work at 100 W (throughput 0.72) takes 3 h and fits the 4 h window: cheapest per unit of work
    assert_eq!(r.power_limit_watts, 100);
}

#[test]
fn picks_the_cheaper_zone() {
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,2.0,2024-01-01T04:00:00Z,false,,research",
    ]);
    f.signals[0].1 = profile(48, 0..0, 0.0, 100.0);
    f.signals[1].1 = profile(48, 0..0, 0.0, 50.0);
    let (_, s) = run(&f, PolicyKind::Offpeak);
    assert_eq!(job(&s, "j1").runs[0].zone, "B");
}

#[test]
fn an_unmeetable_cap_is_explained_with_the_lowest_feasible_cap() {
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,1.0,2024-01-01T20:00:00Z,false,40,batch",
    ]);
    f.signals[0].1 = profile(48, 10..11, 52.1, 80.0);
    f.signals[1].1 = profile(48, 0..0, 0.0, 90.0);
    let (_, s) = run(&f, PolicyKind::Offpeak);
    assert!(s.jobs.is_empty());
    assert_eq!(
        s.unscheduled[0].reason,
        "price cap 40.00 USD/MWh cannot be met before the deadline; the lowest feasible cap is 52.10"
    );
}

#[test]
fn a_cap_is_kept_and_a_meetable_cap_is_met() {
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,1.0,2024-01-01T20:00:00Z,false,60,batch",
    ]);
    f.signals[0].1 = profile(48, 10..11, 52.1, 80.0);
    f.signals[1].1 = profile(48, 0..0, 0.0, 90.0);
    let (_, s) = run(&f, PolicyKind::Offpeak);
    let r = &job(&s, "j1").runs[0];
    assert_eq!(
        (hour(&r.start), hour(&r.end), r.power_limit_watts),
        (10, 11, 250)
    );
}

#[test]
fn a_gang_takes_the_fewest_nodes_in_one_zone() {
    let f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,16,v100,v100/resnet50,1.0,2024-01-01T04:00:00Z,false,,research",
    ]);
    let (_, s) = run(&f, PolicyKind::Offpeak);
    let r = &job(&s, "j1").runs[0];
    assert_eq!(r.zone, "A", "zone B has one node only");
    assert_eq!(r.nodes.len(), 2);
    assert!(r.nodes.iter().all(|n| n.gpus == 8));
}

#[test]
fn a_gang_larger_than_any_zone_is_rejected_with_a_reason() {
    let f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,32,v100,v100/resnet50,1.0,2024-01-01T04:00:00Z,false,,research",
    ]);
    let (_, s) = run(&f, PolicyKind::Offpeak);
    assert_eq!(
        s.unscheduled[0].reason,
        "needs 32 GPUs together in one zone; the largest zone has 16"
    );
}

#[test]
fn a_preemptible_job_pauses_through_a_price_peak() {
    // 8 h of work at 100 W (the cheapest per unit of work) take 11.1 h: more than either side
    // of the 06:00-12:00 peak holds, so it must run on both sides
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,8.0,2024-01-01T20:00:00Z,true,,batch",
    ]);
    let peak: Vec<(f64, f64)> = (0..48)
        .map(|h| (if (6..12).contains(&h) { 400.0 } else { 30.0 }, 300.0))
        .collect();
    f.signals[0].1 = hourly(&peak);
    f.signals[1].1 = profile(48, 0..0, 0.0, 500.0);
    let (_, s) = run(&f, PolicyKind::Offpeak);
    let runs = &job(&s, "j1").runs;
    assert!(runs.len() >= 2, "expected a split: {runs:?}");
    for r in runs {
        assert!(
            hour(&r.end) <= 6 || hour(&r.start) >= 12,
            "runs through the peak: {r:?}"
        );
    }
}

#[test]
fn non_preemptible_jobs_get_one_run() {
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,5.0,2024-01-01T20:00:00Z,false,,batch",
    ]);
    let peak: Vec<(f64, f64)> = (0..48)
        .map(|h| (if (6..12).contains(&h) { 400.0 } else { 30.0 }, 300.0))
        .collect();
    f.signals[0].1 = hourly(&peak);
    let (_, s) = run(&f, PolicyKind::Offpeak);
    assert_eq!(job(&s, "j1").runs.len(), 1);
}

#[test]
fn contention_for_one_cheap_window_keeps_every_deadline() {
    let rows: Vec<String> = (0..6)
        .map(|i| format!("j{i},2024-01-01T00:10:00Z,8,v100,v100/resnet50,2.0,2024-01-01T{:02}:00:00Z,false,,research", 14 + i))
        .collect();
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    let mut f = ScenarioFixture::default().with_jobs(&rows);
    f.signals[0].1 = profile(48, 10..14, 20.0, 200.0);
    f.signals[1].1 = profile(48, 10..14, 25.0, 200.0);
    let (sc, s) = run(&f, PolicyKind::Offpeak);
    assert_eq!(s.jobs.len(), 6);
    for j in &s.jobs {
        let deadline = sc
            .jobs
            .iter()
            .find(|x| x.id == j.id)
            .map(|x| x.deadline)
            .expect("job");
        let end: chrono::DateTime<chrono::Utc> = j.runs[0].end.parse().expect("time");
        assert!(end <= deadline, "{} late", j.id);
    }
}

#[test]
fn asap_starts_at_once_at_full_power() {
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,2.0,2024-01-01T20:00:00Z,false,,research",
    ]);
    f.signals[0].1 = profile(48, 10..14, 20.0, 200.0);
    let (_, s) = run(&f, PolicyKind::Asap);
    let r = &job(&s, "j1").runs[0];
    assert_eq!(
        (r.start.as_str(), r.end.as_str(), r.power_limit_watts),
        ("2024-01-01T00:15:00Z", "2024-01-01T02:15:00Z", 250)
    );
}

#[test]
fn threshold_waits_for_a_low_price_and_carbon() {
    let mut f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,1.0,2024-01-01T23:00:00Z,false,,research",
    ]);
    let sig: Vec<(f64, f64)> = (0..48)
        .map(|h| {
            if (8..16).contains(&h) {
                (20.0, 100.0)
            } else {
                (200.0, 400.0)
            }
        })
        .collect();
    f.signals[0].1 = hourly(&sig);
    f.signals[1].1 = hourly(&sig);
    let (_, s) = run(&f, PolicyKind::Threshold);
    let r = &job(&s, "j1").runs[0];
    assert_eq!(hour(&r.start), 8, "starts when the low prices begin: {r:?}");
    assert_eq!(r.power_limit_watts, 250);
}

#[test]
fn replays_are_deterministic() {
    let mut f = ScenarioFixture::default().with_jobs(&[
        "a,2024-01-01T00:10:00Z,8,v100,v100/resnet50,3.0,2024-01-02T08:00:00Z,true,,batch",
        "b,2024-01-01T01:10:00Z,4,v100,v100/resnet50,2.0,2024-01-01T12:00:00Z,false,,prod",
        "c,2024-01-01T02:10:00Z,16,v100,v100/resnet50,1.0,2024-01-01T22:00:00Z,true,,research",
    ]);
    f.signals[0].1 = hourly(
        &(0..48)
            .map(|h| (50.0 + 40.0 * ((h as f64) / 3.0).sin(), 250.0))
            .collect::<Vec<_>>(),
    );
    let (_, a) = run(&f, PolicyKind::Offpeak);
    let (_, b) = run(&f, PolicyKind::Offpeak);
    assert_eq!(a, b);
}
