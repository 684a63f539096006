//! WattTime v3 and the Carbon Aware SDK's forecast formats, against recorded answers served
//! by a real HTTP server on 127.0.0.1. Expected values are read from the raw files and
//! converted by the test itself (1 lb = 453.59237 g); every bad input (HTTP 401, 403, 404,
//! 429, 500, a silent server, cut-off and malformed bodies, wrong units or signal, gaps,
//! duplicates, overlapping points) must come back as a clear error, never a panic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use offpeak_scheduler::signals::carbon_aware::{self, CarbonAware, Location, Zeros};
use offpeak_scheduler::signals::watttime::{self, Endpoint, Place, Signal, WattTime};
use offpeak_scheduler::signals::{
    ApiKey, CarbonBasis, FetchFailure, HttpFetcher, Quality, Series, SignalError, SignalProvider,
};
use offpeak_scheduler::units::GramsPerKwh;
use serde_json::Value;
mod common;

use common::http::{Reply, fetcher, fixture, raw_json, read, serve, utc, window};

const USER: &str = "wt-user";
const PASSWORD: &str = "wt-pass-9f3e";
/// base64("wt-user:wt-pass-9f3e"), as HTTP basic authentication sends it.
const BASIC: &str = "d3QtdXNlcjp3dC1wYXNzLTlmM2U=";
const TOKEN: &str = "tok-5c1d2e";
const LOGIN: &str = r#"{"token": "tok-5c1d2e"}"#;
const FORECAST: &str = "watttime/forecast_CAISO_NORTH_2023-06-08T1200.json";
const FORECAST_HISTORICAL: &str =
    "watttime/forecast_historical_CAISO_NORTH_2023-06-08T1200-1210.json";
const FORECAST_SAMPLE: &str = "watttime/forecast_historical_sample.json";
const HISTORICAL_SAMPLE: &str = "watttime/historical_sample.json";
const HISTORICAL: &str = "watttime/historical_CAISO_NORTH_2023-06-08_09.json";
const PERCENTILE: &str = "watttime/signal_index_percentile_sample.json";
const INVALID_SCOPE: &str = "watttime/error_invalid_scope.json";
const NO_COVERAGE: &str = "watttime/error_coordinates_not_found.json";
const REGION: &str = "watttime/region_from_loc.json";
const CASDK: &str = "carbon_aware_sdk/emissionsforecast_de_2024-03-24.json";
const CASDK_WEB: &str = "carbon_aware_sdk/webapi_forecasts_current_de.json";
const GRAMS_PER_POUND: f64 = 453.592_37;
const EPS: f64 = 1e-9;

fn client(base: &str, place: Place, signal: Signal, endpoint: Endpoint) -> WattTime {
    WattTime::new(
        fetcher(),
        base,
        ApiKey::new(USER),
        ApiKey::new(PASSWORD),
        place,
        signal,
        endpoint,
    )
}

fn caiso(base: &str, endpoint: Endpoint) -> WattTime {
    client(
        base,
        Place::Region("CAISO_NORTH".into()),
        Signal::Marginal,
        endpoint,
    )
}

