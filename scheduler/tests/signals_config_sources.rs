//! Tariffs, WattTime, the Carbon Aware SDK and recorded answers in the signals configuration:
//! their fields are checked at load, they fall back and go stale in a chain like every other
//! source (over loopback HTTP), and `offpeak signals show` runs on the repository's example
//! configuration offline, naming each slot's tariff period.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use offpeak_scheduler::signals::CarbonBasis;
use offpeak_scheduler::signals::chain::{Origin, Outcome, ZoneChain};
use offpeak_scheduler::signals::config::{self, SignalsConfig};
use offpeak_scheduler::signals::show::{ShowArgs, show};
use offpeak_scheduler::signals::tariff::Tariff;
use offpeak_scheduler::signals::tariff::urdb::UrdbOptions;
mod common;

use common::http::{Reply, fetcher, fixture, numbers, raw_json, read, serve, utc, window};

const CASDK: &str = "carbon_aware_sdk/emissionsforecast_de_2024-03-24.json";
const INVALID_SCOPE: &str = "watttime/error_invalid_scope.json";

/// A configuration with one zone `Z` of the given price and carbon items (YAML list items at
/// the chain's indentation), written to `dir` next to copies of the fixtures it names.
fn config(dir: &Path, max_age_hours: f64, price: &str, carbon: &str) -> SignalsConfig {
    let text = format!(
        "signals:
  slot_minutes: 60
  zones:
    - name: Z
      max_age_hours: {max_age_hours}
      price:
{price}      carbon:
{carbon}"
    );
    let path = dir.join("offpeak.yaml");
    std::fs::write(&path, &text).expect("write config");
    config::load(&path).unwrap_or_else(|e| panic!("config should load: {e}\n{text}"))
}

