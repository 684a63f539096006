//! The Green Software Foundation's Carbon Aware SDK (<https://github.com/Green-Software-Foundation/carbon-aware-sdk>):
//! its emissions forecast, in either of its two JSON forms, read from a file, a URL, or the
//! SDK's Web API.
//!
//! - The JSON data-source form, as the SDK's file data source reads it and forecast updaters
//!   write it: `{"GeneratedAt": ..., "Emissions": [{"Time", "Rating", "Duration"}]}`, the
//!   duration a .NET time span (`00:15:00`, `1.00:00:00`), an optional `Location` per point.
//!   With `GeneratedAt` it is a forecast (every point [`Quality::Estimated`]); without, a record
//!   of past emissions (published).
//! - The Web API's `/emissions/forecasts/current` answer: a list of forecasts
//!   (`generatedAt`, `location`, `forecastData: [{"location", "timestamp", "duration",
//!   "value"}]`, duration in minutes), of which the one for the configured location is read.
//!
//! Ratings are grams CO2e per kWh, the SDK's unit; what they count (marginal or average,
//! life cycle or direct) depends on the SDK's own data source, so the configuration states it.
//! Points must not overlap: the Web API's forecast data with a `windowSize` are rolling
//! averages, one every few minutes each covering the window, and are refused.
//!
//! The data-source form has no way to say "no value", and files written by forecast updaters
//! pad the hours they have no forecast for with `Rating: 0` (the recorded German sample ends in
//! 24 such hours). A grid at exactly 0 g/kWh does not happen, so by default an exact zero is
//! read as a gap; [`Zeros::AreValues`] keeps zeros for the rare grid where they are real.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::time::parse_instant;
use super::{
    CarbonBasis, CarbonSeries, FetchFailure, HttpFetcher, Point, Publication, Quality, Series,
    SignalError, SignalProvider, Window,
};
use crate::units::GramsPerKwh;

/// Name in errors and status.
pub const PROVIDER: &str = "carbon-aware-sdk";
const SECONDS_PER_MINUTE: i64 = 60;
const MINUTES_PER_DAY: i64 = 24 * 60;
/// Zone name when the document names no location.
const NO_LOCATION: &str = "-";

/// How exact zeros in the data-source form are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// As gaps: the form's padding for hours without a forecast (the default).
    AreGaps,
    /// As intensities of 0 g/kWh.
    AreValues,
}

/// Where the forecast comes from.
#[derive(Debug, Clone)]
pub enum Location {
    /// A file in the data-source form.
    File(std::path::PathBuf),
    /// A document in either form at a URL.
    Url { fetcher: HttpFetcher, url: String },
    /// The SDK's Web API: `{base_url}/emissions/forecasts/current?location={location}`.
    WebApi {
        fetcher: HttpFetcher,
        base_url: String,
        location: String,
    },
}

/// How to read one Carbon Aware SDK forecast.
#[derive(Debug, Clone)]
pub struct CarbonAware {
    pub location: Location,
    /// What the ratings count.
    pub basis: CarbonBasis,
    pub zeros: Zeros,
    /// The SDK location to read when the document has several (`eastus`, `DE`).
    pub sdk_location: Option<String>,
}

impl SignalProvider for CarbonAware {
    type Unit = GramsPerKwh;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn fetch(&self, _window: Window) -> Result<CarbonSeries, SignalError> {
        let (body, location) = match &self.location {
            Location::File(path) => (
                std::fs::read(path).map_err(|e| SignalError::Fetching {
                    provider: PROVIDER,
                    endpoint: path.display().to_string(),
                    failure: FetchFailure::Transport(e.to_string()),
                })?,
                self.sdk_location.clone(),
            ),
            Location::Url { fetcher, url } => (
                fetcher.get(PROVIDER, url, &[]).await?,
                self.sdk_location.clone(),
            ),
            Location::WebApi {
                fetcher,
                base_url,
                location,
            } => {
                let url = format!(
                    "{}/emissions/forecasts/current?location={location}",
                    base_url.trim_end_matches('/')
                );
                (
                    fetcher.get(PROVIDER, &url, &[]).await?,
                    Some(location.clone()),
                )
            }
        };
        parse(&body, location.as_deref(), self.basis, self.zeros)
    }

