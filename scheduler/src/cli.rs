//! The `offpeak` command line. `main.rs` only parses [`Cli`] and calls [`run`], so tests can
//! drive every command in-process.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::jobs::{self, JobsArgs};
use crate::ledger::{self, LedgerLocation};
use crate::planner::{Policy, PolicyKind};
use crate::report::{self, ReportArgs, ReportFormat, WrittenReport};
use crate::scenario::{self, Scenario};
use crate::schedule::{self, Schedule};
use crate::service::{self, ServeArgs};
use crate::signals::show::{self, SignalsArgs, SignalsCommand};
use crate::sim::{self, Replay};
use crate::summary::{PolicyFigures, Summary};

/// offpeak: run ML training jobs when and where electricity is cheap and clean.
#[derive(Debug, Parser)]
#[command(name = "offpeak", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a scenario (real prices, carbon and jobs) through a policy and write its schedule.
    Simulate(SimulateArgs),
    /// Price and carbon signals from the configured providers.
    Signals(SignalsArgs),
    /// Serve node agents over gRPC (registry, sample ingest, energy metering) and, with
    /// --placement-config, the placement API and its live planning cycle, with an admin HTTP
    /// port (/healthz, /readyz, /metrics), until ctrl-c or SIGTERM.
    Serve(ServeArgs),
    /// A month of the energy ledger for finance (CSV, FOCUS-shaped CSV or HTML).
    Report(ReportArgs),
    /// Submit, watch and cancel jobs on a running scheduler's placement API.
    Jobs(JobsArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Scenario folder (scenario.yaml, signals/*.csv, jobs.csv). Without one, the example
    /// scenario built into the binary (de-gb-2023-03: real DE-LU and GB signals, 260 jobs).
    pub scenario: Option<PathBuf>,
    /// Where to write the schedule (JSON, the spec's format).
    #[arg(long, env = "OFFPEAK_SCHEDULE_OUT", default_value = "schedule.json")]
    pub out: PathBuf,
    /// Policy: offpeak (optimising), asap or threshold (references).
    #[arg(long, env = "OFFPEAK_POLICY", default_value = "offpeak")]
    pub policy: PolicyKind,
    /// Print a JSON summary instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Do not also replay `asap` to report the saving against it.
    #[arg(long)]
    pub no_baseline: bool,
    /// Hide the progress bar.
    #[arg(long, env = "OFFPEAK_NO_PROGRESS")]
    pub no_progress: bool,
    /// Also append the replay's metered energy to this ledger (for `offpeak report`): an
    /// SQLite file or a `postgres://user:password@host:port/database` URL. Replaying again
    /// adds nothing twice; the write is one transaction.
    #[arg(long, env = "OFFPEAK_LEDGER")]
    pub ledger: Option<LedgerLocation>,
    /// Finance file (YAML): namespaces to teams and cost centres, monthly budgets.
    #[arg(long, env = "OFFPEAK_FINANCE")]
    pub finance: Option<PathBuf>,
    /// IANA time zone of the month reports written beside the schedule.
    #[arg(long, env = "OFFPEAK_REPORT_TIME_ZONE", default_value = "UTC")]
    pub report_time_zone: String,
    /// Do not write the month reports (CSV, FOCUS-shaped CSV, HTML) beside the schedule.
    #[arg(long)]
    pub no_report: bool,
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(args) => {
            let (summary, reports) = simulate_with_reports(&args)?;
            if args.json {
                let mut json = serde_json::to_value(&summary)?;
                if let Some(obj) = json.as_object_mut() {
                    obj.insert("reports".into(), reports_json(&reports));
                }
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print!("{}", summary.table());
                println!("schedule written to {}", args.out.display());
                print!("{}", reports_text(&reports));
            }
            Ok(())
        }
        Command::Signals(SignalsArgs {
            command: SignalsCommand::Show(args),
        }) => {
            let shown = show::show(&args)?;
            print!("{}", shown.text);
            // The table carries the degraded state in its header; CSV has no room for it.
            if let (true, Some(reason)) = (args.csv, shown.degraded) {
                eprintln!("degraded: {reason}");
            }
            Ok(())
        }
        Command::Serve(args) => Ok(service::serve_until_stopped(&args)?),
        Command::Jobs(args) => jobs::run(&args),
        Command::Report(args) => {
            let text = report::run(&args)?;
            if args.out.is_none() {
                // An error, not a panic, when the reader goes away (`| head`).
                std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())
                    .context("writing the report to standard output")?;
            }
            Ok(())
        }
    }
}

/// `offpeak simulate`: replays, writes the schedule (and the month reports), returns the
/// summary.
pub fn simulate(args: &SimulateArgs) -> anyhow::Result<Summary> {
    Ok(simulate_with_reports(args)?.0)
}

/// `offpeak simulate`: replays, writes the schedule, the ledger if asked and the month reports
/// unless told not to; returns the summary and the reports written.
pub fn simulate_with_reports(args: &SimulateArgs) -> anyhow::Result<(Summary, Vec<WrittenReport>)> {
    let started = Instant::now();
    let sc = match &args.scenario {
        Some(dir) => {
            scenario::load(dir).with_context(|| format!("loading scenario {}", dir.display()))?
        }
        None => scenario::embedded::example().context("loading the built-in example scenario")?,
    };
    // Start-up checks first: a typo in the finance file or time zone should not cost a replay.
    let finance = match &args.finance {
        Some(path) => report::finance::load(path)?,
        None => report::Finance::default(),
    };
    let time_zone = report::parse_time_zone(&args.report_time_zone)?;
    let policy = args.policy.build();
    let replay = replay_with_progress(&sc, policy.as_ref(), !args.no_progress && !args.json)?;
    write_schedule(&args.out, &Schedule::from_replay(&sc, &replay))?;
    if let Some(location) = &args.ledger {
        let mut store = location
            .open()
            .with_context(|| format!("opening the ledger {location}"))?;
        ledger::write_replay(store.as_mut(), &sc, &replay, &finance.allocation)
            .with_context(|| format!("writing the ledger {location}"))?;
    }
    let reports = if args.no_report {
        Vec::new()
    } else {
        write_reports(args, &sc, &replay, &finance, time_zone)?
    };
    let result = PolicyFigures {
        policy: replay.policy.clone(),
        totals: schedule::totals(&sc, &replay),
    };
    let asap = if args.no_baseline || args.policy == PolicyKind::Asap {
        None
    } else {
        let base = sim::simulate(&sc, PolicyKind::Asap.build().as_ref(), &mut |_, _| {})?;
        Some(PolicyFigures {
            policy: base.policy.clone(),
            totals: schedule::totals(&sc, &base),
        })
    };
    let summary = Summary::new(
        sc.name.clone(),
        sc.currency.clone(),
        sc.jobs.len(),
        result,
        asap,
        started.elapsed().as_secs_f64(),
    );
    Ok((summary, reports))
}

/// Writes the reports of every month the scenario touches beside the schedule
/// (`schedule.json` -> `schedule-report-2023-03.html`, ...). They are built from a ledger of
/// this replay alone (in memory), so their totals are the schedule's even when `--ledger`
/// names a ledger that holds other runs too.
fn write_reports(
    args: &SimulateArgs,
    sc: &Scenario,
    replay: &Replay,
    finance: &report::Finance,
    time_zone: chrono_tz::Tz,
) -> anyhow::Result<Vec<WrittenReport>> {
    let mut store = ledger::SqliteLedger::open_in_memory()?;
    ledger::write_replay(&mut store, sc, replay, &finance.allocation)?;
    let months = report::months_between(sc.grid.instant(0), sc.grid.instant(sc.n_slots), time_zone);
    let stem = args
        .out
        .file_stem()
        .map_or_else(|| "schedule".into(), |s| s.to_string_lossy().into_owned());
    let prefix = args.out.with_file_name(format!("{stem}-report"));
    Ok(report::write_month_reports(
        &store,
        &months,
        time_zone,
        &finance.budgets,
        &prefix,
    )?)
}

/// The reports' lines of the summary table: where they are, which to open, and their totals
/// together (exact sums, rounded once: the schedule's figures, even when the months' printed
/// totals, each rounded, differ from them by a cent).
fn reports_text(reports: &[WrittenReport]) -> String {
    let mut out = String::new();
    let months: Vec<_> = reports
        .iter()
        .filter(|r| r.format == ReportFormat::Csv)
        .collect();
    if let Some(first) = months.first() {
        let total = months
            .iter()
            .fold(ledger::Amounts::default(), |t, r| t + r.total);
        let fmt = |f: ledger::Fixed, d: u32| ledger::record::format_units(f.round_to(d), d);
        out.push_str(&format!(
            "reports ({} month{}, from {}): energy cost {}, carbon {} kg CO2e, {} kWh\n",
            months.len(),
            if months.len() == 1 { "" } else { "s" },
            first.month,
            fmt(total.cost, 2),
            fmt(total.carbon_kg, 1),
            fmt(total.facility_kwh, 1),
        ));
    }
    for r in reports {
        let what = match r.format {
            ReportFormat::Html => "open in a browser",
            ReportFormat::Csv => "CSV",
            ReportFormat::Focus => "FOCUS-shaped CSV",
        };
        out.push_str(&format!(
            "report {} ({what}): {}\n",
            r.month,
            r.path.display()
        ));
    }
    out
}

fn reports_json(reports: &[WrittenReport]) -> serde_json::Value {
    serde_json::Value::Array(
        reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "month": r.month.to_string(),
                    "format": r.format.name(),
                    "path": r.path.display().to_string(),
                    "cost": r.total.cost.to_f64(),
                    "carbon_kg": r.total.carbon_kg.to_f64(),
                    "kwh": r.total.facility_kwh.to_f64(),
                })
            })
            .collect(),
    )
}

fn replay_with_progress(sc: &Scenario, policy: &dyn Policy, show: bool) -> anyhow::Result<Replay> {
    let bar = if show {
        ProgressBar::new(u64::from(sc.n_slots))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} slots ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("simulating {}", policy.name()));
    let replay = sim::simulate(sc, policy, &mut |t, _| bar.set_position(u64::from(t)))?;
    bar.finish_and_clear();
    Ok(replay)
}

fn write_schedule(path: &Path, schedule: &Schedule) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(schedule)?;
    std::fs::write(path, json).with_context(|| format!("writing schedule {}", path.display()))
}
