//! Time-of-use retail tariffs: a price per kWh that depends on the month, the day of the week
//! and the time of day in the tariff's own time zone, evaluated slot by slot into a UTC
//! [`PriceSeries`].
//!
//! Layout:
//! - this module: [`Tariff`], the validated form both file formats compile into (a table of
//!   period indices for every month × day of week × quarter-hour of the local day), its
//!   evaluation ([`Tariff::period_at`], [`Tariff::series`]) and the provider over it;
//! - [`urdb`]: the OpenEI Utility Rate Database JSON format (`energyratestructure`, the 12 × 24
//!   `energyweekdayschedule` and `energyweekendschedule`, tiers, `adj`, demand charges);
//! - [`handwritten`]: a short YAML form for a tariff written by hand (periods by weekday and
//!   time of day, a rate per kWh, named periods).
//!
//! Local time is read from the UTC instant through the time zone's rules, so a day on which
//! the clocks go forward has 23 hours (the skipped hour simply never occurs) and one on which
//! they go back has 25 (the repeated hour is priced as that hour both times).
//!
//! Demand charges (per kW of the month's peak) and fixed charges are read and reported
//! ([`Tariff::demand_charges`], [`Tariff::notes`]) but not optimised: the planner prices
//! energy only.

pub mod handwritten;
pub mod urdb;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::publication::Publication;
use super::{Currency, Point, PriceSeries, Quality, Series, SignalError, SignalProvider, Window};
use crate::units::PricePerMwh;

/// Name in errors, status and provenance.
pub const PROVIDER: &str = "tariff";

/// The finest step a tariff's periods may change at: a quarter of an hour, as in the
/// half-hourly and quarter-hourly periods of European network tariffs.
pub const QUARTER_MINUTES: u32 = 15;
/// Quarter-hours in a local day (a 23- or 25-hour day still indexes local clock times).
pub const QUARTERS_PER_DAY: usize = 96;
const MONTHS: usize = 12;
const DAYS_PER_WEEK: usize = 7;
const MINUTES_PER_HOUR: u32 = 60;
/// The longest window one evaluation may cover: two years of quarter-hours is 70 000 points,
/// far past any planning horizon or scenario, and a bound on memory for a mistyped window.
pub const MAX_WINDOW_DAYS: i64 = 2 * 366;
const KWH_PER_MWH: f64 = 1000.0;

/// Why a tariff could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TariffError {
    /// The file could not be read.
    #[error("reading {path}")]
    Reading {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The document is not the format it should be (not JSON, not YAML, a wrong type).
    #[error("parsing {origin}: {message}")]
    Parsing { origin: String, message: String },
    /// The document parses but a field is wrong; `at` says where (a JSON path, or a line and a
    /// YAML field path).
    #[error("{origin}: {at}: {reason}")]
    Invalid {
        origin: String,
        at: String,
        reason: String,
    },
}

/// One named period of a tariff and its energy price.
#[derive(Debug, Clone, PartialEq)]
pub struct Period {
    pub name: String,
    /// The energy price, in the tariff's currency per MWh (rate plus adjustments).
    pub price: PricePerMwh,
}

/// What a demand charge is billed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemandKind {
    /// The month's highest demand at any time.
    Flat,
    /// The month's highest demand within the named time-of-use period.
    TimeOfUse,
}

/// A demand charge, as read: reported, never optimised.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandCharge {
    pub name: String,
    pub kind: DemandKind,
    /// Currency per `unit` (usually kW) of peak demand, per month; the first tier's rate plus
    /// its adjustment.
    pub rate: f64,
    /// `kW`, `kVA`, ... as the source writes it.
    pub unit: String,
    /// How many tiers the charge has (more than one: later tiers cost more or less).
    pub tiers: usize,
    /// Months (1 to 12) it applies in; empty when it applies all year.
    pub months: Vec<u32>,
}

/// A fixed charge (per meter, per month or per day), as read: reported only.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedCharge {
    pub amount: f64,
    /// As the source writes it (`$/month`, `per day`).
    pub unit: String,
}

