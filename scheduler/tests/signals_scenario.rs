//! Scenarios whose zones take their series from signals sources (a tariff, a recorded
//! WattTime answer, a signals configuration's chains) instead of only a CSV: they load with the
//! values the sources give, slot by slot, and simulate to valid schedules; CSV scenarios load
//! exactly as before; every mistake names the file, line and field.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::scenario::{self, Scenario};
use offpeak_scheduler::schedule::Schedule;
use offpeak_scheduler::signals::tariff::Tariff;
use offpeak_scheduler::signals::tariff::urdb::UrdbOptions;
use offpeak_scheduler::{sim, validate};
mod common;

use common::HEADER;
use common::http::{fixture, numbers, raw_json, utc};

const SCE: &str = "tariffs/sce_tou-8_option-d.json";
const WATTTIME: &str = "watttime/historical_CAISO_NORTH_2023-06-08_09.json";

const PROFILES: &str = "profiles:
  v100/resnet50:
    points:
      - {power_limit_watts: 100, throughput: 0.72, watts: 98.9}
      - {power_limit_watts: 250, throughput: 1.0, watts: 220.7}
";

/// Writes a scenario folder: `scenario.yaml` from `zones` (the YAML list, indented under
/// `zones:`), the jobs, and the extra files given (relative path, bytes).
fn write(
    root: &Path,
    start: &str,
    currency: &str,
    zones: &str,
    jobs: &[&str],
    files: &[(&str, Vec<u8>)],
) -> PathBuf {
    let dir = root.join("scenario");
    std::fs::create_dir_all(&dir).expect("dir");
    let yaml = format!(
        "name: signals-sources
start: \"{start}\"
slot_minutes: 15
lookahead_hours: 24
checkpoint_overhead_minutes: 10
carbon_price_per_tonne: 0.0
currency: {currency}
{PROFILES}zones:
{zones}jobs: jobs.csv
"
    );
    std::fs::write(dir.join("scenario.yaml"), yaml).expect("yaml");
    std::fs::write(
        dir.join("jobs.csv"),
        format!("{HEADER}\n{}\n", jobs.join("\n")),
    )
    .expect("jobs");
    for (rel, bytes) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(p, bytes).expect("file");
    }
    dir
}

/// Hourly `time,price_per_mwh,carbon_g_per_kwh` rows from `from`.
fn csv(from: DateTime<Utc>, rows: &[(f64, f64)]) -> Vec<u8> {
    let mut s = String::from("time,price_per_mwh,carbon_g_per_kwh\n");
    for (h, (p, c)) in rows.iter().enumerate() {
        let t = from + Duration::hours(h as i64);
        s.push_str(&format!("{},{p},{c}\n", t.format("%Y-%m-%dT%H:%M:%SZ")));
    }
    s.into_bytes()
}

/// The quarter-hours a run covers.
fn quarters(r: &offpeak_scheduler::schedule::Run) -> Vec<DateTime<Utc>> {
    let (start, end) = (utc(&r.start), utc(&r.end));
    let mut out = Vec::new();
    let mut t = start;
    while t < end {
        out.push(t);
        t += Duration::minutes(15);
    }
    out
}

fn simulate(sc: &Scenario, policy: PolicyKind) -> Schedule {
    let replay = sim::simulate(sc, policy.build().as_ref(), &mut |_, _| {}).expect("simulation");
    let schedule = Schedule::from_replay(sc, &replay);
    let errors = validate::validate(sc, &schedule);
    assert!(errors.is_empty(), "invalid schedule: {errors:?}");
    schedule
}

const SCE_ZONE: &str = "  - name: SCE
    pue: 1.2
    signals: signals/SCE.csv
    price:
      tariff: {path: tariffs/sce.json, time_zone: America/Los_Angeles}
    nodes:
      - {accelerator: v100, gpus: 8, count: 2}
";

