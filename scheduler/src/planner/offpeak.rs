//! The offpeak policy: every queued job gets its cheapest placement in time, zone and power
//! limit, in order of urgency, against the capacity the jobs before it left; what starts now is
//! started, the rest is re-planned at the next instant with fresher signals.
//!
//! - A non-preemptible job gets one window: the (zone, power limit, start) whose objective
//!   over the window is lowest among those that finish by the deadline.
//! - A preemptible job gets a set of slots: the cheapest slots before its deadline at the
//!   power limit that makes the whole set cheapest, each run after the first paying the
//!   checkpoint overhead. Only the first run is ever started; the rest is re-planned.
//! - A job that cannot finish in time is placed to finish as early as it can (late), unless
//!   its price or carbon cap is what stops it, in which case it is rejected with the lowest
//!   feasible cap. A run only uses slots within both caps.
//! - A job with its own carbon price is weighed at it ([`Context::job_units`]).
//!
//! Capacity while planning is fluid (free GPUs per pool and slot); nodes are picked for real
//! when a run starts.

use super::Policy;
use super::context::{Context, UnitsRef, WORK_TOLERANCE_H, is_capped, slots_needed};
use super::reasons;
use super::snapshot::{Intent, Pending, Plan, Rejection, Snapshot, Start};
use crate::units::Money;

/// Preference for the earlier of two equally cheap placements, per slot of delay: far below
/// any real difference in cost (a cent is 1e-2), enough to make ties deterministic and to
/// take the certain present over an estimated future of the same value.
const DELAY_TIE_BREAK: f64 = 1e-9;

/// Preemptible plans aim to end this long before the deadline when they can: a run cut at the
/// edge of the published prices, or a later re-plan that splits the job once more, costs a
/// checkpoint overhead the plan did not count, and the margin absorbs it. (Non-preemptible jobs
/// get no margin: their slack is what lets them run at an efficient power limit.)
const DEADLINE_MARGIN_HOURS: f64 = 0.5;

/// Share of the time left before the deadline that a preemptible plan keeps free as well:
/// the further away the deadline, the more arrivals and fixed runs can crowd the slots it
/// counts on.
const DEADLINE_MARGIN_SHARE: f64 = MARGIN_SHARE;
const MARGIN_SHARE: f64 = 0.3;

/// Margin in slots before relative deadline `dl` for a preemptible plan.
fn margin_slots(slot_hours: f64, dl: usize, known: usize) -> usize {
    let fixed = (DEADLINE_MARGIN_HOURS / slot_hours).ceil() as usize;
    fixed + (dl.saturating_sub(known) as f64 * DEADLINE_MARGIN_SHARE).round() as usize
}

/// The optimising policy.
#[derive(Debug, Clone, Default)]
pub struct Offpeak;

/// A contiguous piece of a placement, on one pool at one power limit (relative slots a..b).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Block {
    pool: usize,
    point: usize,
    a: usize,
    b: usize,
}

#[derive(Debug, Clone)]
struct Placement {
    blocks: Vec<Block>,
    objective: f64,
}

impl Policy for Offpeak {
    fn name(&self) -> &'static str {
        "offpeak"
    }

    fn plan(&self, snap: &Snapshot<'_>) -> Plan {
        let mut ctx = Context::new(snap);
        let mut plan = Plan::default();
        for qi in urgency_order(&ctx, snap) {
            self.place(&mut ctx, snap, qi, &mut plan);
        }
        plan
    }
}

