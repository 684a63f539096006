//! The UK Carbon Intensity API (National Grid ESO, <https://carbonintensity.org.uk>): half-hourly
//! carbon intensity of Great Britain, nationally or for one of its regions, no key needed.
//!
//! A half-hour with an `actual` value is [`Quality::Published`] (measured from metered
//! generation); one with only a `forecast` is [`Quality::Estimated`]. The API counts direct
//! emissions, so the series' basis is [`CarbonBasis::Direct`]. Its instants are UTC, written to
//! the minute (`2023-12-03T10:30Z`).

use serde::Deserialize;

use super::time::{minute_utc, parse_instant};
use super::{
    CarbonBasis, CarbonSeries, HttpFetcher, Point, Quality, Series, SignalError, SignalProvider,
    Window,
};
use crate::units::GramsPerKwh;

/// Name in errors and status.
pub const PROVIDER: &str = "uk-carbon-intensity";
/// The public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.carbonintensity.org.uk";
/// Every value of this API covers half an hour.
const RESOLUTION_MINUTES: u32 = 30;
/// Zone name of the national series.
const NATIONAL_ZONE: &str = "GB";

/// National figures or one region (the API's `regionid`, 1 to 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    National,
    Region(u8),
}

/// A client for one scope.
#[derive(Debug, Clone)]
pub struct UkCarbonIntensity {
    fetcher: HttpFetcher,
    base_url: String,
    scope: Scope,
}

impl UkCarbonIntensity {
    /// `base_url` is [`DEFAULT_BASE_URL`] in production, a local server in tests.
    pub fn new(fetcher: HttpFetcher, base_url: impl Into<String>, scope: Scope) -> Self {
        Self {
            fetcher,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            scope,
        }
    }

    /// The request URL for `window`: `/intensity/{from}/{to}` or its regional form.
    pub fn url(&self, window: Window) -> String {
        let (from, to) = (minute_utc(window.from), minute_utc(window.to));
        match self.scope {
            Scope::National => format!("{}/intensity/{from}/{to}", self.base_url),
            Scope::Region(id) => {
                format!(
                    "{}/regional/intensity/{from}/{to}/regionid/{id}",
                    self.base_url
                )
            }
        }
    }
}

impl SignalProvider for UkCarbonIntensity {
    type Unit = GramsPerKwh;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    /// The forecast is updated every half-hour.
    fn publication(&self) -> super::Publication {
        super::Publication::Every(chrono::Duration::minutes(30))
    }

    async fn fetch(&self, window: Window) -> Result<CarbonSeries, SignalError> {
        let body = self.fetcher.get(PROVIDER, &self.url(window), &[]).await?;
        parse(&body)
    }
}

#[derive(Deserialize)]
struct Envelope {
    data: Data,
}

/// National answers hold the half-hours directly; regional ones wrap them in the region, as
/// an object or a one-element list depending on the endpoint.
#[derive(Deserialize)]
#[serde(untagged)]
enum Data {
    National(Vec<HalfHour>),
    Region(Region),
    Regions(Vec<Region>),
}

#[derive(Deserialize)]
struct Region {
    shortname: String,
    data: Vec<HalfHour>,
}

#[derive(Deserialize)]
struct HalfHour {
    from: String,
    to: String,
    intensity: Intensity,
}

#[derive(Deserialize)]
struct Intensity {
    forecast: Option<f64>,
    #[serde(default)]
    actual: Option<f64>,
}

/// Parses a national or regional intensity answer.
pub fn parse(body: &[u8]) -> Result<CarbonSeries, SignalError> {
    let bad = |reason: String| SignalError::Parsing {
        provider: PROVIDER,
        reason,
    };
    let env: Envelope = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let (zone, half_hours) = match env.data {
        Data::National(h) => (NATIONAL_ZONE.to_owned(), h),
        Data::Region(r) => (r.shortname, r.data),
        Data::Regions(mut rs) => match (rs.pop(), rs.is_empty()) {
            (Some(r), true) => (r.shortname, r.data),
            _ => return Err(bad("expected exactly one region".to_owned())),
        },
    };
    let mut points = Vec::with_capacity(half_hours.len());
    for h in half_hours {
        let start = parse_instant(&h.from).map_err(|e| bad(format!("`from`: {e}")))?;
        let end = parse_instant(&h.to).map_err(|e| bad(format!("`to`: {e}")))?;
        if end - start != chrono::Duration::minutes(i64::from(RESOLUTION_MINUTES)) {
            return Err(bad(format!("{} to {} is not a half-hour", h.from, h.to)));
        }
        let (value, quality) = match (h.intensity.actual, h.intensity.forecast) {
            (Some(a), _) => (a, Quality::Published),
            (None, Some(f)) => (f, Quality::Estimated),
            // The API leaves both out where it has nothing: a gap, not an error.
            (None, None) => continue,
        };
        points.push(Point {
            start,
            value: GramsPerKwh(value),
            quality,
        });
    }
    Series::new(
        PROVIDER,
        zone,
        CarbonBasis::Direct,
        RESOLUTION_MINUTES,
        points,
    )
}
