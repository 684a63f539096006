//! The CSV and FOCUS-shaped CSV renderings of a [`MonthlyReport`].

use std::collections::BTreeMap;

use super::{BudgetScope, Cover, Grouped, MonthlyReport, ReportError, average_price_paid, keys};
use crate::ledger::record::{format_units, quantum, round_half_away};
use crate::ledger::{Amounts, Fixed};

/// Decimals printed for money: cents.
pub const MONEY_DIGITS: u32 = 2;
/// Decimals printed for kWh, kg CO2e and GPU-hours: a thousandth (one Wh, one gram), finer
/// than any meter the figures come from.
pub const QUANTITY_DIGITS: u32 = 3;

/// Rounds `values` to `digits` decimals so that the rounded values add up to their exact sum
/// rounded (largest remainder): the printed rows of a view always add up to its printed total.
/// Returns integer counts of `10^-digits` units.
pub fn apportion(values: &[Fixed], digits: u32) -> Vec<i64> {
    let q = quantum(digits);
    let total: i64 = values.iter().map(|v| v.0).sum();
    let target = round_half_away(total, q);
    let mut out: Vec<i64> = values.iter().map(|v| v.0.div_euclid(q)).collect();
    let short = target - out.iter().sum::<i64>();
    // 0 <= short <= values.len(): each floor loses less than one unit, the target rounds by at
    // most half of one.
    let mut order: Vec<(i64, usize)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (v.0.rem_euclid(q), i))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in order.iter().take(usize::try_from(short).unwrap_or(0)) {
        out[i] += 1;
    }
    out
}

/// The printed columns of a set of rows, each apportioned against its total.
#[derive(Debug, Clone, PartialEq)]
pub struct Printed {
    pub gpu_hours: Vec<String>,
    pub it_kwh: Vec<String>,
    pub facility_kwh: Vec<String>,
    pub cost: Vec<String>,
    pub carbon_kg: Vec<String>,
}

/// Prints `rows`' amounts so that each column adds up to the rows' exact total, rounded.
pub fn print_rows(rows: &[Amounts]) -> Printed {
    let col = |f: fn(&Amounts) -> Fixed, digits: u32| -> Vec<String> {
        let v: Vec<Fixed> = rows.iter().map(f).collect();
        apportion(&v, digits)
            .into_iter()
            .map(|u| format_units(u, digits))
            .collect()
    };
    Printed {
        gpu_hours: col(|a| a.gpu_hours, QUANTITY_DIGITS),
        it_kwh: col(|a| a.it_kwh, QUANTITY_DIGITS),
        facility_kwh: col(|a| a.facility_kwh, QUANTITY_DIGITS),
        cost: col(|a| a.cost, MONEY_DIGITS),
        carbon_kg: col(|a| a.carbon_kg, QUANTITY_DIGITS),
    }
}

/// "credit" for a negative cost (negative prices paid us), "charge" otherwise.
pub fn cost_kind(cost: Fixed) -> &'static str {
    if cost.0 < 0 { "credit" } else { "charge" }
}

fn price(p: Option<f64>) -> String {
    p.map(|x| format!("{x:.2}")).unwrap_or_default()
}

/// A plain CSV row before printing.
#[derive(Debug, Default)]
struct CsvRow {
    view: &'static str,
    namespace: String,
    team: String,
    cost_centre: String,
    zone: String,
    job: String,
    tariff_period: String,
    amounts: Amounts,
    counterfactual: Amounts,
    saving: Option<Fixed>,
    cover: Cover,
    zone_avg: String,
    /// The monthly budget of this namespace or team, if one is set.
    budget: Option<Fixed>,
}

/// A money column apportioned like the others (see [`apportion`]).
fn print_money(values: &[Fixed]) -> Vec<String> {
    apportion(values, MONEY_DIGITS)
        .into_iter()
        .map(|u| format_units(u, MONEY_DIGITS))
        .collect()
}

/// Money values where known, apportioned among themselves (see [`apportion`]); empty where
/// not.
pub fn print_known_money(values: &[Option<Fixed>]) -> Vec<String> {
    let known: Vec<Fixed> = values.iter().flatten().copied().collect();
    let mut printed = print_money(&known).into_iter();
    values
        .iter()
        .map(|v| v.and_then(|_| printed.next()).unwrap_or_default())
        .collect()
}

