//! Monthly reports from the ledger, for finance: energy, cost and carbon of a calendar month in
//! a reporting time zone, by namespace, team, cost centre, zone, job and tariff period, with
//! budgets against actuals, as CSV, FOCUS-shaped CSV or a self-contained HTML page.
//!
//! Layout:
//! - here: the query ([`ReportQuery`], [`Month`]), [`build`], which cuts the ledger's records at
//!   the month's and each local day's boundaries, `offpeak report` ([`ReportArgs`], [`run`]),
//!   and [`write_month_reports`], the files `offpeak simulate` writes beside its schedule;
//! - [`finance`]: the finance file (namespace to team and cost centre, monthly budgets);
//! - [`tables`]: the CSV and FOCUS-shaped CSV renderings;
//! - [`html`]: the HTML page (inline CSS and SVG, no script, prints cleanly).
//!
//! The same reports are served over HTTP on the scheduler's admin port by
//! [`crate::service::reports_http`].
//!
//! Reconciliation: amounts stay integer nano-units ([`crate::ledger::Fixed`]) until they are
//! printed. A record straddling a boundary is split by cumulative share (the piece of `[a, b)`
//! is `share(b) − share(a)`), so the pieces add up to the record exactly; every view is a sum
//! of the same pieces, so its total is the ledger's exact sum. When rows are rounded for
//! printing (cents, thousandths of a kWh or kg), the rounding is apportioned by largest
//! remainder so that the printed rows add up to the printed total, which is the exact total
//! rounded.
//!
//! Carbon is location-based (the grid's average intensity where and when the energy was
//! drawn), and labelled so. The saving is against the ledger's counterfactual records ("full
//! power as soon as submitted", [`crate::ledger::counterfactual_from_replay`]) in the same
//! month, and only over the jobs that have one: in a live cluster a job still running, failed
//! or cancelled has none, and counting it would read as a "saving" of minus its cost. Such a
//! job's lines show no saving; every aggregate sums the saving over the jobs with one and says
//! how many of its jobs that is ([`Cover`]).

pub mod finance;
pub mod html;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Datelike as _, Duration, NaiveDate, NaiveTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use thiserror::Error;

use crate::ledger::{Amounts, Fixed, LedgerError, LedgerLocation, LedgerRecord, LedgerStore};

pub use finance::{Budget, BudgetScope, Finance, FinanceError};

/// A report request that failed.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("bad month {input:?}: {reason} (expected YYYY-MM, e.g. 2023-03)")]
    ParseMonth { input: String, reason: String },
    #[error("unknown time zone {input:?} (expected an IANA name such as Europe/London or UTC)")]
    ParseTimeZone { input: String },
    #[error("unknown namespace {namespace:?}: the ledger has {known}")]
    UnknownNamespace { namespace: String, known: String },
    #[error("the ledger mixes currencies in {month}: {found}; a report needs one")]
    MixedCurrencies { month: String, found: String },
    #[error("month {month} has no start in time zone {time_zone}")]
    MonthBounds { month: String, time_zone: String },
    #[error("no ledger at {path} (write one with `offpeak simulate --ledger {path}`)")]
    FindLedger { path: String },
    #[error("budget for {scope} is in {budget}, but the ledger's costs are in {ledger}")]
    BudgetCurrency {
        scope: String,
        budget: String,
        ledger: String,
    },
    #[error("reading the ledger")]
    ReadLedger(#[from] LedgerError),
    #[error("loading the finance file")]
    LoadFinance(#[from] FinanceError),
    #[error("writing the report")]
    WriteCsv(#[from] csv::Error),
    #[error("writing the report to {path}")]
    WriteOutput {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
}

impl Month {
    /// The first day of the month.
    pub fn first_day(self) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(self.year, self.month, 1)
    }

    /// The month after this one.
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self, ReportError> {
        let bad = |reason: &str| ReportError::ParseMonth {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (y, m) = s.trim().split_once('-').ok_or_else(|| bad("no '-'"))?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad("the year needs 4 digits and the month 2"));
        }
        let year: i32 = y.parse().map_err(|_| bad("the year is not a number"))?;
        let month: u32 = m.parse().map_err(|_| bad("the month is not a number"))?;
        if !(1..=12).contains(&month) {
            return Err(bad(&format!("month {month} is not between 01 and 12")));
        }
        Ok(Month { year, month })
    }
}

/// Parses an IANA time zone name.
pub fn parse_time_zone(s: &str) -> Result<Tz, ReportError> {
    s.trim()
        .parse::<Tz>()
        .map_err(|_| ReportError::ParseTimeZone {
            input: s.to_string(),
        })
}

/// What to report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportQuery {
    pub month: Month,
    /// The reporting time zone: the month and its days are local to it.
    pub time_zone: Tz,
    /// Only this namespace (it must exist in the ledger).
    pub namespace: Option<String>,
    /// Monthly budgets to compare with the actual costs.
    pub budgets: Vec<Budget>,
}

