//! The fallback chains end to end: a configuration (YAML, as an operator writes it) whose
//! sources point at real HTTP servers on 127.0.0.1 serving recorded provider answers, fetched
//! through [`ZoneChain`] with an injected clock. Expected values are read from the raw files,
//! independently of the adapters.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use offpeak_scheduler::signals::chain::{Merged, Origin, Outcome, ZoneChain};
use offpeak_scheduler::signals::config::{self, ConfigError, SignalsConfig};
use offpeak_scheduler::signals::show::{ShowArgs, show};
use offpeak_scheduler::signals::{Quality, SignalUnit};
mod common;

use common::http::{Reply, fetcher, raw_json, read, serve, utc, window};

// ---------------------------------------------------------------------------------------------
// Helpers.

const UK_NATIONAL: &str = "uk_carbon_intensity/national_2023-12-03.json";
const UK_LONDON: &str = "uk_carbon_intensity/regional_13_london_2023-12-03.json";
const EM_FORECAST: &str = "electricity_maps/forecast_DE_2024-03-06.json";
const SECRET: &str = "chain-test-key-81d0";
const EPS: f64 = 1e-9;

/// The raw UK file's instants (`2023-12-03T10:30Z`: no seconds).
fn uk_instant(s: &str) -> DateTime<Utc> {
    utc(&s.replace('Z', ":00Z"))
}

/// The UK answer's half-hours as the raw file has them: start and the value the API says
/// holds (the actual if there is one, else the forecast).
fn uk_raw(rel: &str) -> Vec<(DateTime<Utc>, f64)> {
    let raw = raw_json(rel);
    let data = &raw["data"];
    let half_hours = match data.as_array() {
        Some(a) if a.first().is_some_and(|x| x.get("data").is_some()) => &a[0]["data"],
        Some(_) => data,
        None => &data["data"],
    };
    half_hours
        .as_array()
        .expect("half-hours")
        .iter()
        .map(|h| {
            let i = &h["intensity"];
            let v = i["actual"]
                .as_f64()
                .or_else(|| i["forecast"].as_f64())
                .expect("a value");
            (uk_instant(h["from"].as_str().expect("from")), v)
        })
        .collect()
}

/// A zone `GB` whose carbon chain is `carbon` (YAML list items, indented for the list) and
/// whose price chain is a CSV the tests never ask for.
fn config(dir: &Path, max_age_hours: f64, carbon: &str) -> SignalsConfig {
    let text = format!(
        "signals:
  slot_minutes: 30
  zones:
    - name: GB
      max_age_hours: {max_age_hours}
      price:
        - csv: {{path: prices.csv, value_column: price, time_zone: UTC, unit: per_mwh,
                 currency: GBP, resolution_minutes: 60}}
      carbon:
{carbon}"
    );
    let path = dir.join("offpeak.yaml");
    std::fs::write(&path, &text).expect("write config");
    config::load(&path).unwrap_or_else(|e| panic!("config should load: {e}\n{text}"))
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < EPS, "{what}: {a} != {b}");
}

