//! Records of the live planning cycle (`offpeak serve` with a ledger): the energy the node
//! agents metered on a job's worker pods, one record per job, zone and slot, priced at that
//! slot's price and carbon intensity in that zone, PUE applied.
//!
//! Ids: a slot's first record is `live|<job key>#<uid>|<zone>|<slot start>`
//! ([`live_record_id`]), so appending it again (after a restart, or a retry whose commit was
//! in doubt) adds nothing. Energy that arrives for a slot already recorded (an agent replaying
//! its buffer late) is a correction: a new record whose `corrects` names the slot's first one,
//! carrying only the difference, with an id that names the slot's new total
//! ([`correction_id`]), so it too is appended once.
//!
//! Exact energy: the agents' counters are in millijoules and the ledger keeps nano-kWh (3.6 mJ
//! each), so a slot's energy cannot always be kept exactly. Each record's IT energy is
//! therefore the difference of the job's rounded running total: the records of a job add up to
//! exactly its metered millijoules converted once ([`nano_kwh`]), whatever the order slots and
//! corrections came in, and no record is off by more than one nano-kWh. The running totals
//! live in the ledger itself, as [`LiveMark`]s written in the same transaction as their records
//! (the exact millijoules a slot holds once each record is in), and are read back into a
//! [`LiveBook`] when a scheduler starts.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{Amounts, Fixed, LedgerRecord};
use crate::units::{GramsPerKwh, PricePerMwh};

/// The source of records metered on a live cluster.
pub const LIVE_SOURCE: &str = "live";

/// The source of the live jobs' counterfactual records ("full power as soon as submitted").
pub const LIVE_COUNTERFACTUAL_SOURCE: &str = "counterfactual/live";

/// The tariff period of energy for whose zone and slot no price was ever known (the zone had
/// no signal then, and the slot is past the cycle's history): its energy and IT figures count,
/// its cost and carbon are zero, and this name says why.
pub const UNPRICED: &str = "unpriced";

/// The ledger's job of a live job: its key (`namespace/name`), as the report shows it.
/// Two objects of the same name (a deleted and re-created job) share it; their records do not
/// share ids ([`live_job`] tells them apart).
pub fn live_job(key: &str, uid: &str) -> String {
    format!("{key}#{uid}")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The id of the first record of a job's slot: derived from what it meters, so appending it
/// again adds nothing.
pub fn live_record_id(key: &str, uid: &str, zone: &str, start: DateTime<Utc>) -> String {
    format!(
        "{LIVE_SOURCE}|{}|{zone}|{}",
        live_job(key, uid),
        rfc3339(start)
    )
}

/// The id of the correction bringing the slot of record `original` to `slot_mj` millijoules.
pub fn correction_id(original: &str, slot_mj: u64) -> String {
    format!("{original}|to {slot_mj} mJ")
}

/// The id of a live job's counterfactual record for one slot.
pub fn live_counterfactual_id(key: &str, uid: &str, zone: &str, start: DateTime<Utc>) -> String {
    format!(
        "{LIVE_COUNTERFACTUAL_SOURCE}|{}|{zone}|{}",
        live_job(key, uid),
        rfc3339(start)
    )
}

/// `mj` millijoules in nano-kWh, rounded half up, in exact integer arithmetic
/// (1 nano-kWh = 3.6 mJ, so nano-kWh = mJ × 5 / 18).
pub fn nano_kwh(mj: u64) -> Fixed {
    let n = (i128::from(mj) * 5 + 9) / 18;
    Fixed(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A zone's price and carbon intensity over one slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotSignal {
    pub price: PricePerMwh,
    pub carbon: GramsPerKwh,
}

/// One job's metered energy in one zone and slot, as the cycle saw it once the slot was
/// closed, with the signals known for it then.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSlot {
    pub key: String,
    pub uid: String,
    pub namespace: String,
    pub team: String,
    pub cost_centre: String,
    pub zone: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// GPUs the job's gang holds.
    pub gpus: u32,
    /// The slot's whole metered IT energy so far (a sum of counter deltas), millijoules.
    pub energy_mj: u64,
    /// `None`: no price was ever known for it ([`UNPRICED`]).
    pub signal: Option<SlotSignal>,
    pub pue: f64,
    /// The zone's tariff period then, or [`super::SPOT`].
    pub tariff_period: String,
    pub currency: String,
}

impl LiveSlot {
    /// The id of the slot's first record.
    pub fn original_id(&self) -> String {
        live_record_id(&self.key, &self.uid, &self.zone, self.start)
    }

    /// The record of `it` IT energy (of `energy_mj` millijoules) in this slot, priced.
    fn record(&self, id: String, corrects: Option<String>, it: Fixed, first: bool) -> LedgerRecord {
        let slot_h = (self.end - self.start).num_seconds() as f64 / 3600.0;
        let signal = self.signal.unwrap_or(SlotSignal {
            price: PricePerMwh(0.0),
            carbon: GramsPerKwh(0.0),
        });
        let facility_kwh = it.to_f64() * self.pue;
        LedgerRecord {
            id,
            source: LIVE_SOURCE.to_owned(),
            namespace: self.namespace.clone(),
            team: self.team.clone(),
            cost_centre: self.cost_centre.clone(),
            job: self.key.clone(),
            zone: self.zone.clone(),
            tariff_period: if self.signal.is_some() {
                self.tariff_period.clone()
            } else {
                UNPRICED.to_owned()
            },
            start: self.start,
            end: self.end,
            gpus: self.gpus,
            price: signal.price,
            carbon_intensity: signal.carbon,
            pue: self.pue,
            currency: self.currency.clone(),
            amounts: Amounts {
                // The gang held its GPUs over the slot (runs start and end on slot
                // boundaries); a correction adds energy, not time.
                gpu_hours: if first {
                    Fixed::from_f64(f64::from(self.gpus) * slot_h)
                } else {
                    Fixed(0)
                },
                it_kwh: it,
                facility_kwh: Fixed::from_f64(facility_kwh),
                cost: Fixed::from_f64(facility_kwh * signal.price.0 / 1000.0),
                carbon_kg: Fixed::from_f64(facility_kwh * signal.carbon.0 / 1000.0),
            },
            corrects,
        }
    }
}

/// The exact energy behind one live record: the slot's metered millijoules once the record is
/// in. Written with the record, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMark {
    /// The record this mark is for.
    pub record: String,
    /// The slot's first record (the same as `record` for it).
    pub original: String,
    /// [`live_job`] of the record's job.
    pub job: String,
    /// The slot's start.
    pub start: DateTime<Utc>,
    /// The slot's whole metered energy once `record` is in, millijoules.
    pub slot_energy_mj: u64,
}

