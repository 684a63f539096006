//! One ledger record (metered energy of one job in one interval, priced) and the fixed-point
//! amounts it carries.

use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::units::{GramsPerKwh, PricePerMwh};

/// Nano-units per unit: amounts are stored as integer multiples of 1e-9 of their unit.
///
/// Why integers and not `f64`: every total is then an exact integer sum, whatever the order or
/// grouping of the additions, so the total of a report by namespace, by zone, by job, by day
/// and the ledger's own `SUM()` are provably the same number. Why nano and not micro: rounding
/// each record to the unit costs at most half a unit per record, so a total of `n` records is
/// within `n × 0.5e-9` of the `f64` pricing in [`crate::schedule`]; that stays below half a
/// cent for up to 10^7 records (a month of 15-minute slots for ~3,000 jobs running
/// continuously), where micro-units would allow only 10^4. An `i64` of nano-units still holds
/// ±9.2e9 currency units (or kWh, or kg), far above a cluster's monthly bill.
pub const NANOS_PER_UNIT: i64 = 1_000_000_000;

/// An amount in nano-units of its unit (the field name says which unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Fixed(pub i64);

impl Fixed {
    /// The nearest nano-unit amount (half away from zero).
    pub fn from_f64(x: f64) -> Self {
        // `as` saturates and maps NaN to 0; priced amounts are finite and far inside the range.
        Fixed((x * NANOS_PER_UNIT as f64).round() as i64)
    }

    /// The amount in its unit, as `f64` (for charts and averages only, never for totals).
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_UNIT as f64
    }

    /// `self × num / den` for `den > 0`, rounded half away from zero (a share of a record for
    /// a share of its interval). Callers take differences of cumulative shares so that the pieces of a
    /// split record add up to it exactly.
    pub fn prorate(self, num: i64, den: i64) -> Self {
        // A zero-length interval has no share to take: the whole amount stays.
        if den <= 0 || num == den {
            return self;
        }
        let p = i128::from(self.0) * i128::from(num);
        let q = i128::from(den);
        let r = if p >= 0 {
            (p + q / 2) / q
        } else {
            (p - q / 2) / q
        };
        Fixed(i64::try_from(r).unwrap_or(if r < 0 { i64::MIN } else { i64::MAX }))
    }

    /// Rounded (half away from zero) to `digits` decimals, as an integer count of
    /// `10^-digits` units (`digits` at most 9).
    pub fn round_to(self, digits: u32) -> i64 {
        round_half_away(self.0, quantum(digits))
    }
}

/// Nano-units in one `10^-digits` unit.
pub(crate) fn quantum(digits: u32) -> i64 {
    10i64.pow(9u32.saturating_sub(digits.min(9)))
}

/// `v / q` rounded half away from zero (`q > 0`).
pub(crate) fn round_half_away(v: i64, q: i64) -> i64 {
    let half = q / 2;
    if v >= 0 {
        (v + half) / q
    } else {
        (v - half) / q
    }
}

/// Formats an integer count of `10^-digits` units as a decimal ("-1.05").
pub fn format_units(units: i64, digits: u32) -> String {
    let scale = 10i64.pow(digits);
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{abs}");
    }
    let scale = scale.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = digits as usize
    )
}

impl Add for Fixed {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Fixed(self.0 + o.0)
    }
}
impl AddAssign for Fixed {
    fn add_assign(&mut self, o: Self) {
        self.0 += o.0;
    }
}
impl Sub for Fixed {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Fixed(self.0 - o.0)
    }
}
impl Sum for Fixed {
    fn sum<I: Iterator<Item = Self>>(it: I) -> Self {
        Fixed(it.map(|x| x.0).sum())
    }
}

