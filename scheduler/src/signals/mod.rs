//! Signals: electricity prices and grid carbon intensity from outside providers, normalised to
//! one shape the planner can use.
//!
//! Every provider answers with its own time format, resolution and unit; each adapter here turns
//! that answer into a [`Series`]: points with a UTC start, a value whose unit is in the type
//! ([`PricePerMwh`] or [`GramsPerKwh`]), a [`Quality`] saying whether the value is published
//! (a firm day-ahead price, a measured intensity) or estimated (a forecast, a gap filled by the
//! provider), and the instant the series is known until. [`Series::on_grid`] then brings any
//! series onto the planner's slot length, and [`Series::on_slots`] onto its
//! [`SlotGrid`], slot by slot.
//!
//! Adapters:
//! - [`uk_carbon`]: the UK Carbon Intensity API (national and regional, actual and forecast);
//! - [`electricity_maps`]: Electricity Maps v3 carbon-intensity history and forecast;
//! - [`watttime`]: WattTime v3 marginal or average emission rates, forecast and history
//!   (lbs/MWh converted to g/kWh);
//! - [`carbon_aware`]: the Green Software Foundation Carbon Aware SDK's emissions forecast
//!   (its JSON data-source form and its Web API answer);
//! - [`energy_charts`]: Energy-Charts (Fraunhofer ISE) measured and forecast CO2eq intensity;
//! - [`csv_import`]: any CSV with a time and a value column, in a stated time zone and unit;
//! - [`octopus`]: Octopus Energy Agile half-hourly unit rates (GBP);
//! - [`awattar`]: aWATTar day-ahead market prices (EUR);
//! - [`entsoe`]: ENTSO-E Transparency Platform day-ahead prices (A44 XML);
//! - [`tariff`]: time-of-use tariffs (OpenEI URDB JSON and a short YAML form), evaluated in
//!   their local time zone, with each slot's period name;
//! - [`recorded`]: a provider's answer saved to a file, read by that provider's parser.
//!
//! Each adapter has a pure `parse` (bytes in, series out, testable offline) and implements
//! [`SignalProvider`], whose `fetch` does the HTTP request through [`HttpFetcher`] and which
//! says when the provider publishes ([`publication`]).
//!
//! On top of the adapters:
//! - [`config`]: the `signals` section of the YAML configuration (a price chain and a carbon
//!   chain of sources per zone, and the maximum age of trusted data), checked at load;
//! - [`sources`]: the configured providers as one price and one carbon source type;
//! - [`chain`]: a zone's signals through its chains, with fallback, staleness, the last good
//!   series, the seasonal estimate past the end, provenance and the degraded state;
//! - [`refresh`]: keeping a zone's chains fresh on each provider's publication schedule, with
//!   jittered, capped exponential backoff, `Retry-After`, metrics and a status for jobs;
//! - [`show`]: `offpeak signals show`, the merged series as a table or CSV.
//!
//! `docs/signals.md` describes every source's configuration, units and failure handling.

pub mod awattar;
pub mod carbon_aware;
pub mod chain;
pub mod config;
pub mod csv_import;
pub mod electricity_maps;
pub mod energy_charts;
pub mod entsoe;
mod http;
pub mod octopus;
pub mod publication;
pub mod recorded;
pub mod refresh;
pub mod show;
pub mod sources;
pub mod tariff;
mod time;
pub mod uk_carbon;
pub mod watttime;

use std::fmt;
use std::future::Future;

use chrono::{DateTime, Duration, Utc};

use crate::units::{GramsPerKwh, PricePerMwh, Slot, SlotGrid};

pub use http::{ApiKey, DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT, FetchFailure, HttpFetcher};
pub use publication::Publication;

/// Whether a value is firm or someone's estimate of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Published by the provider as final: a cleared day-ahead price, a measured intensity.
    Published,
    /// A forecast, or a value the provider estimated (for example to fill a missing hour).
    Estimated,
}

/// A quantity a signal can carry, with what else one needs to know to compare two series of
/// it (the currency of a price, the accounting basis of an intensity).
pub trait SignalUnit: Copy + fmt::Debug + PartialEq {
    /// The context of the number: [`Currency`] for prices, [`CarbonBasis`] for intensities.
    type Basis: Clone + fmt::Debug + PartialEq;
    /// The bare number in this unit.
    fn to_f64(self) -> f64;
    /// The quantity from a bare number in this unit.
    fn from_f64(v: f64) -> Self;
}

impl SignalUnit for PricePerMwh {
    type Basis = Currency;
    fn to_f64(self) -> f64 {
        self.value()
    }
    fn from_f64(v: f64) -> Self {
        PricePerMwh(v)
    }
}

impl SignalUnit for GramsPerKwh {
    type Basis = CarbonBasis;
    fn to_f64(self) -> f64 {
        self.value()
    }
    fn from_f64(v: f64) -> Self {
        GramsPerKwh(v)
    }
}