fn origins<U: SignalUnit>(m: &Merged<U>) -> Vec<Origin> {
    let mut v: Vec<Origin> = m.stretches().into_iter().map(|s| s.origin).collect();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------------------------
// Fallback.

#[tokio::test]
async fn a_first_source_answering_500_falls_through_to_the_second_and_degrades_the_zone() {
    let down = serve(vec![("/", Reply::Status(500, "internal error", None))]).await;
    let london = serve(vec![("/regional/", Reply::Body(read(UK_LONDON)))]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        6.0,
        &format!(
            "        - uk_carbon: {{base_url: \"{}\"}}\n        - uk_carbon: {{region: 13, base_url: \"{}\"}}\n",
            down.base, london.base
        ),
    );
    let mut chain = ZoneChain::new(cfg.zone("GB").expect("zone GB"), &fetcher());
    let now = utc("2023-12-03T11:00:00Z");
    let w = window("2023-12-03T11:00:00Z", "2023-12-04T11:00:00Z");
    let carbon = chain.carbon.fetch(now, w, 30).await.expect("fetch");

    // Both servers were asked, in order.
    assert_eq!(down.requests().len(), 1);
    assert!(
        london.requests()[0].starts_with(
            "GET /regional/intensity/2023-12-03T11:00Z/2023-12-04T11:00Z/regionid/13 "
        ),
        "{}",
        london.requests()[0]
    );
    let second = Origin::Source {
        provider: "uk-carbon-intensity",
        position: 2,
    };
    assert_eq!(origins(&carbon), vec![second]);
    assert_eq!(carbon.slots.len(), 48);
    let raw = uk_raw(UK_LONDON);
    for slot in &carbon.slots {
        let (_, v) = raw
            .iter()
            .find(|(t, _)| *t == slot.start)
            .expect("the raw file has the slot");
        assert_close(
            slot.value.expect("a value").value(),
            *v,
            &slot.start.to_rfc3339(),
        );
    }
    assert!(matches!(carbon.attempts[0].outcome, Outcome::Failed(ref e) if e.contains("HTTP 500")));
    assert_eq!(carbon.attempts[1].outcome, Outcome::Fresh);
    let reason = carbon.degraded.clone().expect("degraded");
    assert!(reason.contains("uk-carbon-intensity#1 failed"), "{reason}");
    assert!(reason.contains("HTTP 500"), "{reason}");
    assert!(reason.contains("using uk-carbon-intensity#2"), "{reason}");
}

#[tokio::test]
async fn a_stale_first_source_falls_through_to_a_fresh_second() {
    // The UK answer ends on 2023-12-05; Electricity Maps' forecast runs to 2024-03-07.
    let uk = serve(vec![("/intensity/", Reply::Body(read(UK_NATIONAL)))]).await;
    let em = serve(vec![("/v3/", Reply::Body(read(EM_FORECAST)))]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("em.key"), format!("{SECRET}\n")).expect("key file");
    let cfg = config(
        dir.path(),
        6.0,
        &format!(
            "        - uk_carbon: {{base_url: \"{}\"}}\n        - electricity_maps: {{zone: DE, api_key_file: em.key, base_url: \"{}\"}}\n",
            uk.base, em.base
        ),
    );
    let mut chain = ZoneChain::new(cfg.zone("GB").expect("zone GB"), &fetcher());
    let now = utc("2024-03-06T20:00:00Z");
    let w = window("2024-03-06T20:00:00Z", "2024-03-07T20:00:00Z");
    let carbon = chain.carbon.fetch(now, w, 30).await.expect("fetch");

    assert!(
        matches!(carbon.attempts[0].outcome, Outcome::Stale { known_until, .. }
        if known_until == utc("2023-12-05T10:30:00Z"))
    );
    assert_eq!(
        origins(&carbon),
        vec![Origin::Source {
            provider: "electricity-maps",
            position: 2
        }]
    );
    // The key went in the header, and nowhere in the result.
    assert!(
        em.requests()[0]
            .to_ascii_lowercase()
            .contains(&format!("auth-token: {SECRET}"))
    );
    let reason = carbon.degraded.clone().expect("degraded");
    assert!(!reason.contains(SECRET));
    assert!(
        reason.contains("uk-carbon-intensity#1 is stale"),
        "{reason}"
    );
    assert!(reason.contains("over the 6 h limit"), "{reason}");

    // Hourly forecast points on half-hour slots: each hour's value twice, all estimated.
    let raw = raw_json(EM_FORECAST);
    let forecast = raw["forecast"].as_array().expect("forecast");
    assert_eq!(carbon.slots.len(), 48);
    for (i, slot) in carbon.slots.iter().enumerate() {
        let hour = &forecast[i / 2];
        assert_eq!(
            slot.start,
            utc(hour["datetime"].as_str().expect("datetime"))
                + Duration::minutes(30 * (i as i64 % 2))
        );
        assert_close(
            slot.value.expect("a value").value(),
            hour["carbonIntensity"].as_f64().expect("value"),
            &slot.start.to_rfc3339(),
        );
        assert_eq!(slot.quality, Some(Quality::Estimated));
    }

    // A month later the UK answer is still stale and Electricity Maps is down: the last good
    // series (EM's, fetched at `now`) reaches further than the stale answer, so it is used.
    em.answer_all(Reply::Status(503, "maintenance", None));
    let later = now + Duration::days(30);
    let carbon = chain.carbon.fetch(later, w, 30).await.expect("fetch");
    assert_eq!(
        origins(&carbon),
        vec![Origin::LastGood {
            provider: "electricity-maps",
            position: 2,
            fetched_at: now
        }]
    );
}

#[tokio::test]
async fn with_every_source_down_the_last_good_series_is_used_then_the_seasonal_estimate() {
    let national = serve(vec![("/intensity/", Reply::Body(read(UK_NATIONAL)))]).await;
    let london = serve(vec![("/regional/", Reply::Status(429, "slow down", None))]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        12.0,
        &format!(
            "        - uk_carbon: {{base_url: \"{}\"}}\n        - uk_carbon: {{region: 13, base_url: \"{}\"}}\n",
            national.base, london.base
        ),
    );
    let mut chain = ZoneChain::new(cfg.zone("GB").expect("zone GB"), &fetcher());

    // First round: the first choice answers, nothing is degraded.
    let first_now = utc("2023-12-03T11:00:00Z");
    let w = window("2023-12-03T10:30:00Z", "2023-12-05T10:30:00Z");
    let good = chain.carbon.fetch(first_now, w, 30).await.expect("fetch");
    assert_eq!(good.degraded, None);
    assert_eq!(
        origins(&good),
        vec![Origin::Source {
            provider: "uk-carbon-intensity",
            position: 1
        }]
    );
    assert_eq!(good.attempts[1].outcome, Outcome::NotAsked);
    assert_eq!(london.requests().len(), 0);

    // Second round, a day later: both sources fail.
    national.answer_all(Reply::Status(500, "down", None));
    let now = utc("2023-12-04T11:00:00Z");
    let w = window("2023-12-05T00:00:00Z", "2023-12-06T12:00:00Z");
    let carbon = chain.carbon.fetch(now, w, 30).await.expect("fetch");
    let last_good = Origin::LastGood {
        provider: "uk-carbon-intensity",
        position: 1,
        fetched_at: first_now,
    };
    assert_eq!(origins(&carbon), vec![last_good.clone(), Origin::Seasonal]);
    let reason = carbon.degraded.clone().expect("degraded");
    assert!(
        reason.contains("HTTP 500") && reason.contains("HTTP 429"),
        "{reason}"
    );
    assert!(reason.contains("last good series"), "{reason}");
    assert_eq!(chain.carbon.last_good_fetched_at(), Some(first_now));

    let raw = uk_raw(UK_NATIONAL);
    let known_until = utc("2023-12-05T10:30:00Z");
    let day = Duration::days(1);
    for slot in &carbon.slots {
        let v = slot.value.expect("every slot has a value").value();
        if slot.start < known_until {
            assert_eq!(slot.origin, last_good);
            let (_, expected) = raw
                .iter()
                .find(|(t, _)| *t == slot.start)
                .expect("raw slot");
            assert_close(v, *expected, &slot.start.to_rfc3339());
            continue;
        }
        // Past the end: the mean of the same time of day on the most recent known days, at
        // most three.
        assert_eq!(slot.origin, Origin::Seasonal);
        assert_eq!(slot.quality, Some(Quality::Estimated));
        let same_time: Vec<f64> = (1..)
            .map(|k| slot.start - day * k)
            .skip_while(|t| *t >= known_until)
            .take_while(|t| *t >= raw[0].0)
            .take(3)
            .map(|t| raw.iter().find(|(r, _)| *r == t).expect("raw slot").1)
            .collect();
        assert!(!same_time.is_empty());
        let mean = same_time.iter().sum::<f64>() / same_time.len() as f64;
        assert_close(v, mean, &slot.start.to_rfc3339());
    }
}

#[tokio::test]
async fn with_nothing_ever_answering_the_zone_has_no_data_and_says_so() {
    let down = serve(vec![("/", Reply::Status(500, "down", None))]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        6.0,
        &format!(
            "        - uk_carbon: {{base_url: \"{}\"}}\n        - electricity_maps: {{zone: GB, api_key_env: OFFPEAK_TEST_UNSET_KEY_7f3a}}\n",
            down.base
        ),
    );
    let mut chain = ZoneChain::new(cfg.zone("GB").expect("zone GB"), &fetcher());
    let now = utc("2023-12-03T11:00:00Z");
    let carbon = chain
        .carbon
        .fetch(
            now,
            window("2023-12-03T11:00:00Z", "2023-12-03T13:00:00Z"),
            30,
        )
        .await
        .expect("fetch");
    assert_eq!(origins(&carbon), vec![Origin::Missing]);
    assert!(carbon.slots.iter().all(|s| s.value.is_none()));
    let reason = carbon.degraded.expect("degraded");
    // The unreadable key fails that source alone, with a message naming the variable.
    assert!(reason.contains("OFFPEAK_TEST_UNSET_KEY_7f3a"), "{reason}");
    assert!(reason.contains("no data"), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// Configuration errors.

fn load_err(text: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).expect("write");
    match config::load(&path) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => {
            // Every error names the file.
            let msg = e.to_string();
            assert!(msg.contains("bad.yaml"), "{msg}");
            if let ConfigError::Invalid { .. } = e {
                assert!(msg.contains("line "), "{msg}");
            }
            msg
        }
    }
}

const GOOD_ZONE: &str = "signals:
  zones:
    - name: GB
      max_age_hours: 6
      price:
        - awattar: {}
      carbon:
        - uk_carbon: {region: 13}
";

#[test]
fn a_config_with_an_unknown_key_is_refused_naming_the_key() {
    // The good form loads.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config::parse(GOOD_ZONE, &dir.path().join("ok.yaml")).expect("good config");
    assert_eq!(cfg.slot_minutes, config::DEFAULT_SLOT_MINUTES);
    assert_eq!(cfg.zone("GB").expect("GB").max_age, Duration::hours(6));

    let msg = load_err(&GOOD_ZONE.replace("max_age_hours", "max_age_hrs"));
    assert!(msg.contains("max_age_hrs"), "{msg}");
    let msg = load_err(&GOOD_ZONE.replace("{region: 13}", "{regoin: 13}"));
    assert!(msg.contains("regoin"), "{msg}");
    let msg = load_err(&GOOD_ZONE.replace("awattar:", "wattime:"));
    assert!(msg.contains("wattime"), "{msg}");
}

#[test]
fn a_config_with_a_bad_field_is_refused_naming_the_field() {
    let msg = load_err(&GOOD_ZONE.replace("max_age_hours: 6", "max_age_hours: -1"));
    assert!(msg.contains("`zones[GB].max_age_hours`"), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");

    let msg = load_err(&GOOD_ZONE.replace("region: 13", "region: 42"));
    assert!(
        msg.contains("`zones[GB].carbon[1].uk_carbon.region`"),
        "{msg}"
    );

    let msg = load_err(&GOOD_ZONE.replace("- awattar: {}", "- entsoe: {eic: 10Y1001A1001A82H}"));
    assert!(
        msg.contains("`zones[GB].price[1].entsoe.api_key_env`"),
        "{msg}"
    );

    let msg = load_err(&GOOD_ZONE.replace("- awattar: {}", "- awattar: {base_url: \"ftp://x\"}"));
    assert!(msg.contains("`zones[GB].price[1].base_url`"), "{msg}");

    // A fallback in another currency would be a silently wrong number.
    let msg = load_err(&GOOD_ZONE.replace(
        "- awattar: {}",
        "- awattar: {}\n        - octopus: {product: P, tariff: T, vat: excluded}",
    ));
    assert!(msg.contains("`zones[GB].price[2]`"), "{msg}");
    assert!(msg.contains("GBP") && msg.contains("EUR"), "{msg}");

    let msg = load_err(&GOOD_ZONE.replace(
        "- awattar: {}",
        "- csv: {path: p.csv, value_column: v, time_zone: Mars/Olympus, unit: per_mwh, currency: EUR, resolution_minutes: 60}",
    ));
    assert!(msg.contains("`zones[GB].price[1].csv.time_zone`"), "{msg}");

    let msg = load_err(&GOOD_ZONE.replace(
        "      carbon:\n        - uk_carbon: {region: 13}\n",
        "      carbon: []\n",
    ));
    assert!(msg.contains("`zones[GB].carbon`"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// `offpeak signals show` on the repository's example configuration.

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/signals.yaml")
}

/// The first `n` data rows of the example's GB file, as (time, price, carbon) text.
fn example_gb_rows(n: usize) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/scenarios/de-gb-2023-03/signals/GB.csv"),
    )
    .expect("example GB.csv");
    text.lines()
        .skip(1)
        .take(n)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
        })
        .collect()
}