/// A string leaked into a leak-checked text.
fn assert_no_secret(text: &str) {
    for secret in [PASSWORD, TOKEN, BASIC] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

/// Checks a series against raw WattTime points (lbs/MWh), converting them independently.
fn assert_matches_pounds(series: &Series<GramsPerKwh>, raw: &[Value], quality: Quality) {
    assert_eq!(series.points.len(), raw.len());
    for (p, r) in series.points.iter().zip(raw) {
        let t = DateTime::parse_from_rfc3339(r["point_time"].as_str().expect("time"))
            .expect("rfc3339")
            .with_timezone(&Utc);
        assert_eq!(p.start, t);
        let lbs = r["value"].as_f64().expect("value");
        let expected = lbs * GRAMS_PER_POUND / 1000.0;
        assert!(
            (p.value.value() - expected).abs() < EPS,
            "{t}: {} != {expected}",
            p.value.value()
        );
        assert_eq!(p.quality, quality, "{t}");
    }
}

fn error<T: std::fmt::Debug>(r: Result<T, SignalError>) -> SignalError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// WattTime over HTTP.

#[tokio::test]
async fn watttime_logs_in_once_and_converts_the_marginal_forecast_from_pounds() {
    let server = serve(vec![
        ("/login", Reply::Body(LOGIN.into())),
        ("/v3/forecast", Reply::Body(read(FORECAST))),
    ])
    .await;
    let wt = caiso(&server.base, Endpoint::Forecast).with_horizon_hours(1);
    let w = window("2023-06-08T12:00:00Z", "2023-06-08T13:00:00Z");
    let series = wt.fetch(w).await.expect("fetch");
    let raw = raw_json(FORECAST);
    assert_matches_pounds(
        &series,
        raw["data"].as_array().expect("data"),
        Quality::Estimated,
    );
    assert_eq!(series.basis, CarbonBasis::Marginal);
    assert_eq!(series.resolution_minutes, 5);
    assert_eq!(series.zone, "CAISO_NORTH");
    assert_eq!(series.points[0].start, utc("2023-06-08T12:05:00Z"));
    assert_eq!(series.known_until, utc("2023-06-08T13:10:00Z"));

    // The token is kept: a second fetch does not log in again.
    wt.fetch(w).await.expect("second fetch");
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let lower: Vec<String> = requests.iter().map(|r| r.to_ascii_lowercase()).collect();
    assert!(
        lower[0].starts_with("get /login http/1.1"),
        "{}",
        requests[0]
    );
    assert!(lower[0].contains(&format!(
        "authorization: basic {}",
        BASIC.to_ascii_lowercase()
    )));
    for r in &requests[1..] {
        assert!(
            r.starts_with(
                "GET /v3/forecast?region=CAISO_NORTH&signal_type=co2_moer&horizon_hours=1 "
            ),
            "{r}"
        );
        assert!(r.to_ascii_lowercase().contains(&format!(
            "authorization: bearer {}",
            TOKEN.to_ascii_lowercase()
        )));
        // Credentials only ever travel in headers.
        let url = r.lines().next().expect("request line");
        assert_no_secret(url);
        assert!(!url.contains(USER));
    }
}

#[test]
fn watttime_units_are_converted_exactly() {
    // 870 lbs/MWh (the sample's first point) is 870 × 0.45359237 g/kWh.
    let s = watttime::parse(&read(FORECAST_SAMPLE), Signal::Marginal, Endpoint::Forecast)
        .expect("parse");
    assert!((s.points[0].value.value() - 394.625_361_9).abs() < 1e-9);
    assert_eq!(
        watttime::pounds_per_mwh_to_g_per_kwh(1000.0),
        GramsPerKwh(453.592_37)
    );
}

#[tokio::test]
async fn watttime_history_asks_for_the_window_and_marks_imputed_points() {
    let server = serve(vec![
        ("/login", Reply::Body(LOGIN.into())),
        ("/v3/historical", Reply::Body(read(HISTORICAL))),
    ])
    .await;
    let wt = caiso(&server.base, Endpoint::Historical);
    let series = wt
        .fetch(window("2023-06-08T00:00:00Z", "2023-06-10T00:00:00Z"))
        .await
        .expect("fetch");
    assert!(
        server.requests()[1].starts_with(
            "GET /v3/historical?region=CAISO_NORTH&signal_type=co2_moer&start=2023-06-08T00:00:00Z&end=2023-06-10T00:00:00Z "
        ),
        "{}",
        server.requests()[1]
    );
    let raw = raw_json(HISTORICAL);
    assert_matches_pounds(
        &series,
        raw["data"].as_array().expect("data"),
        Quality::Published,
    );
    assert_eq!(series.points.len(), 2 * 288);

    // The published sample's points say WattTime imputed them: estimated.
    let sample = watttime::parse(
        &read(HISTORICAL_SAMPLE),
        Signal::Marginal,
        Endpoint::Historical,
    )
    .expect("sample");
    let raw = raw_json(HISTORICAL_SAMPLE);
    assert_matches_pounds(
        &sample,
        raw["data"].as_array().expect("data"),
        Quality::Estimated,
    );
}

#[test]
fn watttime_forecast_history_reads_the_latest_generated_forecast() {
    let s = watttime::parse(
        &read(FORECAST_HISTORICAL),
        Signal::Marginal,
        Endpoint::Forecast,
    )
    .expect("parse");
    let raw = raw_json(FORECAST_HISTORICAL);
    let latest = raw["data"]
        .as_array()
        .expect("data")
        .iter()
        .max_by_key(|d| d["generated_at"].as_str().expect("generated_at").to_owned())
        .expect("a forecast");
    assert_eq!(latest["generated_at"], "2023-06-08T12:10:00+00:00");
    assert_matches_pounds(
        &s,
        latest["forecast"].as_array().expect("points"),
        Quality::Estimated,
    );
    let e = watttime::parse(
        &read(FORECAST_HISTORICAL),
        Signal::Marginal,
        Endpoint::Historical,
    )
    .expect_err("forecasts are not history");
    assert!(
        e.to_string()
            .contains("holds forecasts, but history was asked for"),
        "{e}"
    );
}

#[tokio::test]
async fn watttime_region_from_coordinates_is_resolved_once() {
    let server = serve(vec![
        ("/login", Reply::Body(LOGIN.into())),
        ("/v3/region-from-loc", Reply::Body(read(REGION))),
        ("/v3/forecast", Reply::Body(read(FORECAST))),
    ])
    .await;
    let wt = client(
        &server.base,
        Place::Location {
            latitude: 39.74,
            longitude: -104.99,
        },
        Signal::Marginal,
        Endpoint::Forecast,
    );
    let w = window("2023-06-08T12:00:00Z", "2023-06-08T13:00:00Z");
    wt.fetch(w).await.expect("fetch");
    wt.fetch(w).await.expect("fetch again");
    let r = server.requests();
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(r[1].starts_with(
        "GET /v3/region-from-loc?latitude=39.74&longitude=-104.99&signal_type=co2_moer "
    ));
    // The region the API named is the one asked for, both times.
    assert!(
        r[2].starts_with("GET /v3/forecast?region=PSCO&"),
        "{}",
        r[2]
    );
    assert!(
        r[3].starts_with("GET /v3/forecast?region=PSCO&"),
        "{}",
        r[3]
    );
}

#[tokio::test]
async fn watttime_access_errors_say_what_watttime_said() {
    let scope = String::from_utf8(read(INVALID_SCOPE)).expect("utf-8");
    let coverage = String::from_utf8(read(NO_COVERAGE)).expect("utf-8");
    let scope: &'static str = Box::leak(scope.into_boxed_str());
    let coverage: &'static str = Box::leak(coverage.into_boxed_str());
    let server = serve(vec![
        ("/login", Reply::Body(LOGIN.into())),
        ("/v3/region-from-loc", Reply::Status(404, coverage, None)),
        ("/v3/forecast", Reply::Status(403, scope, None)),
    ])
    .await;
    let w = window("2023-06-08T12:00:00Z", "2023-06-08T13:00:00Z");
    let e = error(caiso(&server.base, Endpoint::Forecast).fetch(w).await);
    let msg = e.to_string();
    assert!(
        msg.starts_with("fetching watttime from http://127.0.0.1:"),
        "{msg}"
    );
    assert!(
        msg.contains("/v3/forecast: HTTP 403: Invalid query parameters: Invalid scope. You do not have sufficient access to this resource."),
        "{msg}"
    );
    assert!(
        msg.contains("free access to CAISO_ZP26."),
        "the whole message is kept: {msg}"
    );
    assert_no_secret(&format!("{msg} {e:?}"));

    let nowhere = client(
        &server.base,
        Place::Location {
            latitude: 0.0,
            longitude: 0.0,
        },
        Signal::Marginal,
        Endpoint::Forecast,
    );
    let msg = error(nowhere.fetch(w).await).to_string();
    assert!(
        msg.contains("/v3/region-from-loc: HTTP 404: No coverage available for these coordinates and signal_type"),
        "{msg}"
    );
}

#[tokio::test]
async fn watttime_refused_token_is_dropped_and_a_bad_login_is_clear() {
    let server = serve(vec![
        ("/login", Reply::Body(LOGIN.into())),
        (
            "/v3/forecast",
            Reply::Status(401, r#"{"error": "Unauthorized"}"#, None),
        ),
    ])
    .await;
    let wt = caiso(&server.base, Endpoint::Forecast);
    let w = window("2023-06-08T12:00:00Z", "2023-06-08T13:00:00Z");
    let e = error(wt.fetch(w).await);
    assert!(e.to_string().contains("HTTP 401: Unauthorized"), "{e}");
    error(wt.fetch(w).await);
    // Each refused token was dropped: the client logged in before each data request.
    let logins = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /login "))
        .count();
    assert_eq!(logins, 2);

    server.answer_all(Reply::Status(
        403,
        r#"{"error": "Invalid credentials"}"#,
        None,
    ));
    let wt = caiso(&server.base, Endpoint::Forecast);
    let e = error(wt.fetch(w).await);
    let msg = format!("{e} {e:?}");
    assert!(
        msg.contains("/login: HTTP 403: Invalid credentials"),
        "{msg}"
    );
    assert_no_secret(&msg);
}

#[tokio::test]
async fn watttime_429_500_timeouts_and_cut_bodies_are_errors() {
    let w = window("2023-06-08T12:00:00Z", "2023-06-08T13:00:00Z");
    let server = serve(vec![
        ("/login", Reply::Body(LOGIN.into())),
        (
            "/v3/forecast",
            Reply::Status(429, "Too many requests", Some("30")),
        ),
    ])
    .await;
    let e = error(caiso(&server.base, Endpoint::Forecast).fetch(w).await);
    assert!(
        matches!(&e, SignalError::Fetching { failure: FetchFailure::Status { status: 429, retry_after: Some(r), .. }, .. } if r == "30"),
        "{e:?}"
    );
    for (reply, what) in [
        (
            Reply::Status(500, "internal error", None),
            "HTTP 500: internal error",
        ),
        // The length announced, half the body sent: the connection ends early.
        (Reply::Truncated(read(FORECAST)), "fetching watttime from"),
        (
            Reply::Body(read(FORECAST)[..700].to_vec()),
            "parsing the answer of watttime",
        ),
        (
            Reply::Body(b"<html>Bad gateway</html>".to_vec()),
            "parsing the answer of watttime",
        ),
    ] {
        let server = serve(vec![
            ("/login", Reply::Body(LOGIN.into())),
            ("/v3/forecast", reply),
        ])
        .await;
        let e = error(caiso(&server.base, Endpoint::Forecast).fetch(w).await);
        assert!(e.to_string().contains(what), "{e}");
        if what.starts_with("fetching") {
            assert!(
                matches!(
                    e,
                    SignalError::Fetching {
                        failure: FetchFailure::Transport(_),
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }
    let server = serve(vec![
        ("/login", Reply::Body(LOGIN.into())),
        ("/v3/forecast", Reply::Silent),
    ])
    .await;
    let quick = HttpFetcher::direct(Duration::from_millis(300)).expect("client");
    let wt = WattTime::new(
        quick,
        &server.base,
        ApiKey::new(USER),
        ApiKey::new(PASSWORD),
        Place::Region("CAISO_NORTH".into()),
        Signal::Marginal,
        Endpoint::Forecast,
    );
    let e = error(wt.fetch(w).await);
    assert!(
        matches!(
            e,
            SignalError::Fetching {
                failure: FetchFailure::Timeout(_),
                ..
            }
        ),
        "{e:?}"
    );
}

/// The forecast fixture with `edit` applied, as bytes.
fn forecast_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = raw_json(FORECAST);
    edit(&mut v);
    serde_json::to_vec(&v).expect("json")
}

#[test]
fn watttime_wrong_units_signals_gaps_and_duplicates() {
    let parse = |body: &[u8], signal| watttime::parse(body, signal, Endpoint::Forecast);
    let e = error(parse(&read(PERCENTILE), Signal::Marginal)).to_string();
    assert!(
        e.contains("`units` is `percentile`, not an emission rate in `lbs_co2_per_mwh`"),
        "{e}"
    );
    let e = error(parse(&read(FORECAST), Signal::Average)).to_string();
    assert!(
        e.contains("the answer is `co2_moer` but the configuration asks for `co2_aoer`"),
        "{e}"
    );
    let kg = forecast_with(|v| v["meta"]["units"] = "kg_co2_per_mwh".into());
    assert!(
        error(parse(&kg, Signal::Marginal))
            .to_string()
            .contains("`kg_co2_per_mwh`")
    );
    // A null value is a gap: the point is left out, not read as zero.
    let gap = forecast_with(|v| v["data"][3]["value"] = Value::Null);
    let s = parse(&gap, Signal::Marginal).expect("a gap is fine");
    assert_eq!(s.points.len(), 12);
    assert!(s.at(utc("2023-06-08T12:20:00Z")).is_none());
    let dup = forecast_with(|v| {
        let first = v["data"][0].clone();
        v["data"].as_array_mut().expect("data").push(first);
    });
    let e = error(parse(&dup, Signal::Marginal)).to_string();
    assert!(
        e.contains("2023-06-08T12:05:00+00:00 is given twice"),
        "{e}"
    );
    let negative = forecast_with(|v| v["data"][2]["value"] = (-5.0).into());
    assert!(
        error(parse(&negative, Signal::Marginal))
            .to_string()
            .contains("is not an emission rate")
    );
    let period = forecast_with(|v| v["meta"]["data_point_period_seconds"] = 90.into());
    assert!(
        error(parse(&period, Signal::Marginal))
            .to_string()
            .contains("`data_point_period_seconds` 90")
    );
    let off_grid =
        forecast_with(|v| v["data"][1]["point_time"] = "2023-06-08T12:11:00+00:00".into());
    assert!(
        error(parse(&off_grid, Signal::Marginal))
            .to_string()
            .contains("not on the 5-min grid")
    );
    let err_body = read(INVALID_SCOPE);
    let e = error(parse(&err_body, Signal::Marginal)).to_string();
    assert!(
        e.contains("WattTime answered an error: Invalid query parameters: Invalid scope."),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Carbon Aware SDK.

#[test]
fn carbon_aware_sdk_data_source_forecast_with_zero_padding_as_a_gap() {
    let raw = raw_json(CASDK);
    let emissions = raw["Emissions"].as_array().expect("Emissions");
    assert_eq!(emissions.len(), 188);
    let s = carbon_aware::parse(&read(CASDK), None, CarbonBasis::Unspecified, Zeros::AreGaps)
        .expect("parse");
    let nonzero: Vec<&Value> = emissions
        .iter()
        .filter(|e| e["Rating"].as_f64() != Some(0.0))
        .collect();
    assert_eq!(s.points.len(), nonzero.len());
    assert_eq!(s.points.len(), 92);
    for (p, e) in s.points.iter().zip(nonzero) {
        assert_eq!(p.start, utc(e["Time"].as_str().expect("Time")));
        assert_eq!(p.value.value(), e["Rating"].as_f64().expect("Rating"));
        assert_eq!(p.quality, Quality::Estimated);
    }
    assert_eq!(s.resolution_minutes, 15);
    // The padding of the second day is not taken for a clean grid.
    assert_eq!(s.known_until, utc("2024-03-24T23:00:00Z"));
    let zeros = carbon_aware::parse(
        &read(CASDK),
        None,
        CarbonBasis::Unspecified,
        Zeros::AreValues,
    )
    .expect("parse");
    assert_eq!(zeros.points.len(), 188);
    assert_eq!(
        zeros.at(utc("2024-03-25T12:00:00Z")).map(|p| p.value),
        Some(GramsPerKwh(0.0))
    );
}

#[tokio::test]
async fn carbon_aware_sdk_web_api_and_file_sources() {
    let server = serve(vec![(
        "/emissions/forecasts/current",
        Reply::Body(read(CASDK_WEB)),
    )])
    .await;
    let web = CarbonAware {
        location: Location::WebApi {
            fetcher: fetcher(),
            base_url: server.base.clone(),
            location: "DE".into(),
        },
        basis: CarbonBasis::Marginal,
        zeros: Zeros::AreGaps,
        sdk_location: None,
    };
    let w = window("2024-03-24T00:00:00Z", "2024-03-24T04:00:00Z");
    let s = web.fetch(w).await.expect("fetch");
    assert!(
        server.requests()[0].starts_with("GET /emissions/forecasts/current?location=DE "),
        "{}",
        server.requests()[0]
    );
    let raw = raw_json(CASDK_WEB);
    let data = raw[0]["forecastData"].as_array().expect("forecastData");
    assert_eq!(s.points.len(), data.len());
    for (p, d) in s.points.iter().zip(data) {
        assert_eq!(p.start, utc(d["timestamp"].as_str().expect("timestamp")));
        assert_eq!(p.value.value(), d["value"].as_f64().expect("value"));
    }
    assert_eq!(s.zone, "DE");
    assert_eq!(s.basis, CarbonBasis::Marginal);

    let file = CarbonAware {
        location: Location::File(fixture(CASDK)),
        basis: CarbonBasis::Unspecified,
        zeros: Zeros::AreGaps,
        sdk_location: None,
    };
    assert_eq!(file.fetch(w).await.expect("file").points.len(), 92);
    let missing = CarbonAware {
        location: Location::File(fixture("carbon_aware_sdk/nope.json")),
        ..file
    };
    let e = error(missing.fetch(w).await).to_string();
    assert!(e.starts_with("fetching carbon-aware-sdk from "), "{e}");
    assert!(e.contains("nope.json"), "{e}");
}

fn casdk_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = raw_json(CASDK);
    edit(&mut v);
    serde_json::to_vec(&v).expect("json")
}

fn casdk_err(body: &[u8], location: Option<&str>) -> String {
    error(carbon_aware::parse(
        body,
        location,
        CarbonBasis::Unspecified,
        Zeros::AreGaps,
    ))
    .to_string()
}

#[test]
fn carbon_aware_sdk_bad_documents_are_refused() {
    let whole = read(CASDK);
    assert!(casdk_err(&whole[..whole.len() / 3], None).contains("EOF while parsing"));
    assert!(casdk_err(b"not json", None).contains("parsing the answer of carbon-aware-sdk"));
    // Rolling averages: half-hour points every quarter-hour overlap.
    let overlap = casdk_with(|v| {
        for e in v["Emissions"].as_array_mut().expect("emissions") {
            e["Duration"] = "00:30:00".into();
        }
    });
    let e = casdk_err(&overlap, None);
    assert!(
        e.contains("starts inside the 30-min point before it"),
        "{e}"
    );
    let mixed = casdk_with(|v| v["Emissions"][5]["Duration"] = "01:00:00".into());
    assert!(casdk_err(&mixed, None).contains("lasts 60 min, the first 15 min"));
    let bad_span = casdk_with(|v| v["Emissions"][0]["Duration"] = "15 minutes".into());
    assert!(
        casdk_err(&bad_span, None)
            .contains("Emissions[0].Duration: `15 minutes` is not a duration")
    );
    let negative = casdk_with(|v| v["Emissions"][3]["Rating"] = (-1.0).into());
    assert!(casdk_err(&negative, None).contains("-1 is not an intensity"));
    let dup = casdk_with(|v| {
        let e = v["Emissions"][0].clone();
        v["Emissions"]
            .as_array_mut()
            .expect("emissions")
            .insert(1, e);
    });
    assert!(casdk_err(&dup, None).contains("is given twice"));
    let zeros = casdk_with(|v| {
        for e in v["Emissions"].as_array_mut().expect("emissions") {
            e["Rating"] = 0.into();
        }
    });
    assert!(casdk_err(&zeros, None).contains("every rating is 0"));
    let no_offset = casdk_with(|v| v["Emissions"][0]["Time"] = "2024-03-24T00:00:00".into());
    assert!(casdk_err(&no_offset, None).contains("Emissions[0].Time"));
    // Several locations need one chosen; an unknown one is named.
    let two = casdk_with(|v| {
        for (i, e) in v["Emissions"]
            .as_array_mut()
            .expect("emissions")
            .iter_mut()
            .enumerate()
        {
            e["Location"] = if i % 2 == 0 { "DE" } else { "FR" }.into();
        }
    });
    assert!(casdk_err(&two, None).contains("several locations (DE, FR): configure `location`"));
    assert!(
        casdk_err(&two, Some("AT"))
            .contains("no forecast for location `AT` (the answer has: DE, FR)")
    );
    // Every other quarter-hour is DE's: its series has gaps between its points.
    let de = carbon_aware::parse(&two, Some("DE"), CarbonBasis::Unspecified, Zeros::AreGaps)
        .expect("DE");
    assert_eq!(de.points.len(), 46);
    assert_eq!(de.zone, "DE");
}

// ---------------------------------------------------------------------------------------------
// Energy-Charts.

const EC_DE: &str = "energy_charts/co2eq_de_2024-03-22.json";
const EC_CH: &str = "energy_charts/co2eq_ch_2024-03-22.json";

/// Checks a series against the raw parallel lists: measured where `co2eq` has a value,
/// forecast where only `co2eq_forecast` has one.
fn assert_matches_energy_charts(series: &Series<GramsPerKwh>, raw: &Value) {
    let times = raw["unix_seconds"].as_array().expect("times");
    let mut points = series.points.iter();
    for (i, t) in times.iter().enumerate() {
        let start = DateTime::from_timestamp(t.as_i64().expect("secs"), 0).expect("instant");
        let (value, quality) = match (raw["co2eq"][i].as_f64(), raw["co2eq_forecast"][i].as_f64()) {
            (Some(v), _) => (v, Quality::Published),
            (None, Some(v)) => (v, Quality::Estimated),
            (None, None) => continue,
        };
        let p = points.next().expect("a point for each value");
        assert_eq!(p.start, start);
        assert_eq!(p.value.value(), value, "{start}");
        assert_eq!(p.quality, quality, "{start}");
    }
    assert!(points.next().is_none());
}

#[tokio::test]
async fn energy_charts_measured_then_forecast_at_its_own_resolution() {
    use offpeak_scheduler::signals::energy_charts::{self, EnergyCharts};
    let server = serve(vec![("/co2eq", Reply::Body(read(EC_DE)))]).await;
    let s = EnergyCharts::new(fetcher(), &server.base, "de")
        .fetch(window("2024-03-22T00:00:00Z", "2024-03-24T00:00:00Z"))
        .await
        .expect("fetch");
    assert!(server.requests()[0].starts_with("GET /co2eq?country=de "));
    assert_matches_energy_charts(&s, &raw_json(EC_DE));
    assert_eq!(s.resolution_minutes, 15);
    assert_eq!(s.zone, "de");
    assert_eq!(s.basis, CarbonBasis::Unspecified);
    // Measured until the forecast takes over.
    assert!(s.published_until().is_some_and(|t| t < s.known_until));
    let ch = energy_charts::parse(&read(EC_CH), "ch").expect("ch");
    assert_eq!(ch.resolution_minutes, 60);
    assert_matches_energy_charts(&ch, &raw_json(EC_CH));

    let bad = |edit: &dyn Fn(&mut Value)| {
        let mut v = raw_json(EC_DE);
        edit(&mut v);
        error(energy_charts::parse(
            &serde_json::to_vec(&v).expect("json"),
            "de",
        ))
        .to_string()
    };
    let e = bad(&|v| {
        v["co2eq"].as_array_mut().expect("list").pop();
    });
    assert!(
        e.contains("the lists differ in length: 188 times, 187 measured"),
        "{e}"
    );
    let e = bad(&|v| v["co2eq"][0] = (-3.0).into());
    assert!(
        e.contains("-3 at 2024-03-22T00:00:00+00:00 is not an intensity"),
        "{e}"
    );
    let e = bad(&|v| v["unix_seconds"][1] = v["unix_seconds"][0].clone());
    assert!(e.contains("is given twice"), "{e}");
    let e = bad(&|v| {
        *v = serde_json::json!({"unix_seconds": [1711065600], "co2eq": [300], "co2eq_forecast": [null]});
    });
    assert!(e.contains("at least two times"), "{e}");
    let whole = read(EC_DE);
    let e = error(energy_charts::parse(&whole[..whole.len() / 2], "de")).to_string();
    assert!(e.contains("EOF while parsing"), "{e}");
    server.answer_all(Reply::Status(502, "<html>Bad Gateway</html>", None));
    let e = error(
        EnergyCharts::new(fetcher(), &server.base, "de")
            .fetch(window("2024-03-22T00:00:00Z", "2024-03-24T00:00:00Z"))
            .await,
    );
    assert!(
        e.to_string().contains("HTTP 502: <html>Bad Gateway</html>"),
        "{e}"
    );
}

#[tokio::test]
async fn carbon_aware_sdk_and_energy_charts_http_failures_are_errors() {
    use offpeak_scheduler::signals::energy_charts::EnergyCharts;
    let w = window("2024-03-24T00:00:00Z", "2024-03-25T00:00:00Z");
    let quick = HttpFetcher::direct(Duration::from_millis(300)).expect("client");
    let web = |base: &str, fetcher: HttpFetcher| CarbonAware {
        location: Location::WebApi {
            fetcher,
            base_url: base.to_owned(),
            location: "DE".into(),
        },
        basis: CarbonBasis::Unspecified,
        zeros: Zeros::AreGaps,
        sdk_location: None,
    };
    let cases = [
        (
            Reply::Status(429, "Too many requests", Some("90")),
            "HTTP 429 (retry after 90): Too many requests",
        ),
        (
            Reply::Status(500, r#"{"title": "Internal Server Error"}"#, None),
            "HTTP 500: Internal Server Error",
        ),
        (Reply::Silent, "no complete answer within"),
        (
            Reply::Truncated(read(CASDK_WEB)),
            "fetching carbon-aware-sdk from",
        ),
    ];
    for (reply, what) in cases {
        let server = serve(vec![("/", reply)]).await;
        let e = error(web(&server.base, quick.clone()).fetch(w).await).to_string();
        assert!(e.contains(what), "{e}");
        let e = error(
            EnergyCharts::new(quick.clone(), &server.base, "de")
                .fetch(w)
                .await,
        )
        .to_string();
        assert!(
            e.contains(&what.replace("carbon-aware-sdk", "energy-charts")),
            "{e}"
        );
    }
}
