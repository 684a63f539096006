//! Time-of-use tariffs: real OpenEI URDB records and a hand-written YAML tariff, evaluated in
//! their local time zones. Every price is compared with the rate read independently from the
//! raw file (through `serde_json::Value`, the schedule indexed by the local month, day and
//! hour the test computes itself), on ordinary days and on the 23- and 25-hour days of the
//! clock changes; every kind of broken record must give an error naming the field.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use offpeak_scheduler::signals::tariff::urdb::{self, UrdbOptions};
use offpeak_scheduler::signals::tariff::{DemandKind, Tariff, TariffError, handwritten};
use offpeak_scheduler::signals::{Currency, Quality, Window};
use offpeak_scheduler::units::PricePerMwh;
use serde_json::Value;
mod common;

use common::http::{fixture, raw_json, read, utc, window};

const SCE: &str = "tariffs/sce_tou-8_option-d.json";
const PGE: &str = "tariffs/pge_bev-2-s.json";
const SDGE: &str = "tariffs/sdge_al-tou_secondary.json";
const VIRGINIA: &str = "tariffs/dominion_va_ev.json";
const FLAT: &str = "tariffs/dte_d1-5_flat.json";
const BERLIN_YAML: &str = "tariffs/handwritten_tou_berlin.yaml";
const EPS: f64 = 1e-9;

fn la() -> Tz {
    chrono_tz::America::Los_Angeles
}

