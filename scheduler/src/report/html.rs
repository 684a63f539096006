//! The monthly report as one self-contained HTML page: inline CSS, inline SVG bar charts, no
//! script and no external asset, so it opens anywhere and prints cleanly. Every printed amount
//! also sits in a `data-value` attribute, with `data-col` naming its column, so tests (and
//! anyone scraping the page) read back exactly what is shown.

use std::fmt::Write as _;

use super::tables::{MONEY_DIGITS, Printed, cost_kind, print_known_money, print_rows};
use super::{Cover, Grouped, MonthlyReport, average_price_paid, day_of_month, keys};
use crate::ledger::record::format_units;
use crate::ledger::{Amounts, Fixed};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}\
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left}\
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.total td{font-weight:bold;border-top:2px solid #222}\
.credit{color:#1a7f37}.note{color:#555;font-size:.85em}tr.over td{color:#b42318}\
svg{display:block;margin:.5em 0}\
@media print{body{margin:0}section,table,svg{break-inside:avoid}a{color:inherit}}";

/// Escapes text for HTML content and attributes.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One amount cell; a negative cost is labelled as a credit.
fn cell(col: &str, value: &str, credit: bool) -> String {
    if credit {
        format!(
            "<td class=\"num credit\" data-col=\"{col}\" data-value=\"{value}\">{value} (credit)</td>"
        )
    } else {
        format!("<td class=\"num\" data-col=\"{col}\" data-value=\"{value}\">{value}</td>")
    }
}

fn price(p: Option<f64>) -> String {
    p.map(|x| format!("{x:.2}"))
        .unwrap_or_else(|| "n/a".to_string())
}

/// A table row before printing: labels, amounts, saving (where any of its jobs has a
/// counterfactual) and how many jobs that covers, zone average price.
type HtmlRow = (Vec<String>, Amounts, Option<Fixed>, Cover, Option<f64>);

fn html_row<K>(g: Grouped<K>, labels: Vec<String>, zone_avg: Option<f64>) -> HtmlRow {
    (labels, g.amounts, g.saving(), g.cover, zone_avg)
}

/// The saving cell: empty where no job has a counterfactual; "(over N of M jobs)" where only
/// some have one.
fn saving_cell(v: &str, cover: Cover) -> String {
    if v.is_empty() {
        return "<td class=\"num\"></td>".to_string();
    }
    let note = if cover.partial() {
        format!(" (over {cover} jobs)")
    } else {
        String::new()
    };
    format!("<td class=\"num\" data-col=\"saving\" data-value=\"{v}\">{v}{note}</td>")
}

/// A table of rows labelled by `labels` (one or more label columns), with a total row.
fn table(out: &mut String, view: &str, heads: &[&str], rows: &[HtmlRow], r: &MonthlyReport) {
    let (total, currency) = (&r.total, &r.currency);
    let amounts: Vec<Amounts> = rows.iter().map(|r| r.1).collect();
    let p: Printed = print_rows(&amounts);
    let t = print_rows(std::slice::from_ref(total));
    let saving = print_known_money(&rows.iter().map(|r| r.2).collect::<Vec<_>>());
    let total_saving = print_known_money(&[r.saving()]);
    let _ = write!(out, "<table data-view=\"{view}\"><thead><tr>");
    for h in heads {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    let _ = write!(
        out,
        "<th class=\"num\">GPU-hours</th><th class=\"num\">IT kWh</th>\
         <th class=\"num\">Facility kWh</th><th class=\"num\">Energy cost ({c})</th>\
         <th class=\"num\">kg CO2e (location-based)</th>\
         <th class=\"num\">Avg price paid ({c}/MWh)</th>\
         <th class=\"num\">Zone avg price ({c}/MWh)</th>\
         <th class=\"num\">Saving vs full power at submit ({c})</th></tr></thead><tbody>",
        c = esc(currency)
    );
    for (i, (labels, a, _, cover, zone_avg)) in rows.iter().enumerate() {
        out.push_str("<tr>");
        for l in labels {
            let _ = write!(out, "<td>{}</td>", esc(l));
        }
        push_amounts(out, &p, i, a);
        let _ = write!(
            out,
            "<td class=\"num\">{}</td><td class=\"num\">{}</td>{}</tr>",
            price(average_price_paid(a)),
            zone_avg.map(|x| format!("{x:.2}")).unwrap_or_default(),
            saving_cell(&saving[i], *cover),
        );
    }
    let _ = write!(out, "<tr class=\"total\" data-total=\"{view}\">");
    for (i, _) in heads.iter().enumerate() {
        out.push_str(if i == 0 {
            "<td>Total</td>"
        } else {
            "<td></td>"
        });
    }
    push_amounts(out, &t, 0, total);
    let _ = write!(
        out,
        "<td class=\"num\">{}</td><td></td>{}</tr></tbody></table>",
        price(average_price_paid(total)),
        saving_cell(&total_saving[0], r.cover),
    );
    if r.cover.partial() && r.has_counterfactual {
        let _ = write!(
            out,
            "<p class=\"note\" data-saving-cover=\"{view}\">Saving over {} jobs: a job still \
             running, failed or cancelled has no counterfactual and is left out of it.</p>",
            r.cover
        );
    }
}

fn push_amounts(out: &mut String, p: &Printed, i: usize, a: &Amounts) {
    out.push_str(&cell("gpu_hours", &p.gpu_hours[i], false));
    out.push_str(&cell("it_kwh", &p.it_kwh[i], false));
    out.push_str(&cell("facility_kwh", &p.facility_kwh[i], false));
    out.push_str(&cell("cost", &p.cost[i], cost_kind(a.cost) == "credit"));
    out.push_str(&cell("carbon_kg", &p.carbon_kg[i], false));
}

/// Chart geometry: wide enough for 31 daily bars on an A4 page, tall enough to read.
const CHART_W: f64 = 640.0;
const CHART_H: f64 = 180.0;
/// Room for the axis labels.
const MARGIN: f64 = 28.0;

/// A vertical bar chart of `values` (negative bars hang below the zero line, in green), with a
/// label under each bar and the value in each bar's tooltip; bar `i` takes colour
/// `colours[i % colours.len()]`.
fn bar_chart(
    title: &str,
    labels: &[String],
    values: &[f64],
    unit: &str,
    colours: &[&str],
) -> String {
    let max = values.iter().cloned().fold(0.0_f64, f64::max);
    let min = values.iter().cloned().fold(0.0_f64, f64::min);
    let span = if max - min > 0.0 { max - min } else { 1.0 };
    let plot_h = CHART_H - 2.0 * MARGIN;
    let zero_y = MARGIN + plot_h * max / span;
    let n = values.len().max(1) as f64;
    let step = (CHART_W - 2.0 * MARGIN) / n;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_W}\" height=\"{CHART_H}\" \
         viewBox=\"0 0 {CHART_W} {CHART_H}\" role=\"img\" aria-label=\"{t}\">\
         <title>{t}</title>\
         <text x=\"{MARGIN}\" y=\"14\" font-size=\"12\">{t} (max {max:.2} {u})</text>\
         <line x1=\"{MARGIN}\" x2=\"{x2}\" y1=\"{zero_y:.1}\" y2=\"{zero_y:.1}\" stroke=\"#222\"/>",
        t = esc(title),
        u = esc(unit),
        x2 = CHART_W - MARGIN,
    );
    for (i, (label, v)) in labels.iter().zip(values).enumerate() {
        let h = plot_h * v.abs() / span;
        let y = if *v >= 0.0 { zero_y - h } else { zero_y };
        let x = MARGIN + step * i as f64 + step * 0.1;
        let colour = colours
            .get(i % colours.len().max(1))
            .copied()
            .unwrap_or("#2f6fb0");
        let fill = if *v < 0.0 { "#1a7f37" } else { colour };
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{fill}\">\
             <title>{l}: {v:.2} {u}</title></rect>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" font-size=\"9\" text-anchor=\"middle\">{l}</text>",
            w = step * 0.8,
            l = esc(label),
            u = esc(unit),
            tx = x + step * 0.4,
            ty = CHART_H - 8.0,
        );
    }
    s.push_str("</svg>");
    s
}

