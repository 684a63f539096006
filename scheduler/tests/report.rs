//! Monthly reports, on every ledger backend: every total of every format and view reconciles
//! with the ledger to the cent; months and days are local to the reporting time zone (DST
//! included) and energy straddling a boundary is split there; negative prices are credits;
//! budgets are shown against actuals; bad queries say what is wrong.

mod ledger_common;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ledger_common::{Backend, example_dir, on_every_backend, units};
use offpeak_scheduler::cli;
use offpeak_scheduler::ledger::{self, Amounts, Fixed, LedgerRecord};
use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::report::{
    self, Budget, BudgetScope, Finance, Month, ReportArgs, ReportFormat, ReportQuery,
    parse_time_zone, tables,
};
use offpeak_scheduler::scenario;
use offpeak_scheduler::schedule;
use offpeak_scheduler::sim;
use offpeak_scheduler::units::{GramsPerKwh, PricePerMwh};

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
        budgets: Vec::new(),
    }
}

/// The views of the plain CSV that each add up to the total.
const CSV_VIEWS: [&str; 7] = [
    "job",
    "namespace",
    "team",
    "cost_centre",
    "zone",
    "tariff_period",
    "total",
];

/// Checks that the rows of each view in the plain CSV add up to the view's total, which is
/// the ledger's.
fn check_csv(text: &str, want: &Amounts, saving: Option<i64>) {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let mut sums: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    let mut savings: BTreeMap<String, i64> = BTreeMap::new();
    for row in r.deserialize::<BTreeMap<String, String>>() {
        let row = row.expect("csv row");
        let s = sums.entry(row["view"].clone()).or_default();
        s[0] += units(&row["energy_cost"], 2);
        s[1] += units(&row["facility_kwh"], 3);
        s[2] += units(&row["carbon_kg_co2e_location_based"], 3);
        s[3] += units(&row["it_kwh"], 3);
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
        for view in CSV_VIEWS {
            assert_eq!(savings.get(view), Some(&saving), "CSV saving, view {view}");
        }
    }
    let expected = [
        cents(want.cost),
        milli(want.facility_kwh),
        milli(want.carbon_kg),
        milli(want.it_kwh),
    ];
    for view in CSV_VIEWS {
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
        for tag in [
            "namespace",
            "team",
            "cost_centre",
            "job",
            "zone",
            "tariff_period",
        ] {
            assert!(tags.contains_key(tag), "tag {tag}");
        }
        assert_eq!(tags["tariff_period"], row["x_TariffPeriod"]);
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

/// The HTML table of `view`.
fn html_table<'a>(html: &'a str, view: &str) -> &'a str {
    let start = html
        .find(&format!("<table data-view=\"{view}\""))
        .unwrap_or_else(|| panic!("table {view}"));
    &html[start..start + html[start..].find("</table>").expect("end")]
}