#[test]
fn a_scenario_priced_by_a_tariff_loads_and_plans_into_its_cheapest_period() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let start = utc("2024-11-02T00:00:00Z");
    // The CSV's price (999) must be overridden by the tariff; its carbon is flat.
    let dir = write(
        tmp.path(),
        "2024-11-02T00:00:00Z",
        "USD",
        SCE_ZONE,
        &["j1,2024-11-02T00:10:00Z,8,v100,v100/resnet50,2.0,2024-11-04T00:00:00Z,true,,research"],
        &[
            ("signals/SCE.csv", csv(start, &[(999.0, 250.0); 72])),
            (
                "tariffs/sce.json",
                std::fs::read(fixture(SCE)).expect("tariff"),
            ),
        ],
    );
    let sc = scenario::load(&dir).expect("scenario loads");
    assert_eq!(sc.n_slots, 72 * 4);
    let tariff = Tariff::load(
        &fixture(SCE),
        Some(&UrdbOptions::new(chrono_tz::America::Los_Angeles)),
    )
    .expect("tariff");
    let zone = &sc.zones[0];
    for s in 0..sc.n_slots {
        let t = sc.grid.instant(s);
        assert_eq!(Some(zone.price[s as usize]), tariff.price_at(t), "{t}");
        assert_eq!(zone.carbon[s as usize].value(), 250.0);
    }
    // Read from the raw record: on Sunday 2024-11-03, 01:00 local happens twice (08:00Z
    // PDT, 09:00Z PST), both November-weekend hour 1, period 1.
    let raw = raw_json(SCE);
    let p1 = &raw["items"][0]["energyratestructure"][1][0];
    let expected = (p1["rate"].as_f64().expect("rate") + p1["adj"].as_f64().expect("adj")) * 1000.0;
    for t in ["2024-11-03T08:00:00Z", "2024-11-03T09:45:00Z"] {
        let s = sc.grid.position(utc(t)) as usize;
        assert!((zone.price[s].value() - expected).abs() < 1e-9, "{t}");
    }

    // The planner sees the tariff: the job runs only in period 0 (08:00 to 16:00 local), the
    // cheapest, while the price-blind policy starts at once.
    let cheapest = tariff
        .periods
        .iter()
        .map(|p| p.price.value())
        .fold(f64::INFINITY, f64::min);
    let offpeak = simulate(&sc, PolicyKind::Offpeak);
    let runs = &offpeak.jobs[0].runs;
    assert!(!runs.is_empty());
    for r in runs {
        for t in quarters(r) {
            assert_eq!(
                tariff.period_name_at(t),
                Some("period 0"),
                "run {r:?} at {t}"
            );
            assert_eq!(tariff.price_at(t).map(|p| p.value()), Some(cheapest));
        }
    }
    let asap = simulate(&sc, PolicyKind::Asap);
    assert_eq!(
        utc(&asap.jobs[0].runs[0].start),
        utc("2024-11-02T00:15:00Z")
    );
}

