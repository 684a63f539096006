//! A job's metered energy: what the node agents' counters say its worker pods used, per zone
//! and slot, priced at the price and carbon intensity of that zone and slot with the zone's
//! PUE, and summed per namespace and month for the budget rule (`placement::budget`).
//!
//! Which pods are a job's: the operator names worker `rank` of job `namespace/name`
//! `<name>-worker-<rank>` in `namespace` (`offpeak_operator::workload::pod_name`), ranks
//! `0..workers`. The exact names are looked up, never a prefix: a job called `a` and one
//! called `a-worker-0` cannot take each other's pods.
//!
//! Slots: the registry keeps each pod's energy per metering slot of the sample that closed the
//! counter delta, by the sample's own time; the planning cycle sets the registry's slot to its
//! own, so a slot's energy has one price and one intensity. Energy of a slot that grows
//! (late samples, an agent replaying its buffer) is priced again whole. A slot whose zone has
//! no known signal is kept unpriced (its energy counts, its cost not yet) and priced once
//! the signal is known; after a zone's history window (3 days) it stays unpriced.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, TimeZone, Utc};

use super::feed::Known;
use super::store::MeteredSlot;
use crate::service::registry::{PodKey, PodSlotEnergy};
use crate::units::{GramsPerKwh, KgCo2e, KilowattHours, Money, PricePerMwh, SlotGrid};

/// Millijoules in a kilowatt-hour.
pub const MJ_PER_KWH: f64 = 3.6e9;

/// The worker pods of job `key` (`namespace/name`) with `workers` ranks.
pub fn worker_pods(key: &str, workers: u32) -> BTreeSet<PodKey> {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    (0..workers)
        .map(|rank| (namespace.to_owned(), format!("{name}-worker-{rank}")))
        .collect()
}

/// The namespace of job `key`.
pub fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

/// The first instant of the UTC month `t` falls in.
pub fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(t)
}

/// Prices metered slots at the zones' known signals of one planning frame.
#[derive(Debug)]
pub struct Pricer<'a> {
    pub grid: SlotGrid,
    /// Zone name -> (PUE, known signals from the grid's start).
    pub zones: BTreeMap<&'a str, (f64, &'a Known)>,
}

impl Pricer<'_> {
    /// Cost and emissions of `energy_mj` of IT energy used in `zone` in the slot starting at
    /// `slot_start`, PUE applied; `None` when that slot's signals are not known here.
    pub fn price(
        &self,
        zone: &str,
        slot_start: DateTime<Utc>,
        energy_mj: u64,
    ) -> Option<(Money, KgCo2e)> {
        let (pue, _) = self.zones.get(zone)?;
        let (price, carbon) = self.signals(zone, slot_start)?;
        let facility = KilowattHours(energy_mj as f64 / MJ_PER_KWH * pue);
        Some((facility * price, facility * carbon))
    }

    /// The price and carbon intensity of `zone` over the slot starting at `slot_start`, if
    /// known here.
    pub fn signals(
        &self,
        zone: &str,
        slot_start: DateTime<Utc>,
    ) -> Option<(PricePerMwh, GramsPerKwh)> {
        let (_, known) = self.zones.get(zone)?;
        let offset = (slot_start - self.grid.start).num_minutes();
        if offset < 0 {
            return None;
        }
        let i = usize::try_from(offset / i64::from(self.grid.minutes)).ok()?;
        Some((*known.price.get(i)?, *known.carbon.get(i)?))
    }
}

/// A job's metered slots, by (zone, slot start).
pub type JobMetered = BTreeMap<(String, i64), MeteredSlot>;

/// Brings `metered` (job `key`/`uid`) up to what the registry holds: `readings` are its pods'
/// energy per node and slot; slots before `from` (the job's submission) belong to an earlier
/// job of the same name and are left out. Returns the slots that changed and, for each, the
/// change of its cost (for the month totals).
pub fn update(
    key: &str,
    uid: &str,
    metered: &mut JobMetered,
    readings: &[PodSlotEnergy],
    from: DateTime<Utc>,
    pricer: &Pricer<'_>,
) -> Vec<(MeteredSlot, f64)> {
    let mut by_slot: BTreeMap<(&str, i64), u64> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.slot_start >= from.timestamp()) {
        let e = by_slot.entry((r.zone.as_str(), r.slot_start)).or_default();
        *e = e.saturating_add(r.energy_mj);
    }
    let mut changed = Vec::new();
    for ((zone, start), energy_mj) in by_slot {
        let Some(slot_start) = DateTime::<Utc>::from_timestamp(start, 0) else {
            continue;
        };
        let old = metered.get(&(zone.to_owned(), start));
        // Energy never shrinks here: a registry restarted without its state starts its slots
        // from zero, and what was recorded before still happened.
        let grew = old.is_none_or(|m| energy_mj > m.energy_mj);
        let unpriced = old.is_some_and(|m| !m.priced);
        if !grew && !unpriced {
            continue;
        }
        let energy_mj = energy_mj.max(old.map_or(0, |m| m.energy_mj));
        let priced = pricer.price(zone, slot_start, energy_mj);
        if !grew && priced.is_none() {
            continue;
        }
        let (cost, carbon) = priced.unwrap_or((Money(0.0), KgCo2e(0.0)));
        let slot = MeteredSlot {
            key: key.to_owned(),
            uid: uid.to_owned(),
            zone: zone.to_owned(),
            slot_start,
            energy_mj,
            cost: cost.0,
            carbon_kg: carbon.0,
            priced: priced.is_some(),
        };
        let delta = slot.cost - old.map_or(0.0, |m| m.cost);
        metered.insert((zone.to_owned(), start), slot.clone());
        changed.push((slot, delta));
    }
    changed
}

