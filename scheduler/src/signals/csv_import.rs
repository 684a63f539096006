//! A generic CSV importer: a time column and a value column, the time zone and the unit stated
//! by whoever configures it, because a CSV says neither reliably.
//!
//! Timestamps that carry an offset (`2023-10-29T01:00:00+01:00`) are taken as written. Naive
//! ones are local times in the stated [`TimeBasis`]. In a named zone, the hour repeated when
//! clocks go back is read in file order (first the summer one, then the winter one), and a time
//! skipped when clocks go forward is an error naming the line, since its value belongs nowhere.

use std::path::PathBuf;

use chrono::offset::LocalResult;
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::time::parse_instant;
use super::{HttpFetcher, Point, Quality, Series, SignalError, SignalProvider, SignalUnit, Window};
use crate::units::{GramsPerKwh, PricePerMwh};

/// Name in errors and status.
pub const PROVIDER: &str = "csv";

/// Naive timestamp layouts accepted, tried in order.
const NAIVE_FORMATS: [&str; 4] = [
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
];

/// How to read naive timestamps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeBasis {
    /// A named zone with its daylight-saving rules (`Europe/London`).
    Zone(Tz),
    /// A fixed offset from UTC all year (`+00:00` for UTC).
    Offset(FixedOffset),
}

/// The unit the file's values are in, and how to bring them to the signal's unit.
pub trait StatedUnit: Copy + std::fmt::Debug {
    type Quantity: SignalUnit;
    fn convert(self, v: f64) -> Self::Quantity;
}

/// Units a price column may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceUnit {
    /// Currency per MWh (EUR/MWh): the unit of wholesale markets.
    PerMwh,
    /// Currency per kWh.
    PerKwh,
    /// Hundredths of the currency per kWh (ct/kWh, p/kWh): retail tariffs.
    SubunitPerKwh,
}

const KWH_PER_MWH: f64 = 1000.0;
const SUBUNITS_PER_UNIT: f64 = 100.0;
/// Grams in a pound (avoirdupois), for intensities in lb/MWh (WattTime).
const GRAMS_PER_POUND: f64 = 453.592_37;

impl StatedUnit for PriceUnit {
    type Quantity = PricePerMwh;
    fn convert(self, v: f64) -> PricePerMwh {
        PricePerMwh(match self {
            PriceUnit::PerMwh => v,
            PriceUnit::PerKwh => v * KWH_PER_MWH,
            PriceUnit::SubunitPerKwh => v * KWH_PER_MWH / SUBUNITS_PER_UNIT,
        })
    }
}

/// Units a carbon-intensity column may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarbonUnit {
    /// gCO2e/kWh (equal to kg/MWh).
    GramsPerKwh,
    /// lbCO2e/MWh.
    PoundsPerMwh,
}

impl StatedUnit for CarbonUnit {
    type Quantity = GramsPerKwh;
    fn convert(self, v: f64) -> GramsPerKwh {
        GramsPerKwh(match self {
            CarbonUnit::GramsPerKwh => v,
            CarbonUnit::PoundsPerMwh => v * GRAMS_PER_POUND / KWH_PER_MWH,
        })
    }
}

/// Where the file is.
#[derive(Debug, Clone)]
pub enum CsvLocation {
    File(PathBuf),
    Url { fetcher: HttpFetcher, url: String },
}

/// How to read one CSV into a series.
#[derive(Debug, Clone)]
pub struct CsvImport<S: StatedUnit> {
    /// Zone name given to the series.
    pub zone: String,
    pub time_column: String,
    pub value_column: String,
    /// A column of `true`/`false` marking estimated rows; without it every row is published.
    pub estimated_column: Option<String>,
    pub time_basis: TimeBasis,
    pub unit: S,
    /// The currency of a price file, the accounting basis of an intensity file.
    pub basis: <S::Quantity as SignalUnit>::Basis,
    /// Length of each row's interval.
    pub resolution_minutes: u32,
}

/// A price CSV.
pub type PriceCsv = CsvImport<PriceUnit>;
/// A carbon-intensity CSV.
pub type CarbonCsv = CsvImport<CarbonUnit>;

