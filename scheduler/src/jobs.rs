//! `offpeak jobs`: a command-line client of a running scheduler's placement API, for trying the
//! live planning cycle without a Kubernetes cluster (the operator is the real client) and for
//! looking at plans from a shell.
//!
//! Layout: [`JobsArgs`] (the subcommands and their flags), [`run`] (one call per subcommand),
//! and [`plan_line`], the one-line rendering of a plan that `submit`, `get` and `watch` print.

use anyhow::{Context as _, bail};
use chrono::{DateTime, Duration, Utc};
use clap::{Args, Subcommand};
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use offpeak_proto::v1::{
    CancelJobRequest, GetPlanRequest, JobPlan, JobSpec, PlanPhase, SubmitJobRequest,
    WatchPlansRequest,
};
use tonic::transport::Channel;

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The scheduler's gRPC address (`offpeak serve --grpc-addr`).
    #[arg(
        long,
        env = "OFFPEAK_SCHEDULER",
        default_value = "http://127.0.0.1:7700"
    )]
    pub scheduler: String,
    #[command(subcommand)]
    pub command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Submit a job (or update it: the same key and uid again) and print its plan.
    Submit(SubmitArgs),
    /// Print one job's current plan.
    Get {
        /// The job's key, `namespace/name`.
        key: String,
    },
    /// Cancel a job (a run in progress ends at the next slot boundary).
    Cancel {
        /// The job's key, `namespace/name`.
        key: String,
    },
    /// Print every current plan, then every change, until interrupted.
    Watch {
        /// Only jobs whose key starts with this (`research/` for a namespace).
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job's key, `namespace/name`.
    pub key: String,
    /// The job's uid; by default the key itself, so submitting again updates the same job.
    #[arg(long)]
    pub uid: Option<String>,
    /// Workers (nodes of the gang).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// GPUs per worker.
    #[arg(long, default_value_t = 1)]
    pub gpus_per_worker: u32,
    /// Hours of work at full power.
    #[arg(long)]
    pub work_hours: f64,
    /// Deadline (RFC 3339, UTC).
    #[arg(long, conflicts_with = "max_delay_hours")]
    pub deadline: Option<DateTime<Utc>>,
    /// Or: the deadline as hours from now.
    #[arg(long)]
    pub max_delay_hours: Option<f64>,
    /// Accelerator model the job needs (any when unset).
    #[arg(long, default_value = "")]
    pub accelerator: String,
    /// Power-curve profile (the accelerator's default when unset).
    #[arg(long, default_value = "")]
    pub profile: String,
    /// The job checkpoints and may run in several pieces.
    #[arg(long)]
    pub preemptible: bool,
    /// Price cap, in the scheduler's currency per MWh.
    #[arg(long)]
    pub price_cap: Option<f64>,
    /// Carbon cap, gCO2e/kWh.
    #[arg(long)]
    pub carbon_cap: Option<f64>,
    /// Team label, for the reports.
    #[arg(long, default_value = "")]
    pub team: String,
    /// Cost centre label, for the reports.
    #[arg(long, default_value = "")]
    pub cost_centre: String,
}

/// Runs one `offpeak jobs` subcommand on its own runtime, printing plans to standard output.
pub fn run(args: &JobsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &JobsArgs) -> anyhow::Result<()> {
    let mut client = PlacementServiceClient::connect(args.scheduler.clone())
        .await
        .with_context(|| format!("connecting to the scheduler at {}", args.scheduler))?;
    match &args.command {
        JobsCommand::Submit(submit) => {
            let job = spec(submit, Utc::now())?;
            let plan = client
                .submit_job(SubmitJobRequest { job: Some(job) })
                .await
                .map_err(status_error("submitting the job"))?;
            println!("{}", plan_line(plan.get_ref()));
        }
        JobsCommand::Get { key } => {
            let plan = client
                .get_plan(GetPlanRequest { key: key.clone() })
                .await
                .map_err(status_error("reading the plan"))?;
            println!("{}", plan_line(plan.get_ref()));
        }
        JobsCommand::Cancel { key } => {
            let answer = client
                .cancel_job(CancelJobRequest {
                    key: key.clone(),
                    uid: String::new(),
                })
                .await
                .map_err(status_error("cancelling the job"))?;
            let known = answer.get_ref().known;
            println!("{key}: {}", if known { "cancelled" } else { "not known" });
        }
        JobsCommand::Watch { prefix } => watch(&mut client, prefix).await?,
    }
    Ok(())
}

