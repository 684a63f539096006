//! Why a job cannot be placed, in words a user understands.
//!
//! Caps: a job may have a price cap (currency/MWh) and a carbon cap (gCO2e/kWh); a run may only
//! use slots within both. When no window before the deadline keeps a cap, the job is rejected
//! with the lowest value of that cap that would do, the other cap kept (or, when the other cap
//! alone already leaves too little time, the lowest value with the other cap dropped).

use super::context::{Context, slots_needed, within_cap};
use super::snapshot::{Pending, Snapshot};

/// The signal a cap limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capped {
    /// The energy price, currency/MWh.
    Price,
    /// The grid's carbon intensity, gCO2e/kWh.
    Carbon,
}

/// If no window before the deadline meets the job's caps (capacity ignored), explains it
/// with the lowest cap that would do. Judged only once every slot up to the deadline is known,
/// because before that a later forecast may still open a window.
pub fn cap_unmeetable(ctx: &Context, snap: &Snapshot<'_>, job: &Pending) -> Option<String> {
    if ctx.deadline(job) > ctx.known {
        return None;
    }
    cap_unmeetable_expected(ctx, snap, job)
}

/// As [`cap_unmeetable`], but on estimated signals too where the deadline lies beyond the
/// published ones: the job should wait for better news rather than start and run late.
pub fn cap_unmeetable_expected(
    ctx: &Context,
    snap: &Snapshot<'_>,
    job: &Pending,
) -> Option<String> {
    let dl = ctx.deadline(job);
    let unmet = |signal: Capped, cap: f64| {
        let other_set = match signal {
            Capped::Price => job.carbon_cap.is_some(),
            Capped::Carbon => job.price_cap.is_some(),
        };
        let lowest = lowest_feasible(ctx, snap, job, dl, signal, true).or_else(|| {
            other_set
                .then(|| lowest_feasible(ctx, snap, job, dl, signal, false))
                .flatten()
        })?;
        (lowest > cap).then_some(lowest)
    };
    if let Some(cap) = job.price_cap
        && let Some(lowest) = unmet(Capped::Price, cap.0)
    {
        return Some(format!(
            "price cap {:.2} {cur}/MWh cannot be met before the deadline; the lowest feasible cap is {lowest:.2}",
            cap.0,
            cur = snap.currency
        ));
    }
    if let Some(cap) = job.carbon_cap
        && let Some(lowest) = unmet(Capped::Carbon, cap.0)
    {
        return Some(format!(
            "carbon cap {:.2} gCO2e/kWh cannot be met before the deadline; the lowest feasible cap is {lowest:.2}",
            cap.0
        ));
    }
    None
}

/// The lowest price cap under which the job could still finish by relative slot `dl` (its
/// carbon cap kept), or `None` if even an unlimited price cap leaves too little time.
pub fn lowest_feasible_cap(
    ctx: &Context,
    snap: &Snapshot<'_>,
    job: &Pending,
    dl: usize,
) -> Option<f64> {
    lowest_feasible(ctx, snap, job, dl, Capped::Price, true)
}

/// The lowest cap on `signal` under which the job could still finish by relative slot `dl`,
/// with the job's cap on the other signal kept (`keep_other`) or dropped; `None` if even an
/// unlimited cap leaves too little time.
pub fn lowest_feasible(
    ctx: &Context,
    snap: &Snapshot<'_>,
    job: &Pending,
    dl: usize,
    signal: Capped,
    keep_other: bool,
) -> Option<f64> {
    let first = ctx.first(job);
    if dl <= first {
        return None;
    }
    let (series, other, other_cap) = match signal {
        Capped::Price => (&ctx.price, &ctx.carbon, job.carbon_cap.map(|c| c.0)),
        Capped::Carbon => (&ctx.carbon, &ctx.price, job.price_cap.map(|c| c.0)),
    };
    let other_cap = other_cap.filter(|_| keep_other);
    let usable = |z: usize, r: usize| other_cap.is_none_or(|c| within_cap(other[z][r], c));
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
            .filter_map(|r| {
                zones
                    .iter()
                    .filter(|&&z| usable(z, r))
                    .map(|&z| series[z][r])
                    .reduce(f64::min)
            })
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
                    if other_cap.is_some() && !(a..a + d).all(|r| usable(z, r)) {
                        continue;
                    }
                    keep(series[z][a..a + d].iter().copied().fold(f64::MIN, f64::max));
                }
            }
        }
    }
    best
}