#[test]
fn signals_show_prints_the_example_as_csv() {
    let args = ShowArgs {
        config: example_config(),
        zone: "GB".to_owned(),
        from: utc("2023-03-01T00:00:00Z"),
        to: utc("2023-03-02T00:00:00Z"),
        csv: true,
        now: Some(utc("2023-03-02T00:00:00Z")),
    };
    let shown = show(&args).expect("show");
    assert_eq!(shown.degraded, None);
    let lines: Vec<&str> = shown.text.lines().collect();
    assert_eq!(
        lines[0],
        "time,price_per_mwh,price_quality,price_source,carbon_g_per_kwh,carbon_quality,carbon_source"
    );
    assert_eq!(lines.len(), 1 + 24);
    assert_eq!(
        lines[1],
        "2023-03-01T00:00Z,146.318,published,csv#1,199.65,published,csv#1"
    );
    for (line, (time, price, carbon)) in lines[1..].iter().zip(example_gb_rows(24)) {
        let expected = format!(
            "{},{price},published,csv#1,{carbon},published,csv#1",
            time.replace(":00Z", "Z")
        );
        assert_eq!(*line, expected);
    }
}

#[test]
fn signals_show_table_marks_old_data_stale_and_degraded() {
    let args = ShowArgs {
        config: example_config(),
        zone: "GB".to_owned(),
        from: utc("2023-03-01T00:00:00Z"),
        to: utc("2023-03-01T03:00:00Z"),
        csv: false,
        // Long after the file ends: the data is stale, but still the best there is.
        now: Some(utc("2024-01-01T00:00:00Z")),
    };
    let shown = show(&args).expect("show");
    let reason = shown.degraded.expect("degraded");
    assert!(reason.contains("csv#1 is stale"), "{reason}");
    let lines: Vec<&str> = shown.text.lines().collect();
    assert_eq!(
        lines[0],
        "zone GB: slots of 60 min, as of 2024-01-01T00:00Z"
    );
    assert!(
        lines[1].starts_with("price (USD/MWh): DEGRADED: csv#1 is stale"),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        "  2023-03-01T00:00Z to 2023-03-01T03:00Z: csv#1 (stale)"
    );
    assert!(
        lines[3].starts_with("carbon (gCO2e/kWh, direct): DEGRADED"),
        "{}",
        lines[3]
    );
    let rows = &lines[6..];
    assert_eq!(rows.len(), 3);
    for (row, (_, price, carbon)) in rows.iter().zip(example_gb_rows(3)) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let price: f64 = price.parse().expect("price");
        let carbon: f64 = carbon.parse().expect("carbon");
        assert_eq!(cols[1], format!("{price:.2}"), "{row}");
        assert_eq!(cols[2], "published");
        assert_eq!(cols[3..5], ["csv#1", "(stale)"]);
        assert_eq!(cols[5], format!("{carbon:.2}"), "{row}");
    }

    // An unknown zone names the ones there are.
    let err = show(&ShowArgs {
        zone: "FR".to_owned(),
        ..args
    })
    .expect_err("unknown zone");
    assert!(format!("{err:#}").contains("GB, DE-LU"), "{err:#}");
}