async fn watch(client: &mut PlacementServiceClient<Channel>, prefix: &str) -> anyhow::Result<()> {
    let mut stream = client
        .watch_plans(WatchPlansRequest {
            key_prefix: prefix.to_owned(),
        })
        .await
        .map_err(status_error("watching plans"))?
        .into_inner();
    loop {
        tokio::select! {
            next = stream.message() => match next.map_err(status_error("watching plans"))? {
                Some(plan) => println!("{}", plan_line(&plan)),
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The job spec the flags describe, submitted at `now`.
fn spec(a: &SubmitArgs, now: DateTime<Utc>) -> anyhow::Result<JobSpec> {
    let Some((namespace, _)) = a.key.split_once('/') else {
        bail!("job key {:?} is not namespace/name", a.key);
    };
    let deadline = match (a.deadline, a.max_delay_hours) {
        (Some(d), _) => d,
        (None, Some(h)) if h.is_finite() && h > 0.0 => {
            // Whole seconds: the API carries Unix seconds.
            now + Duration::seconds((h * 3600.0).round() as i64)
        }
        (None, Some(h)) => bail!("--max-delay-hours must be a positive number of hours, not {h}"),
        (None, None) => bail!("give the job a --deadline or a --max-delay-hours"),
    };
    Ok(JobSpec {
        key: a.key.clone(),
        uid: a.uid.clone().unwrap_or_else(|| a.key.clone()),
        namespace: namespace.to_owned(),
        team: a.team.clone(),
        cost_centre: a.cost_centre.clone(),
        workers: a.workers,
        gpus_per_worker: a.gpus_per_worker,
        accelerator: a.accelerator.clone(),
        work_hours: a.work_hours,
        profile: a.profile.clone(),
        submit_unix_s: now.timestamp(),
        deadline_unix_s: deadline.timestamp(),
        preemptible: a.preemptible,
        price_cap_per_mwh: a.price_cap,
        carbon_cap_g_per_kwh: a.carbon_cap,
        ..JobSpec::default()
    })
}

/// The scheduler's refusal, with its code and message, in the context of what was attempted.
fn status_error(doing: &'static str) -> impl Fn(tonic::Status) -> anyhow::Error {
    move |s| anyhow::anyhow!("{doing}: {:?}: {}", s.code(), s.message())
}

/// One line per plan: key, phase, the run's window, zone and nodes, power limit, estimates,
/// metered energy so far, and the reason.
pub fn plan_line(p: &JobPlan) -> String {
    // The generated name without its enum prefix, as the operator shows it in job status.
    let phase = PlanPhase::try_from(p.phase)
        .unwrap_or(PlanPhase::Unspecified)
        .as_str_name()
        .trim_start_matches("PLAN_PHASE_");
    let mut line = format!("{} r{} {phase}", p.key, p.revision);
    if p.start_unix_s != 0 {
        let at = |s: i64| {
            DateTime::<Utc>::from_timestamp(s, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| s.to_string())
        };
        let nodes: Vec<String> = p
            .nodes
            .iter()
            .map(|n| format!("{}x{}", n.node, n.gpus))
            .collect();
        line += &format!(
            " {}..{} UTC in {} on [{}] at {} W; est. {:.2} {} {:.2} kg CO2e, saving {:.2}",
            at(p.start_unix_s),
            at(p.end_unix_s),
            p.zone,
            nodes.join(" "),
            p.power_limit_watts,
            p.estimated_cost,
            p.currency,
            p.estimated_carbon_kg,
            p.estimated_saving,
        );
    }
    if p.metered_it_kwh > 0.0 {
        line += &format!(
            "; metered {:.3} kWh, {:.2} {}, {:.3} kg",
            p.metered_it_kwh, p.metered_cost, p.currency, p.metered_carbon_kg
        );
    }
    if p.signals_degraded {
        line += "; signals degraded";
    }
    if !p.reason.is_empty() {
        line += &format!(" ({})", p.reason);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(key: &str) -> SubmitArgs {
        SubmitArgs {
            key: key.into(),
            uid: None,
            workers: 2,
            gpus_per_worker: 4,
            work_hours: 3.0,
            deadline: None,
            max_delay_hours: Some(24.0),
            accelerator: String::new(),
            profile: String::new(),
            preemptible: false,
            price_cap: None,
            carbon_cap: None,
            team: String::new(),
            cost_centre: String::new(),
        }
    }

    #[test]
    fn the_spec_takes_its_namespace_and_deadline_from_the_flags() -> anyhow::Result<()> {
        let now: DateTime<Utc> = "2026-11-23T12:00:00Z".parse()?;
        let s = spec(&args("research/bert"), now)?;
        assert_eq!(s.namespace, "research");
        assert_eq!(s.uid, "research/bert");
        assert_eq!(s.deadline_unix_s - s.submit_unix_s, 24 * 3600);
        Ok(())
    }

    #[test]
    fn bad_keys_and_delays_are_errors_naming_them() -> anyhow::Result<()> {
        let now: DateTime<Utc> = "2026-11-23T12:00:00Z".parse()?;
        let e = spec(&args("no-namespace"), now)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("not namespace/name")));
        let mut a = args("ns/j");
        a.max_delay_hours = Some(-1.0);
        let e = spec(&a, now).err().map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("--max-delay-hours")));
        a.max_delay_hours = None;
        let e = spec(&a, now).err().map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("--deadline")));
        Ok(())
    }

    #[test]
    fn a_plan_line_names_phase_window_and_reason() {
        let p = JobPlan {
            key: "ns/j".into(),
            phase: PlanPhase::Planned as i32,
            start_unix_s: 1_700_000_000,
            end_unix_s: 1_700_003_600,
            zone: "GB".into(),
            power_limit_watts: 150,
            currency: "USD".into(),
            reason: "waiting for a cheaper window".into(),
            revision: 3,
            ..JobPlan::default()
        };
        let line = plan_line(&p);
        assert!(line.starts_with("ns/j r3 PLANNED 2023-11-14 22:13..2023-11-14 23:13 UTC in GB"));
        assert!(line.ends_with("(waiting for a cheaper window)"));
    }
}