fn config_err(dir: &Path, price: &str, carbon: &str) -> String {
    let text = format!(
        "signals:
  zones:
    - name: Z
      max_age_hours: 6
      price:
{price}      carbon:
{carbon}"
    );
    let path = dir.join("bad.yaml");
    std::fs::write(&path, &text).expect("write config");
    match config::load(&path) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

const PRICE_TARIFF: &str = "        - tariff: {path: sce.json, time_zone: America/Los_Angeles}\n";
const CARBON_CASDK: &str = "        - carbon_aware_sdk: {path: de.json}\n";

fn copy_fixtures(dir: &Path) {
    for (rel, name) in [
        ("tariffs/sce_tou-8_option-d.json", "sce.json"),
        ("tariffs/dominion_va_ev.json", "virginia.json"),
        ("tariffs/handwritten_tou_berlin.yaml", "berlin.yaml"),
        (CASDK, "de.json"),
    ] {
        std::fs::copy(fixture(rel), dir.join(name)).expect("copy fixture");
    }
}

// ---------------------------------------------------------------------------------------------
// Checked at load.

#[test]
fn new_sources_are_checked_at_load_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    copy_fixtures(d);
    std::fs::write(
        d.join("broken.yaml"),
        "tariff:\n  name: x\n  currency: euro\n",
    )
    .expect("w");
    // (price items, carbon items, what the error must say)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "        - tariff: {path: sce.json}\n",
            CARBON_CASDK,
            &[
                "line 6: `zones[Z].price[1].tariff.time_zone`: an OpenEI URDB tariff does not name its time zone",
            ],
        ),
        (
            "        - tariff: {path: berlin.yaml, time_zone: Europe/Berlin}\n",
            CARBON_CASDK,
            &["`zones[Z].price[1].tariff.time_zone`: is for OpenEI URDB (.json) tariffs"],
        ),
        (
            "        - tariff: {path: sce.csv}\n",
            CARBON_CASDK,
            &["is neither an OpenEI URDB tariff (.json) nor a YAML tariff (.yaml)"],
        ),
        (
            "        - tariff: {path: nope.json, time_zone: UTC}\n",
            CARBON_CASDK,
            &[
                "`zones[Z].price[1].tariff.path`: reading ",
                "nope.json: No such file",
            ],
        ),
        (
            "        - tariff: {path: broken.yaml}\n",
            CARBON_CASDK,
            &["`zones[Z].price[1].tariff.path`: parsing "],
        ),
        (
            "        - tariff: {path: sce.json, time_zone: America/Los_Angeles, tier: 0}\n",
            CARBON_CASDK,
            &["tiers are counted from 1"],
        ),
        // A tariff in dollars cannot back up a price in euros.
        (
            "        - awattar: {}\n        - tariff: {path: sce.json, time_zone: America/Los_Angeles}\n",
            CARBON_CASDK,
            &["`zones[Z].price[2]`: prices in USD, but zones[Z].price[1] gives EUR"],
        ),
        // WattTime: the signal must be chosen, and the credentials come from outside.
        (
            PRICE_TARIFF,
            "        - watttime: {region: CAISO_NORTH, username_env: U, password_env: P}\n",
            &[
                "`zones[Z].carbon[1].watttime.signal`: must be `marginal`",
                "not nothing",
            ],
        ),
        (
            PRICE_TARIFF,
            "        - watttime: {region: CAISO_NORTH, signal: moer, username_env: U, password_env: P}\n",
            &["not `moer`"],
        ),
        (
            PRICE_TARIFF,
            "        - watttime: {region: CAISO_NORTH, signal: marginal, password_env: P}\n",
            &["`zones[Z].carbon[1].watttime.username_env`: give exactly one of"],
        ),
        (
            PRICE_TARIFF,
            "        - watttime: {latitude: 95, longitude: 0, signal: marginal, username_env: U, password_env: P}\n",
            &["give either `region` (CAISO_NORTH) or `latitude` and `longitude`"],
        ),
        // Marginal and average rates do not back each other up.
        (
            PRICE_TARIFF,
            "        - watttime: {region: CAISO_NORTH, signal: marginal, username_env: U, password_env: P}\n        - uk_carbon: {}\n",
            &[
                "`zones[Z].carbon[2]`: gives average intensities, but zones[Z].carbon[1] gives marginal ones",
            ],
        ),
        (
            PRICE_TARIFF,
            "        - carbon_aware_sdk: {path: de.json, url: \"http://x\"}\n",
            &["give exactly one of `path`"],
        ),
        (
            PRICE_TARIFF,
            "        - carbon_aware_sdk: {base_url: \"http://x\"}\n",
            &["the Web API needs the SDK `location`"],
        ),
        (
            PRICE_TARIFF,
            "        - carbon_aware_sdk: {path: de.json, zeros: maybe}\n",
            &["`maybe` is not gaps or values"],
        ),
        (
            PRICE_TARIFF,
            "        - recorded: {provider: wattime, path: x.json}\n",
            &["`wattime` is not uk_carbon, electricity_maps, energy_charts or watttime"],
        ),
        (
            PRICE_TARIFF,
            "        - recorded: {provider: uk_carbon, path: x.json, signal: marginal}\n",
            &["are for `provider: watttime` only"],
        ),
        (
            "        - recorded: {provider: octopus, path: x.json}\n",
            CARBON_CASDK,
            &["an Octopus answer needs `vat: included` or `vat: excluded`"],
        ),
    ];
    for (price, carbon, wants) in cases {
        let e = config_err(d, price, carbon);
        for want in *wants {
            assert!(e.contains(want), "{price}{carbon}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// In a chain, over loopback HTTP.

#[tokio::test]
async fn watttime_refused_for_its_scope_falls_back_to_the_carbon_aware_sdk_forecast() {
    let scope: &'static str = Box::leak(
        String::from_utf8(read(INVALID_SCOPE))
            .expect("utf-8")
            .into_boxed_str(),
    );
    let server = serve(vec![
        ("/login", Reply::Body(br#"{"token": "t"}"#.to_vec())),
        ("/v3/forecast", Reply::Status(403, scope, None)),
    ])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    copy_fixtures(dir.path());
    std::fs::write(dir.path().join("user"), "someone").expect("user");
    std::fs::write(dir.path().join("password"), "secret-7a1").expect("password");
    let carbon = format!(
        "        - watttime: {{region: DE, signal: average, username_file: user, password_file: password, base_url: \"{}\"}}\n{CARBON_CASDK}",
        server.base
    );
    let cfg = config(dir.path(), 6.0, PRICE_TARIFF, &carbon);
    let mut chain = ZoneChain::new(cfg.zone("Z").expect("zone"), &fetcher());
    let now = utc("2024-03-24T06:00:00Z");
    let w = window("2024-03-24T06:00:00Z", "2024-03-25T06:00:00Z");
    let merged = chain.carbon.fetch(now, w, 60).await.expect("fetch");
    let reason = merged.degraded.clone().expect("degraded");
    assert!(
        reason.contains("using carbon-aware-sdk#2 because watttime#1 failed"),
        "{reason}"
    );
    assert!(
        reason.contains("HTTP 403: Invalid query parameters: Invalid scope."),
        "{reason}"
    );
    assert!(!reason.contains("secret-7a1"), "{reason}");
    assert_eq!(merged.basis, Some(CarbonBasis::Unspecified));
    // The forecast's own hourly means, up to its end (the zero padding is a gap); past it,
    // the seasonal estimate.
    let ratings = numbers(&raw_json(CASDK), "Emissions", "Rating");
    for s in &merged.slots {
        let hour = (s.start - utc("2024-03-24T00:00:00Z")).num_hours() as usize;
        if s.start < utc("2024-03-24T23:00:00Z") {
            assert_eq!(
                s.origin,
                Origin::Source {
                    provider: "carbon-aware-sdk",
                    position: 2
                }
            );
            let mean = ratings[4 * hour..4 * hour + 4].iter().sum::<f64>() / 4.0;
            assert!(
                (s.value.expect("value").value() - mean).abs() < 1e-9,
                "{}",
                s.start
            );
        } else {
            assert_eq!(s.origin, Origin::Seasonal, "{}", s.start);
        }
    }
}

#[tokio::test]
async fn an_expired_forecast_and_an_expired_tariff_are_stale() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_fixtures(dir.path());
    let cfg = config(
        dir.path(),
        6.0,
        "        - tariff: {path: virginia.json, time_zone: America/New_York}\n",
        CARBON_CASDK,
    );
    let mut chain = ZoneChain::new(cfg.zone("Z").expect("zone"), &fetcher());
    // A week after the forecast was made, it is stale: still used, as nothing is fresher, but
    // the zone says so.
    let now = utc("2024-03-31T00:00:00Z");
    let carbon = chain
        .carbon
        .fetch(
            now,
            window("2024-03-24T00:00:00Z", "2024-03-25T00:00:00Z"),
            60,
        )
        .await
        .expect("carbon");
    assert!(
        matches!(carbon.attempts[0].outcome, Outcome::Stale { known_until, .. } if known_until == utc("2024-03-24T23:00:00Z")),
        "{:?}",
        carbon.attempts[0]
    );
    assert!(
        carbon
            .degraded
            .as_deref()
            .is_some_and(|r| r.contains("carbon-aware-sdk#1 is stale"))
    );

    // The Virginia tariff ended on 2015-12-31: evaluated in 2015 but judged in 2016, it is
    // stale; judged within its dates, it is not, whatever the window.
    let price = chain
        .price
        .fetch(
            utc("2016-02-01T00:00:00Z"),
            window("2015-06-01T00:00:00Z", "2015-06-02T00:00:00Z"),
            60,
        )
        .await
        .expect("price");
    assert!(
        price
            .degraded
            .as_deref()
            .is_some_and(|r| r.contains("tariff#1 is stale (its data ends 2015-12-31T07:00Z")),
        "{:?}",
        price.degraded
    );
    let price = chain
        .price
        .fetch(
            utc("2015-12-01T00:00:00Z"),
            window("2015-06-01T00:00:00Z", "2015-06-02T00:00:00Z"),
            60,
        )
        .await
        .expect("price");
    assert_eq!(price.degraded, None);
}

// ---------------------------------------------------------------------------------------------
// `offpeak signals show` on the example configuration, offline.

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/signals.yaml")
}

fn example_data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/signals-data")
        .join(rel)
}

fn show_csv(zone: &str, from: &str, to: &str, now: &str) -> (Vec<Vec<String>>, Option<String>) {
    let shown = show(&ShowArgs {
        config: example_config(),
        zone: zone.to_owned(),
        from: utc(from),
        to: utc(to),
        csv: true,
        now: Some(utc(now)),
    })
    .expect("show");
    let rows = shown
        .text
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    (rows, shown.degraded)
}

#[test]
fn show_names_each_hours_tariff_period_through_the_25_hour_day() {
    let (rows, degraded) = show_csv(
        "US-CAL-CISO",
        "2024-11-03T07:00:00Z",
        "2024-11-04T08:00:00Z",
        "2024-11-04T08:00:00Z",
    );
    assert_eq!(degraded, None);
    assert_eq!(rows[0].last().map(String::as_str), Some("price_period"));
    assert_eq!(rows.len(), 1 + 25);
    let tariff = Tariff::load(
        &example_data("pge_bev-2-s.urdb.json"),
        Some(&UrdbOptions::new(chrono_tz::America::Los_Angeles)),
    )
    .expect("tariff");
    let carbon_csv =
        std::fs::read_to_string(example_data("US-CAL-CISO_carbon_2024-11-01_07.csv")).expect("csv");
    let lca: Vec<(String, String)> = carbon_csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_owned(), f[5].to_owned())
        })
        .collect();
    for row in &rows[1..] {
        let t: DateTime<Utc> = utc(&row[0].replace('Z', ":00Z"));
        let period = tariff.period_at(t).expect("in effect");
        assert_eq!(row[7], period.name, "{t}");
        let price: f64 = row[1].parse().expect("price");
        assert!((price - period.price.value()).abs() < 1e-9, "{t}");
        assert_eq!(row[3], "tariff#1");
        let key = t.format("%Y-%m-%d %H:%M:%S").to_string();
        let (_, carbon) = lca.iter().find(|(k, _)| *k == key).expect("carbon row");
        assert_eq!(&row[4], carbon, "{t}");
    }
    // Five peak hours, 16:00 to 21:00 PST, 00:00Z to 05:00Z.
    let peak: Vec<&str> = rows[1..]
        .iter()
        .filter(|r| r[7] == "Peak")
        .map(|r| r[0].as_str())
        .collect();
    assert_eq!(
        peak,
        [
            "2024-11-04T00:00Z",
            "2024-11-04T01:00Z",
            "2024-11-04T02:00Z",
            "2024-11-04T03:00Z",
            "2024-11-04T04:00Z"
        ]
    );
}

