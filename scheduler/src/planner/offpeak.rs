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
//!   its price cap is what stops it, in which case it is rejected with the lowest feasible cap.
//!
//! Capacity while planning is fluid (free GPUs per pool and slot); nodes are picked for real
//! when a run starts.

use super::Policy;
use super::context::{Context, slots_needed};
use super::nodes;
use super::reasons;
use super::snapshot::{Intent, Pending, Plan, Rejection, Snapshot, Start};
use crate::units::Money;

/// Preference for the earlier of two equally cheap placements, per slot of delay: far below
/// any real difference in cost (a cent is 1e-2), enough to make ties deterministic and to
/// take the certain present over an estimated future of the same value.
const DELAY_TIE_BREAK: f64 = 1e-9;

/// Rounds of "pick the cheapest slots, count the runs, add their overheads".
const OVERHEAD_ROUNDS: usize = 6;

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
                continue;
            }
            let placement = if job.preemptible {
                place_slots(&ctx, snap, job, &pools)
            } else {
                place_window(&ctx, snap, job, &pools)
            };
            let Some(p) = placement else {
                if let Some(reason) = reasons::cap_unmeetable(&ctx, snap, job) {
                    plan.rejections.push(Rejection {
                        pending: qi,
                        reason,
                    });
                }
                continue;
            };
            for b in &p.blocks {
                ctx.reserve(b.pool, job.gpus, b.a, b.b);
            }
            let first = p.blocks[0];
            if first.a == 0 {
                let end = if job.preemptible {
                    first.b.min(ctx.known.max(1))
                } else {
                    first.b
                };
                let pool = &ctx.pools[first.pool];
                if let Some(assignment) = nodes::assign(pool, snap.nodes, &ctx.node_used, job.gpus)
                {
                    nodes::take(&mut ctx.node_used, &assignment);
                    plan.starts.push(Start {
                        pending: qi,
                        zone: pool.zone,
                        point: first.point,
                        end: snap.now + end as u32,
                        nodes: assignment,
                    });
                    continue;
                }
            }
            plan.intents.push(Intent {
                pending: qi,
                start: snap.now + first.a as u32,
                zone: ctx.pools[first.pool].zone,
                point: first.point,
                objective: Money(p.objective),
            });
        }
        plan
    }
}

/// Least slack first: the jobs with the least room to move choose first, which is also what
/// keeps deadlines.
fn urgency_order(ctx: &Context, snap: &Snapshot<'_>) -> Vec<usize> {
    let mut keyed: Vec<(i64, u32, usize)> = snap
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
            (slack, j.earliest, i)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, _, i)| i).collect()
}

/// Per relative slot: is the pool unusable for this job (too few GPUs, or price above cap)?
/// Returned as prefix counts so any window is checked in O(1).
fn blocked_prefix(ctx: &Context, job: &Pending, pool: usize) -> Vec<u32> {
    let zone = ctx.pools[pool].zone;
    let g = i64::from(job.gpus);
    let cap = job.price_cap.map(|c| c.0);
    let mut pre = Vec::with_capacity(ctx.horizon + 1);
    let mut acc = 0u32;
    pre.push(0);
    for r in 0..ctx.horizon {
        let over_cap = cap.is_some_and(|c| ctx.price[zone][r] > c + 1e-9);
        acc += u32::from(ctx.free[pool][r] < g || over_cap);
        pre.push(acc);
    }
    pre
}

/// The best single window for a non-preemptible job.
fn place_window(
    ctx: &Context,
    snap: &Snapshot<'_>,
    job: &Pending,
    pools: &[usize],
) -> Option<Placement> {
    let first = ctx.first(job);
    let dl = ctx.deadline(job);
    let profile = &snap.profiles[job.profile];
    let lookahead = snap.lookahead as usize;
    let mut on_time: Option<(f64, Block, f64)> = None;
    let mut late: Option<((usize, f64), Block, f64)> = None;
    for &pi in pools {
        let zone = ctx.pools[pi].zone;
        let blocked = blocked_prefix(ctx, job, pi);
        for (i, pt) in profile.points.iter().enumerate() {
            let d = slots_needed(job.work_left.0, pt.throughput, ctx.slot_hours);
            // a capped run that starts now must lie in published prices, when it can
            let verify_now = job.price_cap.is_some() && d <= lookahead && d > ctx.known;
            let mut a = first;
            while a + d <= ctx.horizon {
                let b = a + d;
                if blocked[b] - blocked[a] > 0 || (a == 0 && verify_now) {
                    a += 1;
                    continue;
                }
                let cost = ctx.objective(zone, job.gpus, pt.draw.0, a, b);
                let block = Block {
                    pool: pi,
                    point: i,
                    a,
                    b,
                };
                if b <= dl {
                    let key = cost + DELAY_TIE_BREAK * a as f64;
                    if on_time.as_ref().is_none_or(|(k, _, _)| key < *k) {
                        on_time = Some((key, block, cost));
                    }
                } else {
                    if on_time.is_some() {
                        break;
                    }
                    let key = (b, cost);
                    if late
                        .as_ref()
                        .is_none_or(|(k, _, _)| key.0 < k.0 || (key.0 == k.0 && key.1 < k.1))
                    {
                        late = Some((key, block, cost));
                    }
                    // later windows of this point only end later
                    break;
                }
                a += 1;
            }
        }
    }
    if let Some((_, block, cost)) = on_time {
        return Some(Placement {
            blocks: vec![block],
            objective: cost,
        });
    }
    late.map(|(_, block, cost)| Placement {
        blocks: vec![block],
        objective: cost,
    })
}

