//! Monthly reports: every total of every format reconciles with the ledger to the cent; months
//! and days are local to the reporting time zone (DST included) and energy straddling a
//! boundary is split there; negative prices are credits; bad queries say what is wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use offpeak_scheduler::ledger::{self, Amounts, Fixed, LedgerRecord, LedgerStore, SqliteLedger};
use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::report::{
    self, Month, ReportArgs, ReportFormat, ReportQuery, parse_time_zone, tables,
};
use offpeak_scheduler::scenario;
use offpeak_scheduler::sim;
use offpeak_scheduler::units::{GramsPerKwh, PricePerMwh};

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/de-gb-2023-03")
}

/// A printed decimal as an integer count of `10^-digits` units ("-1.05", 2 -> -105).
fn units(s: &str, digits: u32) -> i64 {
    let s = s.trim();
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert_eq!(frac.len(), digits as usize, "{s} has {digits} decimals");
    let v: i64 = format!("{int}{frac}").parse().expect("a number");
    if neg { -v } else { v }
}

fn cents(f: Fixed) -> i64 {
    f.round_to(2)
}

fn milli(f: Fixed) -> i64 {
    f.round_to(3)
}

fn query(month: &str, tz: &str) -> ReportQuery {
    ReportQuery {
        month: month.parse().expect("month"),
        time_zone: parse_time_zone(tz).expect("time zone"),
        namespace: None,
    }
}

/// Checks that the rows of each view in the plain CSV add up to the view's total, which is
/// the ledger's.
fn check_csv(text: &str, want: &Amounts, saving: Option<i64>) {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let mut sums: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    let mut savings: BTreeMap<String, i64> = BTreeMap::new();
    for row in r.deserialize::<BTreeMap<String, String>>() {
        let row = row.expect("csv row");
        let s = sums.entry(row["view"].clone()).or_default();
        s[0] += units(&row["energy_cost"], 2);
        s[1] += units(&row["facility_kwh"], 3);
        s[2] += units(&row["carbon_kg_co2e_location_based"], 3);
        if units(&row["energy_cost"], 2) < 0 {
            assert_eq!(row["cost_kind"], "credit");
        }
        let saved = &row["saving_vs_full_power_at_submit"];
        assert_eq!(saved.is_empty(), saving.is_none(), "saving shown iff known");
        if !saved.is_empty() {
            *savings.entry(row["view"].clone()).or_default() += units(saved, 2);
        }
    }
    if let Some(saving) = saving {
        for view in ["job", "namespace", "zone", "total"] {
            assert_eq!(savings.get(view), Some(&saving), "CSV saving, view {view}");
        }
    }
    let expected = [
        cents(want.cost),
        milli(want.facility_kwh),
        milli(want.carbon_kg),
    ];
    for view in ["job", "namespace", "zone", "total"] {
        assert_eq!(sums.get(view), Some(&expected), "CSV view {view}");
    }
}

fn check_focus(text: &str, want: &Amounts) {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let mut s = [0i64; 4];
    for row in r.deserialize::<BTreeMap<String, String>>() {
        let row = row.expect("focus row");
        assert_eq!(row["BilledCost"], row["EffectiveCost"]);
        assert_eq!(row["ConsumedUnit"], "kWh");
        let tags: BTreeMap<String, String> = serde_json::from_str(&row["Tags"]).expect("tags");
        assert!(tags.contains_key("namespace") && tags.contains_key("job"));
        assert!(tags.contains_key("zone"));
        assert!(row["ChargePeriodStart"] < row["ChargePeriodEnd"]);
        s[0] += units(&row["BilledCost"], 2);
        s[1] += units(&row["x_FacilityKwh"], 3);
        s[2] += units(&row["x_CarbonKg"], 3);
        s[3] += units(&row["ConsumedQuantity"], 3);
    }
    assert_eq!(
        s,
        [
            cents(want.cost),
            milli(want.facility_kwh),
            milli(want.carbon_kg),
            milli(want.it_kwh)
        ]
    );
}

