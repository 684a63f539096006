//! Quantities with their unit in the type, so that a price can never be added to a carbon
//! intensity by mistake. Each is a thin `f64` newtype; only the products that make physical
//! sense are defined (power × time = energy, energy × price = money, ...).

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Mul, Sub};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

macro_rules! quantity {
    ($(#[$doc:meta])* $name:ident, $suffix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub f64);

        impl $name {
            /// The bare number, in this type's unit.
            pub fn value(self) -> f64 {
                self.0
            }
        }
        impl Add for $name {
            type Output = Self;
            fn add(self, o: Self) -> Self {
                Self(self.0 + o.0)
            }
        }
        impl AddAssign for $name {
            fn add_assign(&mut self, o: Self) {
                self.0 += o.0;
            }
        }
        impl Sub for $name {
            type Output = Self;
            fn sub(self, o: Self) -> Self {
                Self(self.0 - o.0)
            }
        }
        impl Sum for $name {
            fn sum<I: Iterator<Item = Self>>(it: I) -> Self {
                Self(it.map(|x| x.0).sum())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match f.precision() {
                    Some(p) => write!(f, "{:.*}{}", p, self.0, $suffix),
                    None => write!(f, "{}{}", self.0, $suffix),
                }
            }
        }
    };
}

quantity!(
    /// Electrical power.
    Watts, " W");
quantity!(
    /// Energy.
    KilowattHours, " kWh");
quantity!(
    /// Energy price in the scenario's currency per MWh (may be negative).
    PricePerMwh, "/MWh");
quantity!(
    /// Grid carbon intensity, grams CO2e per kWh.
    GramsPerKwh, " gCO2e/kWh");
quantity!(
    /// An amount of money in the scenario's currency.
    Money, "");
quantity!(
    /// Emissions, kilograms CO2e.
    KgCo2e, " kg CO2e");
quantity!(
    /// Carbon price, currency per tonne CO2e.
    MoneyPerTonne, "/t");
quantity!(
    /// A duration in hours (work, overheads).
    Hours, " h");

impl Mul<Hours> for Watts {
    type Output = KilowattHours;
    fn mul(self, h: Hours) -> KilowattHours {
        KilowattHours(self.0 / 1000.0 * h.0)
    }
}

impl Mul<PricePerMwh> for KilowattHours {
    type Output = Money;
    fn mul(self, p: PricePerMwh) -> Money {
        Money(self.0 * p.0 / 1000.0)
    }
}

impl Mul<GramsPerKwh> for KilowattHours {
    type Output = KgCo2e;
    fn mul(self, c: GramsPerKwh) -> KgCo2e {
        KgCo2e(self.0 * c.0 / 1000.0)
    }
}

impl Mul<MoneyPerTonne> for KgCo2e {
    type Output = Money;
    fn mul(self, p: MoneyPerTonne) -> Money {
        Money(self.0 / 1000.0 * p.0)
    }
}

/// Index of a slot on a [`SlotGrid`]; slot 0 starts at the grid's start.
pub type Slot = u32;

/// Tolerance when deciding whether an instant lies on a slot boundary: one micro-slot, far
/// below the one-second resolution of the scenario files, and the same as the checker's.
const BOUNDARY_EPS: f64 = 1e-6;

/// The time grid every run is aligned to: UTC start and slot length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotGrid {
    pub start: DateTime<Utc>,
    pub minutes: u32,
}

impl SlotGrid {
    /// Length of one slot.
    pub fn slot_hours(&self) -> Hours {
        Hours(f64::from(self.minutes) / 60.0)
    }

    /// The instant slot `s` starts.
    pub fn instant(&self, s: Slot) -> DateTime<Utc> {
        self.start + Duration::minutes(i64::from(s) * i64::from(self.minutes))
    }

    /// Position of `t` on the grid in (fractional) slots; negative before the start.
    pub fn position(&self, t: DateTime<Utc>) -> f64 {
        (t - self.start).num_milliseconds() as f64 / 60_000.0 / f64::from(self.minutes)
    }

    /// The first slot boundary at or after `t` (0 if `t` is before the start).
    pub fn first_slot_at_or_after(&self, t: DateTime<Utc>) -> Slot {
        let x = (self.position(t) - BOUNDARY_EPS).ceil();
        x.clamp(0.0, f64::from(u32::MAX)) as Slot
    }

    /// The last slot boundary at or before `t` (0 if `t` is before the start).
    pub fn last_boundary_at_or_before(&self, t: DateTime<Utc>) -> Slot {
        let x = (self.position(t) + BOUNDARY_EPS).floor();
        x.clamp(0.0, f64::from(u32::MAX)) as Slot
    }

    /// Formats the start of slot `s` as the spec's RFC 3339 UTC form.
    pub fn format(&self, s: Slot) -> String {
        self.instant(s).format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> SlotGrid {
        SlotGrid {
            start: "2023-03-01T00:00:00Z".parse().expect("time"),
            minutes: 15,
        }
    }

    #[test]
    fn energy_cost_and_carbon_compose() {
        let e = Watts(200.0) * Hours(2.0);
        assert_eq!(e, KilowattHours(0.4));
        assert!((e * PricePerMwh(100.0)).0 - 0.04 < 1e-12);
        assert!(((e * GramsPerKwh(500.0)).0 - 0.2).abs() < 1e-12);
        assert!(((KgCo2e(1000.0) * MoneyPerTonne(100.0)).0 - 100.0).abs() < 1e-12);
    }

    #[test]
    fn slot_rounding_matches_the_spec() {
        let g = grid();
        let t = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        assert_eq!(g.first_slot_at_or_after(t("2023-03-01T00:00:00Z")), 0);
        assert_eq!(g.first_slot_at_or_after(t("2023-03-01T00:00:01Z")), 1);
        assert_eq!(g.first_slot_at_or_after(t("2023-03-01T00:40:42Z")), 3);
        assert_eq!(g.last_boundary_at_or_before(t("2023-03-01T13:58:56Z")), 55);
        assert_eq!(g.last_boundary_at_or_before(t("2023-03-01T14:00:00Z")), 56);
        assert_eq!(g.first_slot_at_or_after(t("2023-02-01T00:00:00Z")), 0);
        assert_eq!(g.format(4), "2023-03-01T01:00:00Z");
    }
}
