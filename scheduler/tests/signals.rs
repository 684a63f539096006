//! Signal providers against recorded answers served by a real HTTP server on 127.0.0.1: every
//! parsed point is compared with the value read independently from the raw file, and every
//! failure (HTTP 429 and 500, a cut-off body, malformed JSON, a silent server) must come back
//! as a clear error, never a panic.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use offpeak_scheduler::signals::awattar::{self, Awattar};
use offpeak_scheduler::signals::csv_import::{
    CarbonCsv, CarbonUnit, CsvLocation, CsvSource, PriceCsv, PriceUnit, TimeBasis,
};
use offpeak_scheduler::signals::electricity_maps::{self, ElectricityMaps, Endpoint};
use offpeak_scheduler::signals::entsoe::{self, Entsoe};
use offpeak_scheduler::signals::octopus::{self, OctopusAgile, Vat};
use offpeak_scheduler::signals::uk_carbon::{self, Scope, UkCarbonIntensity};
use offpeak_scheduler::signals::{
    ApiKey, CarbonBasis, Currency, FetchFailure, HttpFetcher, Point, Quality, Series, SignalError,
    SignalProvider,
};
use offpeak_scheduler::units::{GramsPerKwh, PricePerMwh, SlotGrid};
use serde_json::Value;
mod common;

use common::http::{Reply, fetcher, fixture, raw_json, read, serve, serve_with, utc, window};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The raw file's instants, as the test reads them (`2023-12-03T10:30Z`: no seconds).
fn raw_instant(s: &str) -> DateTime<Utc> {
    let with_seconds = if s.len() == "2023-12-03T10:30Z".len() {
        s.replace('Z', ":00Z")
    } else {
        s.to_owned()
    };
    utc(&with_seconds)
}

const EPS: f64 = 1e-9;

fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < EPS, "{what}: {a} != {b}");
}

fn fetch_error<T: std::fmt::Debug>(r: Result<T, SignalError>) -> SignalError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// UK Carbon Intensity.

const UK_NATIONAL: &str = "uk_carbon_intensity/national_2023-12-03.json";
const UK_LONDON: &str = "uk_carbon_intensity/regional_13_london_2023-12-03.json";

/// Checks a parsed UK series against the half-hours of the raw answer.
fn assert_matches_uk_raw(series: &Series<GramsPerKwh>, half_hours: &[Value]) {
    assert_eq!(series.points.len(), half_hours.len());
    for (p, raw) in series.points.iter().zip(half_hours) {
        let from = raw_instant(raw["from"].as_str().expect("from"));
        let to = raw_instant(raw["to"].as_str().expect("to"));
        assert_eq!(p.start, from);
        assert_eq!(to - from, series.resolution());
        let actual = raw["intensity"]["actual"].as_f64();
        let forecast = raw["intensity"]["forecast"].as_f64().expect("forecast");
        match actual {
            Some(a) => {
                assert_eq!(p.quality, Quality::Published, "{from}");
                assert_close(p.value.value(), a, "actual");
            }
            None => {
                assert_eq!(p.quality, Quality::Estimated, "{from}");
                assert_close(p.value.value(), forecast, "forecast");
            }
        }
    }
    let last_to = half_hours
        .last()
        .and_then(|h| h["to"].as_str())
        .expect("last to");
    assert_eq!(series.known_until, raw_instant(last_to));
}

#[tokio::test]
async fn uk_national_parses_every_half_hour_of_the_recorded_answer() {
    let server = serve(vec![("/intensity/", Reply::Body(read(UK_NATIONAL)))]).await;
    let client = UkCarbonIntensity::new(fetcher(), &server.base, Scope::National);
    let series = client
        .fetch(window("2023-12-03T10:30:00Z", "2023-12-05T10:30:00Z"))
        .await
        .expect("fetch");

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with("GET /intensity/2023-12-03T10:30Z/2023-12-05T10:30Z HTTP/1.1"),
        "{}",
        requests[0]
    );

    let raw = raw_json(UK_NATIONAL);
    let half_hours = raw["data"].as_array().expect("data");
    assert_eq!(half_hours.len(), 96);
    assert_matches_uk_raw(&series, half_hours);
    assert_eq!(series.zone, "GB");
    assert_eq!(series.basis, CarbonBasis::Direct);
    assert_eq!(series.resolution_minutes, 30);
    // Only the first half-hour has an actual value; the rest is the forecast.
    assert_eq!(series.published_until(), Some(utc("2023-12-03T11:00:00Z")));
    assert_eq!(series.known_until, utc("2023-12-05T10:30:00Z"));
    assert_eq!(series.points[0].value, GramsPerKwh(206.0));
    assert_eq!(series.points[1].value, GramsPerKwh(216.0));
}

#[tokio::test]
async fn uk_regional_parses_the_london_answer() {
    let server = serve(vec![("/regional/intensity/", Reply::Body(read(UK_LONDON)))]).await;
    let client = UkCarbonIntensity::new(fetcher(), &server.base, Scope::Region(13));
    let series = client
        .fetch(window("2023-12-03T10:30:00Z", "2023-12-05T10:30:00Z"))
        .await
        .expect("fetch");
    assert!(
        server.requests()[0].starts_with(
            "GET /regional/intensity/2023-12-03T10:30Z/2023-12-05T10:30Z/regionid/13 "
        )
    );
    let raw = raw_json(UK_LONDON);
    let half_hours = raw["data"]["data"].as_array().expect("data.data");
    assert_matches_uk_raw(&series, half_hours);
    assert_eq!(series.zone, "London");
    assert!(
        series
            .points
            .iter()
            .all(|p| p.quality == Quality::Estimated)
    );
    assert_eq!(series.published_until(), None);
}

