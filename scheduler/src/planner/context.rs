//! What every policy derives from a snapshot before deciding: the signals from `now` to the end
//! (known, then estimated), the objective per kWh in every zone and slot (at the snapshot's
//! carbon price, or at a job's own in [`Units`]), the pools of nodes (zone × accelerator) and
//! their fluid free capacity, and whether a slot keeps a job's caps ([`Context::within_caps`]).

use super::forecast;
use super::snapshot::{Pending, Snapshot};
use crate::units::Slot;

/// Nodes of one accelerator in one zone.
#[derive(Debug, Clone)]
pub struct Pool {
    pub zone: usize,
    pub accelerator: usize,
    pub nodes: Vec<usize>,
    /// GPUs per node as the fewest-nodes rule counts them (the group's first node).
    pub per_node: u32,
    pub total: u32,
}

/// Derived planning state. Slot arrays are relative: index `r` is slot `now + r`.
#[derive(Debug, Clone)]
pub struct Context {
    pub now: Slot,
    /// `end - now`: number of slots a run may still use.
    pub horizon: usize,
    /// `known_until - now`: slots from `now` whose signals are published.
    pub known: usize,
    pub slot_hours: f64,
    /// Price per zone per relative slot (known or estimated), currency/MWh.
    pub price: Vec<Vec<f64>>,
    /// Carbon intensity per zone per relative slot (known or estimated), gCO2e/kWh.
    pub carbon: Vec<Vec<f64>>,
    /// PUE per zone.
    pub pue: Vec<f64>,
    /// The snapshot's carbon price, currency per tonne.
    pub carbon_price: f64,
    /// Objective per IT kWh per zone per relative slot: PUE × (price + carbon price × intensity).
    pub unit: Vec<Vec<f64>>,
    /// Prefix sums of `unit` per zone (length horizon + 1).
    pub unit_prefix: Vec<Vec<f64>>,
    pub pools: Vec<Pool>,
    /// Free GPUs per node per relative slot, after the runs in progress and the reservations
    /// made so far in this plan.
    pub node_free: Vec<Vec<u32>>,
    /// Per pool and relative slot: the most GPUs free on any one node.
    pub max_free: Vec<Vec<u32>>,
    /// Per pool and relative slot: nodes with every GPU free.
    pub full_free: Vec<Vec<u32>>,
    /// GPUs in use per node now (runs in progress only).
    pub node_used: Vec<u32>,
}

impl Context {
    /// Derives the context of a snapshot.
    pub fn new(snap: &Snapshot<'_>) -> Self {
        let now = snap.now;
        let horizon = snap.end.saturating_sub(now) as usize;
        let known_until = snap.known_until();
        let known = known_until.saturating_sub(now) as usize;
        let slot_hours = snap.slot_hours.0;
        let slots_per_day = (24.0 / slot_hours).round() as usize;
        let from = now as usize;
        let to = snap.end as usize;
        let mut price = Vec::with_capacity(snap.zones.len());
        let mut carbon = Vec::with_capacity(snap.zones.len());
        for z in &snap.zones {
            let p: Vec<f64> = z.price.iter().map(|v| v.0).collect();
            let c: Vec<f64> = z.carbon.iter().map(|v| v.0).collect();
            price.push(forecast::extend(&p, from, to, slots_per_day));
            carbon.push(forecast::extend(&c, from, to, slots_per_day));
        }
        let pue: Vec<f64> = snap.zones.iter().map(|z| z.pue).collect();
        let Units {
            unit,
            prefix: unit_prefix,
        } = Units::new(&price, &carbon, &pue, snap.carbon_price.0);
        let mut pools: Vec<Pool> = Vec::new();
        for (i, n) in snap.nodes.iter().enumerate() {
            let pi = match pools
                .iter()
                .position(|p| p.zone == n.zone && p.accelerator == n.accelerator)
            {
                Some(pi) => pi,
                None => {
                    pools.push(Pool {
                        zone: n.zone,
                        accelerator: n.accelerator,
                        nodes: Vec::new(),
                        per_node: n.gpus,
                        total: 0,
                    });
                    pools.len() - 1
                }
            };
            pools[pi].nodes.push(i);
            pools[pi].total += n.gpus;
        }
        let mut node_free: Vec<Vec<u32>> =
            snap.nodes.iter().map(|n| vec![n.gpus; horizon]).collect();
        let mut node_used = vec![0u32; snap.nodes.len()];
        for a in snap.active {
            if a.end <= now {
                continue;
            }
            node_used[a.node] += a.gpus;
            let until = ((a.end - now) as usize).min(horizon);
            for f in &mut node_free[a.node][..until] {
                *f = f.saturating_sub(a.gpus);
            }
        }
        let mut ctx = Context {
            now,
            horizon,
            known,
            slot_hours,
            price,
            carbon,
            pue,
            carbon_price: snap.carbon_price.0,
            unit,
            unit_prefix,
            max_free: vec![vec![0; horizon]; pools.len()],
            full_free: vec![vec![0; horizon]; pools.len()],
            pools,
            node_free,
            node_used,
        };
        for p in 0..ctx.pools.len() {
            ctx.refresh(p, 0, horizon);
        }
        ctx
    }