#[test]
fn a_scenario_from_a_handwritten_tariff_and_a_recorded_watttime_answer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tariff = "tariff:
  name: California example
  currency: USD
  time_zone: America/Los_Angeles
  unit: per_kwh
  periods:
    - {name: peak, rate: 0.40, hours: [\"16:00-21:00\"]}
    - {name: off-peak, rate: 0.15}
";
    let zones = "  - name: CAISO
    pue: 1.1
    price:
      tariff: {path: tariff.yaml}
    carbon:
      recorded: {provider: watttime, path: watttime.json, signal: marginal, endpoint: historical}
    nodes:
      - {accelerator: v100, gpus: 8, count: 1}
";
    let dir = write(
        tmp.path(),
        "2023-06-08T00:00:00Z",
        "USD",
        zones,
        &["j1,2023-06-08T00:00:00Z,8,v100,v100/resnet50,3.0,2023-06-09T23:00:00Z,true,,research"],
        &[
            ("tariff.yaml", tariff.as_bytes().to_vec()),
            (
                "watttime.json",
                std::fs::read(fixture(WATTTIME)).expect("watttime"),
            ),
        ],
    );
    let sc = scenario::load(&dir).expect("scenario loads");
    // Two days of 5-minute values: 192 quarter-hours.
    assert_eq!(sc.n_slots, 192);
    let lbs = numbers(&raw_json(WATTTIME), "data", "value");
    let zone = &sc.zones[0];
    for (s, c) in zone.carbon.iter().enumerate() {
        // Each quarter-hour is the mean of its three 5-minute rates, in g/kWh.
        let mean = lbs[3 * s..3 * s + 3].iter().sum::<f64>() / 3.0;
        assert!((c.value() - mean * 0.453_592_37).abs() < 1e-9, "slot {s}");
    }
    // 16:00 PDT is 23:00Z: peak until 04:00Z.
    let at = |t: &str| zone.price[sc.grid.position(utc(t)) as usize].value();
    assert_eq!(at("2023-06-08T22:45:00Z"), 150.0);
    assert_eq!(at("2023-06-08T23:00:00Z"), 400.0);
    assert_eq!(at("2023-06-09T03:45:00Z"), 400.0);
    assert_eq!(at("2023-06-09T04:00:00Z"), 150.0);
    let schedule = simulate(&sc, PolicyKind::Offpeak);
    for r in &schedule.jobs[0].runs {
        for t in quarters(r) {
            assert_eq!(
                zone.price[sc.grid.position(t) as usize].value(),
                150.0,
                "{r:?}"
            );
        }
    }
}

#[test]
fn a_scenario_zone_from_a_signals_configuration_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let start = utc("2024-01-01T00:00:00Z");
    let rows: Vec<(f64, f64)> = (0..48)
        .map(|h| (40.0 + h as f64, 300.0 - h as f64))
        .collect();
    let config = "signals:
  slot_minutes: 15
  zones:
    - name: X
      max_age_hours: 6
      price:
        - csv: {path: x.csv, value_column: price_per_mwh, time_zone: UTC, unit: per_mwh, currency: EUR, resolution_minutes: 60}
      carbon:
        - csv: {path: x.csv, value_column: carbon_g_per_kwh, time_zone: UTC, unit: g_per_kwh, resolution_minutes: 60}
";
    let zones = "  - name: X
    pue: 1.0
    signals_config: {path: signals.yaml, zone: X, until: \"2024-01-02T00:00:00Z\"}
    nodes:
      - {accelerator: v100, gpus: 8, count: 1}
";
    let dir = write(
        tmp.path(),
        "2024-01-01T00:00:00Z",
        "EUR",
        zones,
        &["j1,2024-01-01T00:00:00Z,8,v100,v100/resnet50,1.0,2024-01-01T20:00:00Z,true,,research"],
        &[
            ("signals.yaml", config.as_bytes().to_vec()),
            ("x.csv", csv(start, &rows)),
        ],
    );
    let sc = scenario::load(&dir).expect("scenario loads");
    // Up to `until`, not to the end of the file.
    assert_eq!(sc.n_slots, 24 * 4);
    for s in 0..sc.n_slots as usize {
        let (p, c) = rows[s / 4];
        assert_eq!(sc.zones[0].price[s].value(), p);
        assert_eq!(sc.zones[0].carbon[s].value(), c);
    }
    simulate(&sc, PolicyKind::Offpeak);
}

#[test]
fn csv_scenarios_load_as_before() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/de-gb-2023-03");
    let sc = scenario::load(&dir).expect("example");
    let built_in = scenario::embedded::example().expect("built-in example");
    assert_eq!(sc.n_slots, built_in.n_slots);
    for (z, b) in sc.zones.iter().zip(&built_in.zones) {
        assert_eq!(z.price, b.price);
        assert_eq!(z.carbon, b.carbon);
        // Each hourly row holds for four quarter-hours.
        let text =
            std::fs::read_to_string(dir.join(format!("signals/{}.csv", z.name))).expect("csv");
        let rows: Vec<(f64, f64)> = text
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[1].parse().expect("price"), f[2].parse().expect("carbon"))
            })
            .collect();
        for (s, (p, c)) in z.price.iter().zip(&z.carbon).enumerate() {
            assert_eq!((p.value(), c.value()), rows[s / 4], "{} slot {s}", z.name);
        }
    }
}