/// The metered amounts of a record, or of any sum of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Amounts {
    /// GPUs × hours.
    pub gpu_hours: Fixed,
    /// Energy drawn by the GPUs (kWh).
    pub it_kwh: Fixed,
    /// IT energy × the zone's PUE (kWh): the energy that is billed.
    pub facility_kwh: Fixed,
    /// Facility kWh × the slot's price, in the record's currency; negative is a credit.
    pub cost: Fixed,
    /// Facility kWh × the slot's grid intensity (kg CO2e, location-based).
    pub carbon_kg: Fixed,
}

impl Amounts {
    /// The share `num / den` of these amounts (see [`Fixed::prorate`]).
    pub fn prorate(self, num: i64, den: i64) -> Self {
        Amounts {
            gpu_hours: self.gpu_hours.prorate(num, den),
            it_kwh: self.it_kwh.prorate(num, den),
            facility_kwh: self.facility_kwh.prorate(num, den),
            cost: self.cost.prorate(num, den),
            carbon_kg: self.carbon_kg.prorate(num, den),
        }
    }
}

impl Add for Amounts {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Amounts {
            gpu_hours: self.gpu_hours + o.gpu_hours,
            it_kwh: self.it_kwh + o.it_kwh,
            facility_kwh: self.facility_kwh + o.facility_kwh,
            cost: self.cost + o.cost,
            carbon_kg: self.carbon_kg + o.carbon_kg,
        }
    }
}
impl AddAssign for Amounts {
    fn add_assign(&mut self, o: Self) {
        *self = *self + o;
    }
}
impl Sub for Amounts {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Amounts {
            gpu_hours: self.gpu_hours - o.gpu_hours,
            it_kwh: self.it_kwh - o.it_kwh,
            facility_kwh: self.facility_kwh - o.facility_kwh,
            cost: self.cost - o.cost,
            carbon_kg: self.carbon_kg - o.carbon_kg,
        }
    }
}

/// The team or cost centre of a namespace that no mapping assigns.
pub const UNASSIGNED: &str = "unassigned";

/// The tariff period of energy priced at a spot (day-ahead or real-time market) price.
pub const SPOT: &str = "spot";

/// Metered energy of one job in one zone over one interval, priced at that interval's price
/// and carbon intensity. Records are never edited: a correction is a new record whose
/// `corrects` names the record it amends and whose amounts are the difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerRecord {
    /// Deterministic: the same metering always gives the same id, so appending it twice is a
    /// no-op (see [`crate::ledger::record_id`]).
    pub id: String,
    /// Where the energy was metered (`sim/<scenario>/<policy>` for a simulator replay).
    pub source: String,
    pub namespace: String,
    /// The team the namespace belongs to ([`UNASSIGNED`] when no mapping names one).
    pub team: String,
    /// The cost centre the namespace is charged to ([`UNASSIGNED`] when none is named).
    pub cost_centre: String,
    pub job: String,
    pub zone: String,
    /// The named period of the zone's tariff the interval fell in (`peak`, `off-peak`, ...),
    /// or [`SPOT`] where the price is a market price rather than a tariff's.
    pub tariff_period: String,
    /// Interval start (inclusive), UTC.
    pub start: DateTime<Utc>,
    /// Interval end (exclusive), UTC.
    pub end: DateTime<Utc>,
    pub gpus: u32,
    /// Price of the interval in `currency` per MWh (may be negative).
    pub price: PricePerMwh,
    /// Grid carbon intensity of the interval.
    pub carbon_intensity: GramsPerKwh,
    /// Facility energy / IT energy of the zone.
    pub pue: f64,
    /// ISO 4217 code of `amounts.cost`.
    pub currency: String,
    pub amounts: Amounts,
    /// The record this one corrects, if it is a correction.
    pub corrects: Option<String>,
}

/// Market signals of one zone over one slot, kept so reports can compare the price paid with
/// the zone's average price over the month, whether or not anything ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarketSlot {
    pub zone: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub price: PricePerMwh,
    pub carbon_intensity: GramsPerKwh,
    pub currency: String,
}