/// The monthly budget set for `scope`, if any.
pub fn budget_of(r: &MonthlyReport, scope: &BudgetScope) -> Option<Fixed> {
    r.budgets
        .iter()
        .find(|b| &b.scope == scope)
        .map(|b| b.budget)
}

/// The rows of each view of the plain CSV, in order: job, namespace, team, cost centre, zone,
/// tariff period, total.
fn csv_views(r: &MonthlyReport) -> Vec<Vec<CsvRow>> {
    let zone_avg = |z: &str| price(r.zone_average_price.get(z).copied());
    let simple = |view: &'static str, groups: Vec<Grouped<String>>| -> Vec<CsvRow> {
        groups
            .into_iter()
            .map(|g| {
                let mut row = CsvRow {
                    view,
                    saving: g.saving(),
                    amounts: g.amounts,
                    counterfactual: g.counterfactual,
                    cover: g.cover,
                    ..CsvRow::default()
                };
                let k = g.key;
                match view {
                    "namespace" => {
                        row.budget = budget_of(r, &BudgetScope::Namespace(k.clone()));
                        row.namespace = k;
                    }
                    "team" => {
                        row.budget = budget_of(r, &BudgetScope::Team(k.clone()));
                        row.team = k;
                    }
                    "cost_centre" => row.cost_centre = k,
                    _ => {
                        row.zone_avg = zone_avg(&k);
                        row.zone = k;
                    }
                }
                row
            })
            .collect()
    };
    let jobs = r
        .grouped(keys::job)
        .into_iter()
        .map(|g| {
            let saving = g.saving();
            let [namespace, team, cost_centre, zone, job] = g.key;
            CsvRow {
                view: "job",
                zone_avg: zone_avg(&zone),
                namespace,
                team,
                cost_centre,
                zone,
                job,
                amounts: g.amounts,
                counterfactual: g.counterfactual,
                saving,
                cover: g.cover,
                ..CsvRow::default()
            }
        })
        .collect();
    let periods = r
        .grouped(keys::tariff_period)
        .into_iter()
        .map(|g| {
            let saving = g.saving();
            let [zone, tariff_period] = g.key;
            CsvRow {
                view: "tariff_period",
                zone_avg: zone_avg(&zone),
                zone,
                tariff_period,
                amounts: g.amounts,
                counterfactual: g.counterfactual,
                saving,
                cover: g.cover,
                ..CsvRow::default()
            }
        })
        .collect();
    vec![
        jobs,
        simple("namespace", r.grouped(keys::namespace)),
        simple("team", r.grouped(keys::team)),
        simple("cost_centre", r.grouped(keys::cost_centre)),
        simple("zone", r.grouped(keys::zone)),
        periods,
        vec![CsvRow {
            view: "total",
            amounts: r.total,
            counterfactual: r.counterfactual_total,
            saving: r.saving(),
            cover: r.cover,
            ..CsvRow::default()
        }],
    ]
}

/// Plain CSV: one row per (namespace, team, cost centre, zone, job), then per namespace, team,
/// cost centre, zone, (zone, tariff period), and the total; the `view` column says which. The
/// rows of each view add up to its total row. The saving is against running at full power as
/// soon as submitted, over the jobs with a counterfactual only (empty where none has one);
/// `saving_over_jobs` says how many of the row's jobs that is ("1 of 2"). Namespace and team
/// rows with a budget show it and what remains of it (negative: over budget).
pub fn csv(r: &MonthlyReport) -> Result<String, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "month",
        "time_zone",
        "view",
        "namespace",
        "team",
        "cost_centre",
        "zone",
        "job",
        "tariff_period",
        "gpu_hours",
        "it_kwh",
        "facility_kwh",
        "currency",
        "energy_cost",
        "cost_kind",
        "carbon_kg_co2e_location_based",
        "avg_price_paid_per_mwh",
        "zone_avg_price_per_mwh",
        "counterfactual_cost_full_power_at_submit",
        "saving_vs_full_power_at_submit",
        "saving_over_jobs",
        "monthly_budget",
        "budget_remaining",
    ])?;
    let month = r.month.to_string();
    let tz = r.time_zone.name();
    let money = |f: Fixed| format_units(f.round_to(MONEY_DIGITS), MONEY_DIGITS);
    for rows in csv_views(r) {
        let amounts: Vec<Amounts> = rows.iter().map(|x| x.amounts).collect();
        let p = print_rows(&amounts);
        let cf = print_known_money(
            &rows
                .iter()
                .map(|x| x.saving.map(|_| x.counterfactual.cost))
                .collect::<Vec<_>>(),
        );
        let saving = print_known_money(&rows.iter().map(|x| x.saving).collect::<Vec<_>>());
        for (i, row) in rows.iter().enumerate() {
            let cover = row.cover.to_string();
            // The remainder is of the exact amounts, rounded once, so it is the budget minus
            // the exact cost, not minus the apportioned printed cost.
            let (budget, remaining) = row.budget.map_or((String::new(), String::new()), |b| {
                (money(b), money(b - row.amounts.cost))
            });
            w.write_record([
                month.as_str(),
                tz,
                row.view,
                &row.namespace,
                &row.team,
                &row.cost_centre,
                &row.zone,
                &row.job,
                &row.tariff_period,
                &p.gpu_hours[i],
                &p.it_kwh[i],
                &p.facility_kwh[i],
                &r.currency,
                &p.cost[i],
                cost_kind(row.amounts.cost),
                &p.carbon_kg[i],
                &price(average_price_paid(&row.amounts)),
                &row.zone_avg,
                &cf[i],
                &saving[i],
                &cover,
                &budget,
                &remaining,
            ])?;
        }
    }
    finish(w)
}