/// Amounts of one (namespace, team, cost centre, zone, job, tariff period).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub namespace: String,
    pub team: String,
    pub cost_centre: String,
    pub zone: String,
    pub job: String,
    pub tariff_period: String,
    pub amounts: Amounts,
    /// The same jobs' counterfactual (full power as soon as submitted) in this month.
    pub counterfactual: Amounts,
    /// Whether the job (namespace and job) has counterfactual records; without them it has no
    /// saving.
    pub has_counterfactual: bool,
}

impl Line {
    /// Counterfactual cost minus actual cost, if the job has a counterfactual.
    pub fn saving(&self) -> Option<Fixed> {
        self.has_counterfactual
            .then(|| self.counterfactual.cost - self.amounts.cost)
    }
}

/// How many of a group's jobs (namespace and job) have a counterfactual, so how many its
/// saving covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cover {
    pub with_counterfactual: usize,
    pub jobs: usize,
}

impl Cover {
    /// Whether some of the jobs have no counterfactual (the saving leaves them out).
    pub fn partial(&self) -> bool {
        self.with_counterfactual < self.jobs
    }
}

impl fmt::Display for Cover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {}", self.with_counterfactual, self.jobs)
    }
}

/// The lines of one group summed.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouped<K> {
    pub key: K,
    pub amounts: Amounts,
    /// The counterfactual of the group's jobs that have one.
    pub counterfactual: Amounts,
    /// The actual amounts of the group's jobs that have a counterfactual.
    pub covered: Amounts,
    pub cover: Cover,
}

impl<K> Grouped<K> {
    /// Counterfactual cost minus actual cost over the jobs with a counterfactual; `None` if
    /// none has one.
    pub fn saving(&self) -> Option<Fixed> {
        (self.cover.with_counterfactual > 0).then(|| self.counterfactual.cost - self.covered.cost)
    }
}

/// One local day of the month.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    pub date: NaiveDate,
    /// Local midnight, in UTC (the month's start for its first day).
    pub start: DateTime<Utc>,
    /// The next local midnight, in UTC (the month's end for its last day).
    pub end: DateTime<Utc>,
    /// Lines of the day with energy or counterfactual, sorted by namespace, team, cost centre,
    /// zone, job, period.
    pub lines: Vec<Line>,
    pub total: Amounts,
}

