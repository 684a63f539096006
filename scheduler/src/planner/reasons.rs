//! Why a job cannot be placed, in words a user understands.

use super::context::{Context, slots_needed};
use super::snapshot::{Pending, Snapshot};

/// If no window before the deadline meets the job's price cap (capacity ignored), explains it
/// with the lowest cap that would do. Judged only once every slot up to the deadline is known,
/// because before that a later forecast may still open a window.
pub fn cap_unmeetable(ctx: &Context, snap: &Snapshot<'_>, job: &Pending) -> Option<String> {
    if ctx.deadline(job) > ctx.known {
        return None;
    }
    cap_unmeetable_expected(ctx, snap, job)
}

/// As [`cap_unmeetable`], but on estimated prices too where the deadline lies beyond the
/// published ones: the job should wait for better news rather than start and run late.
pub fn cap_unmeetable_expected(
    ctx: &Context,
    snap: &Snapshot<'_>,
    job: &Pending,
) -> Option<String> {
    let cap = job.price_cap?.0;
    let dl = ctx.deadline(job);
    let lowest = lowest_feasible_cap(ctx, snap, job, dl)?;
    if lowest <= cap {
        return None;
    }
    Some(format!(
        "price cap {cap:.2} {cur}/MWh cannot be met before the deadline; the lowest feasible cap is {lowest:.2}",
        cur = snap.currency
    ))
}

/// The lowest price cap under which the job could still finish by relative slot `dl`, or `None`
/// if even an unlimited cap leaves too little time.
pub fn lowest_feasible_cap(
    ctx: &Context,
    snap: &Snapshot<'_>,
    job: &Pending,
    dl: usize,
) -> Option<f64> {
    let first = ctx.first(job);
    if dl <= first {
        return None;
    }
    let profile = &snap.profiles[job.profile];
    let zones: Vec<usize> = ctx
        .pools_for(job.accelerator)
        .map(|p| ctx.pools[p].zone)
        .collect();
    let mut best: Option<f64> = None;
    let mut keep = |v: f64| best = Some(best.map_or(v, |b: f64| b.min(v)));
    if job.preemptible {
        // the fastest point needs the fewest slots; the cap must admit that many (overheads
        // of extra runs can only raise it)
        let thr = profile
            .points
            .iter()
            .map(|p| p.throughput)
            .fold(0.0, f64::max);
        let n = slots_needed(job.work_left.0, thr, ctx.slot_hours);
        let mut cheapest: Vec<f64> = (first..dl)
            .filter_map(|r| zones.iter().map(|&z| ctx.price[z][r]).reduce(f64::min))
            .collect();
        if cheapest.len() >= n {
            cheapest.sort_by(f64::total_cmp);
            keep(cheapest[n - 1]);
        }
    } else {
        for &z in &zones {
            for pt in &profile.points {
                let d = slots_needed(job.work_left.0, pt.throughput, ctx.slot_hours);
                if first + d > dl {
                    continue;
                }
                for a in first..=dl - d {
                    keep(
                        ctx.price[z][a..a + d]
                            .iter()
                            .copied()
                            .fold(f64::MIN, f64::max),
                    );
                }
            }
        }
    }
    best
}
