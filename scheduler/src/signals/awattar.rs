//! aWATTar's market data (<https://www.awattar.at/services/api>): the EPEX day-ahead price of
//! Austria (`api.awattar.at`) or Germany (`api.awattar.de`), no key needed.
//!
//! Instants are Unix milliseconds; prices are EUR/MWh, negative ones included. The length of a
//! price is read from its start and end (an hour until the market moved to quarter-hours), and
//! must be the same for every price of an answer. Day-ahead prices are [`Quality::Published`].

use serde::Deserialize;

use super::{
    Currency, HttpFetcher, Point, PriceSeries, Quality, Series, SignalError, SignalProvider, Window,
};
use crate::units::PricePerMwh;

/// Name in errors and status.
pub const PROVIDER: &str = "awattar";
/// The Austrian endpoint; the German one is `https://api.awattar.de`.
pub const DEFAULT_BASE_URL: &str = "https://api.awattar.at";
/// The only unit the API is documented to answer in.
const UNIT: &str = "Eur/MWh";
const MS_PER_MINUTE: i64 = 60_000;

/// A client for one market.
#[derive(Debug, Clone)]
pub struct Awattar {
    fetcher: HttpFetcher,
    base_url: String,
    /// Zone name given to the series (`AT`, `DE-LU`).
    zone: String,
}

impl Awattar {
    pub fn new(fetcher: HttpFetcher, base_url: impl Into<String>, zone: impl Into<String>) -> Self {
        Self {
            fetcher,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            zone: zone.into(),
        }
    }

    /// The request URL for `window` (milliseconds since the epoch).
    pub fn url(&self, window: Window) -> String {
        format!(
            "{}/v1/marketdata?start={}&end={}",
            self.base_url,
            window.from.timestamp_millis(),
            window.to.timestamp_millis()
        )
    }
}

impl SignalProvider for Awattar {
    type Unit = PricePerMwh;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    /// aWATTar publishes the next day's EPEX prices in the early afternoon, Vienna time.
    fn publication(&self) -> super::Publication {
        super::publication::daily(14, 0, chrono_tz::Europe::Vienna)
    }

    async fn fetch(&self, window: Window) -> Result<PriceSeries, SignalError> {
        let body = self.fetcher.get(PROVIDER, &self.url(window), &[]).await?;
        parse(&body, &self.zone)
    }
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Price>,
}

#[derive(Deserialize)]
struct Price {
    start_timestamp: i64,
    end_timestamp: i64,
    marketprice: f64,
    unit: String,
}

/// Parses a market-data answer for `zone`.
pub fn parse(body: &[u8], zone: &str) -> Result<PriceSeries, SignalError> {
    let bad = |reason: String| SignalError::Parsing {
        provider: PROVIDER,
        reason,
    };
    let answer: Answer = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let mut resolution_ms = None;
    let mut points = Vec::with_capacity(answer.data.len());
    for p in answer.data {
        if p.unit != UNIT {
            return Err(bad(format!("unit `{}`, expected `{UNIT}`", p.unit)));
        }
        let length = p.end_timestamp - p.start_timestamp;
        match resolution_ms {
            None => resolution_ms = Some(length),
            Some(r) if r != length => {
                return Err(bad(format!(
                    "prices of {} and {} min in one answer",
                    r / MS_PER_MINUTE,
                    length / MS_PER_MINUTE
                )));
            }
            Some(_) => {}
        }
        let start =
            chrono::DateTime::from_timestamp_millis(p.start_timestamp).ok_or_else(|| {
                bad(format!(
                    "start_timestamp {} out of range",
                    p.start_timestamp
                ))
            })?;
        points.push(Point {
            start,
            value: PricePerMwh(p.marketprice),
            quality: Quality::Published,
        });
    }
    let resolution_ms =
        resolution_ms.ok_or_else(|| bad("the answer holds no prices".to_owned()))?;
    if resolution_ms <= 0 || resolution_ms % MS_PER_MINUTE != 0 {
        return Err(bad(format!("a price lasting {resolution_ms} ms")));
    }
    let minutes = u32::try_from(resolution_ms / MS_PER_MINUTE)
        .map_err(|_| bad(format!("a price lasting {resolution_ms} ms")))?;
    Series::new(PROVIDER, zone, Currency("EUR".to_owned()), minutes, points)
}