    /// Recomputes a pool's per-slot aggregates over relative slots `a..b`.
    fn refresh(&mut self, pool: usize, a: usize, b: usize) {
        let p = &self.pools[pool];
        for r in a..b.min(self.horizon) {
            let (mut max, mut full) = (0u32, 0u32);
            for &n in &p.nodes {
                let f = self.node_free[n][r];
                max = max.max(f);
                full += u32::from(f >= p.per_node);
            }
            self.max_free[pool][r] = max;
            self.full_free[pool][r] = full;
        }
    }

    /// Whether a gang of `gpus` fits in `pool` at relative slot `r` on the fewest nodes.
    pub fn fits(&self, pool: usize, gpus: u32, r: usize) -> bool {
        let per = self.pools[pool].per_node;
        if gpus <= per {
            self.max_free[pool][r] >= gpus
        } else {
            self.full_free[pool][r] >= gpus.div_ceil(per)
        }
    }

    /// Reserves `gpus` of `pool` over relative slots `a..b` on concrete nodes (best fit: the
    /// nodes with the least room that still hold the gang throughout). Returns the nodes, or
    /// `None` when no set of nodes holds it for the whole span (then nothing is reserved).
    pub fn reserve(
        &mut self,
        pool: usize,
        gpus: u32,
        a: usize,
        b: usize,
    ) -> Option<Vec<(usize, u32)>> {
        let b = b.min(self.horizon);
        if a >= b {
            return Some(Vec::new());
        }
        let per = self.pools[pool].per_node;
        let room = |n: usize| self.node_free[n][a..b].iter().copied().min().unwrap_or(0);
        let mut nodes: Vec<(u32, usize)> = self.pools[pool]
            .nodes
            .iter()
            .map(|&n| (room(n), n))
            .collect();
        let assignment: Vec<(usize, u32)> = if gpus <= per {
            let (_, n) = nodes.iter().copied().filter(|&(f, _)| f >= gpus).min()?;
            vec![(n, gpus)]
        } else {
            let k = gpus.div_ceil(per) as usize;
            let rest = gpus - (k as u32 - 1) * per;
            nodes.sort_unstable();
            let mut whole: Vec<usize> = nodes
                .iter()
                .filter(|&&(f, _)| f >= per)
                .map(|&(_, n)| n)
                .take(k)
                .collect();
            if whole.len() < k {
                return None;
            }
            // the remainder goes to the last node; whole nodes are all alike here
            let last = whole.pop()?;
            let mut out: Vec<(usize, u32)> = whole.into_iter().map(|n| (n, per)).collect();
            out.push((last, rest));
            out
        };
        for &(n, g) in &assignment {
            for f in &mut self.node_free[n][a..b] {
                *f -= g;
            }
        }
        self.refresh(pool, a, b);
        Some(assignment)
    }

    /// Pools that can hold a job of this accelerator at all.
    pub fn pools_for(&self, accelerator: usize) -> impl Iterator<Item = usize> + '_ {
        self.pools
            .iter()
            .enumerate()
            .filter(move |(_, p)| p.accelerator == accelerator && p.total > 0)
            .map(|(i, _)| i)
    }

    /// First relative slot the job may start in.
    pub fn first(&self, job: &Pending) -> usize {
        job.earliest.saturating_sub(self.now) as usize
    }

    /// Relative deadline (runs ending after it are late), clamped to the horizon.
    pub fn deadline(&self, job: &Pending) -> usize {
        (job.deadline.saturating_sub(self.now) as usize).min(self.horizon)
    }

    /// Objective of `gpus` GPUs drawing `watts` each over relative slots `a..b` in `zone`.
    pub fn objective(&self, zone: usize, gpus: u32, watts: f64, a: usize, b: usize) -> f64 {
        self.units()
            .objective(zone, gpus, watts, a, b, self.slot_hours)
    }

    /// The objective per kWh at the snapshot's carbon price.
    pub fn units(&self) -> UnitsRef<'_> {
        UnitsRef {
            unit: &self.unit,
            prefix: &self.unit_prefix,
        }
    }

    /// The objective per kWh at a job's own carbon price, when it has one that differs from
    /// the snapshot's (`None`: use [`Context::units`]).
    pub fn job_units(&self, job: &Pending) -> Option<Units> {
        let cp = job.carbon_price?.0;
        (cp != self.carbon_price).then(|| Units::new(&self.price, &self.carbon, &self.pue, cp))
    }

    /// Objective per IT kWh of a job in `zone` at relative slot `r`, at its own carbon price.
    pub fn unit_for(&self, job: &Pending, zone: usize, r: usize) -> f64 {
        match job.carbon_price {
            Some(cp) if cp.0 != self.carbon_price => unit_of(
                self.pue[zone],
                self.price[zone][r],
                self.carbon[zone][r],
                cp.0 / 1000.0,
            ),
            _ => self.unit[zone][r],
        }
    }

    /// Whether relative slot `r` of `zone` keeps the job's price cap and carbon cap.
    pub fn within_caps(&self, job: &Pending, zone: usize, r: usize) -> bool {
        job.price_cap
            .is_none_or(|c| within_cap(self.price[zone][r], c.0))
            && job
                .carbon_cap
                .is_none_or(|c| within_cap(self.carbon[zone][r], c.0))
    }
}

