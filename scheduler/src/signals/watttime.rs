//! WattTime API v3 (<https://docs.watttime.org>): grid emission rates for a balancing
//! authority region, as a forecast (`/v3/forecast`) or as history (`/v3/historical`).
//!
//! The signal is chosen explicitly, never defaulted: [`Signal::Marginal`] is the marginal
//! operating emissions rate (`co2_moer`: what one more kWh of load emits, the signal to shift
//! load by), [`Signal::Average`] the average operating emissions rate (`co2_aoer`). An answer
//! for another signal than the one asked for is refused. WattTime gives both in pounds of CO2
//! per MWh (`lbs_co2_per_mwh`); they become g/kWh (× 453.59237 / 1000, so 1000 lbs/MWh is
//! 453.59 g/kWh). Any other `units` (the `percentile` of the signal index, ...) is refused.
//!
//! Access: `GET /login` with HTTP basic authentication gives a token, valid for 30 minutes,
//! sent as a bearer token; it is kept for [`TOKEN_REUSE`] and dropped when refused (401). A
//! region can also be found from coordinates (`/v3/region-from-loc`), once. Credentials never
//! appear in URLs or messages; WattTime's own error messages ("Invalid scope...", "No coverage
//! available for these coordinates...") are kept in the error.
//!
//! Forecast points are [`Quality::Estimated`]; historical points are published unless WattTime
//! says it imputed them (`imputed_data_used`). A `/v3/forecast/historical` answer (one forecast
//! per generation time) is read as its most recently generated forecast.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::time::parse_instant;
use super::{
    ApiKey, CarbonBasis, CarbonSeries, HttpFetcher, Point, Publication, Quality, Series,
    SignalError, SignalProvider, Window,
};
use crate::units::GramsPerKwh;

/// Name in errors and status.
pub const PROVIDER: &str = "watttime";
/// The public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.watttime.org";
/// The one unit WattTime gives emission rates in.
pub const POUNDS_PER_MWH: &str = "lbs_co2_per_mwh";
/// Grams in an avoirdupois pound.
pub const GRAMS_PER_POUND: f64 = 453.592_37;
const KWH_PER_MWH: f64 = 1000.0;
/// Tokens last 30 minutes; one is reused for 25, so that none expires between being checked
/// and being used.
pub const TOKEN_REUSE: std::time::Duration = std::time::Duration::from_secs(25 * 60);
/// WattTime publishes a new forecast every five minutes.
const FORECAST_PERIOD_MINUTES: i64 = 5;
const SECONDS_PER_MINUTE: i64 = 60;
const MINUTES_PER_DAY: i64 = 24 * 60;

/// Which emission rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Marginal operating emissions rate (`co2_moer`).
    Marginal,
    /// Average operating emissions rate (`co2_aoer`).
    Average,
}

impl Signal {
    /// The API's `signal_type`.
    pub fn signal_type(self) -> &'static str {
        match self {
            Signal::Marginal => "co2_moer",
            Signal::Average => "co2_aoer",
        }
    }

    /// What the series' values count.
    pub fn basis(self) -> CarbonBasis {
        match self {
            Signal::Marginal => CarbonBasis::Marginal,
            // WattTime's average rate counts operational emissions.
            Signal::Average => CarbonBasis::Direct,
        }
    }
}

/// Which data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The current forecast, from now on (`/v3/forecast`).
    Forecast,
    /// Past values over the window asked for (`/v3/historical`).
    Historical,
}

/// Where the region comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// A WattTime region abbreviation (`CAISO_NORTH`).
    Region(String),
    /// Coordinates, resolved once through `/v3/region-from-loc`.
    Location { latitude: f64, longitude: f64 },
}

/// The login and the resolved region, kept between fetches.
#[derive(Debug, Default)]
struct Session {
    token: Option<(ApiKey, tokio::time::Instant)>,
    region: Option<String>,
}

/// A client for one region and signal.
#[derive(Debug, Clone)]
pub struct WattTime {
    fetcher: HttpFetcher,
    base_url: String,
    username: ApiKey,
    password: ApiKey,
    place: Place,
    signal: Signal,
    endpoint: Endpoint,
    /// Hours of forecast asked for; the API's full horizon when `None`.
    horizon_hours: Option<u32>,
    session: Arc<Mutex<Session>>,
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

#[derive(Deserialize)]
struct RegionAnswer {
    region: String,
}

impl WattTime {
    pub fn new(
        fetcher: HttpFetcher,
        base_url: impl Into<String>,
        username: ApiKey,
        password: ApiKey,
        place: Place,
        signal: Signal,
        endpoint: Endpoint,
    ) -> Self {
        Self {
            fetcher,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            username,
            password,
            place,
            signal,
            endpoint,
            horizon_hours: None,
            session: Arc::default(),
        }
    }