/// The report as an HTML page.
pub fn page(r: &MonthlyReport) -> String {
    let mut out = String::new();
    let scope = r
        .namespace
        .as_ref()
        .map(|ns| format!(", namespace {}", esc(ns)))
        .unwrap_or_default();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>offpeak energy report {m}</title><style>{STYLE}</style></head><body>\
         <h1>offpeak energy report: {m} ({tz}){scope}</h1>\
         <p class=\"note\">Period {s} to {e} UTC (local months and days of {tz}). Energy cost \
         is metered energy with PUE applied, priced at each slot's actual price in {c}; \
         negative costs are credits (negative prices). Carbon is location-based: the grid's \
         average intensity where and when the energy was drawn.</p>",
        m = r.month,
        tz = esc(r.time_zone.name()),
        s = r.period_start.format("%Y-%m-%d %H:%M"),
        e = r.period_end.format("%Y-%m-%d %H:%M"),
        c = esc(&r.currency),
    );

    out.push_str("<section><h2>Total</h2>");
    table(&mut out, "summary", &["Scope"], &[], r);
    if let Some(saved) = r.saving() {
        let cf = r.counterfactual_total.cost;
        let pct = if cf.0 != 0 {
            format!(" ({:.1} %)", saved.to_f64() / cf.to_f64() * 100.0)
        } else {
            String::new()
        };
        let over = if r.cover.partial() {
            format!(" (over the {} jobs with a counterfactual)", r.cover)
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "<p>Counterfactual (every job at full power as soon as submitted, same zone, same \
             prices): {} {c}; saving {} {c}{pct}{over}.</p>",
            format_units(cf.round_to(MONEY_DIGITS), MONEY_DIGITS),
            format_units(saved.round_to(MONEY_DIGITS), MONEY_DIGITS),
            c = esc(&r.currency),
        );
    }
    out.push_str("</section>");

    budgets_section(&mut out, r);
    charts_section(&mut out, r);

    let simple = |groups: Vec<Grouped<String>>, zone_avg: bool| -> Vec<HtmlRow> {
        groups
            .into_iter()
            .map(|g| {
                let avg = zone_avg
                    .then(|| r.zone_average_price.get(&g.key).copied())
                    .flatten();
                let labels = vec![g.key.clone()];
                html_row(g, labels, avg)
            })
            .collect()
    };
    out.push_str("<section><h2>By namespace</h2>");
    table(
        &mut out,
        "namespace",
        &["Namespace"],
        &simple(r.grouped(keys::namespace), false),
        r,
    );
    out.push_str("</section><section><h2>By team</h2>");
    table(
        &mut out,
        "team",
        &["Team"],
        &simple(r.grouped(keys::team), false),
        r,
    );
    out.push_str("</section><section><h2>By cost centre</h2>");
    let rows = simple(r.grouped(keys::cost_centre), false);
    table(&mut out, "cost_centre", &["Cost centre"], &rows, r);
    out.push_str("</section><section><h2>By zone</h2>");
    table(
        &mut out,
        "zone",
        &["Zone"],
        &simple(r.grouped(keys::zone), true),
        r,
    );
    out.push_str("</section><section><h2>By tariff period</h2>");
    let rows: Vec<HtmlRow> = r
        .grouped(keys::tariff_period)
        .into_iter()
        .map(|g| {
            let avg = r.zone_average_price.get(&g.key[0]).copied();
            let labels = g.key.to_vec();
            html_row(g, labels, avg)
        })
        .collect();
    table(
        &mut out,
        "tariff_period",
        &["Zone", "Tariff period"],
        &rows,
        r,
    );
    out.push_str("</section><section><h2>By job</h2>");
    let rows: Vec<HtmlRow> = r
        .grouped(keys::job)
        .into_iter()
        .map(|g| {
            let avg = r.zone_average_price.get(&g.key[3]).copied();
            let labels = g.key.to_vec();
            html_row(g, labels, avg)
        })
        .collect();
    let heads = ["Namespace", "Team", "Cost centre", "Zone", "Job"];
    table(&mut out, "job", &heads, &rows, r);
    out.push_str(
        "</section><p class=\"note\">The saving is against every job run at full power from \
         its submission, in one run, in the zone it first ran in, capacity not modelled, and \
         covers only the jobs that have one (a job that succeeded); a blank saving is a job \
         without one. \
         Teams and cost centres come from the finance file's namespace mapping \
         (\"unassigned\" where it names none); the tariff period is \"spot\" where the price \
         is a market price.</p></body></html>\n",
    );
    out
}

