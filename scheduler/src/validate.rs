//! Checks a schedule against its scenario: every rule of the spec (`docs/scenario.md`,
//! "Rules"), independent of how the schedule was made. The simulator's tests use it, and
//! `offpeak check` exposes it; each violation is a sentence naming the job or node.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::scenario::Scenario;
use crate::schedule::Schedule;

/// Work may fall short of the need by this much (hours), as in the reference checker.
const WORK_TOLERANCE_H: f64 = 1e-4;
/// A time counts as a slot boundary within this many slots.
const BOUNDARY_EPS: f64 = 1e-6;

fn slot_of(sc: &Scenario, s: &str) -> Result<usize, String> {
    let t: DateTime<Utc> = DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("`{s}` is not an RFC 3339 time ({e})"))?
        .with_timezone(&Utc);
    let x = sc.grid.position(t);
    if (x - x.round()).abs() > BOUNDARY_EPS || x < -BOUNDARY_EPS {
        return Err(format!("{s} is not a slot boundary of the scenario"));
    }
    Ok(x.round() as usize)
}

/// Lists every rule the schedule breaks (empty: valid).
pub fn validate(sc: &Scenario, schedule: &Schedule) -> Vec<String> {
    let mut errors = Vec::new();
    let jobs: HashMap<&str, usize> = sc
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.id.as_str(), i))
        .collect();
    let nodes: HashMap<&str, usize> = sc
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let n_slots = sc.n_slots as usize;
    let mut usage = vec![vec![0u32; n_slots]; sc.nodes.len()];
    let mut seen: HashSet<&str> = HashSet::new();
    let slot_h = sc.grid.slot_hours().0;
    for sj in &schedule.jobs {
        let Some(&ji) = jobs.get(sj.id.as_str()) else {
            errors.push(format!("{}: not a job of this scenario", sj.id));
            continue;
        };
        if !seen.insert(sj.id.as_str()) {
            errors.push(format!("{}: listed twice", sj.id));
            continue;
        }
        let job = &sc.jobs[ji];
        let profile = &sc.profiles[job.profile];
        if sj.runs.is_empty() {
            errors.push(format!("{}: no runs", job.id));
        }
        if !job.preemptible && sj.runs.len() > 1 {
            errors.push(format!(
                "{}: not preemptible but has {} runs",
                job.id,
                sj.runs.len()
            ));
        }
        let earliest = sc.earliest_slot(job) as usize;
        let mut work = 0.0;
        let mut prev_end = 0usize;
        let mut runs: Vec<_> = sj.runs.iter().collect();
        runs.sort_by(|a, b| a.start.cmp(&b.start));
        for r in runs {
            let (a, b) = match (slot_of(sc, &r.start), slot_of(sc, &r.end)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    errors.push(format!("{}: {e}", job.id));
                    continue;
                }
            };
            if b <= a {
                errors.push(format!("{}: empty or reversed run at {}", job.id, r.start));
                continue;
            }
            if a < earliest {
                errors.push(format!(
                    "{}: runs at {}, before it was submitted",
                    job.id, r.start
                ));
            }
            if a < prev_end {
                errors.push(format!("{}: runs overlap", job.id));
            }
            prev_end = b;
            if b > n_slots {
                errors.push(format!("{}: runs past the end of the signals", job.id));
                continue;
            }
            let Some(zone) = sc.zones.iter().position(|z| z.name == r.zone) else {
                errors.push(format!("{}: unknown zone {}", job.id, r.zone));
                continue;
            };
            let Some(pt) = profile
                .points
                .iter()
                .find(|p| p.power_limit.0 == f64::from(r.power_limit_watts))
            else {
                errors.push(format!(
                    "{}: power limit {} W is not a point of profile {}",
                    job.id, r.power_limit_watts, profile.name
                ));
                continue;
            };
            let placed: u32 = r.nodes.iter().map(|n| n.gpus).sum();
            if placed != job.gpus {
                errors.push(format!(
                    "{}: run at {} places {placed} GPUs, needs {}",
                    job.id, r.start, job.gpus
                ));
            }
            let per_node = sc
                .nodes
                .iter()
                .find(|n| n.zone == zone && n.accelerator == job.accelerator)
                .map_or(8, |n| n.gpus);
            if r.nodes.len() > job.gpus.div_ceil(per_node) as usize {
                errors.push(format!(
                    "{}: spread over {} nodes, {} would do",
                    job.id,
                    r.nodes.len(),
                    job.gpus.div_ceil(per_node)
                ));
            }
            for share in &r.nodes {
                match nodes.get(share.node.as_str()) {
                    Some(&n)
                        if sc.nodes[n].zone == zone
                            && sc.nodes[n].accelerator == job.accelerator =>
                    {
                        for u in &mut usage[n][a..b] {
                            *u += share.gpus;
                        }
                    }
                    _ => errors.push(format!(
                        "{}: node {} is not a {} node of zone {}",
                        job.id, share.node, sc.accelerators[job.accelerator], r.zone
                    )),
                }
            }
            if let Some(cap) = job.price_cap
                && sc.zones[zone].price[a..b]
                    .iter()
                    .any(|p| p.0 > cap.0 + 1e-6)
            {
                errors.push(format!(
                    "{}: runs while the price is above its cap {}",
                    job.id, cap.0
                ));
            }
            work += (b - a) as f64 * slot_h * pt.throughput;
        }
        let need = job.work.0 + sj.runs.len().saturating_sub(1) as f64 * sc.checkpoint_overhead.0;
        if work + WORK_TOLERANCE_H < need {
            errors.push(format!(
                "{}: does {work:.3} h of work, needs {need:.3} h",
                job.id
            ));
        }
    }
    for (n, u) in usage.iter().enumerate() {
        if let Some(s) = u.iter().position(|&g| g > sc.nodes[n].gpus) {
            errors.push(format!(
                "node {}: {} GPUs in use at slot {s}, it has {}",
                sc.nodes[n].name, u[s], sc.nodes[n].gpus
            ));
        }
    }
    let unscheduled: HashSet<&str> = schedule.unscheduled.iter().map(|u| u.id.as_str()).collect();
    for j in &sc.jobs {
        let (s, u) = (
            seen.contains(j.id.as_str()),
            unscheduled.contains(j.id.as_str()),
        );
        if !s && !u {
            errors.push(format!(
                "{}: neither scheduled nor listed as unscheduled",
                j.id
            ));
        } else if s && u {
            errors.push(format!("{}: both scheduled and unscheduled", j.id));
        }
    }
    errors
}
