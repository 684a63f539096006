//! Monthly reports from the ledger, for finance: energy, cost and carbon of a calendar month in
//! a reporting time zone, by namespace, zone and job, as CSV, FOCUS-shaped CSV or a
//! self-contained HTML page.
//!
//! Layout:
//! - here: the query ([`ReportQuery`], [`Month`]), [`build`], which cuts the ledger's records at
//!   the month's and each local day's boundaries, and `offpeak report` ([`ReportArgs`], [`run`]);
//! - [`tables`]: the CSV and FOCUS-shaped CSV renderings;
//! - [`html`]: the HTML page (inline CSS and SVG, no script, prints cleanly).
//!
//! Reconciliation: amounts stay integer nano-units ([`crate::ledger::Fixed`]) until they are printed. A record
//! straddling a boundary is split by cumulative share (the piece of `[a, b)` is
//! `share(b) − share(a)`), so the pieces add up to the record exactly; every view is a sum of
//! the same pieces, so its total is the ledger's exact sum. When rows are rounded for printing
//! (cents, thousandths of a kWh or kg), the rounding is apportioned by largest remainder so
//! that the printed rows add up to the printed total, which is the exact total rounded.
//!
//! Carbon is location-based (the grid's average intensity where and when the energy was
//! drawn), and labelled so. The saving is against the ledger's counterfactual records ("full
//! power as soon as submitted", [`crate::ledger::counterfactual_from_replay`]) in the same
//! month. Not here yet (issue 6): team and cost centre (scenarios carry only a namespace),
//! budgets, and the HTTP endpoint.

pub mod html;
pub mod tables;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Datelike as _, Duration, NaiveDate, NaiveTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use thiserror::Error;

use crate::ledger::{Amounts, LedgerError, LedgerRecord, LedgerStore, SqliteLedger};

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
    #[error("reading the ledger")]
    ReadLedger(#[from] LedgerError),
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
}

/// Amounts of one (namespace, zone, job).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub namespace: String,
    pub zone: String,
    pub job: String,
    pub amounts: Amounts,
    /// The same jobs' counterfactual (full power as soon as submitted) in this month.
    pub counterfactual: Amounts,
}

/// One local day of the month.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    pub date: NaiveDate,
    /// Local midnight, in UTC (the month's start for its first day).
    pub start: DateTime<Utc>,
    /// The next local midnight, in UTC (the month's end for its last day).
    pub end: DateTime<Utc>,
    /// Non-empty lines of the day, sorted by namespace, zone, job.
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
    /// One per (namespace, zone, job), sorted.
    pub lines: Vec<Line>,
    pub days: Vec<Day>,
    /// Time-weighted average market price of each zone over the month (per MWh), where the
    /// ledger holds the zone's market slots.
    pub zone_average_price: BTreeMap<String, f64>,
    pub total: Amounts,
    /// The counterfactual's total.
    pub counterfactual_total: Amounts,
    /// Whether the ledger holds a counterfactual for this month (hand-written or metered
    /// records have none; then no saving is shown).
    pub has_counterfactual: bool,
}

/// Average price paid per MWh of facility energy, if any energy was used.
pub fn average_price_paid(a: &Amounts) -> Option<f64> {
    (a.facility_kwh.0 != 0).then(|| a.cost.to_f64() / a.facility_kwh.to_f64() * 1000.0)
}

impl MonthlyReport {
    /// Amounts and counterfactual by namespace, sorted.
    pub fn by_namespace(&self) -> Vec<(String, Amounts, Amounts)> {
        group(&self.lines, |l| l.namespace.clone())
    }

    /// Amounts and counterfactual by zone, sorted.
    pub fn by_zone(&self) -> Vec<(String, Amounts, Amounts)> {
        group(&self.lines, |l| l.zone.clone())
    }
}