fn urdb_file(rel: &str, tz: Tz) -> Tariff {
    Tariff::load(&fixture(rel), Some(&UrdbOptions::new(tz)))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The price (USD/MWh) and period index the raw record gives for UTC instant `t`: the local
/// month and hour pick the cell of the weekday or weekend schedule, whose period's first tier
/// is rate + adj per kWh.
fn raw_urdb_at(raw: &Value, tz: Tz, t: DateTime<Utc>) -> (f64, usize) {
    let item = &raw["items"][0];
    let local = t.with_timezone(&tz);
    let weekend = matches!(local.weekday(), Weekday::Sat | Weekday::Sun);
    let schedule = if weekend {
        "energyweekendschedule"
    } else {
        "energyweekdayschedule"
    };
    let month = local.month0() as usize;
    let hour = local.hour() as usize;
    let period = item[schedule][month][hour].as_u64().expect("period index") as usize;
    let tier = &item["energyratestructure"][period][0];
    let rate = tier["rate"].as_f64().expect("rate") + tier["adj"].as_f64().unwrap_or(0.0);
    (rate * 1000.0, period)
}

/// Checks every point of `window` against the raw record, and returns the number of points.
fn assert_matches_raw(tariff: &Tariff, raw: &Value, tz: Tz, w: Window) -> usize {
    let series = tariff.series(w).expect("series");
    assert_eq!(series.resolution_minutes, 60);
    assert_eq!(series.basis, Currency("USD".into()));
    let mut t = w.from;
    let mut n = 0;
    for p in &series.points {
        assert_eq!(p.start, t, "one point per UTC hour, none skipped");
        let (expected, period) = raw_urdb_at(raw, tz, p.start);
        assert!(
            (p.value.value() - expected).abs() < EPS,
            "{}: {} != {expected}",
            p.start,
            p.value.value()
        );
        assert_eq!(p.quality, Quality::Published);
        // Without `energytoulabels` the periods are named by their index.
        let labels = raw["items"][0]["energytoulabels"].as_array();
        let name = match labels {
            Some(l) => l[period].as_str().expect("label").to_owned(),
            None => format!("period {period}"),
        };
        assert_eq!(tariff.period_name_at(p.start), Some(name.as_str()));
        t += Duration::hours(1);
        n += 1;
    }
    assert_eq!(series.known_until, w.to);
    n
}

// ---------------------------------------------------------------------------------------------
// OpenEI URDB records.

#[test]
fn sce_tou_8_on_the_25_hour_day_at_the_end_of_summer_time() {
    let tariff = urdb_file(SCE, la());
    let raw = raw_json(SCE);
    // Sunday 2024-11-03 in Los Angeles: 00:00 PDT is 07:00Z, the next midnight (PST) 08:00Z.
    let day = window("2024-11-03T07:00:00Z", "2024-11-04T08:00:00Z");
    assert_eq!(assert_matches_raw(&tariff, &raw, la(), day), 25);
    // 01:00 happens twice, at 08:00Z (PDT) and 09:00Z (PST), both priced as hour 1 of a
    // November weekend: period 1, 0.12217 + 0.00114 $/kWh.
    for t in ["2024-11-03T08:00:00Z", "2024-11-03T09:00:00Z"] {
        assert_eq!(tariff.period_name_at(utc(t)), Some("period 1"));
        let p = tariff.price_at(utc(t)).expect("price").value();
        assert!((p - 123.31).abs() < 1e-9, "{p}");
    }
    // 16:00 PST (00:00Z on the 4th) is the weekend's period 2: 0.12314 + 0.00114.
    let p = tariff.price_at(utc("2024-11-04T00:00:00Z")).expect("price");
    assert!((p.value() - 124.28).abs() < 1e-9, "{p:?}");
    // A weekday has its own schedule: Monday 16:00 PST is period 2 as well, Monday 08:00 PST
    // (16:00Z) period 0.
    assert_eq!(
        tariff.period_name_at(utc("2024-11-04T16:00:00Z")),
        Some("period 0")
    );
}

#[test]
fn sce_tou_8_on_the_23_hour_day_and_in_summer() {
    let tariff = urdb_file(SCE, la());
    let raw = raw_json(SCE);
    // Sunday 2025-03-09: 00:00 PST is 08:00Z, the next midnight (PDT) 07:00Z on the 10th;
    // 02:00 local never happens.
    let day = window("2025-03-09T08:00:00Z", "2025-03-10T07:00:00Z");
    assert_eq!(assert_matches_raw(&tariff, &raw, la(), day), 23);
    // 09:00Z was 01:00 PST, 10:00Z is already 03:00 PDT.
    let local = |t: &str| utc(t).with_timezone(&la()).hour();
    assert_eq!(
        (local("2025-03-09T09:00:00Z"), local("2025-03-09T10:00:00Z")),
        (1, 3)
    );
    // A July week: the summer rows (periods 3, 4 and 5) apply, weekdays and weekend apart.
    let week = window("2025-07-07T07:00:00Z", "2025-07-14T07:00:00Z");
    assert_eq!(assert_matches_raw(&tariff, &raw, la(), week), 7 * 24);
    assert_eq!(
        tariff.period_name_at(utc("2025-07-08T00:00:00Z")),
        Some("period 5")
    );
    assert_eq!(
        tariff.period_name_at(utc("2025-07-13T00:00:00Z")),
        Some("period 4")
    );
}

#[test]
fn pge_bev_2_s_names_its_periods_from_the_record() {
    let tariff = urdb_file(PGE, la());
    let raw = raw_json(PGE);
    assert_eq!(
        tariff.name,
        "BEV-2-S Business Electric Vehicle (Secondary Voltage)"
    );
    let names: Vec<&str> = tariff.periods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["Off-Peak", "Super Off-Peak", "Peak"]);
    // 16:00 to 21:00 local is Peak at 0.39404 $/kWh; 09:00 to 14:00 Super Off-Peak.
    assert_eq!(
        tariff.period_name_at(utc("2025-01-15T00:00:00Z")),
        Some("Peak")
    );
    assert_eq!(
        tariff.price_at(utc("2025-01-15T00:00:00Z")),
        Some(PricePerMwh(394.04))
    );
    assert_eq!(
        tariff.period_name_at(utc("2025-01-15T17:00:00Z")),
        Some("Super Off-Peak")
    );
    let day = window("2025-03-09T08:00:00Z", "2025-03-10T07:00:00Z");
    assert_eq!(assert_matches_raw(&tariff, &raw, la(), day), 23);
    // Before its start date (2024-10-01T06:00Z) the tariff does not apply.
    assert_eq!(tariff.period_at(utc("2024-10-01T05:00:00Z")), None);
    assert!(tariff.period_at(utc("2024-10-01T06:00:00Z")).is_some());
}