/// A month of the ledger, cut at its boundaries.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthlyReport {
    pub month: Month,
    pub time_zone: Tz,
    pub namespace: Option<String>,
    /// Local midnight of the 1st, in UTC.
    pub period_start: DateTime<Utc>,
    /// Local midnight of the next month's 1st, in UTC.
    pub period_end: DateTime<Utc>,
    /// The records' currency (empty if the month has none).
    pub currency: String,
    /// One per (namespace, team, cost centre, zone, job, tariff period), sorted.
    pub lines: Vec<Line>,
    pub days: Vec<Day>,
    /// Time-weighted average market price of each zone over the month (per MWh), where the
    /// ledger holds the zone's market slots.
    pub zone_average_price: BTreeMap<String, f64>,
    pub total: Amounts,
    /// The counterfactual's total.
    pub counterfactual_total: Amounts,
    /// The actual amounts of the jobs that have a counterfactual: the saving is
    /// `counterfactual_total.cost - covered_total.cost`.
    pub covered_total: Amounts,
    /// How many of the month's jobs have a counterfactual.
    pub cover: Cover,
    /// Whether any of the month's jobs has a counterfactual (hand-written or metered records
    /// have none; then no saving is shown).
    pub has_counterfactual: bool,
    /// The budgets in scope, with the month's actual cost against each.
    pub budgets: Vec<BudgetLine>,
}

/// A monthly budget against the month's actual cost.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetLine {
    pub scope: BudgetScope,
    pub budget: Fixed,
    pub actual: Fixed,
}

impl BudgetLine {
    /// Budget minus actual: negative when over budget.
    pub fn remaining(&self) -> Fixed {
        self.budget - self.actual
    }

    /// Whether the actual cost exceeds the budget.
    pub fn over(&self) -> bool {
        self.actual > self.budget
    }
}

/// Average price paid per MWh of facility energy, if any energy was used.
pub fn average_price_paid(a: &Amounts) -> Option<f64> {
    (a.facility_kwh.0 != 0).then(|| a.cost.to_f64() / a.facility_kwh.to_f64() * 1000.0)
}

/// Amounts and counterfactual of one group of lines.
pub type Group<K> = (K, Amounts, Amounts);

/// What the report's views group lines by.
pub mod keys {
    use super::Line;

    pub fn namespace(l: &Line) -> String {
        l.namespace.clone()
    }
    pub fn team(l: &Line) -> String {
        l.team.clone()
    }
    pub fn cost_centre(l: &Line) -> String {
        l.cost_centre.clone()
    }
    pub fn zone(l: &Line) -> String {
        l.zone.clone()
    }
    /// Namespace, team, cost centre, zone, job: tariff periods merged.
    pub fn job(l: &Line) -> [String; 5] {
        [
            l.namespace.clone(),
            l.team.clone(),
            l.cost_centre.clone(),
            l.zone.clone(),
            l.job.clone(),
        ]
    }
    /// Zone, tariff period.
    pub fn tariff_period(l: &Line) -> [String; 2] {
        [l.zone.clone(), l.tariff_period.clone()]
    }
}

impl MonthlyReport {
    /// Counterfactual cost minus actual cost over the jobs with a counterfactual; `None` if
    /// none has one.
    pub fn saving(&self) -> Option<Fixed> {
        self.has_counterfactual
            .then(|| self.counterfactual_total.cost - self.covered_total.cost)
    }

    /// The lines grouped by `key`, sorted, with the saving's cover.
    pub fn grouped<K: Ord>(&self, key: impl Fn(&Line) -> K) -> Vec<Grouped<K>> {
        grouped(&self.lines, key)
    }

    /// By namespace, sorted.
    pub fn by_namespace(&self) -> Vec<Group<String>> {
        group(&self.lines, keys::namespace)
    }

    /// By team, sorted.
    pub fn by_team(&self) -> Vec<Group<String>> {
        group(&self.lines, keys::team)
    }

    /// By cost centre, sorted.
    pub fn by_cost_centre(&self) -> Vec<Group<String>> {
        group(&self.lines, keys::cost_centre)
    }

    /// By zone, sorted.
    pub fn by_zone(&self) -> Vec<Group<String>> {
        group(&self.lines, keys::zone)
    }

    /// By (namespace, team, cost centre, zone, job), sorted: tariff periods merged.
    pub fn by_job(&self) -> Vec<Group<[String; 5]>> {
        group(&self.lines, keys::job)
    }

    /// By (zone, tariff period), sorted.
    pub fn by_tariff_period(&self) -> Vec<Group<[String; 2]>> {
        group(&self.lines, keys::tariff_period)
    }
}