/// What the ledger holds of the live jobs' metered energy: each recorded slot's millijoules
/// and each job's total, from the ledger's [`LiveMark`]s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveBook {
    /// Original record id -> (job, the slot's recorded millijoules).
    slots: HashMap<String, (String, u64)>,
    /// Job -> its recorded millijoules.
    jobs: HashMap<String, u64>,
}

impl LiveBook {
    /// The book the ledger's marks make.
    pub fn from_marks(marks: &[LiveMark]) -> Self {
        let mut book = Self::default();
        book.apply(marks);
        book
    }

    /// Takes marks that were appended.
    pub fn apply(&mut self, marks: &[LiveMark]) {
        for m in marks {
            let slot = self
                .slots
                .entry(m.original.clone())
                .or_insert_with(|| (m.job.clone(), 0));
            if m.slot_energy_mj > slot.1 {
                *self.jobs.entry(m.job.clone()).or_default() += m.slot_energy_mj - slot.1;
                slot.1 = m.slot_energy_mj;
            }
        }
    }

    /// The millijoules recorded for the slot of `original`, if it has a record.
    pub fn recorded(&self, original: &str) -> Option<u64> {
        self.slots.get(original).map(|s| s.1)
    }

    /// The millijoules recorded for `job` ([`live_job`]).
    pub fn job_total(&self, job: &str) -> u64 {
        self.jobs.get(job).copied().unwrap_or(0)
    }

    /// The records (and their marks) that bring the ledger up to `slots`: a first record for
    /// a slot not recorded yet, a correction of the difference for a slot that grew, nothing
    /// for one that did not (metered energy never shrinks; a smaller figure is an older view).
    /// The book is not changed: [`LiveBook::apply`] the marks once they are appended.
    pub fn entries(&self, slots: &[LiveSlot]) -> (Vec<LedgerRecord>, Vec<LiveMark>) {
        let mut order: Vec<&LiveSlot> = slots.iter().collect();
        order.sort_by(|a, b| {
            (&a.key, &a.uid, a.start, &a.zone).cmp(&(&b.key, &b.uid, b.start, &b.zone))
        });
        let mut totals: HashMap<String, u64> = HashMap::new();
        let (mut records, mut marks) = (Vec::new(), Vec::new());
        for s in order {
            let original = s.original_id();
            let before = self.recorded(&original);
            let Some(delta) = s.energy_mj.checked_sub(before.unwrap_or(0)) else {
                continue;
            };
            if delta == 0 {
                continue;
            }
            let job = live_job(&s.key, &s.uid);
            let total = totals
                .entry(job.clone())
                .or_insert_with(|| self.job_total(&job));
            let it = nano_kwh(*total + delta) - nano_kwh(*total);
            *total += delta;
            let (id, corrects) = match before {
                None => (original.clone(), None),
                Some(_) => (
                    correction_id(&original, s.energy_mj),
                    Some(original.clone()),
                ),
            };
            marks.push(LiveMark {
                record: id.clone(),
                original,
                job,
                start: s.start,
                slot_energy_mj: s.energy_mj,
            });
            records.push(s.record(id, corrects, it, before.is_none()));
        }
        (records, marks)
    }
}

