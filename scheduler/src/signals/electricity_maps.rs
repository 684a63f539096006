//! Electricity Maps v3 (<https://app.electricitymaps.com>): carbon intensity of a zone, the
//! last 24 hours (`/v3/carbon-intensity/history`), a past range (`/past-range`) or the
//! forecast (`/forecast`).
//!
//! The key goes in the `auth-token` header and nowhere else (not the URL, not a message). A
//! history point with `isEstimated: true` (Electricity Maps filled it in) and every forecast
//! point are [`Quality::Estimated`]. Points whose intensity is `null` are gaps. The accounting
//! basis is the points' `emissionFactorType` (life cycle by default).

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::time::parse_instant;
use super::{
    ApiKey, CarbonBasis, CarbonSeries, HttpFetcher, Point, Quality, Series, SignalError,
    SignalProvider, Window,
};
use crate::units::GramsPerKwh;

/// Name in errors and status.
pub const PROVIDER: &str = "electricity-maps";
/// The public endpoint (the `/v3/...` paths are appended).
pub const DEFAULT_BASE_URL: &str = "https://api.electricitymaps.com";
/// The header the API reads the key from.
const AUTH_HEADER: &str = "auth-token";
/// The API's default granularity, used when an answer has one point and so shows none.
const DEFAULT_RESOLUTION_MINUTES: u32 = 60;

/// Which carbon-intensity endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The last 24 hours, whatever the window.
    History,
    /// The window asked for (`start` and `end`, in the past).
    PastRange,
    /// The forecast from now on, whatever the window.
    Forecast,
}

/// A client for one zone and endpoint.
#[derive(Debug, Clone)]
pub struct ElectricityMaps {
    fetcher: HttpFetcher,
    base_url: String,
    key: ApiKey,
    zone: String,
    endpoint: Endpoint,
}

impl ElectricityMaps {
    /// `zone` is an Electricity Maps zone key (`DE`, `GB`, `US-CAL-CISO`, ...).
    pub fn new(
        fetcher: HttpFetcher,
        base_url: impl Into<String>,
        key: ApiKey,
        zone: impl Into<String>,
        endpoint: Endpoint,
    ) -> Self {
        Self {
            fetcher,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            key,
            zone: zone.into(),
            endpoint,
        }
    }

    /// The request URL for `window` (it carries no credentials).
    pub fn url(&self, window: Window) -> String {
        let (base, zone) = (&self.base_url, &self.zone);
        match self.endpoint {
            Endpoint::History => format!("{base}/v3/carbon-intensity/history?zone={zone}"),
            Endpoint::Forecast => format!("{base}/v3/carbon-intensity/forecast?zone={zone}"),
            Endpoint::PastRange => format!(
                "{base}/v3/carbon-intensity/past-range?zone={zone}&start={}&end={}",
                window.from.format("%Y-%m-%dT%H:%MZ"),
                window.to.format("%Y-%m-%dT%H:%MZ")
            ),
        }
    }
}

impl SignalProvider for ElectricityMaps {
    type Unit = GramsPerKwh;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    /// Electricity Maps updates its data and forecast hourly.
    fn publication(&self) -> super::Publication {
        super::Publication::Every(chrono::Duration::hours(1))
    }

    async fn fetch(&self, window: Window) -> Result<CarbonSeries, SignalError> {
        let headers = [(AUTH_HEADER, self.key.expose())];
        let body = self
            .fetcher
            .get(PROVIDER, &self.url(window), &headers)
            .await?;
        parse(&body)
    }
}

/// The three endpoints name their list differently; exactly one is present.
#[derive(Deserialize)]
struct Answer {
    zone: String,
    history: Option<Vec<Entry>>,
    forecast: Option<Vec<Entry>>,
    data: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    carbon_intensity: Option<f64>,
    datetime: String,
    #[serde(default)]
    is_estimated: Option<bool>,
    #[serde(default)]
    emission_factor_type: Option<String>,
}

/// Parses a history, past-range or forecast answer.
pub fn parse(body: &[u8]) -> Result<CarbonSeries, SignalError> {
    let bad = |reason: String| SignalError::Parsing {
        provider: PROVIDER,
        reason,
    };
    let answer: Answer = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let (entries, forecast) = match (answer.history, answer.forecast, answer.data) {
        (Some(h), None, None) => (h, false),
        (None, Some(f), None) => (f, true),
        (None, None, Some(d)) => (d, false),
        _ => {
            return Err(bad(
                "expected exactly one of `history`, `forecast` or `data`".to_owned(),
            ));
        }
    };
    let mut basis = None;
    // Every listed instant, gaps included, so that a gap does not widen the resolution.
    let mut starts = Vec::with_capacity(entries.len());
    let mut points = Vec::with_capacity(entries.len());
    for e in entries {
        let start = parse_instant(&e.datetime).map_err(|r| bad(format!("`datetime`: {r}")))?;
        starts.push(start);
        let this_basis = match e.emission_factor_type.as_deref() {
            None => None,
            Some("lifecycle") => Some(CarbonBasis::Lifecycle),
            Some("direct") => Some(CarbonBasis::Direct),
            Some(other) => return Err(bad(format!("unknown emissionFactorType `{other}`"))),
        };
        match (basis, this_basis) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(
                    "points mix life-cycle and direct intensities".to_owned()
                ));
            }
            (None, b) => basis = b,
            _ => {}
        }
        let Some(value) = e.carbon_intensity else {
            continue;
        };
        let quality = if forecast || e.is_estimated == Some(true) {
            Quality::Estimated
        } else {
            Quality::Published
        };
        points.push(Point {
            start,
            value: GramsPerKwh(value),
            quality,
        });
    }
    let resolution = resolution_minutes(starts).map_err(bad)?;
    // The API's default factor is life cycle; an answer that does not say is that default.
    let basis = basis.unwrap_or(CarbonBasis::Lifecycle);
    Series::new(PROVIDER, answer.zone, basis, resolution, points)
}

/// The spacing of the listed instants: the smallest step between two of them, so that an
/// hour missing from the list does not double the resolution either.
fn resolution_minutes(mut starts: Vec<DateTime<Utc>>) -> Result<u32, String> {
    starts.sort();
    starts.dedup();
    let step = starts.windows(2).map(|w| w[1] - w[0]).min();
    match step {
        None => Ok(DEFAULT_RESOLUTION_MINUTES),
        Some(d) if d > Duration::zero() && d.num_seconds() % 60 == 0 => {
            u32::try_from(d.num_minutes()).map_err(|_| format!("points {d} apart"))
        }
        Some(d) => Err(format!("points {} s apart", d.num_seconds())),
    }
}
