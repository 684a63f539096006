//! A job's plan as the operator sees it, from the state after a plan: its phase and next (or
//! current) run, the reason in words (a hold, power limits that could not be applied), the
//! estimates of cost, carbon and saving, what was metered so far, and whether degraded signals
//! are behind it.

use chrono::{DateTime, Utc};

use super::frame::Frame;
use super::state::{Decision, Ending, LiveJob};
use super::store::CommittedRun;
use super::{Phase, PlanView, Settings, metering, power};
use crate::planner::progress;
use crate::units::{KgCo2e, Money, Slot, Watts};

/// Estimates are rounded to the cent and the gram, so that a plan's revision moves when the
/// plan does, not when a price moves in its fifth decimal.
const CENTS: f64 = 100.0;
const GRAMS_PER_KG: f64 = 1000.0;

/// The next run of a queued (or running preemptible) job, on the frame's grid.
#[derive(Debug, Clone)]
struct NextRun {
    start: Slot,
    zone: usize,
    point: usize,
    nodes: Vec<(usize, u32)>,
}

/// A job's plan after `decision`; `None` to keep the current one (a queued job the frame did
/// not include, because it changed after the frame was built).
pub(super) fn view_of(
    frame: &Frame,
    settings: &Settings,
    job: &LiveJob,
    decision: Option<Decision>,
    queued: bool,
    considered: bool,
    wall: DateTime<Utc>,
) -> Option<PlanView> {
    let spec = &job.spec;
    let profile = frame.resolve(spec).ok().map(|(_, p)| p);
    let point_of = |limit: Watts| {
        profile.and_then(|p| {
            frame.profiles[p]
                .points
                .iter()
                .position(|q| q.power_limit == limit)
        })
    };
    let mut v = job.view.clone();
    v.start = None;
    v.end = None;
    v.zone.clear();
    v.nodes.clear();
    v.power_limit = None;
    let show_run = |v: &mut PlanView, r: &CommittedRun| {
        v.start = Some(r.start);
        v.end = Some(r.end);
        v.zone.clone_from(&r.zone);
        v.nodes.clone_from(&r.nodes);
        v.power_limit = Some(r.power_limit);
    };
    let mut next: Option<NextRun> = None;
    let running = job.runs.iter().find(|r| r.start <= wall && r.end > wall);
    if let Some((ending, _)) = &job.ending {
        v.phase = Phase::Done;
        v.reason = match ending {
            Ending::Succeeded => "succeeded".to_owned(),
            Ending::Failed(m) if m.is_empty() => "failed".to_owned(),
            Ending::Failed(m) => format!("failed: {m}"),
            Ending::Cancelled => "cancelled".to_owned(),
        };
        if let Some(r) = job.runs.last() {
            show_run(&mut v, r);
        }
    } else if let Some(r) = running {
        v.phase = Phase::Run;
        v.reason = "running".to_owned();
        show_run(&mut v, r);
        let more = spec.preemptible
            && !progress::is_done(
                spec.work,
                settings.checkpoint_overhead,
                job.progress_runs().len(),
                job.done(),
            );
        if let (true, Some(zone), Some(point)) =
            (more, frame.zone(&r.zone), point_of(r.power_limit))
        {
            next = Some(NextRun {
                start: frame.slot_of(r.end),
                zone,
                point,
                nodes: Vec::new(),
            });
        }
    } else if queued {
        if !considered {
            return None;
        }
        v.phase = if job.progress_runs().is_empty() {
            Phase::Planned
        } else {
            Phase::Suspend
        };
        match decision {
            Some(Decision::Next {
                start,
                zone,
                point,
                nodes,
            }) => {
                let n = NextRun {
                    start,
                    zone,
                    point,
                    nodes,
                };
                v.reason = waiting_reason(frame, job, &n);
                next = Some(n);
            }
            Some(Decision::Rejected(r)) => {
                v.phase = Phase::Rejected;
                v.reason = r;
            }
            Some(Decision::NotStarted(r)) => v.reason = r,
            Some(Decision::Held(r)) => {
                v.phase = Phase::Planned;
                v.reason = r;
            }
            Some(Decision::Started) | None => {
                v.reason = "no placement before the deadline yet: waiting for capacity, or for \
                            prices within the cap"
                    .to_owned();
            }
        }
    } else {
        v.phase = Phase::Run;
        v.reason = "the planned runs are over; waiting for the job's end to be reported".to_owned();
        if let Some(r) = job.runs.last() {
            show_run(&mut v, r);
        }
    }
    if let (Some(n), Some(p)) = (&next, profile)
        && matches!(v.phase, Phase::Planned | Phase::Suspend)
    {
        let pt = frame.profiles[p].points[n.point];
        let left = work_left(settings, job);
        v.start = Some(frame.grid.instant(n.start));
        v.end = Some(
            frame
                .grid
                .instant(n.start + frame.slots_for(left, pt.throughput)),
        );
        v.zone.clone_from(&frame.zones[n.zone].name);
        v.nodes = n
            .nodes
            .iter()
            .map(|&(i, g)| (frame.nodes[i].name.clone(), g))
            .collect();
        v.power_limit = Some(pt.power_limit);
    }
    if v.phase == Phase::Run && running.is_some() {
        let watts = v.power_limit.map(|w| w.0.round() as u32);
        v.reason.push_str(&power::note(watts, &job.power_failures));
    }
    estimate(frame, settings, job, profile, next.as_ref(), &mut v);
    v.metered = metering::totals(&job.metered);
    Some(v)
}

/// Work a job still owes if its next run is its last.
fn work_left(settings: &Settings, job: &LiveJob) -> crate::units::Hours {
    progress::work_left(
        job.spec.work,
        settings.checkpoint_overhead,
        job.progress_runs().len(),
        job.done(),
    )
}