/// Budgets against the month's actual cost, if any budget is in scope.
fn budgets_section(out: &mut String, r: &MonthlyReport) {
    if r.budgets.is_empty() {
        return;
    }
    let money = |f: Fixed| format_units(f.round_to(MONEY_DIGITS), MONEY_DIGITS);
    let _ = write!(
        out,
        "<section><h2>Budgets</h2><table data-view=\"budgets\"><thead><tr><th>Scope</th>\
         <th>Name</th><th class=\"num\">Monthly budget ({c})</th>\
         <th class=\"num\">Actual ({c})</th><th class=\"num\">Remaining ({c})</th>\
         <th class=\"num\">Used</th><th>Status</th></tr></thead><tbody>",
        c = esc(&r.currency)
    );
    for b in &r.budgets {
        let used = if b.budget.0 > 0 {
            format!("{:.1} %", b.actual.to_f64() / b.budget.to_f64() * 100.0)
        } else {
            "n/a".to_string()
        };
        let (class, status) = if b.over() {
            (" class=\"over\"", "over budget")
        } else {
            ("", "within budget")
        };
        let _ = write!(
            out,
            "<tr{class}><td>{kind}</td><td>{name}</td>{budget}{actual}{remaining}\
             <td class=\"num\">{used}</td><td>{status}</td></tr>",
            kind = b.scope.kind(),
            name = esc(b.scope.name()),
            budget = cell("budget", &money(b.budget), false),
            actual = cell("actual", &money(b.actual), b.actual.0 < 0),
            remaining = cell("remaining", &money(b.remaining()), false),
        );
    }
    out.push_str("</tbody></table></section>");
}