    /// Forecast updaters run every few minutes to hourly; hourly keeps up with the slower ones.
    fn publication(&self) -> Publication {
        match self.location {
            Location::File(_) => Publication::Document,
            _ => Publication::Every(Duration::hours(1)),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataSourceDoc {
    #[serde(default)]
    generated_at: Option<String>,
    emissions: Vec<DataSourcePoint>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataSourcePoint {
    #[serde(default)]
    location: Option<String>,
    time: String,
    rating: f64,
    duration: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebForecast {
    #[serde(default)]
    location: Option<String>,
    forecast_data: Vec<WebPoint>,
}

#[derive(Deserialize)]
struct WebPoint {
    timestamp: String,
    duration: i64,
    value: f64,
}

/// One point as read, before the checks.
struct Raw {
    start: DateTime<Utc>,
    minutes: i64,
    rating: f64,
}

/// Parses either form; `location` picks the SDK location when the document has several.
pub fn parse(
    body: &[u8],
    location: Option<&str>,
    basis: CarbonBasis,
    zeros: Zeros,
) -> Result<CarbonSeries, SignalError> {
    let bad = |reason: String| SignalError::Parsing {
        provider: PROVIDER,
        reason,
    };
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let (raw, zone, forecast, zeros) = if doc.is_array() {
        let (raw, zone) = web_api(doc, location).map_err(bad)?;
        // The Web API has real nulls upstream and never pads; its zeros are values.
        (raw, zone, true, Zeros::AreValues)
    } else {
        let (raw, zone, forecast) = data_source(doc, location).map_err(bad)?;
        (raw, zone, forecast, zeros)
    };
    let Some(first) = raw.first() else {
        return Err(bad("the forecast holds no point".to_owned()));
    };
    let minutes = first.minutes;
    if minutes <= 0 || MINUTES_PER_DAY % minutes != 0 {
        return Err(bad(format!(
            "a duration of {minutes} min does not divide a day"
        )));
    }
    let mut points = Vec::with_capacity(raw.len());
    let mut previous: Option<&Raw> = None;
    for (i, r) in raw.iter().enumerate() {
        if r.minutes != minutes {
            return Err(bad(format!(
                "point {i} at {} lasts {} min, the first {minutes} min: one document must have \
                 one duration",
                r.start.to_rfc3339(),
                r.minutes
            )));
        }
        if let Some(p) = previous
            && r.start > p.start
            && r.start < p.start + Duration::minutes(minutes)
        {
            return Err(bad(format!(
                "point {i} at {} starts inside the {minutes}-min point before it (rolling \
                 averages over a window overlap; ask without a window size)",
                r.start.to_rfc3339()
            )));
        }
        previous = Some(r);
        if !r.rating.is_finite() || r.rating < 0.0 {
            return Err(bad(format!(
                "point {i} at {}: {} is not an intensity",
                r.start.to_rfc3339(),
                r.rating
            )));
        }
        if r.rating == 0.0 && zeros == Zeros::AreGaps {
            continue;
        }
        points.push(Point {
            start: r.start,
            value: GramsPerKwh(r.rating),
            quality: if forecast {
                Quality::Estimated
            } else {
                Quality::Published
            },
        });
    }
    if points.is_empty() {
        return Err(bad(
            "every rating is 0, which this form uses for \"no forecast\"".to_owned(),
        ));
    }
    Series::new(PROVIDER, zone, basis, minutes as u32, points)
}

type Parsed = (Vec<Raw>, String, bool);

fn data_source(doc: serde_json::Value, location: Option<&str>) -> Result<Parsed, String> {
    let doc: DataSourceDoc = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    let locations: std::collections::BTreeSet<&str> = doc
        .emissions
        .iter()
        .filter_map(|p| p.location.as_deref())
        .collect();
    let zone = pick_location(&locations, location)?;
    let mut raw = Vec::with_capacity(doc.emissions.len());
    for (i, p) in doc.emissions.iter().enumerate() {
        if p.location
            .as_deref()
            .is_some_and(|l| Some(l) != zone.as_deref())
        {
            continue;
        }
        let start = parse_instant(&p.time).map_err(|r| format!("Emissions[{i}].Time: {r}"))?;
        let minutes =
            time_span_minutes(&p.duration).map_err(|r| format!("Emissions[{i}].Duration: {r}"))?;
        raw.push(Raw {
            start,
            minutes,
            rating: p.rating,
        });
    }
    if let Some(g) = &doc.generated_at {
        parse_instant(g).map_err(|r| format!("GeneratedAt: {r}"))?;
    }
    Ok((
        raw,
        zone.unwrap_or_else(|| NO_LOCATION.to_owned()),
        doc.generated_at.is_some(),
    ))
}

fn web_api(doc: serde_json::Value, location: Option<&str>) -> Result<(Vec<Raw>, String), String> {
    let forecasts: Vec<WebForecast> = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    let locations: std::collections::BTreeSet<&str> = forecasts
        .iter()
        .filter_map(|f| f.location.as_deref())
        .collect();
    let zone = pick_location(&locations, location)?;
    let forecast = forecasts
        .iter()
        .find(|f| f.location.as_deref() == zone.as_deref())
        .or_else(|| forecasts.first())
        .ok_or("the answer holds no forecast")?;
    let mut raw = Vec::with_capacity(forecast.forecast_data.len());
    for (i, p) in forecast.forecast_data.iter().enumerate() {
        let start =
            parse_instant(&p.timestamp).map_err(|r| format!("forecastData[{i}].timestamp: {r}"))?;
        raw.push(Raw {
            start,
            minutes: p.duration,
            rating: p.value,
        });
    }
    Ok((raw, zone.unwrap_or_else(|| NO_LOCATION.to_owned())))
}

/// The location to read: the configured one (which must be there), else the only one.
fn pick_location(
    found: &std::collections::BTreeSet<&str>,
    wanted: Option<&str>,
) -> Result<Option<String>, String> {
    let list = || found.iter().copied().collect::<Vec<_>>().join(", ");
    match (wanted, found.len()) {
        (Some(w), _) if found.contains(w) => Ok(Some(w.to_owned())),
        (Some(w), 0) => Ok(Some(w.to_owned())),
        (Some(w), _) => Err(format!(
            "no forecast for location `{w}` (the answer has: {})",
            list()
        )),
        (None, 0) => Ok(None),
        (None, 1) => Ok(found.iter().next().map(|s| (*s).to_owned())),
        (None, _) => Err(format!(
            "the answer holds several locations ({}): configure `location`",
            list()
        )),
    }
}

/// A .NET `TimeSpan` (`[d.]hh:mm[:ss]`) in whole minutes.
fn time_span_minutes(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}` is not a duration like 00:15:00");
    let s = s.trim();
    let (days, clock) = match s.split_once('.') {
        Some((d, rest)) if rest.contains(':') && !d.contains(':') => {
            (d.parse::<i64>().map_err(|_| bad())?, rest)
        }
        _ => (0, s),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let num = |p: &str| p.parse::<i64>().map_err(|_| bad());
    let (h, m, sec) = match parts.as_slice() {
        [h, m] => (num(h)?, num(m)?, 0),
        [h, m, sec] => (num(h)?, num(m)?, num(sec)?),
        _ => return Err(bad()),
    };
    if !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..60).contains(&sec) || days < 0 {
        return Err(bad());
    }
    let seconds = ((days * 24 + h) * 60 + m) * SECONDS_PER_MINUTE + sec;
    if seconds % SECONDS_PER_MINUTE != 0 {
        return Err(format!("`{s}` is not a whole number of minutes"));
    }
    Ok(seconds / SECONDS_PER_MINUTE)
}

#[cfg(test)]
mod tests {
    use super::time_span_minutes;

    #[test]
    fn time_spans() {
        assert_eq!(time_span_minutes("00:15:00"), Ok(15));
        assert_eq!(time_span_minutes("01:00"), Ok(60));
        assert_eq!(time_span_minutes("1.00:00:00"), Ok(1440));
        assert!(time_span_minutes("00:00:30").is_err());
        assert!(time_span_minutes("15 minutes").is_err());
        assert!(time_span_minutes("25:00:00").is_err());
    }
}
