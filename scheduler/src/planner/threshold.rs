//! The `threshold` reference policy, the approach of today's carbon-aware Kubernetes
//! schedulers: a job waits until both the price and the carbon intensity of a zone are below a
//! percentile of that zone's published forecast, or until it has waited its maximum delay (or
//! must start to make its deadline), then runs whole at full power in the cheapest such zone.

use super::Policy;
use super::asap::start_or_reject;
use super::context::{Context, slots_needed};
use super::snapshot::{Plan, Snapshot};

/// Default percentile of the published forecast a signal must be at or below.
pub const DEFAULT_PERCENTILE: f64 = 0.3;
/// Default longest wait, hours: the usual setting of carbon-aware schedulers' "max delay".
pub const DEFAULT_MAX_DELAY_HOURS: f64 = 24.0;

/// Wait for a good-enough slot, then run.
#[derive(Debug, Clone, Copy)]
pub struct Threshold {
    pub percentile: f64,
    pub max_delay_hours: f64,
}

impl Default for Threshold {
    fn default() -> Self {
        Self {
            percentile: DEFAULT_PERCENTILE,
            max_delay_hours: DEFAULT_MAX_DELAY_HOURS,
        }
    }
}

fn percentile(values: impl Iterator<Item = f64>, q: f64) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::INFINITY;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    v[idx]
}

impl Policy for Threshold {
    fn name(&self) -> &'static str {
        "threshold"
    }

    fn plan(&self, snap: &Snapshot<'_>) -> Plan {
        let mut ctx = Context::new(snap);
        let mut plan = Plan::default();
        let now = snap.now as usize;
        // a zone is "good" now when price and carbon both sit at or below their percentile
        let good: Vec<bool> = snap
            .zones
            .iter()
            .map(|z| {
                let (p, c) = (
                    &z.price[now.min(z.price.len())..],
                    &z.carbon[now.min(z.carbon.len())..],
                );
                match (p.first(), c.first()) {
                    (Some(p0), Some(c0)) => {
                        p0.0 <= percentile(p.iter().map(|x| x.0), self.percentile)
                            && c0.0 <= percentile(c.iter().map(|x| x.0), self.percentile)
                    }
                    _ => false,
                }
            })
            .collect();
        let max_delay = (self.max_delay_hours / ctx.slot_hours).round() as i64;
        for (qi, job) in snap.queue.iter().enumerate() {
            let profile = &snap.profiles[job.profile];
            let d = slots_needed(
                job.work_left.0,
                profile.points[profile.full_power()].throughput,
                ctx.slot_hours,
            ) as i64;
            let waited = i64::from(snap.now) - i64::from(job.earliest);
            let must = waited >= max_delay || ctx.deadline(job) as i64 - d <= 0;
            // cheapest zone first, by the job's objective per kWh now
            let mut pools: Vec<usize> = ctx.pools_for(job.accelerator).collect();
            let unit_now = |z: usize| {
                if ctx.horizon == 0 {
                    f64::INFINITY
                } else {
                    ctx.unit_for(job, z, 0)
                }
            };
            pools.sort_by(|&a, &b| {
                let (ua, ub) = (unit_now(ctx.pools[a].zone), unit_now(ctx.pools[b].zone));
                ua.total_cmp(&ub).then(a.cmp(&b))
            });
            let zone_of: Vec<usize> = ctx.pools.iter().map(|p| p.zone).collect();
            start_or_reject(
                &mut ctx,
                snap,
                qi,
                &pools,
                |pi| must || good[zone_of[pi]],
                &mut plan,
            );
        }
        plan
    }
}