/// A job's metered totals.
pub fn totals(metered: &JobMetered) -> super::Metered {
    let mj: u64 = metered
        .values()
        .fold(0u64, |acc, m| acc.saturating_add(m.energy_mj));
    super::Metered {
        energy: KilowattHours(mj as f64 / MJ_PER_KWH),
        // Folded from +0.0: an empty sum of floats is -0.0.
        cost: Money(metered.values().fold(0.0, |acc, m| acc + m.cost)),
        carbon: KgCo2e(metered.values().fold(0.0, |acc, m| acc + m.carbon_kg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn reading(zone: &str, start: &str, mj: u64) -> PodSlotEnergy {
        PodSlotEnergy {
            namespace: "ml".into(),
            pod: "a-worker-0".into(),
            node: "n1".into(),
            zone: zone.into(),
            slot_start: t(start).timestamp(),
            energy_mj: mj,
        }
    }

    #[test]
    fn worker_pods_follow_the_operators_names() {
        let pods = worker_pods("ml/bert", 2);
        let names: Vec<&str> = pods.iter().map(|p| p.1.as_str()).collect();
        assert_eq!(names, ["bert-worker-0", "bert-worker-1"]);
        assert!(pods.iter().all(|p| p.0 == "ml"));
        assert_eq!(namespace_of("ml/bert"), "ml");
        assert_eq!(
            month_start(t("2024-03-31T23:59:00Z")),
            t("2024-03-01T00:00:00Z")
        );
    }

    #[test]
    fn slots_are_priced_at_their_own_signals_and_grow_exactly() {
        let known = Known {
            price: vec![PricePerMwh(100.0), PricePerMwh(-20.0)],
            carbon: vec![GramsPerKwh(300.0), GramsPerKwh(50.0)],
            degraded: None,
        };
        let pricer = Pricer {
            grid: SlotGrid {
                start: t("2024-01-01T00:00:00Z"),
                minutes: 15,
            },
            zones: [("A", (1.5, &known))].into(),
        };
        let mut m = JobMetered::new();
        let from = t("2024-01-01T00:00:00Z");
        // 3.6e9 mJ = 1 kWh IT = 1.5 kWh facility: 0.15 at 100/MWh, 0.45 kg at 300 g.
        let readings = vec![
            reading("A", "2024-01-01T00:00:00Z", 3_600_000_000),
            reading("A", "2024-01-01T00:15:00Z", 1_800_000_000),
            // Another zone without signals: counted, not priced.
            reading("X", "2024-01-01T00:15:00Z", 7),
            // Before the job's submission: an earlier job's.
            reading("A", "2023-12-31T23:45:00Z", 99),
        ];
        let changed = update("ml/a", "u", &mut m, &readings, from, &pricer);
        assert_eq!(changed.len(), 3);
        let total = totals(&m);
        assert_eq!(total.energy, KilowattHours(5_400_000_007.0 / MJ_PER_KWH));
        // 0.15 + 0.75 kWh × -20/MWh = 0.15 - 0.015
        assert!((total.cost.0 - 0.135).abs() < 1e-12, "{total:?}");
        assert!(
            (total.carbon.0 - (0.45 + 0.0375)).abs() < 1e-12,
            "{total:?}"
        );
        assert!(!m[&("X".to_owned(), t("2024-01-01T00:15:00Z").timestamp())].priced);
        // Nothing new: nothing changes.
        assert!(update("ml/a", "u", &mut m, &readings, from, &pricer).is_empty());
        // A slot that grew is priced again whole; the cost change is reported.
        let mut more = readings.clone();
        more[0].energy_mj = 7_200_000_000;
        let changed = update("ml/a", "u", &mut m, &more, from, &pricer);
        assert_eq!(changed.len(), 1);
        assert!((changed[0].1 - 0.15).abs() < 1e-12);
    }
}