/// ISO 4217 code of a price series' currency (for example `EUR`, `GBP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency(pub String);

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What emissions an intensity counts: only those at the power station, or the whole life
/// cycle of the plant and fuel. The two differ by tens of percent, so they must not be mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarbonBasis {
    /// Direct (operational) emissions only.
    Direct,
    /// Life-cycle emissions.
    Lifecycle,
    /// The marginal rate: the operational emissions of the generators that answer a change in
    /// load (WattTime's MOER). It says what running one more job adds, not what the grid's
    /// average unit emits, so it must not be mixed with the average kinds above.
    Marginal,
    /// The source does not say.
    Unspecified,
}

/// One value of a series, holding from `start` for the series' resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point<U> {
    pub start: DateTime<Utc>,
    pub value: U,
    pub quality: Quality,
}

/// A time series from one provider, normalised to UTC: points in strictly increasing order,
/// each starting on a multiple of the resolution (counted from the Unix epoch, so every slot
/// length that divides an hour lines up with the hour), with gaps allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct Series<U: SignalUnit> {
    /// The provider that answered (for messages and status).
    pub provider: &'static str,
    /// The provider's zone or region name (`GB`, `DE`, `London`, ...).
    pub zone: String,
    pub basis: U::Basis,
    /// Length of each point, in minutes.
    pub resolution_minutes: u32,
    pub points: Vec<Point<U>>,
    /// The end of the last point: what happens after this instant is not known at all.
    pub known_until: DateTime<Utc>,
}

/// A price series (currency per MWh; negative prices are kept as they are).
pub type PriceSeries = Series<PricePerMwh>;
/// A carbon-intensity series (gCO2e per kWh).
pub type CarbonSeries = Series<GramsPerKwh>;

impl<U: SignalUnit> Series<U> {
    /// Builds a series, sorting the points and checking that they lie on the resolution's grid
    /// with no instant given twice.
    pub fn new(
        provider: &'static str,
        zone: impl Into<String>,
        basis: U::Basis,
        resolution_minutes: u32,
        mut points: Vec<Point<U>>,
    ) -> Result<Self, SignalError> {
        let invalid = |reason: String| SignalError::Normalising { provider, reason };
        if resolution_minutes == 0 || !MINUTES_PER_DAY.is_multiple_of(resolution_minutes) {
            return Err(invalid(format!(
                "resolution of {resolution_minutes} min does not divide a day"
            )));
        }
        points.sort_by_key(|p| p.start);
        let step = Duration::minutes(i64::from(resolution_minutes));
        for p in &points {
            if p.start.timestamp() % step.num_seconds() != 0
                || p.start.timestamp_subsec_nanos() != 0
            {
                return Err(invalid(format!(
                    "{} is not on the {resolution_minutes}-min grid",
                    p.start.to_rfc3339()
                )));
            }
            if !p.value.to_f64().is_finite() {
                return Err(invalid(format!(
                    "the value at {} is not a finite number",
                    p.start.to_rfc3339()
                )));
            }
        }
        if let Some(w) = points.windows(2).find(|w| w[0].start == w[1].start) {
            return Err(invalid(format!(
                "{} is given twice",
                w[0].start.to_rfc3339()
            )));
        }
        let Some(last) = points.last() else {
            return Err(invalid("the answer holds no values".to_owned()));
        };
        let known_until = last.start + step;
        Ok(Self {
            provider,
            zone: zone.into(),
            basis,
            resolution_minutes,
            points,
            known_until,
        })
    }

    /// Length of one point.
    pub fn resolution(&self) -> Duration {
        Duration::minutes(i64::from(self.resolution_minutes))
    }

    /// The end of the last published point, if any point is published: where firm knowledge
    /// stops and estimates begin.
    pub fn published_until(&self) -> Option<DateTime<Utc>> {
        self.points
            .iter()
            .rev()
            .find(|p| p.quality == Quality::Published)
            .map(|p| p.start + self.resolution())
    }

    /// The value holding at `t`, if a point covers it.
    pub fn at(&self, t: DateTime<Utc>) -> Option<Point<U>> {
        let i = self.points.partition_point(|p| p.start <= t);
        let p = *self.points.get(i.checked_sub(1)?)?;
        (t < p.start + self.resolution()).then_some(p)
    }