/// A time-of-use tariff, validated: every local quarter-hour of every day of every month
/// belongs to exactly one period.
#[derive(Clone, PartialEq)]
pub struct Tariff {
    pub name: String,
    /// Where the tariff came from, for provenance (`OpenEI URDB 674e0b87...`, a file name).
    pub origin: String,
    pub currency: Currency,
    pub time_zone: Tz,
    pub periods: Vec<Period>,
    /// `[month][weekday][quarter]` flattened: the period index of each local quarter-hour.
    table: Vec<u16>,
    /// Local dates priced as Sundays (public holidays).
    holidays: BTreeSet<NaiveDate>,
    /// The tariff applies from this instant (inclusive), if stated.
    pub effective_from: Option<DateTime<Utc>>,
    /// The tariff no longer applies from this instant, if stated.
    pub effective_until: Option<DateTime<Utc>>,
    pub demand_charges: Vec<DemandCharge>,
    pub fixed_charge: Option<FixedCharge>,
}

impl fmt::Debug for Tariff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The table is 8064 entries; the periods say what matters.
        f.debug_struct("Tariff")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .field("currency", &self.currency)
            .field("time_zone", &self.time_zone)
            .field("periods", &self.periods)
            .field("holidays", &self.holidays)
            .field("effective_from", &self.effective_from)
            .field("effective_until", &self.effective_until)
            .field("demand_charges", &self.demand_charges)
            .field("fixed_charge", &self.fixed_charge)
            .finish_non_exhaustive()
    }
}

/// Day of week as the table indexes it: Monday is 0.
pub type Weekday = usize;
/// The index of Sunday, which holidays are priced as.
const SUNDAY: Weekday = 6;

/// Builds the period table one cell at a time; [`TableBuilder::finish`] checks that every cell
/// was given.
#[derive(Debug)]
pub(crate) struct TableBuilder {
    cells: Vec<Option<u16>>,
}

impl TableBuilder {
    pub(crate) fn new() -> Self {
        Self {
            cells: vec![None; MONTHS * DAYS_PER_WEEK * QUARTERS_PER_DAY],
        }
    }

    fn index(month0: usize, weekday: Weekday, quarter: usize) -> usize {
        (month0 * DAYS_PER_WEEK + weekday) * QUARTERS_PER_DAY + quarter
    }

    /// The period already in a cell.
    pub(crate) fn get(&self, month0: usize, weekday: Weekday, quarter: usize) -> Option<u16> {
        self.cells[Self::index(month0, weekday, quarter)]
    }

    pub(crate) fn set(&mut self, month0: usize, weekday: Weekday, quarter: usize, period: u16) {
        self.cells[Self::index(month0, weekday, quarter)] = Some(period);
    }

    /// The table, or the first cell nobody gave as (month 1..=12, weekday, quarter).
    pub(crate) fn finish(self) -> Result<Vec<u16>, (usize, Weekday, usize)> {
        let mut out = Vec::with_capacity(self.cells.len());
        for (i, c) in self.cells.into_iter().enumerate() {
            match c {
                Some(p) => out.push(p),
                None => {
                    let quarter = i % QUARTERS_PER_DAY;
                    let weekday = (i / QUARTERS_PER_DAY) % DAYS_PER_WEEK;
                    let month = i / (QUARTERS_PER_DAY * DAYS_PER_WEEK) + 1;
                    return Err((month, weekday, quarter));
                }
            }
        }
        Ok(out)
    }
}

