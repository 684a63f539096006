//! Energy-Charts (Fraunhofer ISE, <https://energy-charts.info>): the CO2-equivalent intensity
//! of a country's public electricity generation, measured and forecast, no key needed
//! (`/co2eq?country=de`).
//!
//! The answer is three parallel lists: `unix_seconds` (each point's start), `co2eq` (measured,
//! `null` where not yet known) and `co2eq_forecast` (`null` where measured). A measured value
//! is [`Quality::Published`], a forecast one [`Quality::Estimated`]; a point with neither is a
//! gap. Values are gCO2e/kWh; Energy-Charts does not state the accounting basis in the answer,
//! so it is [`CarbonBasis::Unspecified`]. The spacing of the points is the resolution (15
//! minutes for Germany, an hour for some countries).

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::{
    CarbonBasis, CarbonSeries, HttpFetcher, Point, Publication, Quality, Series, SignalError,
    SignalProvider, Window,
};
use crate::units::GramsPerKwh;

/// Name in errors and status.
pub const PROVIDER: &str = "energy-charts";
/// The public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.energy-charts.info";
/// Measured values arrive quarter-hour by quarter-hour.
const PUBLICATION_MINUTES: i64 = 15;
const SECONDS_PER_MINUTE: i64 = 60;

/// A client for one country (`de`, `fr`, `ch`, ... as Energy-Charts names them).
#[derive(Debug, Clone)]
pub struct EnergyCharts {
    fetcher: HttpFetcher,
    base_url: String,
    country: String,
}

impl EnergyCharts {
    pub fn new(
        fetcher: HttpFetcher,
        base_url: impl Into<String>,
        country: impl Into<String>,
    ) -> Self {
        Self {
            fetcher,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            country: country.into(),
        }
    }

    /// The request URL (the answer covers Energy-Charts' own span around today).
    pub fn url(&self) -> String {
        format!("{}/co2eq?country={}", self.base_url, self.country)
    }
}

impl SignalProvider for EnergyCharts {
    type Unit = GramsPerKwh;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn fetch(&self, _window: Window) -> Result<CarbonSeries, SignalError> {
        let body = self.fetcher.get(PROVIDER, &self.url(), &[]).await?;
        parse(&body, &self.country)
    }

    fn publication(&self) -> Publication {
        Publication::Every(Duration::minutes(PUBLICATION_MINUTES))
    }
}

#[derive(Deserialize)]
struct Answer {
    unix_seconds: Vec<i64>,
    co2eq: Vec<Option<f64>>,
    co2eq_forecast: Vec<Option<f64>>,
}

/// Parses a `/co2eq` answer for `country` (the zone name of the series).
pub fn parse(body: &[u8], country: &str) -> Result<CarbonSeries, SignalError> {
    let bad = |reason: String| SignalError::Parsing {
        provider: PROVIDER,
        reason,
    };
    let a: Answer = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let n = a.unix_seconds.len();
    if a.co2eq.len() != n || a.co2eq_forecast.len() != n {
        return Err(bad(format!(
            "the lists differ in length: {n} times, {} measured, {} forecast values",
            a.co2eq.len(),
            a.co2eq_forecast.len()
        )));
    }
    let mut starts = Vec::with_capacity(n);
    let mut points = Vec::with_capacity(n);
    for (i, ((secs, measured), forecast)) in a
        .unix_seconds
        .iter()
        .zip(&a.co2eq)
        .zip(&a.co2eq_forecast)
        .enumerate()
    {
        let start = DateTime::<Utc>::from_timestamp(*secs, 0)
            .ok_or_else(|| bad(format!("unix_seconds[{i}] {secs} is out of range")))?;
        starts.push(start);
        let (value, quality) = match (measured, forecast) {
            (Some(v), _) => (*v, Quality::Published),
            (None, Some(v)) => (*v, Quality::Estimated),
            (None, None) => continue,
        };
        if !value.is_finite() || value < 0.0 {
            return Err(bad(format!(
                "the value {value} at {} is not an intensity",
                start.to_rfc3339()
            )));
        }
        points.push(Point {
            start,
            value: GramsPerKwh(value),
            quality,
        });
    }
    let resolution = spacing_minutes(&starts).map_err(bad)?;
    Series::new(
        PROVIDER,
        country,
        CarbonBasis::Unspecified,
        resolution,
        points,
    )
}

/// The smallest positive step between the listed times, in whole minutes.
fn spacing_minutes(starts: &[DateTime<Utc>]) -> Result<u32, String> {
    let step = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).num_seconds())
        .filter(|s| *s > 0)
        .min()
        .ok_or("the answer needs at least two times to show its resolution")?;
    if step % SECONDS_PER_MINUTE != 0 {
        return Err(format!("points {step} s apart"));
    }
    u32::try_from(step / SECONDS_PER_MINUTE).map_err(|_| format!("points {step} s apart"))
}