/// The `data-value` of every `data-col="col"` cell of `html` (in page order).
fn values(html: &str, col: &str, digits: u32) -> Vec<i64> {
    let key = format!("data-col=\"{col}\" data-value=\"");
    html.match_indices(&key)
        .map(|(i, _)| {
            let rest = &html[i + key.len()..];
            units(&rest[..rest.find('"').expect("quote")], digits)
        })
        .collect()
}

/// Each table's rows add up to its total row, which is the ledger's total.
fn check_html(html: &str, want: &Amounts, saving: Option<i64>) {
    assert!(!html.contains("<script"), "no script");
    assert!(!html.contains("src="), "no external asset");
    assert!(html.contains("<svg") && html.contains("location-based"));
    for view in ["summary", "namespace", "zone", "job"] {
        let start = html
            .find(&format!("<table data-view=\"{view}\""))
            .unwrap_or_else(|| panic!("table {view}"));
        let table = &html[start..start + html[start..].find("</table>").expect("end")];
        let (rows, total) = table.split_once("data-total=").expect("total row");
        for (col, digits, want) in [
            ("cost", 2, cents(want.cost)),
            ("facility_kwh", 3, milli(want.facility_kwh)),
            ("carbon_kg", 3, milli(want.carbon_kg)),
        ] {
            let t = values(total, col, digits);
            assert_eq!(t, vec![want], "HTML {view} total {col}");
            if view != "summary" {
                assert_eq!(
                    values(rows, col, digits).iter().sum::<i64>(),
                    want,
                    "{view} {col}"
                );
            }
        }
        match saving {
            Some(s) => {
                assert_eq!(values(total, "saving", 2), vec![s], "HTML {view} saving");
                if view != "summary" {
                    assert_eq!(values(rows, "saving", 2).iter().sum::<i64>(), s, "{view}");
                }
            }
            None => assert!(values(table, "saving", 2).is_empty()),
        }
    }
}

#[test]
fn the_example_months_reports_reconcile_with_the_ledger_in_every_format() -> anyhow::Result<()> {
    let sc = scenario::load(&example_dir())?;
    let replay = sim::simulate(&sc, PolicyKind::Offpeak.build().as_ref(), &mut |_, _| {})?;
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("ledger.sqlite");
    ledger::write_replay(&path, &sc, &replay)?;
    let store = SqliteLedger::open(&path)?;
    let (_, all) = store.totals()?;

    for tz in ["Europe/London", "UTC"] {
        let r = report::build(&store, &query("2023-03", tz))?;
        // The scenario lies inside March in both zones: the month holds the whole ledger.
        assert_eq!(r.total, all, "{tz}");
        let days: Amounts = r.days.iter().fold(Amounts::default(), |t, d| t + d.total);
        assert_eq!(days, all);
        assert_eq!(r.days.len(), 31);
        assert!(r.zone_average_price.contains_key("GB"));
        // Offpeak beats running everything at full power on submission.
        assert!(r.has_counterfactual);
        assert!(r.counterfactual_total.cost > r.total.cost);
        let saving = Some(cents(r.counterfactual_total.cost - r.total.cost));
        check_csv(&tables::csv(&r)?, &all, saving);
        check_focus(&tables::focus(&r)?, &all);
        check_html(&report::html::page(&r), &all, saving);
    }

    // The same through `offpeak report`, one namespace: its totals are that namespace's.
    let ns = store.namespaces()?.into_iter().next().expect("a namespace");
    let full = report::build(&store, &query("2023-03", "Europe/London"))?;
    let (_, want, cf) = full
        .by_namespace()
        .into_iter()
        .find(|(n, _, _)| *n == ns)
        .expect("namespace totals");
    let saving = Some(cents(cf.cost - want.cost));
    for format in [ReportFormat::Csv, ReportFormat::Focus, ReportFormat::Html] {
        let out = tmp.path().join("report.out");
        let text = report::run(&ReportArgs {
            ledger: path.clone(),
            month: "2023-03".into(),
            format,
            namespace: Some(ns.clone()),
            time_zone: "Europe/London".into(),
            out: Some(out.clone()),
        })?;
        assert_eq!(std::fs::read_to_string(&out)?, text);
        match format {
            ReportFormat::Csv => check_csv(&text, &want, saving),
            ReportFormat::Focus => check_focus(&text, &want),
            ReportFormat::Html => check_html(&text, &want, saving),
        }
    }
    Ok(())
}