/// A candidate slot for a preemptible job: its cost and where.
#[derive(Debug, Clone, Copy)]
struct Cand {
    cost: f64,
    r: usize,
    pool: usize,
}

/// The best set of slots for a preemptible job.
fn place_slots(
    ctx: &Context,
    snap: &Snapshot<'_>,
    job: &Pending,
    pools: &[usize],
) -> Option<Placement> {
    let first = ctx.first(job);
    let dl = ctx.deadline(job);
    let profile = &snap.profiles[job.profile];
    let overhead = snap.checkpoint_overhead.0;
    let cap = job.price_cap.map(|c| c.0);
    let g = i64::from(job.gpus);
    // per slot, the cheapest usable pool (zone) for this job: independent of the power limit
    let best_pool = |r: usize| -> Option<(usize, f64)> {
        pools
            .iter()
            .copied()
            .filter(|&p| {
                ctx.free[p][r] >= g
                    && cap.is_none_or(|c| ctx.price[ctx.pools[p].zone][r] <= c + 1e-9)
            })
            .map(|p| (p, ctx.unit[ctx.pools[p].zone][r]))
            .min_by(|x, y| x.1.total_cmp(&y.1))
    };
    let usable: Vec<(usize, usize, f64)> = (first..ctx.horizon)
        .filter_map(|r| best_pool(r).map(|(p, u)| (r, p, u)))
        .collect();
    let on_time_end = usable.partition_point(|&(r, _, _)| r < dl);

    let mut best: Option<Placement> = None;
    for (i, pt) in profile.points.iter().enumerate() {
        let per_slot = f64::from(job.gpus) * pt.draw.0 / 1000.0 * ctx.slot_hours;
        let mut cands: Vec<Cand> = usable[..on_time_end]
            .iter()
            .map(|&(r, pool, u)| Cand {
                cost: per_slot * u,
                r,
                pool,
            })
            .collect();
        cands.sort_by(|x, y| x.cost.total_cmp(&y.cost).then(x.r.cmp(&y.r)));
        if let Some(p) = choose(
            &cands,
            job.work_left.0,
            overhead,
            pt.throughput,
            ctx.slot_hours,
            i,
        ) {
            if best.as_ref().is_none_or(|b| p.objective < b.objective) {
                best = Some(p);
            }
        }
    }
    if best.is_some() {
        return best;
    }
    // late: the fastest point, the earliest usable slots
    let (i, pt) = profile
        .points
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.throughput.total_cmp(&y.1.throughput))?;
    let per_slot = f64::from(job.gpus) * pt.draw.0 / 1000.0 * ctx.slot_hours;
    let cands: Vec<Cand> = usable
        .iter()
        .map(|&(r, pool, u)| Cand {
            cost: per_slot * u,
            r,
            pool,
        })
        .collect();
    choose(
        &cands,
        job.work_left.0,
        overhead,
        pt.throughput,
        ctx.slot_hours,
        i,
    )
}

/// Takes candidates in the given order until the work, with one overhead per extra run, is
/// covered; returns the slots grouped into runs.
fn choose(
    cands: &[Cand],
    work: f64,
    overhead: f64,
    throughput: f64,
    slot_hours: f64,
    point: usize,
) -> Option<Placement> {
    let mut n = slots_needed(work, throughput, slot_hours);
    for _ in 0..OVERHEAD_ROUNDS {
        if n > cands.len() {
            return None;
        }
        let mut picked: Vec<Cand> = cands[..n].to_vec();
        picked.sort_by_key(|c| c.r);
        let blocks = group(&picked, point);
        let need = slots_needed(
            work + (blocks.len() - 1) as f64 * overhead,
            throughput,
            slot_hours,
        );
        if need <= n {
            let objective = picked.iter().map(|c| c.cost).sum();
            return Some(Placement { blocks, objective });
        }
        n = need;
    }
    None
}

fn group(picked: &[Cand], point: usize) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    for c in picked {
        match blocks.last_mut() {
            Some(b) if b.b == c.r && b.pool == c.pool => b.b += 1,
            _ => blocks.push(Block {
                pool: c.pool,
                point,
                a: c.r,
                b: c.r + 1,
            }),
        }
    }
    blocks
}