fn group<K: Ord>(lines: &[Line], key: impl Fn(&Line) -> K) -> Vec<Group<K>> {
    grouped(lines, key)
        .into_iter()
        .map(|g| (g.key, g.amounts, g.counterfactual))
        .collect()
}

fn grouped<K: Ord>(lines: &[Line], key: impl Fn(&Line) -> K) -> Vec<Grouped<K>> {
    type Jobs<'a> = BTreeSet<(&'a str, &'a str)>;
    let mut m: BTreeMap<K, (Amounts, Amounts, Amounts, Jobs<'_>, Jobs<'_>)> = BTreeMap::new();
    for l in lines {
        let e = m.entry(key(l)).or_default();
        let job = (l.namespace.as_str(), l.job.as_str());
        e.0 += l.amounts;
        e.1 += l.counterfactual;
        e.3.insert(job);
        if l.has_counterfactual {
            e.2 += l.amounts;
            e.4.insert(job);
        }
    }
    m.into_iter()
        .map(
            |(key, (amounts, counterfactual, covered, jobs, with))| Grouped {
                key,
                amounts,
                counterfactual,
                covered,
                cover: Cover {
                    with_counterfactual: with.len(),
                    jobs: jobs.len(),
                },
            },
        )
        .collect()
}

/// The piece of record `r` inside `[from, to)`: the difference of its cumulative shares, so the
/// pieces of a record cut anywhere add up to it exactly.
fn piece(r: &LedgerRecord, from: DateTime<Utc>, to: DateTime<Utc>) -> Amounts {
    let dur = (r.end - r.start).num_seconds();
    let share = |t: DateTime<Utc>| {
        let elapsed = (t - r.start).num_seconds().clamp(0, dur.max(0));
        r.amounts.prorate(elapsed, dur)
    };
    let (a, b) = (r.start.max(from), r.end.min(to));
    share(b)
        - if a == r.start {
            Amounts::default()
        } else {
            share(a)
        }
}