impl Offpeak {
    /// Places queued job `qi` into a plan under way: against the capacity `ctx` has left after
    /// the jobs placed before it. Adds its start, intent or rejection to `plan`. Used job by
    /// job by [`Policy::plan`], and on its own to add one new job to an existing plan.
    pub fn place(&self, ctx: &mut Context, snap: &Snapshot<'_>, qi: usize, plan: &mut Plan) {
        let job = &snap.queue[qi];
        let pools: Vec<usize> = ctx
            .pools_for(job.accelerator)
            .filter(|&p| ctx.pools[p].total >= job.gpus)
            .collect();
        if pools.is_empty() {
            let largest = ctx
                .pools_for(job.accelerator)
                .map(|p| ctx.pools[p].total)
                .max()
                .unwrap_or(0);
            plan.rejections.push(Rejection {
                pending: qi,
                reason: format!(
                    "needs {} GPUs together in one zone; the largest zone has {largest}",
                    job.gpus
                ),
            });
            return;
        }
        let dl = ctx.deadline(job);
        let margin = if job.preemptible {
            margin_slots(ctx.slot_hours, dl, ctx.known)
        } else {
            0
        };
        let own = ctx.job_units(job);
        let units = own.as_ref().map_or_else(|| ctx.units(), |u| u.view());
        let place = |dl: usize| {
            if job.preemptible {
                place_slots(ctx, snap, units, job, &pools, dl)
            } else {
                place_window(ctx, snap, units, job, &pools, dl)
            }
        };
        let on_time = place(dl.saturating_sub(margin)).or_else(|| place(dl));
        // a job whose cap the known prices cannot meet is rejected rather than run late,
        // unless it has run already (its energy is spent; it finishes, late)
        if on_time.is_none()
            && job.runs_done == 0
            && let Some(reason) = reasons::cap_unmeetable_expected(ctx, snap, job)
        {
            if dl <= ctx.known {
                plan.rejections.push(Rejection {
                    pending: qi,
                    reason,
                });
            }
            return;
        }
        let placement = on_time.or_else(|| {
            if job.preemptible {
                late_slots(ctx, snap, units, job, &pools)
            } else {
                late_window(ctx, snap, units, job, &pools)
            }
        });
        let Some(p) = placement else {
            return;
        };
        let first = p.blocks[0];
        let mut first_nodes = None;
        for (bi, b) in p.blocks.iter().enumerate() {
            let got = ctx.reserve(b.pool, job.gpus, b.a, b.b);
            let failed = got.is_none();
            if bi == 0 {
                first_nodes = got;
            }
            if failed {
                // no single set of nodes holds the whole block: reserve it slot by slot
                for r in b.a..b.b {
                    let _ = ctx.reserve(b.pool, job.gpus, r, r + 1);
                }
            }
        }
        if first.a == 0 {
            let end = if job.preemptible {
                first.b.min(ctx.known.max(1))
            } else {
                first.b
            };
            let pool = &ctx.pools[first.pool];
            if let Some(assignment) = first_nodes {
                plan.starts.push(Start {
                    pending: qi,
                    zone: pool.zone,
                    point: first.point,
                    end: snap.now + end as u32,
                    nodes: assignment,
                });
                return;
            }
        }
        plan.intents.push(Intent {
            pending: qi,
            start: snap.now + first.a as u32,
            zone: ctx.pools[first.pool].zone,
            point: first.point,
            objective: Money(p.objective),
            nodes: first_nodes.unwrap_or_default(),
        });
    }
}

/// Slack (hours a job can still wait) below which it is deadline-critical and plans first.
const CRITICAL_SLACK_HOURS: f64 = 2.0;

/// Deadline-critical jobs first (least slack first), then the rest by slack relative to their
/// length: a long job with a day of slack has fewer cheap windows to choose from than a short
/// job with the same slack, so it chooses first.
fn urgency_order(ctx: &Context, snap: &Snapshot<'_>) -> Vec<usize> {
    let critical = (CRITICAL_SLACK_HOURS / ctx.slot_hours).round() as i64;
    let mut keyed: Vec<((u8, i64), u32, usize)> = snap
        .queue
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let thr = snap.profiles[j.profile]
                .points
                .iter()
                .map(|p| p.throughput)
                .fold(0.0, f64::max);
            let d = slots_needed(j.work_left.0, thr, ctx.slot_hours) as i64;
            let slack = ctx.deadline(j) as i64 - ctx.first(j) as i64 - d;
            let key = if slack <= critical {
                (0, slack)
            } else {
                (1, slack * 1000 / d.max(1))
            };
            (key, j.earliest, i)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, _, i)| i).collect()
}