fn record(
    job: &str,
    start: &str,
    end: &str,
    cost: i64,
    price: f64,
) -> anyhow::Result<LedgerRecord> {
    let start: DateTime<Utc> = start.parse()?;
    Ok(LedgerRecord {
        id: ledger::record_id("hand", job, start.to_rfc3339().as_str()),
        source: "hand".into(),
        namespace: "research".into(),
        job: job.into(),
        zone: "GB".into(),
        start,
        end: end.parse()?,
        gpus: 4,
        price: PricePerMwh(price),
        carbon_intensity: GramsPerKwh(150.0),
        pue: 1.25,
        currency: "GBP".into(),
        amounts: Amounts {
            gpu_hours: Fixed(8_000_000_000),
            it_kwh: Fixed(2_000_000_001),
            facility_kwh: Fixed(2_500_000_001),
            cost: Fixed(cost),
            carbon_kg: Fixed(375_000_001),
        },
        corrects: None,
    })
}

#[test]
fn energy_straddling_a_london_month_boundary_is_split_at_local_midnight() -> anyhow::Result<()> {
    let mut store = SqliteLedger::open_in_memory()?;
    // 22:00Z to 00:00Z on 31 March 2023 is 23:00 to 01:00 BST: half in March, half in April
    // in London; all in March in UTC. Odd nano amounts check the halves add up exactly.
    let straddle = record(
        "job-a",
        "2023-03-31T22:00:00Z",
        "2023-04-01T00:00:00Z",
        1_000_000_001,
        100.0,
    )?;
    // Across the spring-forward hour (01:00Z on 26 March): one local day of 23 hours.
    let dst = record(
        "job-b",
        "2023-03-26T00:30:00Z",
        "2023-03-26T01:30:00Z",
        500_000_000,
        100.0,
    )?;
    store.append(&[straddle.clone(), dst.clone()])?;
    let march = report::build(&store, &query("2023-03", "Europe/London"))?;
    let april = report::build(&store, &query("2023-04", "Europe/London"))?;
    let utc = report::build(&store, &query("2023-03", "UTC"))?;

    assert_eq!(
        march.period_end,
        "2023-03-31T23:00:00Z".parse::<DateTime<Utc>>()?
    );
    assert_eq!(april.period_start, march.period_end);
    let line = |r: &report::MonthlyReport, job: &str| {
        r.lines
            .iter()
            .find(|l| l.job == job)
            .map(|l| l.amounts)
            .unwrap_or_default()
    };
    let (m, a) = (line(&march, "job-a"), line(&april, "job-a"));
    assert_eq!(
        m + a,
        straddle.amounts,
        "the pieces add up to the record exactly"
    );
    assert!((m.cost.to_f64() - 0.5).abs() < 1e-8 && (a.cost.to_f64() - 0.5).abs() < 1e-8);
    assert_eq!(line(&utc, "job-a"), straddle.amounts);
    assert_eq!(april.days[0].total, a);

    // 26 March in London: 00:00 GMT to 00:00 BST, 23 hours; job-b lies wholly inside it.
    let d26 = &march.days[25];
    assert_eq!((d26.end - d26.start).num_hours(), 23);
    assert_eq!(d26.total, dst.amounts);
    assert_eq!(march.total, dst.amounts + m);
    Ok(())
}