/// Cost, emissions and "past what is known" of a job's next run: its remaining work from
/// `n.start` in one stretch at the run's power point (PUE applied).
fn next_window(
    frame: &Frame,
    settings: &Settings,
    job: &LiveJob,
    profile: usize,
    n: &NextRun,
) -> (Money, KgCo2e, bool) {
    let pt = frame.profiles[profile].points[n.point];
    let b = n.start + frame.slots_for(work_left(settings, job), pt.throughput);
    frame.window(n.zone, job.spec.gpus(), pt.draw, n.start, b)
}

/// The estimated cost of a job's next run starting at `start` in zone `zone` at power point
/// `point` (all on the frame); `None` when the job has no profile in the frame.
pub(super) fn next_cost(
    frame: &Frame,
    settings: &Settings,
    job: &LiveJob,
    start: Slot,
    zone: usize,
    point: usize,
) -> Option<Money> {
    let (_, profile) = frame.resolve(&job.spec).ok()?;
    frame.profiles[profile].points.get(point)?;
    let n = NextRun {
        start,
        zone,
        point,
        nodes: Vec::new(),
    };
    Some(next_window(frame, settings, job, profile, &n).0)
}

/// Why a queued job waits for its next run.
fn waiting_reason(frame: &Frame, job: &LiveJob, n: &NextRun) -> String {
    let when = frame.grid.instant(n.start).format("%Y-%m-%dT%H:%MZ");
    let earliest = frame
        .grid
        .first_slot_at_or_after(job.spec.submit)
        .max(frame.now);
    if job.progress_runs().is_empty() {
        return if n.start <= earliest {
            format!("starts at {when}")
        } else {
            format!("waiting for a cheaper window: starts at {when}")
        };
    }
    let last = job.runs.last().and_then(|r| frame.zone(&r.zone));
    let over_price = job.spec.price_cap.zip(last).and_then(|(cap, z)| {
        let price = frame.zones[z].price.get(frame.now as usize)?;
        (price.0 > cap.0).then(|| {
            format!(
                "the price in {} ({:.2}/MWh) is above the job's cap ({:.2}); ",
                frame.zones[z].name, price.0, cap.0
            )
        })
    });
    let over_carbon = job.spec.carbon_cap.zip(last).and_then(|(cap, z)| {
        let carbon = frame.zones[z].carbon.get(frame.now as usize)?;
        (carbon.0 > cap.0).then(|| {
            format!(
                "the carbon intensity in {} ({:.2} gCO2e/kWh) is above the job's cap ({:.2}); ",
                frame.zones[z].name, carbon.0, cap.0
            )
        })
    });
    format!(
        "{}{}suspended until its next run at {when}",
        over_price.unwrap_or_default(),
        over_carbon.unwrap_or_default()
    )
}

/// Fills in the estimates of a job: its committed runs and its next run at the frame's
/// signals (known, then estimated), and the saving against running it at full power from its
/// submission in the same zone; flags degraded signals.
fn estimate(
    frame: &Frame,
    settings: &Settings,
    job: &LiveJob,
    profile: Option<usize>,
    next: Option<&NextRun>,
    v: &mut PlanView,
) {
    let spec = &job.spec;
    let mut cost = Money(0.0);
    let mut carbon = KgCo2e(0.0);
    let mut estimated_past: Option<DateTime<Utc>> = None;
    let draw_at = |limit: Watts| {
        profile
            .and_then(|p| {
                frame.profiles[p]
                    .points
                    .iter()
                    .find(|q| q.power_limit == limit)
            })
            // An unknown limit draws at most the limit itself.
            .map_or(limit, |q| q.draw)
    };
    for r in &job.runs {
        if let Some(z) = frame.zone(&r.zone) {
            let gpus = r.nodes.iter().map(|n| n.1).sum();
            let (c, k, past) = frame.window(
                z,
                gpus,
                draw_at(r.power_limit),
                frame.slot_of(r.start),
                frame.slot_of(r.end),
            );
            cost += c;
            carbon += k;
            if past {
                estimated_past = Some(frame.known_until(z));
            }
        }
    }
    if let (Some(n), Some(p)) = (next, profile) {
        let (c, k, past) = next_window(frame, settings, job, p, n);
        cost += c;
        carbon += k;
        if past {
            estimated_past = Some(frame.known_until(n.zone));
        }
    }
    let zone = job
        .runs
        .first()
        .and_then(|r| frame.zone(&r.zone))
        .or(next.map(|n| n.zone));
    let mut saving = Money(0.0);
    if let (Some(z), Some(p)) = (zone, profile) {
        let full = frame.profiles[p].points[frame.profiles[p].full_power()];
        let a = frame.grid.first_slot_at_or_after(spec.submit);
        let b = a + frame.slots_for(spec.work, full.throughput);
        saving = frame.window(z, spec.gpus(), full.draw, a, b).0 - cost;
    }
    v.estimated_cost = Money(round(cost.0, CENTS));
    v.estimated_carbon = KgCo2e(round(carbon.0, GRAMS_PER_KG));
    v.estimated_saving = Money(round(saving.0, CENTS));
    let plan_zone = frame.zone(&v.zone).or(zone);
    let degraded = plan_zone.and_then(|z| frame.zones[z].degraded.as_deref());
    v.signals_degraded = degraded.is_some() || estimated_past.is_some();
    if let Some(d) = degraded {
        v.reason.push_str(&format!("; signals degraded: {d}"));
    }
    if let Some(t) = estimated_past {
        v.reason.push_str(&format!(
            "; planned on estimated signals after {}",
            t.format("%Y-%m-%dT%H:%MZ")
        ));
    }
}

fn round(x: f64, per_unit: f64) -> f64 {
    (x * per_unit).round() / per_unit
}