/// Per relative slot: is the pool unusable for this job (too few GPUs, or price or carbon
/// intensity above its cap)? Returned as prefix counts so any window is checked in O(1).
fn blocked_prefix(ctx: &Context, job: &Pending, pool: usize, to: usize) -> Vec<u32> {
    let zone = ctx.pools[pool].zone;
    let capped = is_capped(job);
    let mut pre = Vec::with_capacity(to + 1);
    let mut acc = 0u32;
    pre.push(0);
    for r in 0..to {
        let over_cap = capped && !ctx.within_caps(job, zone, r);
        acc += u32::from(!ctx.fits(pool, job.gpus, r) || over_cap);
        pre.push(acc);
    }
    pre
}

/// The cheapest single window of a non-preemptible job that ends by relative slot `dl`.
fn place_window(
    ctx: &Context,
    snap: &Snapshot<'_>,
    units: UnitsRef<'_>,
    job: &Pending,
    pools: &[usize],
    dl: usize,
) -> Option<Placement> {
    window_search(ctx, snap, units, job, pools, dl, false)
}

/// The window of a non-preemptible job that ends first (for a job that will be late).
fn late_window(
    ctx: &Context,
    snap: &Snapshot<'_>,
    units: UnitsRef<'_>,
    job: &Pending,
    pools: &[usize],
) -> Option<Placement> {
    window_search(ctx, snap, units, job, pools, ctx.horizon, true)
}

fn window_search(
    ctx: &Context,
    snap: &Snapshot<'_>,
    units: UnitsRef<'_>,
    job: &Pending,
    pools: &[usize],
    to: usize,
    earliest_end: bool,
) -> Option<Placement> {
    let first = ctx.first(job);
    let profile = &snap.profiles[job.profile];
    let lookahead = snap.lookahead as usize;
    // key: (end if earliest_end else 0, cost + tie-break)
    let mut best: Option<((usize, f64), Block, f64)> = None;
    for &pi in pools {
        let zone = ctx.pools[pi].zone;
        let blocked = blocked_prefix(ctx, job, pi, to);
        for (i, pt) in profile.points.iter().enumerate() {
            let d = slots_needed(job.work_left.0, pt.throughput, ctx.slot_hours);
            // a capped run that starts now must lie in published signals, when it can
            let verify_now = is_capped(job) && d <= lookahead && d > ctx.known;
            let mut a = first;
            while a + d <= to {
                let b = a + d;
                if blocked[b] - blocked[a] > 0 || (a == 0 && verify_now) {
                    a += 1;
                    continue;
                }
                let cost = units.objective(zone, job.gpus, pt.draw.0, a, b, ctx.slot_hours);
                let key = (
                    if earliest_end { b } else { 0 },
                    cost + DELAY_TIE_BREAK * a as f64,
                );
                if best
                    .as_ref()
                    .is_none_or(|(k, _, _)| key.0 < k.0 || (key.0 == k.0 && key.1 < k.1))
                {
                    best = Some((
                        key,
                        Block {
                            pool: pi,
                            point: i,
                            a,
                            b,
                        },
                        cost,
                    ));
                }
                if earliest_end {
                    // later windows of this point only end later
                    break;
                }
                a += 1;
            }
        }
    }
    best.map(|(_, block, cost)| Placement {
        blocks: vec![block],
        objective: cost,
    })
}

/// Slots of margin around a proxy selection within which "now" counts as a candidate, so the
/// exact search runs whenever the job might start now.
const NOW_MARGIN_SLOTS: usize = 2;

/// Per pool and relative slot up to `to`: objective per kWh where the job could run, +inf where
/// it cannot (before it may start, too few GPUs free, price or intensity above its cap).
fn usable_units(
    ctx: &Context,
    units: UnitsRef<'_>,
    job: &Pending,
    pools: &[usize],
    to: usize,
) -> Vec<Vec<f64>> {
    let first = ctx.first(job);
    let capped = is_capped(job);
    pools
        .iter()
        .map(|&p| {
            let zone = ctx.pools[p].zone;
            (0..to)
                .map(|r| {
                    let usable = r >= first
                        && ctx.fits(p, job.gpus, r)
                        && (!capped || ctx.within_caps(job, zone, r));
                    if usable {
                        units.unit[zone][r]
                    } else {
                        f64::INFINITY
                    }
                })
                .collect()
        })
        .collect()
}