fn load_err(start: &str, currency: &str, zones: &str, files: &[(&str, Vec<u8>)]) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let job = format!("j1,{start},8,v100,v100/resnet50,1.0,2030-01-01T00:00:00Z,true,,research");
    let dir = write(tmp.path(), start, currency, zones, &[&job], files);
    match scenario::load(&dir) {
        Ok(sc) => panic!("expected an error, got {} slots", sc.n_slots),
        Err(e) => {
            let mut msg = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            msg
        }
    }
}

#[test]
fn signals_sources_in_a_scenario_are_checked() {
    let sce = || {
        (
            "tariffs/sce.json",
            std::fs::read(fixture(SCE)).expect("tariff"),
        )
    };
    let carbon_csv = |from: &str| ("signals/SCE.csv", csv(utc(from), &[(1.0, 200.0); 48]));

    // The tariff takes effect on 2024-10-01: a 2023 scenario is outside it.
    let e = load_err(
        "2023-03-01T00:00:00Z",
        "USD",
        SCE_ZONE,
        &[sce(), carbon_csv("2023-03-01T00:00:00Z")],
    );
    assert!(e.contains("field `zones[0].price`"), "{e}");
    assert!(e.contains("is not in effect"), "{e}");
    assert!(e.contains("in effect from 2024-10-01T06:00Z"), "{e}");

    // URDB rates are dollars.
    let e = load_err(
        "2024-11-02T00:00:00Z",
        "EUR",
        SCE_ZONE,
        &[sce(), carbon_csv("2024-11-02T00:00:00Z")],
    );
    assert!(e.contains("line 18: field `zones[0].price`: the source's prices are in USD, the scenario's currency is EUR"), "{e}");

    // A URDB tariff without its time zone.
    let no_tz = SCE_ZONE.replace(", time_zone: America/Los_Angeles", "");
    let e = load_err(
        "2024-11-02T00:00:00Z",
        "USD",
        &no_tz,
        &[sce(), carbon_csv("2024-11-02T00:00:00Z")],
    );
    assert!(
        e.contains("line 18: field `zones[0].price.tariff.time_zone`"),
        "{e}"
    );

    // A live provider is not a scenario source.
    let live = SCE_ZONE.replace(
        "tariff: {path: tariffs/sce.json, time_zone: America/Los_Angeles}",
        "awattar: {}",
    );
    let e = load_err(
        "2024-11-02T00:00:00Z",
        "EUR",
        &live,
        &[carbon_csv("2024-11-02T00:00:00Z")],
    );
    assert!(
        e.contains("for a network provider use `signals_config`"),
        "{e}"
    );

    // Without a CSV, a zone needs both sources.
    let price_only = SCE_ZONE.replace("    signals: signals/SCE.csv\n", "");
    let e = load_err("2024-11-02T00:00:00Z", "USD", &price_only, &[sce()]);
    assert!(e.contains("zone SCE has no signals file"), "{e}");

    // A recorded answer that starts after the scenario.
    let late = "  - name: CAISO
    pue: 1.1
    signals: signals/SCE.csv
    carbon:
      recorded: {provider: watttime, path: wt.json, signal: marginal, endpoint: historical}
    nodes:
      - {accelerator: v100, gpus: 8, count: 1}
";
    let e = load_err(
        "2023-06-07T00:00:00Z",
        "USD",
        late,
        &[
            carbon_csv("2023-06-07T00:00:00Z"),
            ("wt.json", std::fs::read(fixture(WATTTIME)).expect("wt")),
        ],
    );
    assert!(e.contains("field `zones[0].carbon`"), "{e}");
    assert!(
        e.contains("starts at 2023-06-08T00:00:00+00:00, after the scenario start"),
        "{e}"
    );

    // The signal asked for must be the one recorded.
    let average = late.replace("signal: marginal", "signal: average");
    let e = load_err(
        "2023-06-08T00:00:00Z",
        "USD",
        &average,
        &[
            carbon_csv("2023-06-08T00:00:00Z"),
            ("wt.json", std::fs::read(fixture(WATTTIME)).expect("wt")),
        ],
    );
    assert!(
        e.contains("the answer is `co2_moer` but the configuration asks for `co2_aoer`"),
        "{e}"
    );
}