/// Price of `it_kwh` IT energy at `pue` and `signal` (the amounts of a modelled record, a
/// counterfactual's).
pub fn priced(gpu_hours: f64, it_kwh: f64, pue: f64, signal: SlotSignal) -> Amounts {
    let facility_kwh = it_kwh * pue;
    Amounts {
        gpu_hours: Fixed::from_f64(gpu_hours),
        it_kwh: Fixed::from_f64(it_kwh),
        facility_kwh: Fixed::from_f64(facility_kwh),
        cost: Fixed::from_f64(facility_kwh * signal.price.0 / 1000.0),
        carbon_kg: Fixed::from_f64(facility_kwh * signal.carbon.0 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn slot(start: &str, mj: u64) -> LiveSlot {
        LiveSlot {
            key: "ml/a".into(),
            uid: "u1".into(),
            namespace: "ml".into(),
            team: "research".into(),
            cost_centre: "cc-1".into(),
            zone: "DE".into(),
            start: t(start),
            end: t(start) + chrono::Duration::minutes(15),
            gpus: 4,
            energy_mj: mj,
            signal: Some(SlotSignal {
                price: PricePerMwh(100.0),
                carbon: GramsPerKwh(200.0),
            }),
            pue: 1.5,
            tariff_period: "spot".into(),
            currency: "EUR".into(),
        }
    }

    #[test]
    fn millijoules_become_nano_kwh_rounded_half_up() {
        assert_eq!(nano_kwh(0), Fixed(0));
        assert_eq!(nano_kwh(1), Fixed(0));
        assert_eq!(nano_kwh(2), Fixed(1));
        assert_eq!(nano_kwh(18), Fixed(5));
        assert_eq!(nano_kwh(3_600_000_000), Fixed(1_000_000_000));
    }

    #[test]
    fn a_jobs_records_add_up_to_its_millijoules_exactly_whatever_the_order() {
        let mut book = LiveBook::default();
        // Three slots of awkward sizes (none a multiple of 3.6 mJ; rounded one by one the last
        // two would be a nano-kWh each, 2 in all, where their 4 mJ are 1.1), then late energy
        // for the first: each record is rounded, the job's total never is.
        let first = [
            slot("2024-01-01T00:00:00Z", 1_000_000_001),
            slot("2024-01-01T00:15:00Z", 2),
            slot("2024-01-01T00:30:00Z", 2),
        ];
        let (records, marks) = book.entries(&first);
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|r| r.corrects.is_none()));
        book.apply(&marks);
        // Nothing new: nothing to append.
        assert_eq!(book.entries(&first), (vec![], vec![]));
        let late = [slot("2024-01-01T00:00:00Z", 1_000_000_012)];
        let (corrections, more) = book.entries(&late);
        assert_eq!(corrections.len(), 1);
        let c = &corrections[0];
        assert_eq!(c.corrects.as_deref(), Some(records[0].id.as_str()));
        assert_eq!(c.id, correction_id(&records[0].id, 1_000_000_012));
        assert_eq!(c.amounts.gpu_hours, Fixed(0));
        book.apply(&more);
        let all: Fixed = records
            .iter()
            .chain(&corrections)
            .map(|r| r.amounts.it_kwh)
            .sum();
        assert_eq!(all, nano_kwh(1_000_000_012 + 2 + 2));
        assert_eq!(book.job_total("ml/a#u1"), 1_000_000_016);
        // A smaller figure (an older view) changes nothing.
        assert!(
            book.entries(&[slot("2024-01-01T00:15:00Z", 1)])
                .0
                .is_empty()
        );
        // The book read back from the marks is the same book.
        let every: Vec<LiveMark> = marks.into_iter().chain(more).collect();
        assert_eq!(LiveBook::from_marks(&every), book);
    }

    #[test]
    fn records_are_priced_at_their_slot_with_pue_and_name_their_period() {
        let (records, _) =
            LiveBook::default().entries(&[slot("2024-01-01T00:00:00Z", 3_600_000_000)]);
        let r = &records[0];
        assert_eq!(r.id, "live|ml/a#u1|DE|2024-01-01T00:00:00Z");
        assert_eq!(r.job, "ml/a");
        assert_eq!(r.amounts.it_kwh, Fixed(1_000_000_000));
        assert_eq!(r.amounts.facility_kwh, Fixed(1_500_000_000));
        // 1.5 kWh × 100/MWh = 0.15; × 200 g/kWh = 0.3 kg; 4 GPUs × 0.25 h.
        assert_eq!(r.amounts.cost, Fixed(150_000_000));
        assert_eq!(r.amounts.carbon_kg, Fixed(300_000_000));
        assert_eq!(r.amounts.gpu_hours, Fixed(1_000_000_000));
        assert_eq!(r.tariff_period, "spot");
        let mut unpriced = slot("2024-01-01T00:00:00Z", 3_600_000_000);
        unpriced.signal = None;
        let (records, _) = LiveBook::default().entries(&[unpriced]);
        assert_eq!(records[0].tariff_period, UNPRICED);
        assert_eq!(records[0].amounts.cost, Fixed(0));
        assert_eq!(records[0].amounts.it_kwh, Fixed(1_000_000_000));
    }
}