/// Points that no other point beats on both speed and energy per unit of work.
fn efficient_points(profile: &crate::scenario::Profile) -> Vec<usize> {
    let pts = &profile.points;
    let epw = |i: usize| pts[i].draw.0 / pts[i].throughput;
    (0..pts.len())
        .filter(|&i| {
            !(0..pts.len()).any(|j| {
                j != i
                    && pts[j].throughput >= pts[i].throughput
                    && epw(j) <= epw(i)
                    && (pts[j].throughput > pts[i].throughput || epw(j) < epw(i) || j > i)
            })
        })
        .collect()
}

/// The best set of slots for a preemptible job.
///
/// A proxy first: the cheapest slots (best zone each) at each efficient power limit, ignoring
/// run overheads; it picks the limit and, when the job cannot start now anyway, is the
/// tentative placement. When "now" is among the candidates, [`segments`] decides exactly, at
/// the proxy's two best limits, with the overhead of every run counted.
fn place_slots(
    ctx: &Context,
    snap: &Snapshot<'_>,
    units: UnitsRef<'_>,
    job: &Pending,
    pools: &[usize],
    dl: usize,
) -> Option<Placement> {
    let first = ctx.first(job);
    let profile = &snap.profiles[job.profile];
    let overhead = snap.checkpoint_overhead.0;
    let work = job.work_left.0;
    let per_slot =
        |i: usize| f64::from(job.gpus) * profile.points[i].draw.0 / 1000.0 * ctx.slot_hours;
    let work_per_slot = |i: usize| profile.points[i].throughput * ctx.slot_hours;
    if dl > first {
        let unit = usable_units(ctx, units, job, pools, dl);
        let mut cands: Vec<(f64, usize, usize)> = (first..dl)
            .filter_map(|r| {
                (0..pools.len())
                    .filter(|&k| unit[k][r].is_finite())
                    .min_by(|&a, &b| unit[a][r].total_cmp(&unit[b][r]))
                    .map(|k| (unit[k][r], r, k))
            })
            .collect();
        cands.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        let mut prefix = Vec::with_capacity(cands.len() + 1);
        prefix.push(0.0);
        for c in &cands {
            prefix.push(prefix.last().copied().unwrap_or(0.0) + c.0);
        }
        let mut ranked: Vec<(f64, usize, usize)> = efficient_points(profile)
            .into_iter()
            .filter_map(|i| {
                let n = slots_needed(work, profile.points[i].throughput, ctx.slot_hours);
                (n <= cands.len()).then(|| (per_slot(i) * prefix[n], i, n))
            })
            .collect();
        ranked.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        if let Some(&(objective, i, n)) = ranked.first() {
            let window = (n + n / 2 + NOW_MARGIN_SLOTS).min(cands.len());
            let now_matters = first == 0 && cands[..window].iter().any(|c| c.1 == 0);
            if now_matters {
                let exact = ranked.iter().take(2).filter_map(|&(_, i, _)| {
                    let input = Segments {
                        unit: &unit,
                        pools,
                        from: first,
                        to: dl,
                        per_slot: per_slot(i),
                        work_per_slot: work_per_slot(i),
                        overhead,
                        point: i,
                    };
                    segments(&input, work)
                });
                if let Some(p) = exact.min_by(|a, b| a.objective.total_cmp(&b.objective)) {
                    return Some(p);
                }
            } else {
                let mut picked: Vec<(usize, usize)> =
                    cands[..n].iter().map(|c| (c.1, c.2)).collect();
                picked.sort_unstable();
                let mut blocks: Vec<Block> = Vec::new();
                for (r, k) in picked {
                    push_slot(&mut blocks, pools[k], i, r);
                }
                return Some(Placement { blocks, objective });
            }
        }
    }
    None
}