/// Local midnight of `date` in `tz`, in UTC. Where midnight does not exist (a zone whose
/// clocks skip it), the first hour of the day that does.
fn local_midnight(tz: Tz, date: NaiveDate) -> Option<DateTime<Utc>> {
    // Daylight-saving jumps are at most two hours, so the day has started by 03:00.
    const LONGEST_SKIP_H: i64 = 3;
    let midnight = date.and_time(NaiveTime::MIN);
    (0..=LONGEST_SKIP_H).find_map(|h| {
        tz.from_local_datetime(&(midnight + Duration::hours(h)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// Builds the report of `query` from `store`.
pub fn build(store: &dyn LedgerStore, query: &ReportQuery) -> Result<MonthlyReport, ReportError> {
    let tz = query.time_zone;
    let bounds_err = || ReportError::MonthBounds {
        month: query.month.to_string(),
        time_zone: tz.name().to_string(),
    };
    let first = query.month.first_day().ok_or_else(bounds_err)?;
    let next_first = query.month.next().first_day().ok_or_else(bounds_err)?;
    let period_start = local_midnight(tz, first).ok_or_else(bounds_err)?;
    let period_end = local_midnight(tz, next_first).ok_or_else(bounds_err)?;

    if let Some(ns) = &query.namespace {
        let known = store.namespaces()?;
        if !known.contains(ns) {
            return Err(ReportError::UnknownNamespace {
                namespace: ns.clone(),
                known: if known.is_empty() {
                    "no namespaces (it is empty)".to_string()
                } else {
                    format!("namespaces {}", known.join(", "))
                },
            });
        }
    }

    // Day boundaries: the month's days, each from local midnight to the next.
    let mut days: Vec<Day> = Vec::new();
    let mut date = first;
    while date < next_first {
        let next = date.succ_opt().ok_or_else(bounds_err)?;
        let start = if date == first {
            period_start
        } else {
            local_midnight(tz, date).ok_or_else(bounds_err)?
        };
        let end = if next == next_first {
            period_end
        } else {
            local_midnight(tz, next).ok_or_else(bounds_err)?
        };
        days.push(Day {
            date,
            start,
            end,
            lines: Vec::new(),
            total: Amounts::default(),
        });
        date = next;
    }

    let records: Vec<_> = store
        .records_between(period_start, period_end)?
        .into_iter()
        .filter(|r| query.namespace.as_ref().is_none_or(|ns| &r.namespace == ns))
        .collect();
    let currencies: BTreeSet<&str> = records.iter().map(|r| r.currency.as_str()).collect();
    if currencies.len() > 1 {
        return Err(ReportError::MixedCurrencies {
            month: query.month.to_string(),
            found: currencies.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    let currency = currencies
        .into_iter()
        .next()
        .unwrap_or_default()
        .to_string();

    // A job's counterfactual starts when it was submitted, before it ran, so every job with
    // energy in the month has its counterfactual (if any) starting before the month's end;
    // one starting in an earlier month still makes this month's saving count that job.
    let counterfactual: Vec<_> = store
        .counterfactual_between(DateTime::UNIX_EPOCH, period_end)?
        .into_iter()
        .filter(|r| query.namespace.as_ref().is_none_or(|ns| &r.namespace == ns))
        .collect();
    let with_counterfactual: BTreeSet<(&str, &str)> = counterfactual
        .iter()
        .map(|r| (r.namespace.as_str(), r.job.as_str()))
        .collect();

    let mut per_day: Vec<BTreeMap<Key, (Amounts, Amounts)>> = vec![BTreeMap::new(); days.len()];
    for (r, is_counterfactual) in records
        .iter()
        .map(|r| (r, false))
        .chain(counterfactual.iter().map(|r| (r, true)))
    {
        for (i, d) in days.iter().enumerate() {
            if r.start >= d.end || r.end <= d.start {
                continue;
            }
            let e = per_day[i].entry(key(r)).or_default();
            let cut = piece(r, d.start, d.end);
            if is_counterfactual {
                e.1 += cut;
            } else {
                e.0 += cut;
            }
        }
    }
    let has = |k: &Key| with_counterfactual.contains(&(k.0.as_str(), k.4.as_str()));
    let mut month: BTreeMap<Key, (Amounts, Amounts)> = BTreeMap::new();
    for (d, m) in days.iter_mut().zip(per_day) {
        for (k, (amounts, counterfactual)) in m {
            let e = month.entry(k.clone()).or_default();
            e.0 += amounts;
            e.1 += counterfactual;
            d.total += amounts;
            let has = has(&k);
            d.lines.push(line(k, amounts, counterfactual, has));
        }
    }
    let lines: Vec<Line> = month
        .into_iter()
        .map(|(k, (amounts, counterfactual))| {
            let has = has(&k);
            line(k, amounts, counterfactual, has)
        })
        .collect();
    let whole = grouped(&lines, |_| ()).pop();
    let total = whole.as_ref().map(|g| g.amounts).unwrap_or_default();
    let counterfactual_total = whole.as_ref().map(|g| g.counterfactual).unwrap_or_default();
    let covered_total = whole.as_ref().map(|g| g.covered).unwrap_or_default();
    let cover = whole.map(|g| g.cover).unwrap_or_default();

    let mut weighted: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for m in store.market_between(period_start, period_end)? {
        let secs = (m.end.min(period_end) - m.start.max(period_start)).num_seconds() as f64;
        let e = weighted.entry(m.zone).or_default();
        e.0 += m.price.0 * secs;
        e.1 += secs;
    }
    let zone_average_price = weighted
        .into_iter()
        .filter(|(_, (_, secs))| *secs > 0.0)
        .map(|(z, (sum, secs))| (z, sum / secs))
        .collect();

    let budgets = budget_lines(query, &lines, &currency)?;
    Ok(MonthlyReport {
        month: query.month,
        time_zone: tz,
        namespace: query.namespace.clone(),
        period_start,
        period_end,
        currency,
        lines,
        days,
        zone_average_price,
        total,
        counterfactual_total,
        covered_total,
        cover,
        has_counterfactual: cover.with_counterfactual > 0,
        budgets,
    })
}

/// What a line is grouped by: namespace, team, cost centre, zone, job, tariff period.
type Key = (String, String, String, String, String, String);

fn key(r: &LedgerRecord) -> Key {
    (
        r.namespace.clone(),
        r.team.clone(),
        r.cost_centre.clone(),
        r.zone.clone(),
        r.job.clone(),
        r.tariff_period.clone(),
    )
}

fn line(k: Key, amounts: Amounts, counterfactual: Amounts, has_counterfactual: bool) -> Line {
    let (namespace, team, cost_centre, zone, job, tariff_period) = k;
    Line {
        namespace,
        team,
        cost_centre,
        zone,
        job,
        tariff_period,
        amounts,
        counterfactual,
        has_counterfactual,
    }
}

/// The budgets in the query's scope (with a namespace filter, that namespace's only: a team's
/// actual cost would be cut to one of its namespaces), each against the month's actual cost.
fn budget_lines(
    query: &ReportQuery,
    lines: &[Line],
    currency: &str,
) -> Result<Vec<BudgetLine>, ReportError> {
    let mut out = Vec::new();
    for b in &query.budgets {
        let in_scope = match (&query.namespace, &b.scope) {
            (None, _) => true,
            (Some(ns), BudgetScope::Namespace(n)) => ns == n,
            (Some(_), BudgetScope::Team(_)) => false,
        };
        if !in_scope {
            continue;
        }
        if !currency.is_empty() && b.currency != currency {
            return Err(ReportError::BudgetCurrency {
                scope: b.scope.to_string(),
                budget: b.currency.clone(),
                ledger: currency.to_string(),
            });
        }
        let actual = lines
            .iter()
            .filter(|l| match &b.scope {
                BudgetScope::Namespace(n) => &l.namespace == n,
                BudgetScope::Team(t) => &l.team == t,
            })
            .map(|l| l.amounts.cost)
            .sum();
        out.push(BudgetLine {
            scope: b.scope.clone(),
            budget: b.monthly,
            actual,
        });
    }
    out.sort_by(|a, b| a.scope.cmp(&b.scope));
    Ok(out)
}

/// Output format of `offpeak report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// One row per job, then per namespace, team, cost centre, zone and tariff period, and
    /// the total (the `view` column says which).
    Csv,
    /// FOCUS-shaped billing rows: one per job, tariff period and local day.
    Focus,
    /// A self-contained HTML page with charts, ready to print.
    Html,
}

impl ReportFormat {
    /// Every format, in the order reports are written.
    pub const ALL: [ReportFormat; 3] = [ReportFormat::Csv, ReportFormat::Focus, ReportFormat::Html];

    /// The name used on the command line and in the HTTP query.
    pub fn name(self) -> &'static str {
        match self {
            ReportFormat::Csv => "csv",
            ReportFormat::Focus => "focus",
            ReportFormat::Html => "html",
        }
    }

    /// The format named `s` (as on the command line), if any.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The file name suffix of a report in this format.
    pub fn file_suffix(self) -> &'static str {
        match self {
            ReportFormat::Csv => ".csv",
            ReportFormat::Focus => "-focus.csv",
            ReportFormat::Html => ".html",
        }
    }

    /// The HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            ReportFormat::Csv | ReportFormat::Focus => "text/csv; charset=utf-8",
            ReportFormat::Html => "text/html; charset=utf-8",
        }
    }
}

/// `offpeak report`: a month of the ledger for finance.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The ledger: an SQLite file (written by `offpeak simulate --ledger`) or a
    /// `postgres://user:password@host:port/database` URL.
    #[arg(long, env = "OFFPEAK_LEDGER")]
    pub ledger: LedgerLocation,
    /// The month, YYYY-MM, in the reporting time zone.
    #[arg(long)]
    pub month: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ReportFormat,
    /// Only this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// IANA reporting time zone: months and days start at its local midnight.
    #[arg(long, env = "OFFPEAK_REPORT_TIME_ZONE", default_value = "UTC")]
    pub time_zone: String,
    /// Finance file (YAML): monthly budgets per namespace or team to show against actuals.
    #[arg(long, env = "OFFPEAK_FINANCE")]
    pub finance: Option<PathBuf>,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Renders `report` in `format`.
pub fn render(report: &MonthlyReport, format: ReportFormat) -> Result<String, ReportError> {
    match format {
        ReportFormat::Csv => tables::csv(report),
        ReportFormat::Focus => tables::focus(report),
        ReportFormat::Html => Ok(html::page(report)),
    }
}

/// Runs `offpeak report`: returns the rendered report, also written to `--out` if given.
pub fn run(args: &ReportArgs) -> Result<String, ReportError> {
    let budgets = match &args.finance {
        Some(path) => finance::load(path)?.budgets,
        None => Vec::new(),
    };
    let query = ReportQuery {
        month: args.month.parse()?,
        time_zone: parse_time_zone(&args.time_zone)?,
        namespace: args.namespace.clone(),
        budgets,
    };
    if !args.ledger.exists() {
        // Opening would create an empty ledger; a report of nothing would hide the typo.
        return Err(ReportError::FindLedger {
            path: args.ledger.to_string(),
        });
    }
    let store = args.ledger.open()?;
    let text = render(&build(store.as_ref(), &query)?, args.format)?;
    if let Some(path) = &args.out {
        write_atomically(path, &text)?;
    }
    Ok(text)
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader (or a process
/// killed mid-write) never leaves a half-written report.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), ReportError> {
    let err = |source| ReportError::WriteOutput {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The calendar months of `tz` that `[from, to)` touches, in order.
pub fn months_between(from: DateTime<Utc>, to: DateTime<Utc>, tz: Tz) -> Vec<Month> {
    let month_of = |t: DateTime<Utc>| {
        let local = t.with_timezone(&tz);
        Month {
            year: local.year(),
            month: local.month(),
        }
    };
    if to <= from {
        return Vec::new();
    }
    let (first, last) = (month_of(from), month_of(to - Duration::seconds(1)));
    let mut out = vec![first];
    while let Some(&m) = out.last()
        && m < last
    {
        out.push(m.next());
    }
    out
}

/// One report file written by [`write_month_reports`].
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenReport {
    pub month: Month,
    pub format: ReportFormat,
    pub path: PathBuf,
    /// The month's exact total (the same in every format).
    pub total: Amounts,
}

/// Writes the report of every month of `months` in every format, named
/// `{prefix}-{YYYY-MM}{suffix}` (`schedule-report-2023-03.html`, `...-focus.csv`, `....csv`).
pub fn write_month_reports(
    store: &dyn LedgerStore,
    months: &[Month],
    time_zone: Tz,
    budgets: &[Budget],
    prefix: &Path,
) -> Result<Vec<WrittenReport>, ReportError> {
    let mut out = Vec::new();
    for &month in months {
        let report = build(
            store,
            &ReportQuery {
                month,
                time_zone,
                namespace: None,
                budgets: budgets.to_vec(),
            },
        )?;
        for format in ReportFormat::ALL {
            let mut name = prefix.as_os_str().to_owned();
            name.push(format!("-{month}{}", format.file_suffix()));
            let path = PathBuf::from(name);
            write_atomically(&path, &render(&report, format)?)?;
            out.push(WrittenReport {
                month,
                format,
                path,
                total: report.total,
            });
        }
    }
    Ok(out)
}

/// The day of the month of a date (for chart labels).
pub(crate) fn day_of_month(d: NaiveDate) -> u32 {
    d.day()
}