#[test]
fn an_expired_record_prices_nothing_after_its_end_date() {
    let ny = chrono_tz::America::New_York;
    let tariff = urdb_file(VIRGINIA, ny);
    let raw = raw_json(VIRGINIA);
    // Within its dates, the spring-forward day of 2015 and the fall-back day of 2014.
    let spring = window("2015-03-08T05:00:00Z", "2015-03-09T04:00:00Z");
    assert_eq!(assert_matches_raw(&tariff, &raw, ny, spring), 23);
    let autumn = window("2014-11-02T04:00:00Z", "2014-11-03T05:00:00Z");
    assert_eq!(assert_matches_raw(&tariff, &raw, ny, autumn), 25);
    // It ended 2015-12-31T07:00Z: a window across the end stops there, one after it fails.
    let across = tariff
        .series(window("2015-12-31T00:00:00Z", "2016-01-01T00:00:00Z"))
        .expect("series");
    assert_eq!(across.known_until, utc("2015-12-31T07:00:00Z"));
    assert_eq!(across.points.len(), 7);
    let e = tariff
        .series(window("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"))
        .expect_err("expired");
    let msg = e.to_string();
    assert!(msg.contains("not in effect"), "{msg}");
    assert!(msg.contains("until 2015-12-31T07:00Z"), "{msg}");
}

#[test]
fn a_flat_record_is_one_price_every_hour() {
    let tariff = urdb_file(FLAT, chrono_tz::America::Detroit);
    let s = tariff
        .series(window("2014-06-01T00:00:00Z", "2014-06-08T00:00:00Z"))
        .expect("series");
    assert_eq!(s.points.len(), 7 * 24);
    // 0.1056 + 0.029681 $/kWh.
    assert!(
        s.points
            .iter()
            .all(|p| (p.value.value() - 135.281).abs() < 1e-9)
    );
    assert_eq!(tariff.periods.len(), 1);
}

#[test]
fn demand_and_fixed_charges_are_reported_not_priced() {
    let tariff = urdb_file(SDGE, la());
    let raw = raw_json(SDGE);
    let item = &raw["items"][0];
    let flat: Vec<_> = tariff
        .demand_charges
        .iter()
        .filter(|d| d.kind == DemandKind::Flat)
        .collect();
    assert_eq!(flat.len(), 1);
    assert_eq!(
        flat[0].rate,
        item["flatdemandstructure"][0][0]["rate"]
            .as_f64()
            .expect("rate")
    );
    assert_eq!(flat[0].unit, "kW");
    let tou: Vec<_> = tariff
        .demand_charges
        .iter()
        .filter(|d| d.kind == DemandKind::TimeOfUse)
        .collect();
    // Periods 1 (summer) and 2 (the other months) cost something; period 0 is free.
    assert_eq!(tou.len(), 2);
    let p1 = &item["demandratestructure"][1][0];
    assert!(
        (tou[0].rate - (p1["rate"].as_f64().expect("r") + p1["adj"].as_f64().expect("a"))).abs()
            < EPS
    );
    assert_eq!(tou[0].months, vec![6, 7, 8, 9, 10]);
    assert_eq!(tou[1].months, vec![1, 2, 3, 4, 5, 11, 12]);
    let fixed = tariff.fixed_charge.as_ref().expect("fixed charge");
    assert_eq!(fixed.amount, 766.91);
    assert_eq!(fixed.unit, "$/month");
    let notes = tariff.notes().join("\n");
    assert!(
        notes.contains("demand charge (reported, not optimised): `flat` 30.63 USD/kW per month on the month's peak"),
        "{notes}"
    );
    assert!(
        notes.contains("fixed charge (reported, not optimised): 766.91 $/month"),
        "{notes}"
    );
    assert!(
        notes.contains("`Period 1` 45.61 USD/kW per month on the month's peak within the period in months 6,7,8,9,10")
            || notes.contains("`period 1` 45.61 USD/kW per month on the month's peak within the period in months 6,7,8,9,10"),
        "{notes}"
    );
    // The energy price is rate + adj of the energy structure only: no demand in it.
    let p = tariff.price_at(utc("2025-01-15T01:00:00Z")).expect("price");
    let (expected, _) = raw_urdb_at(&raw, la(), utc("2025-01-15T01:00:00Z"));
    assert!((p.value() - expected).abs() < EPS);
}