fn group(lines: &[Line], key: impl Fn(&Line) -> String) -> Vec<(String, Amounts, Amounts)> {
    let mut m: BTreeMap<String, (Amounts, Amounts)> = BTreeMap::new();
    for l in lines {
        let e = m.entry(key(l)).or_default();
        e.0 += l.amounts;
        e.1 += l.counterfactual;
    }
    m.into_iter().map(|(k, (a, c))| (k, a, c)).collect()
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
    let currencies: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.currency.as_str()).collect();
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

    type Key = (String, String, String);
    let mut per_day: Vec<BTreeMap<Key, Amounts>> = vec![BTreeMap::new(); days.len()];
    for r in &records {
        let dur = (r.end - r.start).num_seconds();
        // The record's share of its amounts up to instant `t` (clamped to the record).
        let share = |t: DateTime<Utc>| {
            let elapsed = (t - r.start).num_seconds().clamp(0, dur.max(0));
            r.amounts.prorate(elapsed, dur)
        };
        for (i, d) in days.iter().enumerate() {
            if r.start >= d.end || r.end <= d.start {
                continue;
            }
            let (a, b) = (r.start.max(d.start), r.end.min(d.end));
            let piece = share(b)
                - if a == r.start {
                    Amounts::default()
                } else {
                    share(a)
                };
            *per_day[i]
                .entry((r.namespace.clone(), r.zone.clone(), r.job.clone()))
                .or_default() += piece;
        }
    }
    let mut month: BTreeMap<Key, (Amounts, Amounts)> = BTreeMap::new();
    for (d, m) in days.iter_mut().zip(per_day) {
        for ((namespace, zone, job), amounts) in m {
            month
                .entry((namespace.clone(), zone.clone(), job.clone()))
                .or_default()
                .0 += amounts;
            d.total += amounts;
            d.lines.push(Line {
                namespace,
                zone,
                job,
                amounts,
                counterfactual: Amounts::default(),
            });
        }
    }
    let counterfactual: Vec<_> = store
        .counterfactual_between(period_start, period_end)?
        .into_iter()
        .filter(|r| query.namespace.as_ref().is_none_or(|ns| &r.namespace == ns))
        .collect();
    for r in &counterfactual {
        month
            .entry((r.namespace.clone(), r.zone.clone(), r.job.clone()))
            .or_default()
            .1 += piece(r, period_start, period_end);
    }
    let lines: Vec<Line> = month
        .into_iter()
        .map(|((namespace, zone, job), (amounts, counterfactual))| Line {
            namespace,
            zone,
            job,
            amounts,
            counterfactual,
        })
        .collect();
    let total = lines.iter().fold(Amounts::default(), |t, l| t + l.amounts);
    let counterfactual_total = lines
        .iter()
        .fold(Amounts::default(), |t, l| t + l.counterfactual);

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
        has_counterfactual: !counterfactual.is_empty(),
    })
}

/// Output format of `offpeak report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// One row per job, namespace, zone and the total (the `view` column says which).
    Csv,
    /// FOCUS-shaped billing rows: one per job and local day.
    Focus,
    /// A self-contained HTML page with charts, ready to print.
    Html,
}

/// `offpeak report`: a month of the ledger for finance.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The SQLite ledger (written by `offpeak simulate --ledger`).
    #[arg(long, env = "OFFPEAK_LEDGER")]
    pub ledger: PathBuf,
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
    let query = ReportQuery {
        month: args.month.parse()?,
        time_zone: parse_time_zone(&args.time_zone)?,
        namespace: args.namespace.clone(),
    };
    if !args.ledger.exists() {
        // Opening would create an empty ledger; a report of nothing would hide the typo.
        return Err(ReportError::FindLedger {
            path: args.ledger.display().to_string(),
        });
    }
    let store = SqliteLedger::open(&args.ledger)?;
    let text = render(&build(&store, &query)?, args.format)?;
    if let Some(path) = &args.out {
        std::fs::write(path, &text).map_err(|source| ReportError::WriteOutput {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(text)
}

/// The day of the month of a date (for chart labels).
pub(crate) fn day_of_month(d: NaiveDate) -> u32 {
    d.day()
}
