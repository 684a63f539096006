//! The `offpeak` command line. `main.rs` only parses [`Cli`] and calls [`run`], so tests can
//! drive every command in-process.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::ledger;
use crate::planner::{Policy, PolicyKind};
use crate::report::{self, ReportArgs};
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
    /// Serve node agents over gRPC (registry, sample ingest, energy metering) with an admin
    /// HTTP port (/healthz, /readyz, /metrics), until ctrl-c.
    Serve(ServeArgs),
    /// A month of the energy ledger for finance (CSV, FOCUS-shaped CSV or HTML).
    Report(ReportArgs),
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
    /// Also append the replay's metered energy to this SQLite ledger (for `offpeak report`);
    /// replaying again adds nothing twice.
    #[arg(long, env = "OFFPEAK_LEDGER")]
    pub ledger: Option<PathBuf>,
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(args) => {
            let summary = simulate(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.table());
                println!("schedule written to {}", args.out.display());
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
        Command::Serve(args) => Ok(service::serve_until_ctrl_c(&args)?),
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

/// `offpeak simulate`: replays, writes the schedule, returns the summary.
pub fn simulate(args: &SimulateArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let sc = match &args.scenario {
        Some(dir) => {
            scenario::load(dir).with_context(|| format!("loading scenario {}", dir.display()))?
        }
        None => scenario::embedded::example().context("loading the built-in example scenario")?,
    };
    let policy = args.policy.build();
    let replay = replay_with_progress(&sc, policy.as_ref(), !args.no_progress && !args.json)?;
    write_schedule(&args.out, &Schedule::from_replay(&sc, &replay))?;
    if let Some(path) = &args.ledger {
        ledger::write_replay(path, &sc, &replay)
            .with_context(|| format!("writing the ledger {}", path.display()))?;
    }
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
    Ok(Summary::new(
        sc.name.clone(),
        sc.currency.clone(),
        sc.jobs.len(),
        result,
        asap,
        started.elapsed().as_secs_f64(),
    ))
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