#[test]
fn show_falls_back_from_watttime_without_an_account_to_the_recorded_answer() {
    if std::env::var_os("WATTTIME_USERNAME").is_some() {
        eprintln!("WATTTIME_USERNAME is set: the example would ask WattTime itself; skipped");
        return;
    }
    let (rows, degraded) = show_csv(
        "CAISO_NORTH",
        "2023-06-08T00:00:00Z",
        "2023-06-08T06:00:00Z",
        "2023-06-08T12:00:00Z",
    );
    let reason = degraded.expect("degraded");
    assert!(
        reason.contains("carbon: using watttime#2 because watttime#1 failed: reading the API key of watttime: environment variable WATTTIME_USERNAME"),
        "{reason}"
    );
    assert!(!reason.contains("price:"), "{reason}");
    let raw = raw_json_path(&example_data(
        "watttime_historical_CAISO_NORTH_2023-06-08_09.json",
    ));
    let lbs = numbers(&raw, "data", "value");
    for (h, row) in rows[1..].iter().enumerate() {
        // The hour's twelve five-minute rates, averaged, in g/kWh.
        let mean = lbs[12 * h..12 * h + 12].iter().sum::<f64>() / 12.0 * 0.453_592_37;
        let shown: f64 = row[4].parse().expect("carbon");
        assert!((shown - mean).abs() < 1e-9, "hour {h}: {shown} != {mean}");
        assert_eq!(row[6], "watttime#2");
        assert_eq!(row[5], "published");
    }
    assert_eq!(rows.len(), 1 + 6);
}

fn raw_json_path(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")
}

#[test]
fn show_table_reports_the_tariffs_periods_and_unoptimised_charges() {
    let shown = show(&ShowArgs {
        config: example_config(),
        zone: "US-CAL-CISO".to_owned(),
        from: utc("2024-11-04T00:00:00Z"),
        to: utc("2024-11-04T02:00:00Z"),
        csv: false,
        now: Some(utc("2024-11-04T02:00:00Z")),
    })
    .expect("show");
    let text = shown.text;
    assert!(
        text.contains(
            "note: periods (USD/MWh): Off-Peak 180.81, Super Off-Peak 157.54, Peak 394.04"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "note: demand charge (reported, not optimised): `flat` 1.91 USD/kW per month"
        ),
        "{text}"
    );
    assert!(text.contains("tariff period"), "{text}");
    let last = text.lines().last().expect("a row");
    assert!(
        last.starts_with("2024-11-04T01:00Z") && last.ends_with("  Peak"),
        "{last}"
    );
}