#[test]
fn holidays_take_the_weekend_schedule() {
    let mut opts = UrdbOptions::new(la());
    opts.holidays = BTreeSet::from([chrono::NaiveDate::from_ymd_opt(2025, 7, 4).expect("date")]);
    let tariff = Tariff::load(&fixture(SCE), Some(&opts)).expect("tariff");
    let plain = urdb_file(SCE, la());
    // Friday 2025-07-04, 17:00 PDT (00:00Z on the 5th): period 5 on the summer weekday row,
    // period 4 on the weekend row; the day after, a Saturday, is the weekend anyway.
    let t = utc("2025-07-05T00:00:00Z");
    assert_eq!(plain.period_name_at(t), Some("period 5"));
    assert_eq!(tariff.period_name_at(t), Some("period 4"));
    let thursday = utc("2025-07-04T00:00:00Z");
    assert_eq!(tariff.period_name_at(thursday), Some("period 5"));
}

// ---------------------------------------------------------------------------------------------
// Broken URDB records: each is refused, naming the field.

fn sce_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = raw_json(SCE);
    edit(&mut v["items"][0]);
    serde_json::to_vec(&v).expect("json")
}

fn urdb_err(body: &[u8], opts: &UrdbOptions) -> String {
    match urdb::parse(body, "test.json", opts) {
        Ok(t) => panic!("expected an error, got {t:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_and_malformed_records_are_parse_errors() {
    let whole = read(SCE);
    let opts = UrdbOptions::new(la());
    let e = urdb::parse(&whole[..whole.len() / 2], "sce.json", &opts).expect_err("truncated");
    assert!(matches!(e, TariffError::Parsing { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("parsing sce.json: EOF while parsing"),
        "{e}"
    );
    let e = urdb_err(b"<html>502 Bad Gateway</html>", &opts);
    assert!(e.starts_with("parsing test.json: expected value"), "{e}");
    let e = urdb_err(br#"{"items": []}"#, &opts);
    assert!(e.contains("`items` holds no rate record"), "{e}");
    // A record whose rate is a string, not a number.
    let body = sce_with(|r| r["energyratestructure"][0][0]["rate"] = "0.1".into());
    let e = urdb_err(&body, &opts);
    assert!(e.contains("items[0]: invalid type: string"), "{e}");
}

#[test]
fn wrong_units_gaps_and_bad_indices_are_refused_naming_the_field() {
    let opts = UrdbOptions::new(la());
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            sce_with(|r| r["energyratestructure"][2][0]["unit"] = "kWh daily".into()),
            "items[0].energyratestructure[2].unit",
            "`kWh daily` rates are not per kWh",
        ),
        (
            sce_with(|r| {
                r["energyweekdayschedule"][3]
                    .as_array_mut()
                    .expect("row")
                    .pop();
            }),
            "items[0].energyweekdayschedule[3]",
            "has 23 hours, not 24",
        ),
        (
            sce_with(|r| {
                r["energyweekendschedule"]
                    .as_array_mut()
                    .expect("rows")
                    .truncate(11);
            }),
            "items[0].energyweekendschedule",
            "has 11 months, not 12",
        ),
        (
            sce_with(|r| r["energyweekdayschedule"][6][17] = 6.into()),
            "items[0].energyweekdayschedule[6][17]",
            "period 6 does not exist (the rates have periods 0 to 5)",
        ),
        (
            sce_with(|r| {
                r.as_object_mut()
                    .expect("record")
                    .remove("energyweekendschedule");
            }),
            "items[0].energyweekendschedule",
            "missing",
        ),
        (
            sce_with(|r| {
                r["energyratestructure"][1][0]
                    .as_object_mut()
                    .expect("tier")
                    .remove("rate");
            }),
            "items[0].energyratestructure[1].rate",
            "the tier has no rate",
        ),
        (
            sce_with(|r| r["energytoulabels"] = serde_json::json!(["a", "b"])),
            "items[0].energytoulabels",
            "2 names for 6 periods",
        ),
        (
            sce_with(|r| r["enddate"] = 1_600_000_000.into()),
            "items[0].enddate",
            "the record ends",
        ),
    ];
    for (body, at, reason) in cases {
        let e = urdb_err(&body, &opts);
        assert!(e.starts_with(&format!("test.json: {at}: ")), "{e}");
        assert!(e.contains(reason), "{e}");
    }
}

#[test]
fn tiers_must_be_chosen_and_then_price_the_chosen_tier() {
    // Period 0 gets a second, dearer tier above 500 kWh a month.
    let body = sce_with(|r| {
        r["energyratestructure"][0] = serde_json::json!([
            {"max": 500, "unit": "kWh", "rate": 0.08859, "adj": 0.00114},
            {"unit": "kWh", "rate": 0.2, "adj": 0.00114}
        ]);
    });
    let e = urdb_err(&body, &UrdbOptions::new(la()));
    assert!(
        e.contains("items[0].energyratestructure[0]: the period has 2 tiers (up to 500, no limit)"),
        "{e}"
    );
    let mut opts = UrdbOptions::new(la());
    opts.tier = Some(2);
    let t = urdb::parse(&body, "test.json", &opts).expect("tier 2");
    assert!((t.periods[0].price.value() - 201.14).abs() < 1e-9);
    // Untiered periods have no tier 2: their only tier is used.
    assert!((t.periods[1].price.value() - 123.31).abs() < 1e-9);
    opts.tier = Some(1);
    let t = urdb::parse(&body, "test.json", &opts).expect("tier 1");
    assert!((t.periods[0].price.value() - 89.73).abs() < 1e-9);
}

#[test]
fn several_records_need_a_label() {
    let mut doc = raw_json(SCE);
    let pge = raw_json(PGE)["items"][0].clone();
    doc["items"].as_array_mut().expect("items").push(pge);
    let body = serde_json::to_vec(&doc).expect("json");
    let e = urdb_err(&body, &UrdbOptions::new(la()));
    assert!(
        e.contains("holds 2 rate records (674e0b87201c6bd096007a5a, 6757525f259975f54b0eccbf): name one with `label`"),
        "{e}"
    );
    let mut opts = UrdbOptions::new(la());
    opts.label = Some("6757525f259975f54b0eccbf".into());
    let t = urdb::parse(&body, "two.json", &opts).expect("labelled");
    assert_eq!(t.periods[2].name, "Peak");
    opts.label = Some("nope".into());
    assert!(urdb_err(&body, &opts).contains("no rate record labelled `nope`"));
}

// ---------------------------------------------------------------------------------------------
// The hand-written YAML form.

fn berlin() -> Tariff {
    Tariff::load(&fixture(BERLIN_YAML), None).expect("yaml tariff")
}

#[test]
fn handwritten_tariff_on_quarter_hours_through_the_23_hour_day() {
    let t = berlin();
    assert_eq!(t.currency, Currency("EUR".into()));
    // Sunday 2024-03-31, Berlin: 00:00 CET is 23:00Z on the 30th, the next midnight (CEST)
    // 22:00Z; 02:00 to 03:00 local never happens.
    let s = t
        .series(window("2024-03-30T23:00:00Z", "2024-03-31T22:00:00Z"))
        .expect("series");
    assert_eq!(s.resolution_minutes, 15);
    assert_eq!(s.points.len(), 23 * 4);
    let tz = chrono_tz::Europe::Berlin;
    for p in &s.points {
        let local = p.start.with_timezone(&tz);
        let minutes = local.hour() * 60 + local.minute();
        // Sunday in March: off-peak 22:30 to 06:30, standard otherwise (no weekday peak, no
        // summer midday in March).
        let (name, ct) = if !(6 * 60 + 30..22 * 60 + 30).contains(&minutes) {
            ("off-peak", 19.25)
        } else {
            ("standard", 27.0)
        };
        assert_eq!(t.period_name_at(p.start), Some(name), "{local}");
        assert!((p.value.value() - ct * 10.0).abs() < 1e-9, "{local}");
    }
    // 06:15 CEST (04:15Z) is still off-peak, 06:30 (04:30Z) standard.
    assert_eq!(
        t.period_name_at(utc("2024-03-31T04:15:00Z")),
        Some("off-peak")
    );
    assert_eq!(
        t.period_name_at(utc("2024-03-31T04:30:00Z")),
        Some("standard")
    );
}

#[test]
fn handwritten_tariff_weekdays_months_and_holidays() {
    let t = berlin();
    // Monday 2024-07-01 08:00 CEST (06:00Z): peak, 34.5 ct/kWh = 345 EUR/MWh.
    assert_eq!(t.period_name_at(utc("2024-07-01T06:00:00Z")), Some("peak"));
    assert_eq!(
        t.price_at(utc("2024-07-01T06:00:00Z")),
        Some(PricePerMwh(345.0))
    );
    // Saturday 2024-07-06 12:00 CEST: summer midday; the same hour in October is standard.
    assert_eq!(
        t.period_name_at(utc("2024-07-06T10:00:00Z")),
        Some("summer-midday")
    );
    assert_eq!(
        t.period_name_at(utc("2024-10-05T10:00:00Z")),
        Some("standard")
    );
    // Wednesday 2024-12-25 08:00 CET (07:00Z) is a holiday, priced as a Sunday: standard.
    assert_eq!(
        t.period_name_at(utc("2024-12-25T07:00:00Z")),
        Some("standard")
    );
    assert_eq!(t.period_name_at(utc("2024-12-24T07:00:00Z")), Some("peak"));
    // Before 2024-01-01 (local midnight, 2023-12-31T23:00Z) it does not apply.
    assert_eq!(t.period_at(utc("2023-12-31T22:45:00Z")), None);
    assert!(t.period_at(utc("2023-12-31T23:00:00Z")).is_some());
    let notes = t.notes().join("\n");
    assert!(
        notes.contains("`annual peak` 9.5 EUR/kW per month on the month's peak"),
        "{notes}"
    );
    assert!(notes.contains("14.9 EUR/month"), "{notes}");
}

fn yaml_err(periods: &str) -> String {
    let text = format!(
        "tariff:\n  name: t\n  currency: EUR\n  time_zone: Europe/Berlin\n  unit: per_kwh\n  periods:\n{periods}"
    );
    match handwritten::parse(text.as_bytes(), "t.yaml") {
        Ok(t) => panic!("expected an error, got {t:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn handwritten_tariff_mistakes_are_refused_naming_the_line_and_field() {
    let e = yaml_err(
        "    - {name: a, rate: 0.3, days: [weekdays], hours: [\"16:00-21:00\"]}\n    - {name: b, rate: 0.2, days: [fri], hours: [\"20:00-22:00\"]}\n    - {name: c, rate: 0.1}\n",
    );
    assert_eq!(
        e,
        "t.yaml: line 8: `tariff.periods[1]`: overlaps `a` on Jan fri at 20:00"
    );
    let e = yaml_err("    - {name: a, rate: 0.3, hours: [\"00:00-23:45\"]}\n");
    assert!(
        e.contains("no period covers Jan mon at 23:45: add it to a period"),
        "{e}"
    );
    let e = yaml_err(
        "    - {name: a, rate: 0.3, hours: [\"16:10-21:00\"]}\n    - {name: b, rate: 0.1}\n",
    );
    assert!(
        e.contains("`tariff.periods[0].hours[0]`: `16:10` is not on a quarter-hour"),
        "{e}"
    );
    let e =
        yaml_err("    - {name: a, rate: 0.3, hours: [\"4pm-9pm\"]}\n    - {name: b, rate: 0.1}\n");
    assert!(
        e.contains("is not a range of local times like `16:00-21:00`"),
        "{e}"
    );
    let e = yaml_err("    - {name: a, rate: 0.3, days: [funday]}\n    - {name: b, rate: 0.1}\n");
    assert!(
        e.contains("`funday` is not mon..sun, weekdays or weekend"),
        "{e}"
    );
    let e = yaml_err("    - {name: a, rate: 0.3, months: [13]}\n    - {name: b, rate: 0.1}\n");
    assert!(e.contains("13 is not a month (1 to 12)"), "{e}");
    let e = yaml_err("    - {name: a, rate: 0.3}\n    - {name: b, rate: 0.1}\n");
    assert!(e.contains("periods[0] already takes every time"), "{e}");
    let e = yaml_err("    - {name: a, rate: 0.3}\n    - {name: a, rate: 0.1, months: [1]}\n");
    assert!(e.contains("`a` is named twice"), "{e}");
    let e = yaml_err("    - {name: a, rate: 0.3, colour: red}\n");
    assert!(e.starts_with("parsing t.yaml: "), "{e}");
    assert!(e.contains("colour"), "{e}");

    let bad_unit = "tariff:\n  name: t\n  currency: EUR\n  time_zone: Europe/Berlin\n  unit: eur_per_kwh\n  periods:\n    - {name: a, rate: 0.3}\n";
    let e = handwritten::parse(bad_unit.as_bytes(), "t.yaml").expect_err("unit");
    assert_eq!(
        e.to_string(),
        "t.yaml: line 5: `tariff.unit`: `eur_per_kwh` is not per_kwh, subunit_per_kwh or per_mwh"
    );
    let bad_zone = bad_unit
        .replace("eur_per_kwh", "per_kwh")
        .replace("Europe/Berlin", "CET+1");
    let e = handwritten::parse(bad_zone.as_bytes(), "t.yaml").expect_err("zone");
    assert!(
        e.to_string().contains("`CET+1` is not an IANA time zone"),
        "{e}"
    );
    let truncated = &read(BERLIN_YAML)[..300];
    let e = handwritten::parse(truncated, "berlin.yaml").expect_err("truncated");
    assert!(
        matches!(e, TariffError::Parsing { .. } | TariffError::Invalid { .. }),
        "{e:?}"
    );
}

#[test]
fn midnight_wrapping_ranges_and_whole_days() {
    let ok = "tariff:\n  name: t\n  currency: GBP\n  time_zone: Europe/London\n  unit: per_mwh\n  periods:\n    - {name: night, rate: 50, hours: [\"23:30-06:30\"]}\n    - {name: day, rate: 150, hours: [\"06:30-23:30\"]}\n";
    let t = handwritten::parse(ok.as_bytes(), "t.yaml").expect("tariff");
    // January: London is on UTC.
    assert_eq!(t.period_name_at(utc("2024-01-10T23:15:00Z")), Some("day"));
    assert_eq!(t.period_name_at(utc("2024-01-10T23:30:00Z")), Some("night"));
    assert_eq!(t.period_name_at(utc("2024-01-11T06:15:00Z")), Some("night"));
    assert_eq!(t.period_name_at(utc("2024-01-11T06:30:00Z")), Some("day"));
    // July: BST, one hour ahead.
    assert_eq!(t.period_name_at(utc("2024-07-10T22:30:00Z")), Some("night"));
    assert_eq!(
        t.price_at(utc("2024-07-10T22:30:00Z")),
        Some(PricePerMwh(50.0))
    );
}