/// Daily cost and carbon, price paid against the market by zone, and cost by team.
fn charts_section(out: &mut String, r: &MonthlyReport) {
    let day_labels: Vec<String> = r
        .days
        .iter()
        .map(|d| day_of_month(d.date).to_string())
        .collect();
    let daily_cost: Vec<f64> = r.days.iter().map(|d| d.total.cost.to_f64()).collect();
    let daily_kg: Vec<f64> = r.days.iter().map(|d| d.total.carbon_kg.to_f64()).collect();
    out.push_str("<section><h2>Charts</h2>");
    out.push_str(&bar_chart(
        "Daily energy cost",
        &day_labels,
        &daily_cost,
        &r.currency,
        &["#2f6fb0"],
    ));
    out.push_str(&bar_chart(
        "Daily carbon (kg CO2e, location-based)",
        &day_labels,
        &daily_kg,
        "kg",
        &["#8a5a2b"],
    ));
    // Two bars per zone: the average price offpeak paid, then the zone's average price.
    let (mut labels, mut prices) = (Vec::new(), Vec::new());
    for (zone, a, _) in r.by_zone() {
        labels.push(format!("{zone} paid"));
        prices.push(average_price_paid(&a).unwrap_or(0.0));
        labels.push(format!("{zone} market"));
        prices.push(r.zone_average_price.get(&zone).copied().unwrap_or(0.0));
    }
    out.push_str(&bar_chart(
        "Average price paid against the zone's market average",
        &labels,
        &prices,
        &format!("{}/MWh", r.currency),
        &["#2f6fb0", "#9aa5b1"],
    ));
    let by_team = r.by_team();
    out.push_str(&bar_chart(
        "Energy cost by team",
        &by_team
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect::<Vec<_>>(),
        &by_team
            .iter()
            .map(|(_, a, _)| a.cost.to_f64())
            .collect::<Vec<_>>(),
        &r.currency,
        &["#6b4fa0"],
    ));
    out.push_str("</section>");
}
