//! The spec's honesty property: at instant T the planner knows jobs submitted by T and signals
//! before T + lookahead. Changing anything beyond that must not change any run that started
//! before T. Tested by perturbation on the example scenario (real prices, carbon and jobs).

use std::path::PathBuf;

use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::scenario::{self, Scenario};
use offpeak_scheduler::sim::{self, RunRecord};
use offpeak_scheduler::units::{GramsPerKwh, Hours, PricePerMwh, Slot};

fn example() -> Scenario {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/de-gb-2023-03");
    scenario::load(&dir).expect("example scenario loads")
}

/// Runs started before `t`, per job id.
fn before(sc: &Scenario, policy: PolicyKind, t: Slot) -> Vec<(String, Vec<RunRecord>)> {
    let replay = sim::simulate(sc, policy.build().as_ref(), &mut |_, _| {}).expect("replay");
    sc.jobs
        .iter()
        .zip(replay.started)
        .map(|(j, runs)| {
            (
                j.id.clone(),
                runs.into_iter().filter(|r| r.start < t).collect::<Vec<_>>(),
            )
        })
        .filter(|(_, runs)| !runs.is_empty())
        .collect()
}

/// Scrambles every signal at or after slot `from`: prices swing from -200 to +400, carbon from
/// 0 to 900, on a pattern unrelated to the real one.
fn scramble_signals(sc: &mut Scenario, from: Slot) {
    for (zi, z) in sc.zones.iter_mut().enumerate() {
        for s in from as usize..z.price.len() {
            let k = (s * 7919 + zi * 104_729) % 1000;
            z.price[s] = PricePerMwh(-200.0 + 0.6 * k as f64);
            z.carbon[s] = GramsPerKwh(0.9 * ((k * 37) % 1000) as f64);
        }
    }
}

/// Drops half of the jobs submitted after `t` and makes the rest urgent, big and long.
fn rewrite_later_jobs(sc: &mut Scenario, t: Slot) {
    let at = sc.grid.instant(t);
    let mut i = 0;
    sc.jobs.retain(|j| {
        i += 1;
        j.submit <= at || i % 2 == 0
    });
    for j in sc.jobs.iter_mut().filter(|j| j.submit > at) {
        j.work = Hours(j.work.0 * 3.0);
        j.deadline = j.submit + chrono::Duration::hours(j.work.0.ceil() as i64 * 2 + 1);
        j.price_cap = None;
    }
}

fn check(policy: PolicyKind, t: Slot) {
    let base = example();
    let want = before(&base, policy, t);
    assert!(!want.is_empty(), "some runs start before slot {t}");

    let mut signals = base.clone();
    scramble_signals(&mut signals, t + base.lookahead_slots);
    assert_eq!(
        before(&signals, policy, t),
        want,
        "{policy}: signals after T + lookahead changed runs before T={t}"
    );

    let mut jobs = base.clone();
    rewrite_later_jobs(&mut jobs, t);
    assert_eq!(
        before(&jobs, policy, t),
        want,
        "{policy}: jobs submitted after T changed runs before T={t}"
    );
}

#[test]
fn offpeak_does_not_see_the_future() {
    for t in [150, 700] {
        check(PolicyKind::Offpeak, t);
    }
}

#[test]
fn threshold_does_not_see_the_future() {
    check(PolicyKind::Threshold, 400);
}

#[test]
fn the_perturbation_is_strong_enough_to_matter() {
    // the same perturbation applied *inside* the lookahead does change decisions, so the tests
    // above would catch a planner that read signals it should not know
    let base = example();
    let t = 400;
    let want = before(&base, PolicyKind::Offpeak, t + base.lookahead_slots);
    let mut sc = base.clone();
    scramble_signals(&mut sc, t);
    assert_ne!(
        before(&sc, PolicyKind::Offpeak, t + base.lookahead_slots),
        want
    );
}
