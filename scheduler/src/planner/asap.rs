//! The `asap` reference policy: full power, submit order, the first zone with room, as soon as
//! capacity allows. It honours price and carbon caps (a capped job waits until its whole run is
//! under its caps), so that its schedules are valid; otherwise it is blind to prices and carbon.

use super::Policy;
use super::context::{Context, is_capped, slots_needed};
use super::nodes;
use super::reasons;
use super::snapshot::{Pending, Plan, Rejection, Snapshot, Start};

/// Run everything as soon as it fits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asap;

impl Policy for Asap {
    fn name(&self) -> &'static str {
        "asap"
    }

    fn plan(&self, snap: &Snapshot<'_>) -> Plan {
        let mut ctx = Context::new(snap);
        let mut plan = Plan::default();
        for (qi, job) in snap.queue.iter().enumerate() {
            let pools: Vec<usize> = ctx.pools_for(job.accelerator).collect();
            start_or_reject(&mut ctx, snap, qi, &pools, |_| true, &mut plan);
        }
        plan
    }
}

/// Starts queued job `qi` now if [`start_now`] can; otherwise rejects it if its cap can no
/// longer be met, or leaves it waiting.
pub(crate) fn start_or_reject(
    ctx: &mut Context,
    snap: &Snapshot<'_>,
    qi: usize,
    pools: &[usize],
    accept: impl Fn(usize) -> bool,
    plan: &mut Plan,
) {
    if let Some(start) = start_now(ctx, snap, qi, pools, accept) {
        plan.starts.push(start);
    } else if let Some(reason) = reasons::cap_unmeetable(ctx, snap, &snap.queue[qi]) {
        plan.rejections.push(Rejection {
            pending: qi,
            reason,
        });
    }
}

/// Starts queued job `qi` now at full power in the first of `pools` (in the given order) that
/// has room, keeps its cap and passes `accept`; takes the nodes in `ctx`.
pub(crate) fn start_now(
    ctx: &mut Context,
    snap: &Snapshot<'_>,
    qi: usize,
    pools: &[usize],
    accept: impl Fn(usize) -> bool,
) -> Option<Start> {
    let job = &snap.queue[qi];
    if job.earliest > snap.now {
        return None;
    }
    let profile = &snap.profiles[job.profile];
    let point = profile.full_power();
    let d = slots_needed(
        job.work_left.0,
        profile.points[point].throughput,
        ctx.slot_hours,
    );
    if d > ctx.horizon {
        return None;
    }
    for &pi in pools {
        let pool = &ctx.pools[pi];
        if !accept(pi) {
            continue;
        }
        let Some(end) = run_length(ctx, snap, job, pool.zone, d) else {
            continue;
        };
        if let Some(assignment) = nodes::assign(pool, snap.nodes, &ctx.node_used, job.gpus) {
            nodes::take(&mut ctx.node_used, &assignment);
            return Some(Start {
                pending: qi,
                zone: pool.zone,
                point,
                end: snap.now + end as u32,
                nodes: assignment,
            });
        }
    }
    None
}

/// How long a run of a job needing `d` slots may go from now in `zone` within its caps: all of
/// it when uncapped; for a capped preemptible job, until the first slot above a cap or the
/// end of the published signals (it queues again for the rest); for a capped non-preemptible
/// job, all of it if its signals (published, or estimated for a run longer than the
/// lookahead) are within the caps.
fn run_length(
    ctx: &Context,
    snap: &Snapshot<'_>,
    job: &Pending,
    zone: usize,
    d: usize,
) -> Option<usize> {
    if !is_capped(job) {
        return Some(d);
    }
    let within = |r: usize| ctx.within_caps(job, zone, r);
    if job.preemptible {
        let limit = d.min(ctx.known);
        let end = (0..limit).find(|&r| !within(r)).unwrap_or(limit);
        return (end > 0).then_some(end);
    }
    if d > ctx.known && d <= snap.lookahead as usize {
        return None;
    }
    (0..d).all(within).then_some(d)
}