/// The earliest runs of a preemptible job at its fastest point (for a job that will be late).
fn late_slots(
    ctx: &Context,
    snap: &Snapshot<'_>,
    units: UnitsRef<'_>,
    job: &Pending,
    pools: &[usize],
) -> Option<Placement> {
    let profile = &snap.profiles[job.profile];
    let (i, pt) = profile
        .points
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.throughput.total_cmp(&y.1.throughput))?;
    let unit = usable_units(ctx, units, job, pools, ctx.horizon);
    let input = Segments {
        unit: &unit,
        pools,
        from: ctx.first(job),
        to: ctx.horizon,
        per_slot: f64::from(job.gpus) * pt.draw.0 / 1000.0 * ctx.slot_hours,
        work_per_slot: pt.throughput * ctx.slot_hours,
        overhead: snap.checkpoint_overhead.0,
        point: i,
    };
    earliest_runs(&input, job.work_left.0)
}

/// Input of [`segments`]: costs per pool and slot, the window, and the work a slot does.
struct Segments<'a> {
    unit: &'a [Vec<f64>],
    pools: &'a [usize],
    from: usize,
    to: usize,
    /// kWh-weighted factor: objective of one slot = per_slot × unit.
    per_slot: f64,
    work_per_slot: f64,
    overhead: f64,
    point: usize,
}

/// Bisection steps on the value of a slot of work: costs are in cents to tens of currency units,
/// and 40 halvings of that range resolve far below a cent.
const VALUE_BISECTION_STEPS: usize = 30;

/// Chooses runs (slots grouped by pool) that do `work` at the least objective, each run after
/// the first costing `overhead` of work. Lagrangian relaxation of the work constraint: for a
/// value `tau` of one slot of work, a dynamic programme over slots picks the runs that
/// maximise value minus cost (an overhead is worth `tau × overhead / work_per_slot`); `tau` is
/// bisected to the least value that gets the work done.
fn segments(s: &Segments<'_>, work: f64) -> Option<Placement> {
    if s.to <= s.from {
        return None;
    }
    let min_slots = slots_needed(work, 1.0, s.work_per_slot);
    if min_slots > s.to - s.from {
        return None;
    }
    let finite = |x: f64| x.is_finite();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for u in s
        .unit
        .iter()
        .flat_map(|u| u[s.from..s.to].iter().copied().filter(|x| finite(*x)))
    {
        lo = lo.min(u * s.per_slot);
        hi = hi.max(u * s.per_slot);
    }
    if !lo.is_finite() {
        return None;
    }
    // at tau above every slot's cost plus the overhead of a run per slot, every usable slot pays
    // a flat cost range still needs a bracket to bisect in
    let span = (hi - lo).abs().max(1e-6);
    let mut hi_tau = hi + span + (hi.abs() + span) * (s.overhead / s.work_per_slot + 1.0);
    let mut lo_tau = lo - span;
    let top = run_dp(s, hi_tau);
    if top.work < work - WORK_TOLERANCE_H {
        return None;
    }
    let mut best = top;
    for _ in 0..VALUE_BISECTION_STEPS {
        let mid = 0.5 * (lo_tau + hi_tau);
        let r = run_dp(s, mid);
        if r.work >= work - WORK_TOLERANCE_H {
            hi_tau = mid;
            best = r;
        } else {
            lo_tau = mid;
        }
    }
    let blocks = trim(s, best.blocks, work);
    let objective = blocks
        .iter()
        .map(|b| {
            (b.a..b.b)
                .map(|r| s.unit[b.pool][r] * s.per_slot)
                .sum::<f64>()
        })
        .sum();
    Some(s.placement(blocks, objective))
}

impl Segments<'_> {
    /// A placement from blocks whose `pool` indexes `self.pools`.
    fn placement(&self, blocks: Vec<Block>, objective: f64) -> Placement {
        let blocks = blocks
            .into_iter()
            .map(|b| Block {
                pool: self.pools[b.pool],
                ..b
            })
            .collect();
        Placement { blocks, objective }
    }
}