#[test]
fn uk_half_hours_on_quarter_hour_and_hourly_slots() {
    let series = uk_carbon::parse(&read(UK_NATIONAL)).expect("parse");
    let quarter = series.on_grid(15).expect("15 min");
    assert_eq!(quarter.points.len(), 2 * series.points.len());
    for (i, q) in quarter.points.iter().enumerate() {
        let p = series.points[i / 2];
        assert_eq!(q.value, p.value);
        assert_eq!(q.quality, p.quality);
        assert_eq!(
            q.start,
            p.start + chrono::Duration::minutes(15 * (i as i64 % 2))
        );
    }
    assert_eq!(quarter.known_until, series.known_until);

    // Hours: the series starts at 10:30, so the first whole hour is 11:00-12:00.
    let hourly = series.on_grid(60).expect("60 min");
    assert_eq!(hourly.points[0].start, utc("2023-12-03T11:00:00Z"));
    for h in &hourly.points {
        let a = series.at(h.start).expect("first half");
        let b = series
            .at(h.start + chrono::Duration::minutes(30))
            .expect("second half");
        assert_close(
            h.value.value(),
            (a.value.value() + b.value.value()) / 2.0,
            "mean",
        );
    }
    // 10:30 to 10:30 two days later: 47 whole hours.
    assert_eq!(hourly.points.len(), 47);

    // On a planner grid from 10:00: nothing for the first half-hour, then the series.
    let grid = SlotGrid {
        start: utc("2023-12-03T10:00:00Z"),
        minutes: 15,
    };
    let slots = series.on_slots(&grid, 6).expect("slots");
    assert_eq!(slots[0], None);
    assert_eq!(slots[1], None);
    let values: Vec<_> = slots[2..]
        .iter()
        .map(|p| p.map(|p| p.value.value()))
        .collect();
    assert_eq!(values, [Some(206.0), Some(206.0), Some(216.0), Some(216.0)]);
    let off_grid = SlotGrid {
        start: utc("2023-12-03T10:05:00Z"),
        minutes: 15,
    };
    let e = fetch_error(series.on_slots(&off_grid, 6));
    assert!(e.to_string().contains("not on 15-min boundaries"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Failures, over HTTP: each gives an error naming the step and the provider.

#[tokio::test]
async fn http_429_and_500_are_fetch_errors_with_the_status() {
    let server = serve(vec![
        (
            "/intensity/2023-12-03T10:30Z",
            Reply::Status(429, "Too many requests", Some("120")),
        ),
        ("/intensity/", Reply::Status(500, "internal error", None)),
    ])
    .await;
    let client = UkCarbonIntensity::new(fetcher(), &server.base, Scope::National);

    let e = fetch_error(
        client
            .fetch(window("2023-12-03T10:30:00Z", "2023-12-04T10:30:00Z"))
            .await,
    );
    match &e {
        SignalError::Fetching {
            provider,
            failure:
                FetchFailure::Status {
                    status,
                    retry_after,
                    body_excerpt,
                },
            ..
        } => {
            assert_eq!(*provider, uk_carbon::PROVIDER);
            assert_eq!(*status, 429);
            assert_eq!(retry_after.as_deref(), Some("120"));
            assert_eq!(body_excerpt, "Too many requests");
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.starts_with("fetching uk-carbon-intensity from http://127.0.0.1:"),
        "{msg}"
    );
    assert!(
        msg.contains("HTTP 429 (retry after 120): Too many requests"),
        "{msg}"
    );

    let e = fetch_error(
        client
            .fetch(window("2023-12-04T10:30:00Z", "2023-12-05T10:30:00Z"))
            .await,
    );
    assert!(
        matches!(
            e,
            SignalError::Fetching {
                failure: FetchFailure::Status { status: 500, .. },
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_truncated_body_is_a_transport_error() {
    let server = serve(vec![("/", Reply::Truncated(read(UK_NATIONAL)))]).await;
    let client = UkCarbonIntensity::new(fetcher(), &server.base, Scope::National);
    let e = fetch_error(
        client
            .fetch(window("2023-12-03T10:30:00Z", "2023-12-05T10:30:00Z"))
            .await,
    );
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

#[tokio::test]
async fn a_body_cut_short_by_the_sender_is_a_parse_error() {
    // The length is announced honestly, but the document itself stops half way.
    let whole = read(UK_NATIONAL);
    let half = whole[..whole.len() / 2].to_vec();
    let server = serve(vec![("/", Reply::Body(half))]).await;
    let client = UkCarbonIntensity::new(fetcher(), &server.base, Scope::National);
    let e = fetch_error(
        client
            .fetch(window("2023-12-03T10:30:00Z", "2023-12-05T10:30:00Z"))
            .await,
    );
    let msg = e.to_string();
    assert!(matches!(e, SignalError::Parsing { .. }), "{e:?}");
    assert!(
        msg.starts_with("parsing the answer of uk-carbon-intensity: EOF"),
        "{msg}"
    );
}

#[tokio::test]
async fn malformed_json_is_a_parse_error_for_each_provider() {
    let server = serve(vec![
        (
            "/intensity/",
            Reply::Body(b"{\"data\": [ {\"from\": 12,}] }".to_vec()),
        ),
        ("/v3/", Reply::Body(b"<html>gateway</html>".to_vec())),
    ])
    .await;
    let w = window("2023-12-03T10:30:00Z", "2023-12-05T10:30:00Z");
    let uk = UkCarbonIntensity::new(fetcher(), &server.base, Scope::National);
    let e = fetch_error(uk.fetch(w).await);
    assert!(
        matches!(
            e,
            SignalError::Parsing {
                provider: "uk-carbon-intensity",
                ..
            }
        ),
        "{e:?}"
    );

    let em = ElectricityMaps::new(
        fetcher(),
        &server.base,
        ApiKey::new("k"),
        "DE",
        Endpoint::History,
    );
    let e = fetch_error(em.fetch(w).await);
    assert!(
        matches!(
            e,
            SignalError::Parsing {
                provider: "electricity-maps",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn well_formed_json_with_wrong_content_is_refused() {
    // A half-hour that lasts an hour.
    let body = br#"{"data":[{"from":"2023-12-03T10:30Z","to":"2023-12-03T11:30Z","intensity":{"forecast":1,"actual":null,"index":"low"}}]}"#;
    let e = fetch_error(uk_carbon::parse(body));
    assert!(e.to_string().contains("is not a half-hour"), "{e}");
    // A start off the half-hour grid.
    let body = br#"{"data":[{"from":"2023-12-03T10:20Z","to":"2023-12-03T10:50Z","intensity":{"forecast":1,"actual":null,"index":"low"}}]}"#;
    let e = fetch_error(uk_carbon::parse(body));
    assert!(matches!(e, SignalError::Normalising { .. }), "{e:?}");
    // No values at all.
    let e = fetch_error(uk_carbon::parse(br#"{"data":[]}"#));
    assert!(e.to_string().contains("holds no values"), "{e}");
    // Electricity Maps: a null intensity is a gap; direct and life-cycle values do not mix.
    let body = br#"{"zone":"DE","history":[
        {"carbonIntensity":500,"datetime":"2024-03-05T20:00:00.000Z","isEstimated":false,"emissionFactorType":"direct"},
        {"carbonIntensity":null,"datetime":"2024-03-05T21:00:00.000Z","isEstimated":null,"emissionFactorType":"direct"},
        {"carbonIntensity":480,"datetime":"2024-03-05T22:00:00.000Z","isEstimated":true,"emissionFactorType":"direct"}]}"#;
    let s = electricity_maps::parse(body).expect("parse");
    assert_eq!(s.basis, CarbonBasis::Direct);
    assert_eq!(s.resolution_minutes, 60);
    assert_eq!(s.points.len(), 2);
    assert!(s.at(utc("2024-03-05T21:30:00Z")).is_none());
    assert_eq!(s.points[1].quality, Quality::Estimated);
    let mixed = String::from_utf8_lossy(body).replacen("direct", "lifecycle", 1);
    let e = fetch_error(electricity_maps::parse(mixed.as_bytes()));
    assert!(e.to_string().contains("mix life-cycle and direct"), "{e}");
    // Electricity Maps' legacy no-data answer has none of the expected lists.
    let body = br#"{"status":"no-data","countryCode":"DE","zone":"DE","data":{}}"#;
    let e = fetch_error(electricity_maps::parse(body));
    assert!(matches!(e, SignalError::Parsing { .. }), "{e:?}");
}

#[tokio::test]
async fn an_answer_over_the_size_cap_is_refused() {
    let server = serve(vec![("/", Reply::Body(read(UK_NATIONAL)))]).await;
    let cap = 1000;
    let client =
        UkCarbonIntensity::new(fetcher().with_max_body(cap), &server.base, Scope::National);
    let e = fetch_error(
        client
            .fetch(window("2023-12-03T10:30:00Z", "2023-12-05T10:30:00Z"))
            .await,
    );
    assert!(
        matches!(
            e,
            SignalError::Fetching {
                failure: FetchFailure::TooLarge { limit_bytes: 1000 },
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let server = serve(vec![("/", Reply::Silent)]).await;
    let timeout = Duration::from_millis(300);
    let client = UkCarbonIntensity::new(
        HttpFetcher::direct(timeout).expect("client"),
        &server.base,
        Scope::National,
    );
    let e = fetch_error(
        client
            .fetch(window("2023-12-03T10:30:00Z", "2023-12-05T10:30:00Z"))
            .await,
    );
    match e {
        SignalError::Fetching {
            failure: FetchFailure::Timeout(t),
            ..
        } => assert_eq!(t, timeout),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_closed_port_is_a_transport_error() {
    // Bind then drop, so that nothing listens on the port.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr").port()
    };
    let client = UkCarbonIntensity::new(
        fetcher(),
        format!("http://127.0.0.1:{port}"),
        Scope::National,
    );
    let e = fetch_error(
        client
            .fetch(window("2023-12-03T10:30:00Z", "2023-12-05T10:30:00Z"))
            .await,
    );
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

// ---------------------------------------------------------------------------------------------
// Electricity Maps.

const EM_HISTORY: &str = "electricity_maps/history_DE_2024-03-06.json";
const EM_FORECAST: &str = "electricity_maps/forecast_DE_2024-03-06.json";
const SECRET: &str = "test-key-5c1e7";

fn assert_matches_em_raw(series: &Series<GramsPerKwh>, entries: &[Value], forecast: bool) {
    assert_eq!(series.points.len(), entries.len());
    for (p, raw) in series.points.iter().zip(entries) {
        assert_eq!(p.start, utc(raw["datetime"].as_str().expect("datetime")));
        assert_close(
            p.value.value(),
            raw["carbonIntensity"].as_f64().expect("intensity"),
            "carbonIntensity",
        );
        let estimated = forecast || raw["isEstimated"].as_bool() == Some(true);
        let expected = if estimated {
            Quality::Estimated
        } else {
            Quality::Published
        };
        assert_eq!(p.quality, expected, "{}", p.start);
    }
}

#[tokio::test]
async fn electricity_maps_history_sends_the_key_in_the_header_only() {
    let server = serve(vec![(
        "/v3/carbon-intensity/history?zone=DE",
        Reply::Body(read(EM_HISTORY)),
    )])
    .await;
    let client = ElectricityMaps::new(
        fetcher(),
        &server.base,
        ApiKey::new(SECRET),
        "DE",
        Endpoint::History,
    );
    let series = client
        .fetch(window("2024-03-05T20:00:00Z", "2024-03-06T20:00:00Z"))
        .await
        .expect("fetch");
    let head = &server.requests()[0];
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("\r\nauth-token: {SECRET}\r\n")),
        "{head}"
    );
    let request_line = head.lines().next().expect("request line");
    assert!(!request_line.contains(SECRET), "{request_line}");
    assert!(!format!("{client:?}").contains(SECRET));

    let raw = raw_json(EM_HISTORY);
    let entries = raw["history"].as_array().expect("history");
    assert_eq!(entries.len(), 24);
    assert_matches_em_raw(&series, entries, false);
    assert_eq!(series.zone, "DE");
    assert_eq!(series.basis, CarbonBasis::Lifecycle);
    assert_eq!(series.resolution_minutes, 60);
    // The last two hours were filled in by Electricity Maps.
    assert_eq!(series.published_until(), Some(utc("2024-03-06T18:00:00Z")));
    assert_eq!(series.known_until, utc("2024-03-06T20:00:00Z"));
}

#[tokio::test]
async fn electricity_maps_forecast_is_all_estimated() {
    let server = serve(vec![(
        "/v3/carbon-intensity/forecast?zone=DE",
        Reply::Body(read(EM_FORECAST)),
    )])
    .await;
    let client = ElectricityMaps::new(
        fetcher(),
        &server.base,
        ApiKey::new(SECRET),
        "DE",
        Endpoint::Forecast,
    );
    let series = client
        .fetch(window("2024-03-06T20:00:00Z", "2024-03-07T20:00:00Z"))
        .await
        .expect("fetch");
    let raw = raw_json(EM_FORECAST);
    assert_matches_em_raw(&series, raw["forecast"].as_array().expect("forecast"), true);
    assert_eq!(series.published_until(), None);
    assert_eq!(series.known_until, utc("2024-03-07T20:00:00Z"));
    // On 15-minute slots each hour becomes four equal quarters.
    let q = series.on_grid(15).expect("15 min");
    assert_eq!(q.points.len(), 96);
    assert!(
        q.points
            .chunks(4)
            .zip(&series.points)
            .all(|(c, p)| c.iter().all(|x| x.value == p.value))
    );
}

#[tokio::test]
async fn electricity_maps_past_range_asks_for_the_window() {
    // The past-range answer lists its points under `data`.
    let raw = raw_json(EM_HISTORY);
    let body = serde_json::json!({"zone": "DE", "data": raw["history"]}).to_string();
    let server = serve(vec![(
        "/v3/carbon-intensity/past-range",
        Reply::Body(body.into_bytes()),
    )])
    .await;
    let client = ElectricityMaps::new(
        fetcher(),
        &server.base,
        ApiKey::new(SECRET),
        "DE",
        Endpoint::PastRange,
    );
    let series = client
        .fetch(window("2024-03-05T20:00:00Z", "2024-03-06T20:00:00Z"))
        .await
        .expect("fetch");
    assert!(server.requests()[0].starts_with(
        "GET /v3/carbon-intensity/past-range?zone=DE&start=2024-03-05T20:00Z&end=2024-03-06T20:00Z "
    ));
    assert_matches_em_raw(&series, raw["history"].as_array().expect("history"), false);
}

#[tokio::test]
async fn electricity_maps_401_and_429_do_not_leak_the_key() {
    let server = serve(vec![
        (
            "/v3/carbon-intensity/history",
            Reply::Status(401, r#"{"message":"Invalid auth-token"}"#, None),
        ),
        (
            "/v3/carbon-intensity/forecast",
            Reply::Status(429, r#"{"message":"Rate limit exceeded"}"#, Some("60")),
        ),
    ])
    .await;
    let w = window("2024-03-05T20:00:00Z", "2024-03-06T20:00:00Z");
    for (endpoint, status) in [(Endpoint::History, 401), (Endpoint::Forecast, 429)] {
        let client =
            ElectricityMaps::new(fetcher(), &server.base, ApiKey::new(SECRET), "DE", endpoint);
        let e = fetch_error(client.fetch(w).await);
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains(&format!("HTTP {status}")), "{shown}");
        assert!(shown.contains("electricity-maps"), "{shown}");
    }
}

#[test]
fn api_keys_come_from_a_file_or_the_environment_and_never_show() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("key");
    std::fs::write(&path, format!("  {SECRET}\n")).expect("write key");
    let key = ApiKey::from_file("electricity-maps", &path).expect("key from file");
    assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");

    std::fs::write(&path, "\n").expect("write empty key");
    let e = fetch_error(ApiKey::from_file("electricity-maps", &path));
    assert!(e.to_string().contains("is empty"), "{e}");
    let e = fetch_error(ApiKey::from_file(
        "electricity-maps",
        &dir.path().join("missing"),
    ));
    assert!(
        e.to_string()
            .starts_with("reading the API key of electricity-maps"),
        "{e}"
    );
    let e = fetch_error(ApiKey::from_env(
        "electricity-maps",
        "OFFPEAK_TEST_SURELY_UNSET_VARIABLE",
    ));
    assert!(
        e.to_string().contains("OFFPEAK_TEST_SURELY_UNSET_VARIABLE"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// CSV.

const GB_LOCAL: &str = "csv/gb_carbon_london_local_2023-10-29.csv";
const GB_UTC: &str = "csv/gb_carbon_utc_2023-10-28_29.csv";
const DE_PRICES: &str = "csv/de_lu_prices_local_2023-07-02.csv";

fn london() -> TimeBasis {
    TimeBasis::Zone(Tz::Europe__London)
}

fn gb_local_import() -> CarbonCsv {
    let mut import = CarbonCsv::new(
        "GB",
        "local_time",
        "intensity_g_per_kwh",
        london(),
        CarbonUnit::GramsPerKwh,
        CarbonBasis::Lifecycle,
        60,
    );
    import.estimated_column = Some("estimated".to_owned());
    import
}

/// The UTC rows as copied from the source file: (instant, life-cycle intensity).
fn gb_utc_rows() -> Vec<(DateTime<Utc>, f64)> {
    let mut reader = csv::Reader::from_path(fixture(GB_UTC)).expect("utc csv");
    reader
        .records()
        .map(|r| {
            let r = r.expect("record");
            let t = chrono::NaiveDateTime::parse_from_str(&r[0], "%Y-%m-%d %H:%M:%S")
                .expect("utc time")
                .and_utc();
            (t, r[5].parse().expect("LCA value"))
        })
        .collect()
}

#[tokio::test]
async fn csv_in_london_time_across_the_end_of_summer_time_matches_the_utc_file() {
    let server = serve(vec![("/gb.csv", Reply::Body(read(GB_LOCAL)))]).await;
    let source = CsvSource {
        import: gb_local_import(),
        location: CsvLocation::Url {
            fetcher: fetcher(),
            url: format!("{}/gb.csv", server.base),
        },
    };
    let series = source
        .fetch(window("2023-10-28T20:00:00Z", "2023-10-29T06:00:00Z"))
        .await
        .expect("fetch");
    let expected = gb_utc_rows();
    assert_eq!(expected.len(), 10);
    assert_eq!(series.points.len(), expected.len());
    for (p, (t, v)) in series.points.iter().zip(&expected) {
        assert_eq!(p.start, *t);
        assert_close(p.value.value(), *v, "intensity");
        assert_eq!(p.quality, Quality::Published);
    }
    // 01:00 local is there twice: 00:00 UTC (summer time) and 01:00 UTC (winter time).
    assert_eq!(series.points[4].start, utc("2023-10-29T00:00:00Z"));
    assert_eq!(series.points[5].start, utc("2023-10-29T01:00:00Z"));
    assert_eq!(series.known_until, utc("2023-10-29T06:00:00Z"));
}

#[test]
fn csv_local_time_skipped_by_the_clocks_is_an_error_naming_the_line() {
    let body = "t,v\n2023-03-26 00:00,10\n2023-03-26 01:00,11\n2023-03-26 02:00,12\n";
    let import = CarbonCsv::new(
        "GB",
        "t",
        "v",
        london(),
        CarbonUnit::GramsPerKwh,
        CarbonBasis::Unspecified,
        60,
    );
    let e = fetch_error(import.parse(body.as_bytes()));
    let msg = e.to_string();
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("does not exist in Europe/London"), "{msg}");

    // The same day in Berlin: 02:00 is missing from the file, as it is from the clocks.
    let body = "t,v\n2023-03-26 01:00,10\n2023-03-26 03:00,11\n";
    let import = CarbonCsv::new(
        "DE",
        "t",
        "v",
        TimeBasis::Zone(Tz::Europe__Berlin),
        CarbonUnit::GramsPerKwh,
        CarbonBasis::Unspecified,
        60,
    );
    let s = import.parse(body.as_bytes()).expect("parse");
    let starts: Vec<_> = s.points.iter().map(|p| p.start).collect();
    assert_eq!(
        starts,
        [utc("2023-03-26T00:00:00Z"), utc("2023-03-26T01:00:00Z")]
    );
}

#[tokio::test]
async fn csv_prices_keep_negative_values_from_a_file() {
    let source = CsvSource {
        import: PriceCsv::new(
            "DE-LU",
            "Datetime",
            "Price (EUR/MWh)",
            TimeBasis::Zone(Tz::Europe__Berlin),
            PriceUnit::PerMwh,
            Currency("EUR".to_owned()),
            60,
        ),
        location: CsvLocation::File(fixture(DE_PRICES)),
    };
    let series = source
        .fetch(window("2023-07-01T22:00:00Z", "2023-07-02T22:00:00Z"))
        .await
        .expect("fetch");
    let mut reader = csv::Reader::from_path(fixture(DE_PRICES)).expect("csv");
    let raw: Vec<(String, f64)> = reader
        .records()
        .map(|r| {
            let r = r.expect("record");
            (r[0].to_owned(), r[1].parse().expect("price"))
        })
        .collect();
    assert_eq!(series.points.len(), 24);
    let berlin = Tz::Europe__Berlin;
    for (p, (local, v)) in series.points.iter().zip(&raw) {
        let naive =
            chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S").expect("time");
        let t = berlin
            .from_local_datetime(&naive)
            .single()
            .expect("unambiguous in July")
            .with_timezone(&Utc);
        assert_eq!(p.start, t);
        assert_close(p.value.value(), *v, "price");
    }
    // Local 14:00 in summer is 12:00 UTC, and the lowest price of the year.
    let low = series.at(utc("2023-07-02T12:30:00Z")).expect("covered");
    assert_eq!(low.value, PricePerMwh(-500.0));
    assert_eq!(series.basis, Currency("EUR".to_owned()));
    assert!(
        series
            .points
            .iter()
            .filter(|p| p.value.value() < 0.0)
            .count()
            >= 10
    );
}

#[test]
fn csv_units_offsets_and_bad_rows() {
    // Pence per kWh to currency per MWh, negative included, with a fixed offset.
    let body = "time,price\n2026-04-04T10:00,-5.05\n2026-04-04T10:30,1.5\n";
    let import = PriceCsv::new(
        "GB",
        "time",
        "price",
        TimeBasis::Offset(chrono::FixedOffset::east_opt(3600).expect("offset")),
        PriceUnit::SubunitPerKwh,
        Currency("GBP".to_owned()),
        30,
    );
    let s = import.parse(body.as_bytes()).expect("parse");
    assert_eq!(s.points[0].start, utc("2026-04-04T09:00:00Z"));
    assert_close(s.points[0].value.value(), -50.5, "p/kWh");
    assert_close(s.points[1].value.value(), 15.0, "p/kWh");

    // Timestamps with their own offset win over the stated basis.
    let body = "time,price\n2026-04-04T10:00:00+02:00,3\n";
    let s = import.parse(body.as_bytes()).expect("parse");
    assert_eq!(s.points[0].start, utc("2026-04-04T08:00:00Z"));

    let e = fetch_error(import.parse(b"time,price\n2026-04-04T10:00,abc\n"));
    assert!(
        e.to_string()
            .contains("line 2: `price`: `abc` is not a number"),
        "{e}"
    );
    let e = fetch_error(import.parse(b"when,price\n2026-04-04T10:00,1\n"));
    assert!(
        e.to_string()
            .contains("no column `time` (the header has: when, price)"),
        "{e}"
    );
    let e = fetch_error(import.parse(b"time,price\nyesterday,1\n"));
    assert!(e.to_string().contains("line 2"), "{e}");
    let e = fetch_error(import.parse(b"time,price\n2026-04-04T10:00,1\n2026-04-04T10:00,2\n"));
    assert!(e.to_string().contains("given twice"), "{e}");

    // Pounds per MWh (WattTime's unit) to grams per kWh.
    let import = CarbonCsv::new(
        "CAISO_NORTH",
        "t",
        "v",
        TimeBasis::Offset(chrono::FixedOffset::east_opt(0).expect("utc")),
        CarbonUnit::PoundsPerMwh,
        CarbonBasis::Unspecified,
        5,
    );
    let s = import
        .parse(b"t,v\n2023-06-01 00:05,1000\n")
        .expect("parse");
    assert_close(s.points[0].value.value(), 453.59237, "lb/MWh");
}

#[test]
fn series_rejects_points_off_the_grid_and_regrids_with_gaps() {
    let at = |h: u32, m: u32| {
        Utc.with_ymd_and_hms(2024, 1, 1, h, m, 0)
            .single()
            .expect("instant")
    };
    let p = |t, v, q| Point {
        start: t,
        value: GramsPerKwh(v),
        quality: q,
    };
    let e = fetch_error(Series::new(
        "test",
        "Z",
        CarbonBasis::Direct,
        60,
        vec![p(at(0, 30), 1.0, Quality::Published)],
    ));
    assert!(matches!(e, SignalError::Normalising { .. }), "{e:?}");
    let e = fetch_error(Series::new(
        "test",
        "Z",
        CarbonBasis::Direct,
        7,
        vec![p(at(0, 0), 1.0, Quality::Published)],
    ));
    assert!(e.to_string().contains("does not divide a day"), "{e}");

    // 00:00 and 00:30 published, 01:30 estimated, 01:00 missing.
    let s = Series::new(
        "test",
        "Z",
        CarbonBasis::Direct,
        30,
        vec![
            p(at(1, 30), 30.0, Quality::Estimated),
            p(at(0, 0), 10.0, Quality::Published),
            p(at(0, 30), 20.0, Quality::Published),
        ],
    )
    .expect("series");
    assert_eq!(s.points[0].start, at(0, 0));
    let hourly = s.on_grid(60).expect("hourly");
    // 01:00-02:00 is half missing, so it is left out rather than guessed.
    assert_eq!(hourly.points.len(), 1);
    assert_close(hourly.points[0].value.value(), 15.0, "mean");
    assert_eq!(hourly.points[0].quality, Quality::Published);
    assert!(s.at(at(1, 10)).is_none());
    assert_eq!(s.at(at(1, 59)).map(|p| p.quality), Some(Quality::Estimated));
}

// ---------------------------------------------------------------------------------------------
// Octopus Agile.

const AGILE: &str = "octopus_agile/agile_C_2023-10-29.json";
const AGILE_PRODUCT: &str = "AGILE-FLEX-22-11-25";
const AGILE_TARIFF: &str = "E-1R-AGILE-FLEX-22-11-25-C";
/// p/kWh to GBP/MWh.
const PENCE_PER_KWH_IN_POUNDS_PER_MWH: f64 = 10.0;

fn agile_client(base: &str, vat: Vat) -> OctopusAgile {
    OctopusAgile::new(fetcher(), base, AGILE_PRODUCT, AGILE_TARIFF, vat)
}

/// Checks the series against the raw rates (newest first in the file, oldest first in the
/// series).
fn assert_matches_agile_raw(series: &Series<PricePerMwh>, rates: &[Value], field: &str) {
    assert_eq!(series.points.len(), rates.len());
    for (p, raw) in series.points.iter().zip(rates.iter().rev()) {
        assert_eq!(
            p.start,
            utc(raw["valid_from"].as_str().expect("valid_from"))
        );
        let pence = raw[field].as_f64().expect("rate");
        assert_close(
            p.value.value(),
            pence * PENCE_PER_KWH_IN_POUNDS_PER_MWH,
            field,
        );
        assert_eq!(p.quality, Quality::Published);
    }
}

#[tokio::test]
async fn octopus_agile_day_with_negative_rates_and_the_clock_change() {
    let server = serve(vec![("/v1/products/", Reply::Body(read(AGILE)))]).await;
    // The UK local day 2023-10-29: 00:00 BST to 24:00 GMT, 25 hours.
    let w = window("2023-10-28T23:00:00Z", "2023-10-30T00:00:00Z");
    let series = agile_client(&server.base, Vat::Excluded)
        .fetch(w)
        .await
        .expect("fetch");
    assert!(server.requests()[0].starts_with(&format!(
        "GET /v1/products/{AGILE_PRODUCT}/electricity-tariffs/{AGILE_TARIFF}/standard-unit-rates/?period_from=2023-10-28T23:00:00Z&period_to=2023-10-30T00:00:00Z&page_size=1500 "
    )));
    let raw = raw_json(AGILE);
    let rates = raw["results"].as_array().expect("results");
    assert_matches_agile_raw(&series, rates, "value_exc_vat");
    assert_eq!(series.points.len(), 50);
    assert_eq!(series.points[0].start, w.from);
    assert_eq!(series.known_until, w.to);
    assert_eq!(series.basis, Currency("GBP".to_owned()));
    assert_eq!(series.zone, AGILE_TARIFF);
    let negative = series
        .points
        .iter()
        .filter(|p| p.value.value() < 0.0)
        .count();
    assert_eq!(negative, 10, "five negative hours, as two half-hours each");

    let with_vat = agile_client(&server.base, Vat::Included)
        .fetch(w)
        .await
        .expect("fetch");
    assert_matches_agile_raw(&with_vat, rates, "value_inc_vat");
}

#[tokio::test]
async fn octopus_agile_follows_next_pages() {
    let raw = raw_json(AGILE);
    let rates = raw["results"].as_array().expect("results").clone();
    let (newer, older) = rates.split_at(20);
    let server = serve_with(|base| {
        let page1 = serde_json::json!({
            "count": rates.len(), "next": format!("{base}/page2"), "previous": null, "results": newer
        });
        let page2 = serde_json::json!({
            "count": rates.len(), "next": null, "previous": format!("{base}/v1/products/"), "results": older
        });
        vec![
            ("/v1/products/", Reply::Body(page1.to_string().into_bytes())),
            ("/page2", Reply::Body(page2.to_string().into_bytes())),
        ]
    })
    .await;
    let series = agile_client(&server.base, Vat::Excluded)
        .fetch(window("2023-10-28T23:00:00Z", "2023-10-30T00:00:00Z"))
        .await
        .expect("fetch");
    assert_eq!(server.requests().len(), 2);
    assert_matches_agile_raw(&series, &rates, "value_exc_vat");
}

#[tokio::test]
async fn octopus_agile_errors_are_clear() {
    let server = serve_with(|base| {
        let endless =
            serde_json::json!({"count": 1, "next": format!("{base}/again"), "results": []});
        vec![
            (
                "/v1/products/A/",
                Reply::Status(429, "slow down", Some("30")),
            ),
            ("/v1/products/B/", Reply::Truncated(read(AGILE))),
            (
                "/v1/products/C/",
                Reply::Body(endless.to_string().into_bytes()),
            ),
            ("/again", Reply::Body(endless.to_string().into_bytes())),
        ]
    })
    .await;
    let w = window("2023-10-28T23:00:00Z", "2023-10-30T00:00:00Z");
    let client = |product| {
        OctopusAgile::new(
            fetcher(),
            &server.base,
            product,
            AGILE_TARIFF,
            Vat::Excluded,
        )
    };
    let e = fetch_error(client("A").fetch(w).await);
    assert!(
        e.to_string()
            .contains("HTTP 429 (retry after 30): slow down"),
        "{e}"
    );
    let e = fetch_error(client("B").fetch(w).await);
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
    let e = fetch_error(client("C").fetch(w).await);
    assert!(e.to_string().contains("still more pages after"), "{e}");
    assert_eq!(server.requests().len(), 2 + octopus::MAX_PAGES);

    // An open-ended rate (a fixed tariff, not Agile) and a rate of an hour are refused.
    let e = fetch_error(octopus::parse(
        br#"{"results":[{"value_exc_vat":1,"value_inc_vat":1.05,"valid_from":"2023-10-29T00:00:00Z","valid_to":null}]}"#,
        AGILE_TARIFF,
        Vat::Excluded,
    ));
    assert!(e.to_string().contains("has no end"), "{e}");
    let e = fetch_error(octopus::parse(
        br#"{"results":[{"value_exc_vat":1,"value_inc_vat":1.05,"valid_from":"2023-10-29T00:00:00Z","valid_to":"2023-10-29T01:00:00Z"}]}"#,
        AGILE_TARIFF,
        Vat::Excluded,
    ));
    assert!(e.to_string().contains("is not a half-hour"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// aWATTar.

const AWATTAR: &str = "awattar/marketdata_AT_2023-07-02.json";

#[tokio::test]
async fn awattar_prices_keep_negative_values() {
    let server = serve(vec![("/v1/marketdata", Reply::Body(read(AWATTAR)))]).await;
    let w = window("2023-07-01T22:00:00Z", "2023-07-02T22:00:00Z");
    let series = Awattar::new(fetcher(), &server.base, "AT")
        .fetch(w)
        .await
        .expect("fetch");
    assert!(
        server.requests()[0]
            .starts_with("GET /v1/marketdata?start=1688248800000&end=1688335200000 ")
    );
    let raw = raw_json(AWATTAR);
    let prices = raw["data"].as_array().expect("data");
    assert_eq!(series.points.len(), prices.len());
    for (p, r) in series.points.iter().zip(prices) {
        let ms = r["start_timestamp"].as_i64().expect("start");
        assert_eq!(p.start.timestamp_millis(), ms);
        assert_close(
            p.value.value(),
            r["marketprice"].as_f64().expect("price"),
            "price",
        );
        assert_eq!(p.quality, Quality::Published);
    }
    assert_eq!(series.resolution_minutes, 60);
    assert_eq!(series.known_until, w.to);
    assert_eq!(series.basis, Currency("EUR".to_owned()));
    // 14:00 in Vienna (summer time) is 12:00 UTC.
    assert_eq!(
        series.at(utc("2023-07-02T12:00:00Z")).map(|p| p.value),
        Some(PricePerMwh(-500.0))
    );
    assert!(
        series
            .points
            .iter()
            .filter(|p| p.value.value() < 0.0)
            .count()
            >= 10
    );
}

#[tokio::test]
async fn awattar_quarter_hours_and_bad_answers() {
    // Since the day-ahead market went to 15 minutes the API can answer quarter-hours.
    let q = br#"{"object":"list","data":[
        {"start_timestamp":1759269600000,"end_timestamp":1759270500000,"marketprice":-0.01,"unit":"Eur/MWh"},
        {"start_timestamp":1759270500000,"end_timestamp":1759271400000,"marketprice":12.5,"unit":"Eur/MWh"}]}"#;
    let s = awattar::parse(q, "AT").expect("parse");
    assert_eq!(s.resolution_minutes, 15);
    assert_eq!(s.points[0].start, utc("2025-09-30T22:00:00Z"));
    assert_eq!(s.points[0].value, PricePerMwh(-0.01));

    let mixed = br#"{"data":[
        {"start_timestamp":1759269600000,"end_timestamp":1759270500000,"marketprice":1,"unit":"Eur/MWh"},
        {"start_timestamp":1759270500000,"end_timestamp":1759274100000,"marketprice":2,"unit":"Eur/MWh"}]}"#;
    let e = fetch_error(awattar::parse(mixed, "AT"));
    assert!(e.to_string().contains("prices of 15 and 60 min"), "{e}");
    let unit = br#"{"data":[{"start_timestamp":1759269600000,"end_timestamp":1759273200000,"marketprice":1,"unit":"ct/kWh"}]}"#;
    let e = fetch_error(awattar::parse(unit, "AT"));
    assert!(e.to_string().contains("unit `ct/kWh`"), "{e}");
    let e = fetch_error(awattar::parse(br#"{"object":"list","data":[]}"#, "AT"));
    assert!(e.to_string().contains("holds no prices"), "{e}");

    let server = serve(vec![
        (
            "/v1/marketdata?start=0",
            Reply::Status(500, "upstream down", None),
        ),
        (
            "/v1/marketdata",
            Reply::Body(br#"{"object":"list","data":[{"start_timestamp":"#.to_vec()),
        ),
    ])
    .await;
    let client = Awattar::new(fetcher(), &server.base, "AT");
    let e = fetch_error(
        client
            .fetch(window("1970-01-01T00:00:00Z", "1970-01-02T00:00:00Z"))
            .await,
    );
    assert!(e.to_string().contains("HTTP 500: upstream down"), "{e}");
    let e = fetch_error(
        client
            .fetch(window("2023-07-01T22:00:00Z", "2023-07-02T22:00:00Z"))
            .await,
    );
    assert!(
        matches!(
            e,
            SignalError::Parsing {
                provider: "awattar",
                ..
            }
        ),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// ENTSO-E A44.

const A44: &str = "entsoe/a44_DE-LU_2023-03-26_27.xml";
const A44_ACK: &str = "entsoe/acknowledgement_no_data.xml";
const DE_PRICES_DST: &str = "csv/de_lu_prices_local_2023-03-26_27.csv";
const DE_LU_EIC: &str = "10Y1001A1001A82H";
/// Quarter-hours in an hour.
const QUARTERS: i64 = 4;

/// The DE-LU CSV as (UTC hour, price), dropping the local hour the clocks skip.
fn de_lu_hours_utc() -> Vec<(DateTime<Utc>, f64)> {
    let mut reader = csv::Reader::from_path(fixture(DE_PRICES_DST)).expect("csv");
    reader
        .records()
        .filter_map(|r| {
            let r = r.expect("record");
            let naive =
                chrono::NaiveDateTime::parse_from_str(&r[0], "%Y-%m-%d %H:%M:%S").expect("time");
            let t = Tz::Europe__Berlin.from_local_datetime(&naive).single()?;
            Some((t.with_timezone(&Utc), r[1].parse().expect("price")))
        })
        .collect()
}

#[tokio::test]
async fn entsoe_a44_spring_forward_day_and_quarter_hours() {
    let server = serve(vec![("/api?", Reply::Body(read(A44)))]).await;
    let client = Entsoe::new(
        fetcher(),
        &server.base,
        ApiKey::new(SECRET),
        DE_LU_EIC,
        "DE-LU",
    );
    let w = window("2023-03-25T23:00:00Z", "2023-03-27T22:00:00Z");
    let series = client.fetch(w).await.expect("fetch");
    let head = &server.requests()[0];
    assert!(
        head.starts_with(&format!(
            "GET /api?documentType=A44&contract_MarketAgreement.type=A01&in_Domain={DE_LU_EIC}&out_Domain={DE_LU_EIC}&periodStart=202303252300&periodEnd=202303272200&securityToken={SECRET} "
        )),
        "{head}"
    );
    assert!(!format!("{client:?}").contains(SECRET));

    let hours = de_lu_hours_utc();
    // 23 hours on the day summer time starts, 24 on the next.
    assert_eq!(hours.len(), 47);
    assert_eq!(series.resolution_minutes, 15);
    assert_eq!(series.points.len(), hours.len() * 4);
    for (i, p) in series.points.iter().enumerate() {
        let (hour, price) = hours[i / 4];
        assert_eq!(
            p.start,
            hour + chrono::Duration::minutes(15 * (i as i64 % QUARTERS))
        );
        assert_close(p.value.value(), price, "price");
        assert_eq!(p.quality, Quality::Published);
    }
    assert_eq!(series.points[0].start, w.from);
    assert_eq!(series.known_until, w.to);
    assert_eq!(series.basis, Currency("EUR".to_owned()));
    // Local 01:00 (CET) is 00:00 UTC and local 03:00 (CEST) is 01:00 UTC: nothing between.
    assert_close(
        series
            .at(utc("2023-03-26T00:45:00Z"))
            .expect("01:00 CET")
            .value
            .value(),
        39.23,
        "01:00",
    );
    assert_close(
        series
            .at(utc("2023-03-26T01:00:00Z"))
            .expect("03:00 CEST")
            .value
            .value(),
        40.12,
        "03:00",
    );

    // The second auction, read when asked for, holds AT's prices for the first day only.
    let second = entsoe::parse(&read(A44), "DE-LU", 2).expect("sequence 2");
    assert_eq!(second.points.len(), 23 * 4);
    assert_eq!(second.known_until, utc("2023-03-26T22:00:00Z"));
}

#[test]
fn entsoe_a03_holds_a_price_until_the_next_position_and_a01_does_not() {
    let doc = |curve: &str| {
        format!(
            r#"<Publication_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:0">
            <TimeSeries><currency_Unit.name>EUR</currency_Unit.name><price_Measure_Unit.name>MWH</price_Measure_Unit.name>
            <curveType>{curve}</curveType>
            <Period><timeInterval><start>2024-01-01T00:00Z</start><end>2024-01-01T04:00Z</end></timeInterval>
            <resolution>PT60M</resolution>
            <Point><position>1</position><price.amount>-5.5</price.amount></Point>
            <Point><position>3</position><price.amount>7</price.amount></Point>
            </Period></TimeSeries></Publication_MarketDocument>"#
        )
    };
    let a03 = entsoe::parse(doc("A03").as_bytes(), "X", entsoe::MAIN_AUCTION).expect("A03");
    let values: Vec<f64> = a03.points.iter().map(|p| p.value.value()).collect();
    assert_eq!(values, [-5.5, -5.5, 7.0, 7.0]);
    assert_eq!(a03.known_until, utc("2024-01-01T04:00:00Z"));
    let a01 = entsoe::parse(doc("A01").as_bytes(), "X", entsoe::MAIN_AUCTION).expect("A01");
    let starts: Vec<_> = a01.points.iter().map(|p| p.start).collect();
    assert_eq!(
        starts,
        [utc("2024-01-01T00:00:00Z"), utc("2024-01-01T02:00:00Z")]
    );
}

#[tokio::test]
async fn entsoe_errors_are_clear_and_hide_the_token() {
    let server = serve(vec![
        (
            "/api?documentType=A44&contract_MarketAgreement.type=A01&in_Domain=ACK",
            Reply::Body(read(A44_ACK)),
        ),
        (
            "/api?documentType=A44&contract_MarketAgreement.type=A01&in_Domain=401",
            Reply::Status(401, "Unauthorized", None),
        ),
        (
            "/api?documentType=A44&contract_MarketAgreement.type=A01&in_Domain=CUT",
            Reply::Body(read(A44)[..2000].to_vec()),
        ),
        (
            "/api?documentType=A44&contract_MarketAgreement.type=A01&in_Domain=TRUNC",
            Reply::Truncated(read(A44)),
        ),
    ])
    .await;
    let w = window("2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z");
    let client = |eic| Entsoe::new(fetcher(), &server.base, ApiKey::new(SECRET), eic, "DE-LU");

    let e = fetch_error(client("ACK").fetch(w).await);
    let msg = e.to_string();
    assert!(
        msg.contains("acknowledgement: 999 No matching data found"),
        "{msg}"
    );
    let e = fetch_error(client("401").fetch(w).await);
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("HTTP 401"), "{shown}");
    assert!(shown.contains("/api"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    let e = fetch_error(client("CUT").fetch(w).await);
    assert!(e.to_string().contains("not XML"), "{e}");
    let e = fetch_error(client("TRUNC").fetch(w).await);
    assert!(!format!("{e} {e:?}").contains(SECRET), "{e:?}");
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

    let e = fetch_error(entsoe::parse(&read(A44), "DE-LU", 7));
    assert!(
        e.to_string()
            .contains("no TimeSeries of auction sequence 7"),
        "{e}"
    );
    let bad_res = String::from_utf8(read(A44))
        .expect("utf-8")
        .replace("PT60M", "P1D");
    let e = fetch_error(entsoe::parse(bad_res.as_bytes(), "DE-LU", 1));
    assert!(e.to_string().contains("resolution `P1D`"), "{e}");
    let bad_pos = String::from_utf8(read(A44)).expect("utf-8").replacen(
        "<position>23</position>",
        "<position>24</position>",
        1,
    );
    let e = fetch_error(entsoe::parse(bad_pos.as_bytes(), "DE-LU", 1));
    assert!(
        e.to_string()
            .contains("position 24 outside the period's 1 to 23"),
        "{e}"
    );
}

/// The recorded document from the shared data folder (GPL-3.0, so not copied into the
/// repository): read where it is when this checkout sits beside it.
#[test]
fn entsoe_recorded_document_when_the_shared_data_is_present() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../shared/data/api-samples/entsoe_a44/BerriJ-entsoe-apy_A44_DE-LU_2021-01-01_02.xml",
    );
    let Ok(body) = std::fs::read(&path) else {
        eprintln!("skipped: {} is not here", path.display());
        return;
    };
    let main = entsoe::parse(&body, "DE-LU", entsoe::MAIN_AUCTION).expect("sequence 1");
    // Two days of hours; one is sent as 23 points with a repeated price left out.
    assert_eq!(main.resolution_minutes, 60);
    assert_eq!(main.points.len(), 48);
    assert_eq!(main.points[0].start, utc("2020-12-31T23:00:00Z"));
    assert_close(main.points[0].value.value(), 50.87, "first hour");
    assert_eq!(main.known_until, utc("2021-01-02T23:00:00Z"));
    let quarters = entsoe::parse(&body, "DE-LU", 2).expect("sequence 2");
    assert_eq!(quarters.resolution_minutes, 15);
    assert_eq!(quarters.points.len(), 2 * 96);
    assert_close(quarters.points[0].value.value(), 75.83, "first quarter");
}