/// Weekday names as the messages and the YAML form write them, Monday first.
pub const WEEKDAY_NAMES: [&str; DAYS_PER_WEEK] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `HH:MM` of a quarter-hour index.
pub(crate) fn quarter_clock(quarter: usize) -> String {
    let minutes = quarter * QUARTER_MINUTES as usize;
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// The parts of a tariff a format reads, before the checks that make it a [`Tariff`].
#[derive(Debug)]
pub(crate) struct TariffParts {
    pub name: String,
    pub origin: String,
    pub currency: Currency,
    pub time_zone: Tz,
    pub periods: Vec<Period>,
    pub table: Vec<u16>,
    pub holidays: BTreeSet<NaiveDate>,
    pub effective_from: Option<DateTime<Utc>>,
    pub effective_until: Option<DateTime<Utc>>,
    pub demand_charges: Vec<DemandCharge>,
    pub fixed_charge: Option<FixedCharge>,
}

impl Tariff {
    pub(crate) fn from_parts(p: TariffParts) -> Self {
        Self {
            name: p.name,
            origin: p.origin,
            currency: p.currency,
            time_zone: p.time_zone,
            periods: p.periods,
            table: p.table,
            holidays: p.holidays,
            effective_from: p.effective_from,
            effective_until: p.effective_until,
            demand_charges: p.demand_charges,
            fixed_charge: p.fixed_charge,
        }
    }

    /// Reads a tariff file: OpenEI URDB JSON (`.json`) or the hand-written YAML form (`.yaml`,
    /// `.yml`). `urdb` gives what a URDB record does not say (its time zone, ...); it must be
    /// `None` for a YAML tariff, which states all of it.
    pub fn load(
        path: &std::path::Path,
        urdb: Option<&urdb::UrdbOptions>,
    ) -> Result<Self, TariffError> {
        let bytes = std::fs::read(path).map_err(|source| TariffError::Reading {
            path: path.to_owned(),
            source,
        })?;
        let origin = path.display().to_string();
        match urdb {
            Some(opts) => urdb::parse(&bytes, &origin, opts),
            None => handwritten::parse(&bytes, &origin),
        }
    }

    /// Whether the tariff applies at `t` (inside its effective dates).
    pub fn in_effect(&self, t: DateTime<Utc>) -> bool {
        self.effective_from.is_none_or(|f| t >= f) && self.effective_until.is_none_or(|u| t < u)
    }

    /// The period the tariff is in at `t`, `None` outside its effective dates. This is what the
    /// ledger records next to each slot's energy.
    pub fn period_at(&self, t: DateTime<Utc>) -> Option<&Period> {
        if !self.in_effect(t) {
            return None;
        }
        let local = t.with_timezone(&self.time_zone);
        let weekday = if self.holidays.contains(&local.date_naive()) {
            SUNDAY
        } else {
            local.weekday().num_days_from_monday() as usize
        };
        let month0 = local.month0() as usize;
        let quarter = (local.hour() * MINUTES_PER_HOUR + local.minute()) / QUARTER_MINUTES;
        let i = TableBuilder::index(month0, weekday, quarter as usize);
        self.table
            .get(i)
            .and_then(|p| self.periods.get(usize::from(*p)))
    }

    /// The name of the period at `t` (see [`Tariff::period_at`]).
    pub fn period_name_at(&self, t: DateTime<Utc>) -> Option<&str> {
        self.period_at(t).map(|p| p.name.as_str())
    }

    /// The energy price at `t`, `None` outside the effective dates.
    pub fn price_at(&self, t: DateTime<Utc>) -> Option<PricePerMwh> {
        self.period_at(t).map(|p| p.price)
    }

    /// Whether any period changes at a time that is not a whole hour.
    fn changes_within_hours(&self) -> bool {
        let per_hour = (MINUTES_PER_HOUR / QUARTER_MINUTES) as usize;
        self.table
            .chunks(per_hour)
            .any(|hour| hour.iter().any(|p| *p != hour[0]))
    }

    /// The step the series is evaluated at over `window`: an hour when every period change
    /// falls on a whole hour of local time and the zone's offset is whole hours throughout,
    /// else a quarter of an hour.
    fn step_minutes(&self, window: Window) -> Result<u32, SignalError> {
        let mut offsets = BTreeSet::new();
        let mut t = window.from;
        // Offsets change at most a few times a year; a daily probe plus both ends finds every
        // offset in force (a change and its reversal less than a day apart do not exist).
        while t < window.to {
            offsets.insert(self.offset_seconds(t));
            t += Duration::days(1);
        }
        offsets.insert(self.offset_seconds(window.to));
        let quarter_s = i64::from(QUARTER_MINUTES * MINUTES_PER_HOUR);
        if let Some(odd) = offsets.iter().find(|o| **o % quarter_s != 0) {
            return Err(SignalError::Normalising {
                provider: PROVIDER,
                reason: format!(
                    "{} is {odd} s from UTC, not a whole number of quarter-hours, so its local \
                     quarter-hours do not fall on the UTC slot grid",
                    self.time_zone
                ),
            });
        }
        let hour_s = i64::from(MINUTES_PER_HOUR * MINUTES_PER_HOUR);
        Ok(
            if self.changes_within_hours() || offsets.iter().any(|o| o % hour_s != 0) {
                QUARTER_MINUTES
            } else {
                MINUTES_PER_HOUR
            },
        )
    }

    fn offset_seconds(&self, t: DateTime<Utc>) -> i64 {
        i64::from(
            self.time_zone
                .offset_from_utc_datetime(&t.naive_utc())
                .fix()
                .local_minus_utc(),
        )
    }

    /// The tariff's prices over `window` (from the step boundary at or before its start to its
    /// end), every point published, leaving out instants outside the effective dates.
    pub fn series(&self, window: Window) -> Result<PriceSeries, SignalError> {
        let invalid = |reason: String| SignalError::Normalising {
            provider: PROVIDER,
            reason,
        };
        if window.to <= window.from {
            return Err(invalid(format!(
                "the window {} to {} is empty",
                window.from.to_rfc3339(),
                window.to.to_rfc3339()
            )));
        }
        if window.to - window.from > Duration::days(MAX_WINDOW_DAYS) {
            return Err(invalid(format!(
                "the window {} to {} is longer than {MAX_WINDOW_DAYS} days",
                window.from.to_rfc3339(),
                window.to.to_rfc3339()
            )));
        }
        let step_minutes = self.step_minutes(window)?;
        let step = Duration::minutes(i64::from(step_minutes));
        let step_s = step.num_seconds();
        let first = window.from.timestamp().div_euclid(step_s) * step_s;
        let mut t = DateTime::<Utc>::from_timestamp(first, 0)
            .ok_or_else(|| invalid("the window starts out of range".to_owned()))?;
        let mut points = Vec::new();
        while t < window.to {
            if let Some(p) = self.period_at(t) {
                points.push(Point {
                    start: t,
                    value: p.price,
                    quality: Quality::Published,
                });
            }
            t += step;
        }
        if points.is_empty() {
            return Err(invalid(format!(
                "tariff `{}` is not in effect from {} to {} ({})",
                self.name,
                window.from.to_rfc3339(),
                window.to.to_rfc3339(),
                self.effective_dates()
            )));
        }
        Series::new(
            PROVIDER,
            &self.name,
            self.currency.clone(),
            step_minutes,
            points,
        )
    }

    /// "in effect from ... until ..." for messages.
    pub fn effective_dates(&self) -> String {
        let f = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%MZ").to_string();
        match (self.effective_from, self.effective_until) {
            (None, None) => "with no effective dates".to_owned(),
            (Some(a), None) => format!("in effect from {}", f(a)),
            (None, Some(b)) => format!("in effect until {}", f(b)),
            (Some(a), Some(b)) => format!("in effect from {} until {}", f(a), f(b)),
        }
    }

    /// What an operator should know besides the prices: where the tariff came from, its
    /// periods, and the charges the planner does not optimise.
    pub fn notes(&self) -> Vec<String> {
        let periods: Vec<String> = self
            .periods
            .iter()
            .map(|p| format!("{} {:.2}", p.name, p.price.value()))
            .collect();
        let mut notes = vec![
            format!(
                "tariff `{}` ({}), local time {}, {}",
                self.name,
                self.origin,
                self.time_zone,
                self.effective_dates()
            ),
            format!("periods ({}/MWh): {}", self.currency, periods.join(", ")),
        ];
        for d in &self.demand_charges {
            let months = if d.months.is_empty() {
                String::new()
            } else {
                format!(
                    " in months {}",
                    d.months
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            };
            let tiers = if d.tiers > 1 {
                format!(" (first of {} tiers)", d.tiers)
            } else {
                String::new()
            };
            let on = match d.kind {
                DemandKind::Flat => "the month's peak",
                DemandKind::TimeOfUse => "the month's peak within the period",
            };
            notes.push(format!(
                "demand charge (reported, not optimised): `{}` {} {}/{} per month on {on}{months}{tiers}",
                d.name, d.rate, self.currency, d.unit
            ));
        }
        if let Some(fc) = &self.fixed_charge {
            notes.push(format!(
                "fixed charge (reported, not optimised): {} {}",
                fc.amount, fc.unit
            ));
        }
        notes
    }
}

/// A rate per kWh as a price per MWh.
pub(crate) fn per_kwh_to_per_mwh(rate: f64) -> PricePerMwh {
    PricePerMwh(rate * KWH_PER_MWH)
}

/// A tariff as a price source of a chain: it answers any window from the tariff itself, with
/// no request.
#[derive(Debug, Clone)]
pub struct TariffSource {
    pub tariff: Arc<Tariff>,
}

impl SignalProvider for TariffSource {
    type Unit = PricePerMwh;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn fetch(&self, window: Window) -> Result<PriceSeries, SignalError> {
        self.tariff.series(window)
    }

    fn publication(&self) -> Publication {
        Publication::Document
    }

    fn notes(&self) -> Vec<String> {
        self.tariff.notes()
    }

    fn valid_until(&self, _answer: &PriceSeries) -> DateTime<Utc> {
        self.tariff
            .effective_until
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A local date and time in `tz` as UTC, taking the first reading of a repeated time and the
/// instant the clocks jump to for a skipped one (the start of that local day as it happens).
pub(crate) fn local_midnight(tz: Tz, date: NaiveDate) -> Option<DateTime<Utc>> {
    let naive = date.and_hms_opt(0, 0, 0)?;
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            Some(t.with_timezone(&Utc))
        }
        // A zone whose clocks skip midnight: the day starts when they land.
        chrono::LocalResult::None => (1..=4).find_map(|h| {
            tz.from_local_datetime(&(naive + Duration::hours(h)))
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_period(tz: Tz) -> Tariff {
        // Peak 16:00 to 21:00 every day, off-peak otherwise.
        let mut b = TableBuilder::new();
        for m in 0..MONTHS {
            for d in 0..DAYS_PER_WEEK {
                for q in 0..QUARTERS_PER_DAY {
                    let peak = (16 * 4..21 * 4).contains(&q);
                    b.set(m, d, q, u16::from(peak));
                }
            }
        }
        Tariff::from_parts(TariffParts {
            name: "test".into(),
            origin: "unit test".into(),
            currency: Currency("USD".into()),
            time_zone: tz,
            periods: vec![
                Period {
                    name: "off-peak".into(),
                    price: PricePerMwh(100.0),
                },
                Period {
                    name: "peak".into(),
                    price: PricePerMwh(300.0),
                },
            ],
            table: b.finish().expect("full table"),
            holidays: BTreeSet::new(),
            effective_from: None,
            effective_until: None,
            demand_charges: vec![],
            fixed_charge: None,
        })
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("instant")
            .with_timezone(&Utc)
    }

    #[test]
    fn local_time_decides_the_period_across_both_clock_changes() {
        let t = two_period(chrono_tz::America::Los_Angeles);
        // 16:00 PST is 00:00Z; 16:00 PDT is 23:00Z.
        assert_eq!(t.period_name_at(utc("2024-11-04T00:00:00Z")), Some("peak"));
        assert_eq!(
            t.period_name_at(utc("2024-11-03T23:00:00Z")),
            Some("off-peak")
        );
        assert_eq!(t.period_name_at(utc("2024-07-01T23:00:00Z")), Some("peak"));
        let day = t
            .series(Window {
                from: utc("2024-11-03T07:00:00Z"),
                to: utc("2024-11-04T08:00:00Z"),
            })
            .expect("series");
        // The local day of the end of summer time has 25 hours, five of them peak.
        assert_eq!(day.points.len(), 25);
        assert_eq!(day.resolution_minutes, 60);
        let peak = day.points.iter().filter(|p| p.value.0 == 300.0).count();
        assert_eq!(peak, 5);
    }

    #[test]
    fn half_hour_offsets_evaluate_on_quarter_hours() {
        let t = two_period(chrono_tz::Asia::Kolkata);
        let s = t
            .series(Window {
                from: utc("2024-01-01T00:00:00Z"),
                to: utc("2024-01-02T00:00:00Z"),
            })
            .expect("series");
        assert_eq!(s.resolution_minutes, 15);
        // 16:00 IST is 10:30Z.
        assert_eq!(
            t.period_name_at(utc("2024-01-01T10:15:00Z")),
            Some("off-peak")
        );
        assert_eq!(t.period_name_at(utc("2024-01-01T10:30:00Z")), Some("peak"));
    }

    #[test]
    fn outside_the_effective_dates_there_is_no_price() {
        let mut t = two_period(chrono_tz::UTC);
        t.effective_until = Some(utc("2024-01-01T12:00:00Z"));
        assert_eq!(
            t.price_at(utc("2024-01-01T11:00:00Z")),
            Some(PricePerMwh(100.0))
        );
        assert_eq!(t.price_at(utc("2024-01-01T12:00:00Z")), None);
        let s = t
            .series(Window {
                from: utc("2024-01-01T00:00:00Z"),
                to: utc("2024-01-02T00:00:00Z"),
            })
            .expect("series");
        assert_eq!(s.known_until, utc("2024-01-01T12:00:00Z"));
        let e = t
            .series(Window {
                from: utc("2024-02-01T00:00:00Z"),
                to: utc("2024-02-02T00:00:00Z"),
            })
            .expect_err("expired");
        assert!(e.to_string().contains("not in effect"), "{e}");
    }
}