    /// Asks for `hours` of forecast rather than the full horizon.
    pub fn with_horizon_hours(mut self, hours: u32) -> Self {
        self.horizon_hours = Some(hours);
        self
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        // A panic while holding the lock cannot leave the session half-written (each field is
        // replaced whole), so a poisoned lock is still usable.
        self.session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn token(&self) -> Result<ApiKey, SignalError> {
        if let Some((token, at)) = &self.session().token
            && at.elapsed() < TOKEN_REUSE
        {
            return Ok(token.clone());
        }
        let url = format!("{}/login", self.base_url);
        let body = self
            .fetcher
            .get_basic_auth(PROVIDER, &url, &self.username, &self.password)
            .await?;
        let login: Login = serde_json::from_slice(&body).map_err(|e| SignalError::Parsing {
            provider: PROVIDER,
            reason: format!("the login answer: {e}"),
        })?;
        let token = ApiKey::new(login.token);
        self.session().token = Some((token.clone(), tokio::time::Instant::now()));
        Ok(token)
    }

    async fn get(&self, url: &str, token: &ApiKey) -> Result<Vec<u8>, SignalError> {
        let bearer = format!("Bearer {}", token.expose());
        let result = self
            .fetcher
            .get(PROVIDER, url, &[("Authorization", bearer.as_str())])
            .await;
        if let Err(SignalError::Fetching {
            failure: super::FetchFailure::Status { status: 401, .. },
            ..
        }) = &result
        {
            // The token was refused: log in again next time.
            self.session().token = None;
        }
        result
    }

    async fn region(&self, token: &ApiKey) -> Result<String, SignalError> {
        let (latitude, longitude) = match &self.place {
            Place::Region(r) => return Ok(r.clone()),
            Place::Location {
                latitude,
                longitude,
            } => (*latitude, *longitude),
        };
        if let Some(r) = &self.session().region {
            return Ok(r.clone());
        }
        let url = format!(
            "{}/v3/region-from-loc?latitude={latitude}&longitude={longitude}&signal_type={}",
            self.base_url,
            self.signal.signal_type()
        );
        let body = self.get(&url, token).await?;
        let answer: RegionAnswer =
            serde_json::from_slice(&body).map_err(|e| SignalError::Parsing {
                provider: PROVIDER,
                reason: format!("the region answer: {e}"),
            })?;
        self.session().region = Some(answer.region.clone());
        Ok(answer.region)
    }

    /// The data URL for `region` over `window` (no credentials in it).
    pub fn url(&self, region: &str, window: Window) -> String {
        let (base, signal) = (&self.base_url, self.signal.signal_type());
        match self.endpoint {
            Endpoint::Forecast => {
                let horizon = self
                    .horizon_hours
                    .map(|h| format!("&horizon_hours={h}"))
                    .unwrap_or_default();
                format!("{base}/v3/forecast?region={region}&signal_type={signal}{horizon}")
            }
            Endpoint::Historical => format!(
                "{base}/v3/historical?region={region}&signal_type={signal}&start={}&end={}",
                window.from.format("%Y-%m-%dT%H:%M:%SZ"),
                window.to.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        }
    }
}

impl SignalProvider for WattTime {
    type Unit = GramsPerKwh;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn fetch(&self, window: Window) -> Result<CarbonSeries, SignalError> {
        let token = self.token().await?;
        let region = self.region(&token).await?;
        let body = self.get(&self.url(&region, window), &token).await?;
        parse(&body, self.signal, self.endpoint)
    }

    /// A new forecast every five minutes; history is complete once an hour has passed.
    fn publication(&self) -> Publication {
        match self.endpoint {
            Endpoint::Forecast => Publication::Every(Duration::minutes(FORECAST_PERIOD_MINUTES)),
            Endpoint::Historical => Publication::Every(Duration::hours(1)),
        }
    }

    fn notes(&self) -> Vec<String> {
        vec![format!(
            "WattTime {} ({}), converted from lbs/MWh",
            match self.signal {
                Signal::Marginal => "marginal operating emissions rate",
                Signal::Average => "average operating emissions rate",
            },
            self.signal.signal_type()
        )]
    }
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<serde_json::Value>,
    meta: Meta,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    region: Option<String>,
    signal_type: String,
    units: String,
    data_point_period_seconds: i64,
}

#[derive(Deserialize)]
struct DataPoint {
    point_time: String,
    value: Option<f64>,
    #[serde(default)]
    imputed_data_used: Option<bool>,
}

#[derive(Deserialize)]
struct GeneratedForecast {
    generated_at: String,
    forecast: Vec<DataPoint>,
}

/// Parses a `/v3/forecast` or `/v3/forecast/historical` answer (`endpoint` forecast) or a
/// `/v3/historical` one, checking that it carries `signal` in pounds per MWh.
pub fn parse(body: &[u8], signal: Signal, endpoint: Endpoint) -> Result<CarbonSeries, SignalError> {
    let bad = |reason: String| SignalError::Parsing {
        provider: PROVIDER,
        reason,
    };
    // An error answer that arrived with a success status still says what went wrong.
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(err) = o.get("error").and_then(serde_json::Value::as_str)
    {
        let detail = o
            .get("message")
            .and_then(serde_json::Value::as_str)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Err(bad(format!("WattTime answered an error: {err}{detail}")));
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let meta = answer.meta;
    if meta.signal_type != signal.signal_type() {
        return Err(bad(format!(
            "the answer is `{}` but the configuration asks for `{}` ({:?}); marginal and \
             average rates are not interchangeable",
            meta.signal_type,
            signal.signal_type(),
            signal
        )));
    }
    if meta.units != POUNDS_PER_MWH {
        return Err(bad(format!(
            "`units` is `{}`, not an emission rate in `{POUNDS_PER_MWH}`",
            meta.units
        )));
    }
    let period = meta.data_point_period_seconds;
    if period <= 0
        || period % SECONDS_PER_MINUTE != 0
        || MINUTES_PER_DAY % (period / SECONDS_PER_MINUTE) != 0
    {
        return Err(bad(format!(
            "`data_point_period_seconds` {period} is not a whole number of minutes dividing a day"
        )));
    }
    let forecast = endpoint == Endpoint::Forecast;
    let points = points(answer.data, forecast).map_err(bad)?;
    let mut out = Vec::with_capacity(points.len());
    for (i, p) in points.into_iter().enumerate() {
        let start =
            parse_instant(&p.point_time).map_err(|r| bad(format!("data[{i}].point_time: {r}")))?;
        // A missing value is a gap, not a zero.
        let Some(lbs) = p.value else {
            continue;
        };
        if !lbs.is_finite() || lbs < 0.0 {
            return Err(bad(format!(
                "data[{i}].value {lbs} at {} is not an emission rate",
                start.to_rfc3339()
            )));
        }
        let quality = if forecast || p.imputed_data_used == Some(true) {
            Quality::Estimated
        } else {
            Quality::Published
        };
        out.push(Point {
            start,
            value: pounds_per_mwh_to_g_per_kwh(lbs),
            quality,
        });
    }
    Series::new(
        PROVIDER,
        meta.region.unwrap_or_default(),
        signal.basis(),
        (period / SECONDS_PER_MINUTE) as u32,
        out,
    )
}

/// lbs/MWh as g/kWh: grams per pound over kWh per MWh.
pub fn pounds_per_mwh_to_g_per_kwh(lbs: f64) -> GramsPerKwh {
    GramsPerKwh(lbs * GRAMS_PER_POUND / KWH_PER_MWH)
}

/// The answer's points: flat (`/v3/forecast`, `/v3/historical`) or, for a forecast, the most
/// recently generated of several (`/v3/forecast/historical`).
fn points(data: Vec<serde_json::Value>, forecast: bool) -> Result<Vec<DataPoint>, String> {
    let nested = data.first().is_some_and(|d| d.get("forecast").is_some());
    if nested && !forecast {
        return Err("the answer holds forecasts, but history was asked for".to_owned());
    }
    if !nested {
        return data
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value::<DataPoint>(v).map_err(|e| format!("data[{i}]: {e}"))
            })
            .collect();
    }
    let mut latest: Option<(DateTime<Utc>, Vec<DataPoint>)> = None;
    for (i, v) in data.into_iter().enumerate() {
        let g: GeneratedForecast =
            serde_json::from_value(v).map_err(|e| format!("data[{i}]: {e}"))?;
        let at =
            parse_instant(&g.generated_at).map_err(|r| format!("data[{i}].generated_at: {r}"))?;
        if latest.as_ref().is_none_or(|(t, _)| at > *t) {
            latest = Some((at, g.forecast));
        }
    }
    latest
        .map(|(_, f)| f)
        .ok_or_else(|| "the answer holds no forecast".to_owned())
}