impl<S: StatedUnit> CsvImport<S> {
    /// Parses the whole file. Errors name the line (the header is line 1).
    pub fn parse(&self, body: &[u8]) -> Result<Series<S::Quantity>, SignalError> {
        let bad = |reason: String| SignalError::Parsing {
            provider: PROVIDER,
            reason,
        };
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(body);
        let header = reader
            .headers()
            .map_err(|e| bad(format!("reading the header: {e}")))?
            .clone();
        let column = |name: &str| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                bad(format!(
                    "no column `{name}` (the header has: {})",
                    header.iter().collect::<Vec<_>>().join(", ")
                ))
            })
        };
        let time_i = column(&self.time_column)?;
        let value_i = column(&self.value_column)?;
        let estimated_i = self.estimated_column.as_deref().map(column).transpose()?;

        let mut points = Vec::new();
        let mut previous: Option<DateTime<Utc>> = None;
        for (i, record) in reader.records().enumerate() {
            // Line numbers as an editor shows them: the header is line 1.
            let line = i + 2;
            let at = |reason: String| bad(format!("line {line}: {reason}"));
            let record = record.map_err(|e| at(e.to_string()))?;
            let field = |j: usize, name: &str| {
                record
                    .get(j)
                    .ok_or_else(|| at(format!("no field `{name}`")))
            };
            let raw_time = field(time_i, &self.time_column)?;
            let start = self
                .instant(raw_time, previous)
                .map_err(|r| at(format!("`{}`: {r}", self.time_column)))?;
            let raw_value = field(value_i, &self.value_column)?;
            let value: f64 = raw_value.parse().map_err(|_| {
                at(format!(
                    "`{}`: `{raw_value}` is not a number",
                    self.value_column
                ))
            })?;
            let quality = match estimated_i {
                None => Quality::Published,
                Some(j) => match field(j, "estimated")?.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => Quality::Estimated,
                    "false" | "0" | "no" | "" => Quality::Published,
                    other => return Err(at(format!("`{other}` is not true or false"))),
                },
            };
            points.push(Point {
                start,
                value: self.unit.convert(value),
                quality,
            });
            previous = Some(start);
        }
        Series::new(
            PROVIDER,
            &self.zone,
            self.basis.clone(),
            self.resolution_minutes,
            points,
        )
    }

    /// The UTC instant of one timestamp; `previous` (the row before) resolves the repeated
    /// hour of a clock change.
    fn instant(&self, raw: &str, previous: Option<DateTime<Utc>>) -> Result<DateTime<Utc>, String> {
        if let Ok(t) = parse_instant(raw) {
            return Ok(t);
        }
        let naive = NAIVE_FORMATS
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
            .ok_or_else(|| format!("`{raw}` is not a date and time"))?;
        match self.time_basis {
            TimeBasis::Offset(off) => local(
                off.from_local_datetime(&naive),
                raw,
                &off.to_string(),
                previous,
            ),
            TimeBasis::Zone(tz) => local(tz.from_local_datetime(&naive), raw, tz.name(), previous),
        }
    }
}

fn local<Z: TimeZone>(
    r: LocalResult<DateTime<Z>>,
    raw: &str,
    zone: &str,
    previous: Option<DateTime<Utc>>,
) -> Result<DateTime<Utc>, String> {
    match r {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, second) => {
            let (first, second) = (first.with_timezone(&Utc), second.with_timezone(&Utc));
            // The file walks through the repeated hour twice: the second time, the row
            // before is already at or past its first reading.
            Ok(match previous {
                Some(p) if p >= first => second,
                _ => first,
            })
        }
        LocalResult::None => Err(format!(
            "`{raw}` does not exist in {zone} (the clocks skip it)"
        )),
    }
}

impl<S: StatedUnit> CsvImport<S> {
    /// A file of `unit` values on `basis` (the currency of prices, the accounting basis of
    /// intensities), every row published unless an estimated column is set.
    pub fn new(
        zone: impl Into<String>,
        time_column: impl Into<String>,
        value_column: impl Into<String>,
        time_basis: TimeBasis,
        unit: S,
        basis: <S::Quantity as SignalUnit>::Basis,
        resolution_minutes: u32,
    ) -> Self {
        Self {
            zone: zone.into(),
            time_column: time_column.into(),
            value_column: value_column.into(),
            estimated_column: None,
            time_basis,
            unit,
            basis,
            resolution_minutes,
        }
    }
}

/// A CSV import bound to where the file is.
#[derive(Debug, Clone)]
pub struct CsvSource<S: StatedUnit> {
    pub import: CsvImport<S>,
    pub location: CsvLocation,
}

impl<S> SignalProvider for CsvSource<S>
where
    S: StatedUnit + Send + Sync,
    S::Quantity: Send,
    <S::Quantity as SignalUnit>::Basis: Send + Sync,
{
    type Unit = S::Quantity;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    /// A file changes when someone edits it.
    fn publication(&self) -> super::Publication {
        super::Publication::Document
    }

    /// Reads the whole file; the window does not narrow it (a file is a fixed document).
    async fn fetch(&self, _window: Window) -> Result<Series<S::Quantity>, SignalError> {
        let body = match &self.location {
            CsvLocation::File(path) => std::fs::read(path).map_err(|e| SignalError::Fetching {
                provider: PROVIDER,
                endpoint: path.display().to_string(),
                failure: super::FetchFailure::Transport(e.to_string()),
            })?,
            CsvLocation::Url { fetcher, url } => fetcher.get(PROVIDER, url, &[]).await?,
        };
        self.import.parse(&body)
    }
}