/// Adds slot `r` on `pool` to a placement's blocks, extending the last block when it continues it.
fn push_slot(blocks: &mut Vec<Block>, pool: usize, point: usize, r: usize) {
    match blocks.last_mut() {
        Some(b) if b.b == r && b.pool == pool => b.b += 1,
        _ => blocks.push(Block {
            pool,
            point,
            a: r,
            b: r + 1,
        }),
    }
}

struct DpResult {
    /// Blocks with `pool` as an index into `Segments::pools`.
    blocks: Vec<Block>,
    work: f64,
}

fn run_dp(s: &Segments<'_>, tau: f64) -> DpResult {
    let z = s.pools.len();
    let n = s.to - s.from;
    let penalty = tau.max(0.0) * s.overhead / s.work_per_slot;
    // state 0 = off, 1 + k = running in pool k; back[r][state] = state at r - 1
    let states = z + 1;
    let mut back = vec![0u16; n * states];
    let mut val = vec![f64::INFINITY; states];
    val[0] = 0.0;
    let mut next = vec![f64::INFINITY; states];
    for i in 0..n {
        let r = s.from + i;
        let (mut best_any, mut best_any_state) = (val[0], 0usize);
        for (k, v) in val.iter().enumerate().skip(1) {
            if *v < best_any {
                best_any = *v;
                best_any_state = k;
            }
        }
        next[0] = best_any;
        back[i * states] = best_any_state as u16;
        for k in 0..z {
            let c = s.unit[k][r];
            if !c.is_finite() {
                next[1 + k] = f64::INFINITY;
                continue;
            }
            let stay = val[1 + k];
            let (enter, from) = (best_any + penalty, best_any_state);
            let (v, prev) = if stay <= enter {
                (stay, 1 + k)
            } else {
                (enter, from)
            };
            next[1 + k] = v + c * s.per_slot - tau;
            back[i * states + 1 + k] = prev as u16;
        }
        std::mem::swap(&mut val, &mut next);
    }
    // backtrack from the best final state
    let mut state = (0..states)
        .min_by(|&a, &b| val[a].total_cmp(&val[b]))
        .unwrap_or(0);
    let mut picked: Vec<(usize, usize)> = Vec::new();
    for i in (0..n).rev() {
        if state > 0 {
            picked.push((s.from + i, state - 1));
        }
        state = back[i * states + state] as usize;
    }
    picked.reverse();
    let mut blocks: Vec<Block> = Vec::new();
    for (r, k) in picked {
        push_slot(&mut blocks, k, s.point, r);
    }
    let work = work_of(s, &blocks);
    DpResult { blocks, work }
}

fn work_of(s: &Segments<'_>, blocks: &[Block]) -> f64 {
    let slots: usize = blocks.iter().map(|b| b.b - b.a).sum();
    slots as f64 * s.work_per_slot - blocks.len().saturating_sub(1) as f64 * s.overhead
}

/// Drops the dearest slots at run edges while the work is still covered (bisection can stop
/// one breakpoint above the need).
fn trim(s: &Segments<'_>, mut blocks: Vec<Block>, work: f64) -> Vec<Block> {
    loop {
        let mut best: Option<(f64, usize, bool)> = None;
        for (i, b) in blocks.iter().enumerate() {
            for at_end in [false, true] {
                let r = if at_end { b.b - 1 } else { b.a };
                let c = s.unit[b.pool][r] * s.per_slot;
                if best.is_none_or(|(bc, _, _)| c > bc) {
                    best = Some((c, i, at_end));
                }
            }
        }
        let Some((_, i, at_end)) = best else {
            return blocks;
        };
        let mut trial = blocks.clone();
        if at_end {
            trial[i].b -= 1
        } else {
            trial[i].a += 1
        }
        if trial[i].a == trial[i].b {
            trial.remove(i);
        }
        if trial.is_empty() || work_of(s, &trial) < work - WORK_TOLERANCE_H {
            return blocks;
        }
        blocks = trial;
    }
}