/// Whether a job has a price or a carbon cap.
pub fn is_capped(job: &Pending) -> bool {
    job.price_cap.is_some() || job.carbon_cap.is_some()
}

/// Objective per IT kWh: PUE × (price + carbon price × intensity), with the carbon price per kg.
fn unit_of(pue: f64, price: f64, carbon: f64, cp_per_kg: f64) -> f64 {
    pue * (price / 1000.0 + cp_per_kg * carbon / 1000.0)
}

/// The objective per IT kWh per zone per relative slot at one carbon price, with prefix sums.
#[derive(Debug, Clone)]
pub struct Units {
    pub unit: Vec<Vec<f64>>,
    /// Prefix sums of `unit` per zone (length horizon + 1).
    pub prefix: Vec<Vec<f64>>,
}

impl Units {
    /// From prices and intensities per zone and slot, at `carbon_price` per tonne.
    pub fn new(price: &[Vec<f64>], carbon: &[Vec<f64>], pue: &[f64], carbon_price: f64) -> Self {
        let cp_per_kg = carbon_price / 1000.0;
        let mut unit = Vec::with_capacity(price.len());
        let mut prefix = Vec::with_capacity(price.len());
        for ((p, c), &pue) in price.iter().zip(carbon).zip(pue) {
            let u: Vec<f64> = p
                .iter()
                .zip(c)
                .map(|(p, c)| unit_of(pue, *p, *c, cp_per_kg))
                .collect();
            let mut pre = Vec::with_capacity(u.len() + 1);
            let mut acc = 0.0;
            pre.push(0.0);
            for v in &u {
                acc += v;
                pre.push(acc);
            }
            unit.push(u);
            prefix.push(pre);
        }
        Self { unit, prefix }
    }

    pub fn view(&self) -> UnitsRef<'_> {
        UnitsRef {
            unit: &self.unit,
            prefix: &self.prefix,
        }
    }
}

/// A borrowed [`Units`].
#[derive(Debug, Clone, Copy)]
pub struct UnitsRef<'a> {
    pub unit: &'a [Vec<f64>],
    pub prefix: &'a [Vec<f64>],
}

impl UnitsRef<'_> {
    /// Objective of `gpus` GPUs drawing `watts` each over relative slots `a..b` in `zone`.
    pub fn objective(
        &self,
        zone: usize,
        gpus: u32,
        watts: f64,
        a: usize,
        b: usize,
        slot_hours: f64,
    ) -> f64 {
        let pre = &self.prefix[zone];
        f64::from(gpus) * watts / 1000.0 * slot_hours * (pre[b] - pre[a])
    }
}

/// Work (hours) a plan may fall short of the need by. The spec's checker accepts 1e-4 h; half
/// of that is kept as margin so that rounding in its own sums can never tip a run into "not
/// enough work".
pub const WORK_TOLERANCE_H: f64 = 5e-5;

/// Slack when comparing a price (or an intensity) with a cap: far below the signals' 0.001
/// resolution and stricter than the checker's 1e-6, so a price the planner accepts the checker
/// accepts too.
const CAP_EPS: f64 = 1e-9;

/// Whether `value` (a price, or a carbon intensity) is within `cap`.
pub fn within_cap(value: f64, cap: f64) -> bool {
    value <= cap + CAP_EPS
}

/// Slots of `slot_hours` needed to do `work` hours of work at `throughput`.
pub fn slots_needed(work: f64, throughput: f64, slot_hours: f64) -> usize {
    let per_slot = throughput * slot_hours;
    let need = (work - WORK_TOLERANCE_H).max(0.0);
    let n = (need / per_slot).ceil() as usize;
    n.max(1)
}

#[cfg(test)]
mod tests {
    use super::slots_needed;

    #[test]
    fn slots_cover_the_work() {
        assert_eq!(slots_needed(1.0, 1.0, 0.25), 4);
        assert_eq!(slots_needed(1.00001, 1.0, 0.25), 4);
        assert_eq!(slots_needed(1.001, 1.0, 0.25), 5);
        assert_eq!(slots_needed(1.0, 0.72, 0.25), 6);
        assert_eq!(slots_needed(0.0, 1.0, 0.25), 1);
    }
}