    /// The series on slots of `slot_minutes`: a slot shorter than a point takes that point's
    /// value; a longer slot takes the time-weighted mean of the points inside it, and is
    /// estimated if any of them is. A slot not wholly covered by points is left out, so a gap
    /// stays a gap rather than becoming a made-up value.
    pub fn on_grid(&self, slot_minutes: u32) -> Result<Self, SignalError> {
        let slot = Duration::minutes(i64::from(slot_minutes));
        let res = self.resolution();
        let Some(first) = self.points.first() else {
            return Series::new(
                self.provider,
                &self.zone,
                self.basis.clone(),
                slot_minutes,
                vec![],
            );
        };
        let invalid = |reason: String| SignalError::Normalising {
            provider: self.provider,
            reason,
        };
        if slot_minutes == 0 || !MINUTES_PER_DAY.is_multiple_of(slot_minutes) {
            return Err(invalid(format!(
                "slots of {slot_minutes} min do not divide a day"
            )));
        }
        // The first slot boundary at or after the first point.
        let slot_s = slot.num_seconds();
        let first_ts = first.start.timestamp();
        let mut t = DateTime::<Utc>::from_timestamp(
            first_ts + (slot_s - first_ts.rem_euclid(slot_s)) % slot_s,
            0,
        )
        .ok_or_else(|| invalid("start out of range".to_owned()))?;
        let mut out = Vec::new();
        while t + slot <= self.known_until {
            let end = t + slot;
            let mut weighted = 0.0;
            let mut covered = Duration::zero();
            let mut quality = Quality::Published;
            // Points overlapping [t, end): from the one holding at t onwards.
            let from = self.points.partition_point(|p| p.start + res <= t);
            for p in self.points[from..].iter().take_while(|p| p.start < end) {
                let overlap = (p.start + res).min(end) - p.start.max(t);
                weighted += p.value.to_f64() * overlap.num_seconds() as f64;
                covered += overlap;
                if p.quality == Quality::Estimated {
                    quality = Quality::Estimated;
                }
            }
            if covered == slot {
                out.push(Point {
                    start: t,
                    value: U::from_f64(weighted / slot_s as f64),
                    quality,
                });
            }
            t = end;
        }
        Series::new(
            self.provider,
            &self.zone,
            self.basis.clone(),
            slot_minutes,
            out,
        )
    }

    /// One entry per slot of `grid` for `n_slots` slots: the slot's value (see
    /// [`Series::on_grid`]) or `None` where the series has no value for the whole slot. The
    /// grid must start on a slot boundary counted from the Unix epoch (midnight UTC does).
    pub fn on_slots(
        &self,
        grid: &SlotGrid,
        n_slots: Slot,
    ) -> Result<Vec<Option<Point<U>>>, SignalError> {
        let slot_s = i64::from(grid.minutes) * SECONDS_PER_MINUTE;
        if slot_s == 0 || grid.start.timestamp().rem_euclid(slot_s) != 0 {
            return Err(SignalError::Normalising {
                provider: self.provider,
                reason: format!(
                    "the slot grid starting {} is not on {}-min boundaries",
                    grid.start.to_rfc3339(),
                    grid.minutes
                ),
            });
        }
        let regridded = self.on_grid(grid.minutes)?;
        Ok((0..n_slots)
            .map(|s| regridded.at(grid.instant(s)))
            .collect())
    }
}

const MINUTES_PER_DAY: u32 = 24 * 60;
const SECONDS_PER_MINUTE: i64 = 60;

/// An error and its causes on one line (`reading x.json: No such file or directory`), for
/// messages that embed another error.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}

/// The span of time a fetch asks for. Providers that answer a fixed span (a 48 h forecast, the
/// last 24 h) use `from` only, and their answer may reach past `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A source of one signal for one zone.
pub trait SignalProvider {
    /// What the signal measures.
    type Unit: SignalUnit;
    /// Short name used in errors and status (`uk-carbon-intensity`, ...).
    fn name(&self) -> &'static str;
    /// Asks the provider for the series covering `window` and normalises the answer.
    fn fetch(
        &self,
        window: Window,
    ) -> impl Future<Output = Result<Series<Self::Unit>, SignalError>> + Send;
    /// When the provider publishes new data; a refresher asks again then. Hourly unless the
    /// provider says otherwise.
    fn publication(&self) -> Publication {
        Publication::Every(Duration::hours(1))
    }
    /// What an operator should know about the answer besides its values (a tariff's periods
    /// and the charges that are not optimised, a forecast's model), for provenance.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Until when the provider vouches for `answer`, which is when it starts to go stale: the
    /// end of its data by default. A tariff holds until its effective end, whatever window it
    /// was evaluated over.
    fn valid_until(&self, answer: &Series<Self::Unit>) -> DateTime<Utc> {
        answer.known_until
    }
}

/// What went wrong while getting a signal. Each variant names the step that failed and the
/// provider; none of them carries an API key.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The HTTP client could not be set up.
    #[error("setting up the HTTP client: {0}")]
    BuildingClient(String),
    /// The API key could not be read.
    #[error("reading the API key of {provider}: {reason}")]
    ReadingApiKey {
        provider: &'static str,
        reason: String,
    },
    /// The request failed or the server refused it. `endpoint` has no query string, since
    /// some providers take credentials there.
    #[error("fetching {provider} from {endpoint}: {failure}")]
    Fetching {
        provider: &'static str,
        endpoint: String,
        failure: FetchFailure,
    },
    /// The answer arrived but is not what the provider's format says.
    #[error("parsing the answer of {provider}: {reason}")]
    Parsing {
        provider: &'static str,
        reason: String,
    },
    /// The values parsed but do not make a series (off the grid, twice the same instant, ...).
    #[error("normalising the series of {provider}: {reason}")]
    Normalising {
        provider: &'static str,
        reason: String,
    },
}