fn finish(w: csv::Writer<Vec<u8>>) -> Result<String, ReportError> {
    let bytes = w
        .into_inner()
        .map_err(|e| ReportError::WriteCsv(e.into_error().into()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// FOCUS-shaped CSV (the FinOps billing format): one row per (local day, namespace, team,
/// cost centre, zone, job, tariff period), its charge period the local day in UTC.
/// `ConsumedQuantity` is the metered IT energy; the cost is that of the facility energy
/// (`x_FacilityKwh`, PUE applied). The rows add up to the month's total. The counterfactual's
/// cost and the saving (`x_CounterfactualCost`, `x_Saving`) are empty for a job without a
/// counterfactual.
pub fn focus(r: &MonthlyReport) -> Result<String, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "BilledCost",
        "EffectiveCost",
        "ChargeCategory",
        "ChargeDescription",
        "ChargePeriodStart",
        "ChargePeriodEnd",
        "BillingCurrency",
        "ConsumedQuantity",
        "ConsumedUnit",
        "Tags",
        "x_CarbonKg",
        "x_CarbonMethod",
        "x_FacilityKwh",
        "x_GpuHours",
        "x_TariffPeriod",
        "x_CounterfactualCost",
        "x_Saving",
    ])?;
    let rows: Vec<(&super::Day, &super::Line)> = r
        .days
        .iter()
        .flat_map(|d| d.lines.iter().map(move |l| (d, l)))
        .collect();
    let amounts: Vec<Amounts> = rows.iter().map(|(_, l)| l.amounts).collect();
    let p = print_rows(&amounts);
    let cf = print_known_money(
        &rows
            .iter()
            .map(|(_, l)| l.saving().map(|_| l.counterfactual.cost))
            .collect::<Vec<_>>(),
    );
    let saving = print_known_money(&rows.iter().map(|(_, l)| l.saving()).collect::<Vec<_>>());
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    for (i, (d, l)) in rows.iter().enumerate() {
        let tags: BTreeMap<&str, &str> = [
            ("namespace", l.namespace.as_str()),
            ("team", l.team.as_str()),
            ("cost_centre", l.cost_centre.as_str()),
            ("job", l.job.as_str()),
            ("zone", l.zone.as_str()),
            ("tariff_period", l.tariff_period.as_str()),
        ]
        .into_iter()
        .collect();
        let tags = serde_json::to_string(&tags).unwrap_or_default();
        let credit = l.amounts.cost.0 < 0;
        w.write_record([
            p.cost[i].as_str(),
            &p.cost[i],
            if credit { "Credit" } else { "Usage" },
            &format!(
                "Energy for job {} in zone {}{}",
                l.job,
                l.zone,
                if credit {
                    " (credit: negative prices)"
                } else {
                    ""
                }
            ),
            &time(d.start),
            &time(d.end),
            &r.currency,
            &p.it_kwh[i],
            "kWh",
            &tags,
            &p.carbon_kg[i],
            "location-based",
            &p.facility_kwh[i],
            &p.gpu_hours[i],
            &l.tariff_period,
            &cf[i],
            &saving[i],
        ])?;
    }
    finish(w)
}