// ---------------------------------------------------------------------------------------------
// Gaps and the estimate, on a hand-made file.

#[tokio::test]
async fn gaps_stay_gaps_and_the_estimate_reads_only_the_trailing_unbroken_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Day 1: hour h is worth h, except 04:00, which is missing. Day 2: 100 + h, to 11:00.
    let mut csv = String::from("time,carbon\n");
    for h in (0..24).filter(|h| *h != 4) {
        csv.push_str(&format!("2023-03-01T{h:02}:00:00Z,{h}\n"));
    }
    for h in 0..12 {
        csv.push_str(&format!("2023-03-02T{h:02}:00:00Z,{}\n", 100 + h));
    }
    std::fs::write(dir.path().join("carbon.csv"), csv).expect("csv");
    let cfg = config(
        dir.path(),
        6.0,
        "        - csv: {path: carbon.csv, value_column: carbon, time_zone: UTC, unit: g_per_kwh,\n                basis: direct, resolution_minutes: 60}\n",
    );
    let mut chain = ZoneChain::new(cfg.zone("GB").expect("zone GB"), &fetcher());
    let now = utc("2023-03-02T12:00:00Z");

    // The window must lie on the slot grid.
    let off = chain
        .carbon
        .fetch(
            now,
            window("2023-03-01T00:10:00Z", "2023-03-02T00:00:00Z"),
            30,
        )
        .await
        .expect_err("off the grid");
    assert!(off.to_string().contains("00:10"), "{off}");

    let carbon = chain
        .carbon
        .fetch(
            now,
            window("2023-03-01T00:00:00Z", "2023-03-03T00:00:00Z"),
            60,
        )
        .await
        .expect("fetch");
    assert_eq!(carbon.degraded, None);
    let csv1 = Origin::Source {
        provider: "csv",
        position: 1,
    };
    let stretches: Vec<(String, Origin)> = carbon
        .stretches()
        .into_iter()
        .map(|s| (s.from.format("%dT%H").to_string(), s.origin))
        .collect();
    assert_eq!(
        stretches,
        vec![
            ("01T00".to_owned(), csv1.clone()),
            ("01T04".to_owned(), Origin::Missing),
            ("01T05".to_owned(), csv1),
            ("02T12".to_owned(), Origin::Seasonal),
        ]
    );
    for slot in &carbon.slots[36..] {
        // The run starts after the gap and holds one earlier day: the same hour of day 1.
        let hour = f64::from(
            slot.start
                .format("%H")
                .to_string()
                .parse::<u8>()
                .expect("hour"),
        );
        assert_eq!(slot.value.map(|v| v.value()), Some(hour), "{}", slot.start);
        assert_eq!(slot.quality, Some(Quality::Estimated));
    }
}
