//! `offpeak-agent`: parses the command line, then samples and streams until ctrl-c.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use offpeak_agent::client::{self, AgentConfig, SimProfile, SourceKind, UplinkConfig};

/// offpeak node agent: measures accelerator power and streams it to the scheduler.
#[derive(Debug, Parser)]
#[command(name = "offpeak-agent", version, about)]
struct Args {
    /// Where readings come from (only the simulator so far).
    #[arg(long, env = "OFFPEAK_AGENT_SOURCE", value_enum, default_value = "sim")]
    source: Source,
    /// The scheduler's gRPC address.
    #[arg(
        long,
        env = "OFFPEAK_SCHEDULER",
        default_value = "http://127.0.0.1:7700"
    )]
    scheduler: String,
    /// This node's name (in Kubernetes, the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME", default_value = "localhost")]
    node: String,
    /// The electricity zone the node draws from (e.g. DE-LU).
    #[arg(long, env = "OFFPEAK_ZONE", default_value = "unknown")]
    zone: String,
    /// Simulated devices.
    #[arg(long, env = "OFFPEAK_AGENT_DEVICES", default_value_t = 8)]
    devices: usize,
    /// The measured profile the simulated devices play.
    #[arg(
        long,
        env = "OFFPEAK_AGENT_PROFILE",
        value_enum,
        default_value = "v100"
    )]
    profile: Profile,
    /// Seed of the simulated noise; also makes the simulated UUIDs distinct per node.
    #[arg(long, env = "OFFPEAK_AGENT_SEED", default_value_t = 0)]
    seed: u64,
    /// Milliseconds between samples.
    #[arg(long, env = "OFFPEAK_AGENT_INTERVAL_MS", default_value_t = 1000)]
    interval_ms: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    Sim,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    V100,
    A40,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.interval_ms > 0, "--interval-ms must be above zero");
    let config = AgentConfig {
        uplink: UplinkConfig::new(args.scheduler, args.node, args.zone),
        source: match args.source {
            Source::Sim => SourceKind::Sim,
        },
        profile: match args.profile {
            Profile::V100 => SimProfile::V100,
            Profile::A40 => SimProfile::A40,
        },
        devices: args.devices,
        seed: args.seed,
        interval: Duration::from_millis(args.interval_ms),
    };
    let report = client::run(config, async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c; stopping");
        }
    })
    .await
    .context("running the agent")?;
    eprintln!(
        "confirmed {} batches, dropped {}, unsent {}, reconnects {}",
        report.confirmed, report.dropped, report.unsent, report.reconnects
    );
    Ok(())
}