#[test]
fn negative_prices_show_as_credits_and_still_reconcile() -> anyhow::Result<()> {
    let mut store = SqliteLedger::open_in_memory()?;
    let credit = record(
        "job-neg",
        "2023-03-05T02:00:00Z",
        "2023-03-05T03:00:00Z",
        -1_234_567_891,
        -20.0,
    )?;
    let charge = record(
        "job-pos",
        "2023-03-06T02:00:00Z",
        "2023-03-06T03:00:00Z",
        333_333_333,
        50.0,
    )?;
    store.append(&[credit, charge])?;
    let r = report::build(&store, &query("2023-03", "Europe/London"))?;
    assert_eq!(r.total.cost, Fixed(-1_234_567_891 + 333_333_333));
    let csv_text = tables::csv(&r)?;
    assert!(csv_text.contains("job-neg,") && csv_text.contains(",-1.23,credit,"));
    check_csv(&csv_text, &r.total, None);
    let focus = tables::focus(&r)?;
    assert!(focus.contains("-1.23,-1.23,Credit,"));
    check_focus(&focus, &r.total);
    let html = report::html::page(&r);
    assert!(html.contains("-1.23 (credit)"));
    check_html(&html, &r.total, None);
    Ok(())
}

#[test]
fn malformed_queries_say_what_is_wrong() -> anyhow::Result<()> {
    let e = "2023-13".parse::<Month>().expect_err("month 13");
    assert!(e.to_string().contains("\"2023-13\"") && e.to_string().contains("month 13"));
    for bad in ["2023", "23-03", "2023-3", "march"] {
        let e = bad.parse::<Month>().expect_err(bad);
        assert!(e.to_string().contains(bad), "{e}");
    }
    let e = parse_time_zone("Mars/Olympus").expect_err("tz");
    assert!(e.to_string().contains("Mars/Olympus"), "{e}");

    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("l.sqlite");
    let mut store = SqliteLedger::open(&path)?;
    store.append(&[record(
        "job-a",
        "2023-03-05T02:00:00Z",
        "2023-03-05T03:00:00Z",
        1,
        1.0,
    )?])?;
    let mut q = query("2023-03", "UTC");
    q.namespace = Some("nope".into());
    let e = report::build(&store, &q).expect_err("unknown namespace");
    assert!(
        e.to_string().contains("\"nope\"") && e.to_string().contains("research"),
        "{e}"
    );

    let args = |ledger: PathBuf, month: &str, tz: &str| ReportArgs {
        ledger,
        month: month.into(),
        format: ReportFormat::Csv,
        namespace: None,
        time_zone: tz.into(),
        out: None,
    };
    let e = report::run(&args(path.clone(), "2023-13", "UTC")).expect_err("month");
    assert!(e.to_string().contains("2023-13"));
    let e = report::run(&args(path.clone(), "2023-03", "Europe/Lndon")).expect_err("tz");
    assert!(e.to_string().contains("Europe/Lndon"));
    let missing = tmp.path().join("missing.sqlite");
    let e = report::run(&args(missing.clone(), "2023-03", "UTC")).expect_err("no ledger");
    assert!(e.to_string().contains("missing.sqlite"));
    assert!(!missing.exists(), "a typo must not create an empty ledger");
    Ok(())
}

#[test]
fn rounding_is_apportioned_so_rows_add_up_to_the_total() {
    // Three rows of 1/3 cent each... and a third of a currency unit each.
    let third = Fixed(333_333_333);
    let rows = [third, third, third, Fixed(-5_000_000), Fixed(4_999_999)];
    let cents = tables::apportion(&rows, 2);
    let total: i64 = rows.iter().map(|f| f.0).sum();
    assert_eq!(cents.iter().sum::<i64>(), Fixed(total).round_to(2));
}