/// The earliest usable slots of `s.from..s.to`, in runs, until the work is done (for a job
/// that will be late).
fn earliest_runs(s: &Segments<'_>, work: f64) -> Option<Placement> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut objective = 0.0;
    for r in s.from..s.to {
        let cost = |k: usize| s.unit[k][r];
        // stay in the current pool while it is usable, else the cheapest usable one
        let cont = blocks
            .last()
            .filter(|b| b.b == r && cost(b.pool).is_finite())
            .map(|b| b.pool);
        let k = cont.or_else(|| {
            (0..s.pools.len())
                .filter(|&k| cost(k).is_finite())
                .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
        });
        let Some(k) = k else { continue };
        objective += cost(k) * s.per_slot;
        push_slot(&mut blocks, k, s.point, r);
        if work_of(s, &blocks) >= work - WORK_TOLERANCE_H {
            return Some(s.placement(blocks, objective));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::snapshot::ZoneView;
    use crate::scenario::{Node, Profile, ProfilePoint};
    use crate::units::{GramsPerKwh, Hours, MoneyPerTonne, PricePerMwh, Watts};

    const SLOTS: usize = 96;

    /// Zone 0 cheap and dirty (40/MWh, 600 g), zone 1 dearer and clean (60/MWh, 50 g): one
    /// 8-GPU node each; one full-power profile.
    struct Fixture {
        price: [Vec<PricePerMwh>; 2],
        carbon: [Vec<GramsPerKwh>; 2],
        nodes: Vec<Node>,
        profiles: Vec<Profile>,
    }

    fn fixture() -> Fixture {
        let node = |zone: usize| Node {
            name: format!("n{zone}"),
            zone,
            accelerator: 0,
            gpus: 8,
        };
        Fixture {
            price: [
                vec![PricePerMwh(40.0); SLOTS],
                vec![PricePerMwh(60.0); SLOTS],
            ],
            carbon: [
                vec![GramsPerKwh(600.0); SLOTS],
                vec![GramsPerKwh(50.0); SLOTS],
            ],
            nodes: vec![node(0), node(1)],
            profiles: vec![Profile {
                name: "v100/x".into(),
                points: vec![ProfilePoint {
                    power_limit: Watts(250.0),
                    throughput: 1.0,
                    draw: Watts(200.0),
                }],
            }],
        }
    }

    fn job(carbon_price: Option<f64>) -> Pending {
        Pending {
            gpus: 8,
            accelerator: 0,
            profile: 0,
            earliest: 0,
            deadline: 16,
            preemptible: false,
            price_cap: None,
            carbon_cap: None,
            carbon_price: carbon_price.map(MoneyPerTonne),
            work_left: Hours(1.0),
            runs_done: 0,
        }
    }

    fn zone_of(f: &Fixture, queue: &[Pending], carbon_price: f64) -> usize {
        let zones = (0..2)
            .map(|z| ZoneView {
                name: if z == 0 { "dirty" } else { "clean" },
                pue: 1.0,
                price: &f.price[z],
                carbon: &f.carbon[z],
            })
            .collect();
        let snap = Snapshot {
            now: 0,
            end: SLOTS as u32,
            slot_hours: Hours(0.25),
            checkpoint_overhead: Hours(0.0),
            carbon_price: MoneyPerTonne(carbon_price),
            currency: "USD",
            lookahead: SLOTS as u32,
            zones,
            profiles: &f.profiles,
            nodes: &f.nodes,
            active: &[],
            queue,
        };
        let plan = Offpeak.plan(&snap);
        assert_eq!(plan.starts.len(), 1, "{plan:?}");
        plan.starts[0].zone
    }

    #[test]
    fn a_jobs_own_carbon_price_weighs_its_emissions() {
        let f = fixture();
        // Without a carbon price the cheap zone wins; at 100/t its 600 g cost 0.06/kWh more.
        assert_eq!(zone_of(&f, &[job(None)], 0.0), 0);
        assert_eq!(zone_of(&f, &[job(Some(100.0))], 0.0), 1);
        // The snapshot's price applies to a job without its own; a job's own zero wins over it.
        assert_eq!(zone_of(&f, &[job(None)], 100.0), 1);
        assert_eq!(zone_of(&f, &[job(Some(0.0))], 100.0), 0);
    }
}
