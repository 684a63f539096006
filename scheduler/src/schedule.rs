//! The schedule file (`spec/scenario.md`, "Schedule: one JSON file") and its pricing, with the
//! same formulas and summation order as the independent checker, so that the figures
//! `offpeak simulate` prints and the checker's agree to the cent.

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;
use crate::sim::{Outcome, Replay, RunRecord};
use crate::units::{GramsPerKwh, KgCo2e, KilowattHours, Money, PricePerMwh, Watts};

/// The schedule as written to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub policy: String,
    pub jobs: Vec<ScheduledJob>,
    pub unscheduled: Vec<Unscheduled>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledJob {
    pub id: String,
    pub runs: Vec<Run>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    pub start: String,
    pub end: String,
    pub zone: String,
    pub power_limit_watts: u32,
    pub nodes: Vec<NodeShare>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeShare {
    pub node: String,
    pub gpus: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unscheduled {
    pub id: String,
    pub reason: String,
}

impl Schedule {
    /// The schedule of a replay, jobs in scenario order.
    pub fn from_replay(sc: &Scenario, replay: &Replay) -> Self {
        let mut jobs = Vec::new();
        let mut unscheduled = Vec::new();
        for (job, outcome) in sc.jobs.iter().zip(&replay.outcomes) {
            match outcome {
                Outcome::Done(runs) => jobs.push(ScheduledJob {
                    id: job.id.clone(),
                    runs: runs
                        .iter()
                        .map(|r| Run {
                            start: sc.grid.format(r.start),
                            end: sc.grid.format(r.end),
                            zone: sc.zones[r.zone].name.clone(),
                            power_limit_watts: sc.profiles[job.profile].points[r.point]
                                .power_limit
                                .0 as u32,
                            nodes: r
                                .nodes
                                .iter()
                                .map(|&(n, g)| NodeShare {
                                    node: sc.nodes[n].name.clone(),
                                    gpus: g,
                                })
                                .collect(),
                        })
                        .collect(),
                }),
                Outcome::Unscheduled(reason) => unscheduled.push(Unscheduled {
                    id: job.id.clone(),
                    reason: reason.clone(),
                }),
            }
        }
        Schedule {
            policy: replay.policy.clone(),
            jobs,
            unscheduled,
        }
    }
}

/// Energy, cost and carbon of a replay, and how many jobs were late.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Totals {
    pub kwh: KilowattHours,
    pub cost: Money,
    pub carbon_kg: KgCo2e,
    /// Energy cost + carbon price × emissions.
    pub objective: Money,
    pub runs: usize,
    pub scheduled: usize,
    pub unscheduled: usize,
    pub late: usize,
}

/// Energy, cost and emissions of one run (facility energy: PUE applied).
pub fn price_run(
    sc: &Scenario,
    gpus: u32,
    watts: Watts,
    run: &RunRecord,
) -> (KilowattHours, Money, KgCo2e) {
    let zone = &sc.zones[run.zone];
    let per_slot =
        KilowattHours(f64::from(gpus) * watts.0 / 1000.0 * sc.grid.slot_hours().0 * zone.pue);
    let (a, b) = (run.start as usize, run.end as usize);
    let price_sum = PricePerMwh(zone.price[a..b].iter().map(|p| p.0).sum());
    let carbon_sum = GramsPerKwh(zone.carbon[a..b].iter().map(|c| c.0).sum());
    (
        KilowattHours(per_slot.0 * (b - a) as f64),
        per_slot * price_sum,
        per_slot * carbon_sum,
    )
}

/// Prices a replay.
pub fn totals(sc: &Scenario, replay: &Replay) -> Totals {
    let mut t = Totals::default();
    for (job, outcome) in sc.jobs.iter().zip(&replay.outcomes) {
        let Outcome::Done(runs) = outcome else {
            t.unscheduled += 1;
            continue;
        };
        t.scheduled += 1;
        let profile = &sc.profiles[job.profile];
        for r in runs {
            let (kwh, cost, kg) = price_run(sc, job.gpus, profile.points[r.point].draw, r);
            t.kwh += kwh;
            t.cost += cost;
            t.carbon_kg += kg;
            t.runs += 1;
        }
        let deadline = sc.grid.position(job.deadline);
        if runs
            .last()
            .is_some_and(|r| f64::from(r.end) > deadline + 1e-6)
        {
            t.late += 1;
        }
    }
    t.objective = t.cost + t.carbon_kg * sc.carbon_price;
    t
}