/// Each table's rows add up to its total row, which is the ledger's total.
fn check_html(html: &str, want: &Amounts, saving: Option<i64>) {
    assert!(!html.contains("<script"), "no script");
    assert!(!html.contains("src="), "no external asset");
    assert!(html.contains("<svg") && html.contains("location-based"));
    for view in [
        "summary",
        "namespace",
        "team",
        "cost_centre",
        "zone",
        "tariff_period",
        "job",
    ] {
        let table = html_table(html, view);
        let (rows, total) = table.split_once("data-total=").expect("total row");
        for (col, digits, want) in [
            ("cost", 2, cents(want.cost)),
            ("facility_kwh", 3, milli(want.facility_kwh)),
            ("carbon_kg", 3, milli(want.carbon_kg)),
            ("it_kwh", 3, milli(want.it_kwh)),
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

fn finance() -> Finance {
    report::finance::parse(
        "currency: USD\n\
         namespaces:\n  research: {team: ml-research, cost_centre: CC-4100}\n  \
         prod: {team: ml-platform, cost_centre: CC-2000}\n  \
         batch: {team: ml-platform, cost_centre: CC-2001}\n\
         budgets:\n  namespaces: {research: 1000.00, prod: 1.00}\n  teams: {ml-platform: 5000}\n",
        std::path::Path::new("finance.yaml"),
    )
    .expect("finance")
}

fn example_month(backend: &Backend) -> anyhow::Result<()> {
    let sc = scenario::load(&example_dir())?;
    let replay = sim::simulate(&sc, PolicyKind::Offpeak.build().as_ref(), &mut |_, _| {})?;
    let tmp = tempfile::tempdir()?;
    let fresh = backend.fresh()?;
    let fin = finance();
    let mut store = fresh.open()?;
    ledger::write_replay(store.as_mut(), &sc, &replay, &fin.allocation)?;
    let (_, all) = store.totals()?;

    for tz in ["Europe/London", "UTC"] {
        let mut q = query("2023-03", tz);
        q.budgets = fin.budgets.clone();
        let r = report::build(store.as_ref(), &q)?;
        // The scenario lies inside March in both zones: the month holds the whole ledger.
        assert_eq!(r.total, all, "{tz}");
        let days: Amounts = r.days.iter().fold(Amounts::default(), |t, d| t + d.total);
        assert_eq!(days, all);
        assert_eq!(r.days.len(), 31);
        assert!(r.zone_average_price.contains_key("GB"));
        assert_eq!(
            r.by_team().iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
            ["ml-platform", "ml-research"]
        );
        // Offpeak beats running everything at full power on submission.
        assert!(r.has_counterfactual);
        assert!(r.counterfactual_total.cost > r.total.cost);
        let saving = Some(cents(r.counterfactual_total.cost - r.total.cost));
        check_csv(&tables::csv(&r)?, &all, saving);
        check_focus(&tables::focus(&r)?, &all);
        check_html(&report::html::page(&r), &all, saving);
        // Budgets: prod's 1.00 is blown, research's 1000 is not.
        let prod = r
            .budgets
            .iter()
            .find(|b| b.scope == BudgetScope::Namespace("prod".into()))
            .expect("prod budget");
        assert!(prod.over() && prod.remaining().0 < 0);
        assert_eq!(r.budgets.len(), 3);
    }

    // The same through `offpeak report`, one namespace: its totals are that namespace's.
    let ns = "research".to_string();
    let full = report::build(store.as_ref(), &query("2023-03", "Europe/London"))?;
    let (_, want, cf) = full
        .by_namespace()
        .into_iter()
        .find(|(n, _, _)| *n == ns)
        .expect("namespace totals");
    let saving = Some(cents(cf.cost - want.cost));
    let finance_file = tmp.path().join("finance.yaml");
    std::fs::write(
        &finance_file,
        "currency: USD\nbudgets:\n  namespaces: {research: 1000}\n  teams: {ml-platform: 1}\n",
    )?;
    for format in ReportFormat::ALL {
        let out = tmp.path().join("report.out");
        let text = report::run(&ReportArgs {
            ledger: fresh.location.clone(),
            month: "2023-03".into(),
            format,
            namespace: Some(ns.clone()),
            time_zone: "Europe/London".into(),
            finance: Some(finance_file.clone()),
            out: Some(out.clone()),
        })?;
        assert_eq!(std::fs::read_to_string(&out)?, text);
        match format {
            ReportFormat::Csv => {
                check_csv(&text, &want, saving);
                // The namespace's budget is shown on its row; a team's is out of scope.
                let budget_rows: Vec<_> = text
                    .lines()
                    .filter(|l| l.contains(",namespace,research,"))
                    .collect();
                assert_eq!(budget_rows.len(), 1);
                assert!(budget_rows[0].contains(",1000.00,"), "{}", budget_rows[0]);
            }
            ReportFormat::Focus => check_focus(&text, &want),
            ReportFormat::Html => {
                check_html(&text, &want, saving);
                let b = html_table(&text, "budgets");
                assert_eq!(values(b, "budget", 2), vec![100_000]);
                assert_eq!(values(b, "actual", 2), vec![cents(want.cost)]);
                assert!(b.contains("within budget") && !b.contains("ml-platform"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_example_months_reports_reconcile_with_the_ledger_in_every_format() -> anyhow::Result<()> {
    on_every_backend(example_month)
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
        team: "ml-research".into(),
        cost_centre: "CC-4100".into(),
        job: job.into(),
        zone: "GB".into(),
        tariff_period: "peak".into(),
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

fn line(r: &report::MonthlyReport, job: &str) -> Amounts {
    r.lines
        .iter()
        .filter(|l| l.job == job)
        .fold(Amounts::default(), |t, l| t + l.amounts)
}

fn straddle(backend: &Backend) -> anyhow::Result<()> {
    let fresh = backend.fresh()?;
    let mut store = fresh.open()?;
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
    let store = store.as_ref();
    let march = report::build(store, &query("2023-03", "Europe/London"))?;
    let april = report::build(store, &query("2023-04", "Europe/London"))?;
    let utc = report::build(store, &query("2023-03", "UTC"))?;

    assert_eq!(
        march.period_end,
        "2023-03-31T23:00:00Z".parse::<DateTime<Utc>>()?
    );
    assert_eq!(april.period_start, march.period_end);
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
    for text in [tables::csv(&march)?, tables::focus(&march)?] {
        assert!(text.contains("peak"), "the tariff period is shown");
    }
    check_csv(&tables::csv(&march)?, &march.total, None);
    check_focus(&tables::focus(&march)?, &march.total);
    check_html(&report::html::page(&april), &april.total, None);
    Ok(())
}

/// A live ledger: job-a succeeded (it has counterfactual records), job-b is still running,
/// failed or was cancelled (none). The saving covers job-a only, in every format and view.
fn partial_counterfactual(backend: &Backend) -> anyhow::Result<()> {
    let fresh = backend.fresh()?;
    let mut store = fresh.open()?;
    // job-a ran in two slots at 0.40 and 0.33; running at once at full power would have cost
    // 1.50. job-b ran for 2.25 and has no counterfactual.
    let a1 = record(
        "job-a",
        "2023-03-10T01:00:00Z",
        "2023-03-10T02:00:00Z",
        400_000_000,
        50.0,
    )?;
    let a2 = record(
        "job-a",
        "2023-03-11T01:00:00Z",
        "2023-03-11T02:00:00Z",
        330_000_001,
        50.0,
    )?;
    let b = record(
        "job-b",
        "2023-03-12T01:00:00Z",
        "2023-03-12T03:00:00Z",
        2_250_000_000,
        50.0,
    )?;
    let mut cf = record(
        "job-a",
        "2023-03-09T20:00:00Z",
        "2023-03-09T21:00:00Z",
        1_500_000_000,
        150.0,
    )?;
    cf.id = ledger::record_id("counterfactual/hand", "job-a", "2023-03-09T20:00:00Z");
    cf.source = "counterfactual/hand".into();
    store.append(&[a1.clone(), a2.clone(), b.clone()])?;
    store.append_counterfactual(std::slice::from_ref(&cf))?;
    let r = report::build(store.as_ref(), &query("2023-03", "UTC"))?;

    let saving_a = cf.amounts.cost - a1.amounts.cost - a2.amounts.cost;
    assert_eq!(r.saving(), Some(saving_a), "the saving is job-a's alone");
    assert_eq!((r.cover.with_counterfactual, r.cover.jobs), (1, 2));
    assert_eq!(
        r.total,
        a1.amounts + a2.amounts + b.amounts,
        "costs still count job-b"
    );

    // CSV: job-b's row has no saving nor counterfactual; every view's saving is job-a's.
    let text = tables::csv(&r)?;
    let mut savings: BTreeMap<String, i64> = BTreeMap::new();
    for row in csv::Reader::from_reader(text.as_bytes()).deserialize::<BTreeMap<String, String>>() {
        let row = row?;
        let (view, saved) = (&row["view"], &row["saving_vs_full_power_at_submit"]);
        if view == "job" && row["job"] == "job-b" {
            assert_eq!(saved, "", "{row:?}");
            assert_eq!(row["counterfactual_cost_full_power_at_submit"], "");
            assert_eq!(row["saving_over_jobs"], "0 of 1");
            continue;
        }
        let want_cover = if view == "job" { "1 of 1" } else { "1 of 2" };
        assert_eq!(row["saving_over_jobs"], want_cover, "{row:?}");
        *savings.entry(view.clone()).or_default() += units(saved, 2);
    }
    for view in CSV_VIEWS {
        assert_eq!(
            savings.get(view),
            Some(&cents(saving_a)),
            "CSV saving, view {view}"
        );
    }

    // FOCUS: job-b's days have empty x_ saving columns; job-a's add up to its saving.
    let text = tables::focus(&r)?;
    let mut focus_saving = 0;
    for row in csv::Reader::from_reader(text.as_bytes()).deserialize::<BTreeMap<String, String>>() {
        let row = row?;
        let tags: BTreeMap<String, String> = serde_json::from_str(&row["Tags"])?;
        if tags["job"] == "job-b" {
            assert_eq!(
                (
                    row["x_Saving"].as_str(),
                    row["x_CounterfactualCost"].as_str()
                ),
                ("", "")
            );
        } else {
            focus_saving += units(&row["x_Saving"], 2);
        }
    }
    assert_eq!(focus_saving, cents(saving_a));
    check_focus(&text, &r.total);

    // HTML: job-b's saving cell is blank, every total is job-a's, with the footnote.
    let html = report::html::page(&r);
    check_html(&html, &r.total, Some(cents(saving_a)));
    let jobs = html_table(&html, "job");
    assert_eq!(
        values(jobs, "saving", 2),
        vec![cents(saving_a), cents(saving_a)]
    );
    assert!(html.contains("data-saving-cover=\"namespace\">Saving over 1 of 2 jobs"));
    assert!(html_table(&html, "team").contains("(over 1 of 2 jobs)"));
    Ok(())
}

#[test]
fn only_jobs_with_a_counterfactual_count_towards_the_saving() -> anyhow::Result<()> {
    on_every_backend(partial_counterfactual)
}

#[test]
fn energy_straddling_a_london_month_boundary_is_split_at_local_midnight() -> anyhow::Result<()> {
    on_every_backend(straddle)
}

fn fall_back(backend: &Backend) -> anyhow::Result<()> {
    let fresh = backend.fresh()?;
    let mut store = fresh.open()?;
    // New York falls back at 06:00Z on 5 November 2023 (02:00 EDT -> 01:00 EST): that local
    // day has 25 hours. A record over 04:00-08:00Z lies wholly inside it.
    let repeated = record(
        "job-fall",
        "2023-11-05T04:00:00Z",
        "2023-11-05T08:00:00Z",
        700_000_003,
        80.0,
    )?;
    // 03:00Z to 05:00Z on 1 November is 23:00 to 01:00 EDT: the October/November boundary
    // of New York cuts it in half, three hours later than UTC's.
    let boundary = record(
        "job-edge",
        "2023-11-01T03:00:00Z",
        "2023-11-01T05:00:00Z",
        300_000_001,
        80.0,
    )?;
    store.append(&[repeated.clone(), boundary.clone()])?;
    let store = store.as_ref();
    let nov = report::build(store, &query("2023-11", "America/New_York"))?;
    let oct = report::build(store, &query("2023-10", "America/New_York"))?;
    assert_eq!(nov.days.len(), 30);
    let d5 = &nov.days[4];
    assert_eq!((d5.end - d5.start).num_hours(), 25);
    assert_eq!(d5.total, repeated.amounts);
    assert_eq!(
        nov.period_start,
        "2023-11-01T04:00:00Z".parse::<DateTime<Utc>>()?
    );
    assert_eq!(oct.period_end, nov.period_start);
    assert_eq!(
        line(&oct, "job-edge") + line(&nov, "job-edge"),
        boundary.amounts
    );
    assert_eq!(line(&oct, "job-edge").cost, Fixed(150_000_001));
    // Every local day of November adds up to its 30 days in hours: 30 × 24 + 1.
    let hours: i64 = nov.days.iter().map(|d| (d.end - d.start).num_hours()).sum();
    assert_eq!(hours, 30 * 24 + 1);
    check_csv(&tables::csv(&nov)?, &nov.total, None);
    check_focus(&tables::focus(&oct)?, &oct.total);
    Ok(())
}

#[test]
fn a_fall_back_day_has_25_hours_and_months_start_at_local_midnight() -> anyhow::Result<()> {
    on_every_backend(fall_back)
}

fn credits(backend: &Backend) -> anyhow::Result<()> {
    let fresh = backend.fresh()?;
    let mut store = fresh.open()?;
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
    let r = report::build(store.as_ref(), &query("2023-03", "Europe/London"))?;
    assert_eq!(r.total.cost, Fixed(-1_234_567_891 + 333_333_333));
    let csv_text = tables::csv(&r)?;
    assert!(csv_text.contains("job-neg,") && csv_text.contains(",-1.23,credit,"));
    assert!(csv_text.contains(",total,") && csv_text.contains(",-0.90,credit,"));
    check_csv(&csv_text, &r.total, None);
    let focus = tables::focus(&r)?;
    assert!(focus.contains("-1.23,-1.23,Credit,"));
    assert!(focus.contains("(credit: negative prices)"));
    check_focus(&focus, &r.total);
    let html = report::html::page(&r);
    assert!(html.contains("-1.23 (credit)"));
    assert!(html.contains("-0.90 (credit)"), "the total is a credit too");
    check_html(&html, &r.total, None);
    Ok(())
}

#[test]
fn negative_prices_show_as_credits_and_still_reconcile() -> anyhow::Result<()> {
    on_every_backend(credits)
}

fn malformed(backend: &Backend) -> anyhow::Result<()> {
    let fresh = backend.fresh()?;
    let mut store = fresh.open()?;
    let mut q = query("2023-03", "UTC");
    q.namespace = Some("nope".into());
    let e = report::build(store.as_ref(), &q).expect_err("empty ledger");
    assert!(e.to_string().contains("it is empty"), "{e}");
    store.append(&[record(
        "job-a",
        "2023-03-05T02:00:00Z",
        "2023-03-05T03:00:00Z",
        1,
        1.0,
    )?])?;
    let e = report::build(store.as_ref(), &q).expect_err("unknown namespace");
    assert!(
        e.to_string().contains("\"nope\"") && e.to_string().contains("research"),
        "{e}"
    );
    // A budget in another currency than the ledger's is refused, not compared.
    let mut q = query("2023-03", "UTC");
    q.budgets = vec![Budget {
        scope: BudgetScope::Team("ml-research".into()),
        monthly: Fixed(1),
        currency: "USD".into(),
    }];
    let e = report::build(store.as_ref(), &q).expect_err("currency");
    assert!(
        e.to_string().contains("USD") && e.to_string().contains("GBP"),
        "{e}"
    );
    // Two currencies in one month cannot be summed.
    let mut euro = record(
        "job-e",
        "2023-03-07T02:00:00Z",
        "2023-03-07T03:00:00Z",
        1,
        1.0,
    )?;
    euro.currency = "EUR".into();
    store.append(&[euro])?;
    let e = report::build(store.as_ref(), &query("2023-03", "UTC")).expect_err("mixed");
    assert!(e.to_string().contains("EUR, GBP"), "{e}");

    let args = |month: &str, tz: &str| ReportArgs {
        ledger: fresh.location.clone(),
        month: month.into(),
        format: ReportFormat::Csv,
        namespace: None,
        time_zone: tz.into(),
        finance: None,
        out: None,
    };
    let e = report::run(&args("2023-13", "UTC")).expect_err("month");
    assert!(e.to_string().contains("2023-13"));
    let e = report::run(&args("2023-03", "Europe/Lndon")).expect_err("tz");
    assert!(e.to_string().contains("Europe/Lndon"));
    let mut bad_finance = args("2023-03", "UTC");
    let tmp = tempfile::tempdir()?;
    bad_finance.finance = Some(tmp.path().join("missing-finance.yaml"));
    let e = report::run(&bad_finance).expect_err("finance");
    assert!(
        format!("{:#}", anyhow::Error::from(e)).contains("missing-finance.yaml"),
        "names the file"
    );
    Ok(())
}

#[test]
fn malformed_queries_say_what_is_wrong() -> anyhow::Result<()> {
    let e = "2023-13".parse::<Month>().expect_err("month 13");
    assert!(e.to_string().contains("\"2023-13\"") && e.to_string().contains("month 13"));
    for bad in [
        "2023",
        "23-03",
        "2023-3",
        "march",
        "2023-00",
        "2023-03-01",
        "",
    ] {
        let e = bad.parse::<Month>().expect_err(bad);
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
    let e = parse_time_zone("Mars/Olympus").expect_err("tz");
    assert!(e.to_string().contains("Mars/Olympus"), "{e}");
    on_every_backend(malformed)?;
    // A mistyped SQLite path is an error, and does not create an empty ledger.
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("missing.sqlite");
    let e = report::run(&ReportArgs {
        ledger: missing.clone().into(),
        month: "2023-03".into(),
        format: ReportFormat::Csv,
        namespace: None,
        time_zone: "UTC".into(),
        finance: None,
        out: None,
    })
    .expect_err("no ledger");
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

/// Prices a schedule file from scratch, as the checker does: energy = gpus × watts × hours ×
/// PUE; cost = kWh × price; carbon = kWh × intensity. Returns (kWh, cost, kg).
fn price_schedule(sc: &scenario::Scenario, s: &schedule::Schedule) -> (f64, f64, f64) {
    let (mut kwh, mut cost, mut kg) = (0.0, 0.0, 0.0);
    let slot_h = sc.grid.slot_hours().0;
    let slot = |t: &str| sc.grid.position(t.parse().expect("time")).round() as usize;
    for j in &s.jobs {
        let job = sc.jobs.iter().find(|x| x.id == j.id).expect("job");
        let profile = &sc.profiles[job.profile];
        for r in &j.runs {
            let z = sc.zones.iter().find(|z| z.name == r.zone).expect("zone");
            let w = profile
                .points
                .iter()
                .find(|p| p.power_limit.0 as u32 == r.power_limit_watts)
                .expect("point")
                .draw
                .0;
            let per_slot = f64::from(job.gpus) * w / 1000.0 * slot_h * z.pue;
            for s in slot(&r.start)..slot(&r.end) {
                kwh += per_slot;
                cost += per_slot * z.price[s].0 / 1000.0;
                kg += per_slot * z.carbon[s].0 / 1000.0;
            }
        }
    }
    (kwh, cost, kg)
}

fn simulate_reports(backend: &Backend) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let fresh = backend.fresh()?;
    let finance_file = tmp.path().join("finance.yaml");
    std::fs::write(
        &finance_file,
        "currency: USD\nnamespaces:\n  research: {team: ml-research, cost_centre: CC-4100}\n\
         budgets:\n  teams: {ml-research: 20}\n",
    )?;
    let out = tmp.path().join("plan.json");
    let (summary, reports) = cli::simulate_with_reports(&cli::SimulateArgs {
        scenario: Some(example_dir()),
        out: out.clone(),
        policy: PolicyKind::Offpeak,
        json: true,
        no_baseline: true,
        no_progress: true,
        ledger: Some(fresh.location.clone()),
        finance: Some(finance_file),
        report_time_zone: "Europe/London".into(),
        no_report: false,
    })?;
    let names: Vec<String> = reports
        .iter()
        .map(|r| {
            r.path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "plan-report-2023-03.csv",
            "plan-report-2023-03-focus.csv",
            "plan-report-2023-03.html"
        ]
    );
    assert!(reports.iter().all(|r| r.path.parent() == out.parent()));

    // The schedule, priced from its file alone, the ledger and the summary agree to the cent.
    let sc = scenario::load(&example_dir())?;
    let plan: schedule::Schedule = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let (kwh, cost, kg) = price_schedule(&sc, &plan);
    let store = fresh.open()?;
    let (_, ledger_total) = store.totals()?;
    let c = |x: f64| (x * 100.0).round() as i64;
    let m = |x: f64| (x * 1000.0).round() as i64;
    assert_eq!(cents(ledger_total.cost), c(cost), "ledger vs schedule cost");
    assert_eq!(
        milli(ledger_total.carbon_kg),
        m(kg),
        "ledger vs schedule carbon"
    );
    assert_eq!(
        milli(ledger_total.facility_kwh),
        m(kwh),
        "ledger vs schedule kWh"
    );
    assert_eq!(
        c(summary.result.totals.cost.0),
        c(cost),
        "summary vs schedule"
    );
    assert!(reports.iter().all(|r| r.total == ledger_total));

    // Every view of every file adds up to the ledger's total.
    let text = |i: usize| std::fs::read_to_string(&reports[i].path);
    let has_cf = store.counterfactual_totals()?.1;
    let saving = Some(cents(has_cf.cost - ledger_total.cost));
    check_csv(&text(0)?, &ledger_total, saving);
    check_focus(&text(1)?, &ledger_total);
    let html = text(2)?;
    check_html(&html, &ledger_total, saving);
    assert!(html_table(&html, "budgets").contains("ml-research"));
    Ok(())
}

#[test]
fn simulate_writes_month_reports_that_match_the_schedule_and_the_ledger() -> anyhow::Result<()> {
    on_every_backend(simulate_reports)
}
