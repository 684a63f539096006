//! `offpeak-agent`: parses the command line, then samples, streams and applies power limits
//! until ctrl-c or SIGTERM, when it restores default limits and flushes its buffer.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use offpeak_agent::client::UplinkConfig;
use offpeak_agent::rapl::DEFAULT_POWERCAP_ROOT;
use offpeak_agent::runtime::{self, AgentConfig, SimProfile, SourceKind};
use offpeak_agent::tpu::{TpuConfig, TpuGeneration, metrics::DEFAULT_ADDR as DEFAULT_TPU_ADDR};

/// offpeak node agent: measures accelerator power, streams it to the scheduler and applies the
/// power limits it commands.
#[derive(Debug, Parser)]
#[command(name = "offpeak-agent", version, about)]
struct Args {
    /// Where readings come from: simulated GPUs, NVIDIA GPUs (NVML), CPU package and DRAM
    /// energy (RAPL), or TPU chips (power estimated from the duty cycle the TPU runtime
    /// reports; every sample is marked estimated).
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
    /// Simulated devices (--source sim).
    #[arg(long, env = "OFFPEAK_AGENT_DEVICES", default_value_t = 8)]
    devices: usize,
    /// The measured profile the simulated devices play (--source sim).
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
    /// Keep unconfirmed batches in this directory, so they survive an agent restart (bounded:
    /// one hour of batches at 1 s, 16 MiB). Without it they are kept in memory.
    #[arg(long, env = "OFFPEAK_AGENT_BUFFER_DIR")]
    buffer_dir: Option<PathBuf>,
    /// The powercap sysfs root (--source rapl).
    #[arg(long, env = "OFFPEAK_AGENT_POWERCAP_ROOT", default_value = DEFAULT_POWERCAP_ROOT)]
    powercap_root: PathBuf,
    /// Load NVML from this file instead of the loader path (--source nvml).
    #[arg(long, env = "OFFPEAK_AGENT_NVML_LIBRARY")]
    nvml_library: Option<PathBuf>,
    /// The kubelet's pod-resources socket, for GPU → pod attribution (in Kubernetes:
    /// /var/lib/kubelet/pod-resources/kubelet.sock, mounted from the host). Without it samples
    /// name no pod.
    #[arg(long, env = "OFFPEAK_AGENT_POD_RESOURCES_SOCKET")]
    pod_resources_socket: Option<PathBuf>,
    /// The TPU runtime's metrics service (libtpu's RuntimeMetricService, served by the TPU
    /// workload's process) (--source tpu). The agent must be able to reach it: same network
    /// namespace (hostNetwork) or the workload pod's address.
    #[arg(long, env = "OFFPEAK_AGENT_TPU_METRICS_ADDR", default_value = DEFAULT_TPU_ADDR)]
    tpu_metrics_addr: String,
    /// The TPU generation of this node's chips (--source tpu; required there). Power is
    /// estimated with that generation's per-chip profile.
    #[arg(long, env = "OFFPEAK_AGENT_TPU_GENERATION", value_enum)]
    tpu_generation: Option<Generation>,
    /// A chip's draw at 0 % TensorCore duty cycle, in watts (--source tpu). Required for
    /// generations without published figures (v5e, v5p, v6e); replaces the published figure
    /// for v4. Measure it on your hardware.
    #[arg(long, env = "OFFPEAK_AGENT_TPU_IDLE_WATTS")]
    tpu_idle_watts: Option<f64>,
    /// A chip's draw at 100 % TensorCore duty cycle, in watts (--source tpu); as
    /// --tpu-idle-watts.
    #[arg(long, env = "OFFPEAK_AGENT_TPU_BUSY_WATTS")]
    tpu_busy_watts: Option<f64>,
    /// The node's TPU chips, as runtime device ids 0..N (--source tpu). With it the agent
    /// registers at once, before any TPU workload runs; without it, it waits for the runtime
    /// to say which chips it has.
    #[arg(long, env = "OFFPEAK_AGENT_TPU_CHIPS")]
    tpu_chips: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    Sim,
    Nvml,
    Rapl,
    Tpu,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Generation {
    V4,
    V5e,
    V5p,
    V6e,
}

impl From<Generation> for TpuGeneration {
    fn from(g: Generation) -> Self {
        match g {
            Generation::V4 => Self::V4,
            Generation::V5e => Self::V5e,
            Generation::V5p => Self::V5p,
            Generation::V6e => Self::V6e,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    V100,
    A40,
}

/// Resolves on ctrl-c (SIGINT) or SIGTERM, which Kubernetes sends when it stops the pod: both
/// stop the agent gracefully, restoring default power limits.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the agent");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot listen for ctrl-c; stopping");
            }
        }
        () = terminate => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.interval_ms > 0, "--interval-ms must be above zero");
    let source = match args.source {
        Source::Sim => SourceKind::Sim {
            profile: match args.profile {
                Profile::V100 => SimProfile::V100,
                Profile::A40 => SimProfile::A40,
            },
            devices: args.devices,
            seed: args.seed,
        },
        Source::Nvml => SourceKind::Nvml {
            library: args.nvml_library,
        },
        Source::Rapl => SourceKind::Rapl {
            root: args.powercap_root,
        },
        Source::Tpu => {
            let generation = args
                .tpu_generation
                .context("--source tpu needs --tpu-generation (v4, v5e, v5p or v6e)")?;
            SourceKind::Tpu(TpuConfig {
                idle_watts: args.tpu_idle_watts,
                busy_watts: args.tpu_busy_watts,
                chips: args.tpu_chips,
                ..TpuConfig::new(args.tpu_metrics_addr, generation.into())
            })
        }
    };
    let config = AgentConfig {
        uplink: UplinkConfig {
            buffer_dir: args.buffer_dir,
            ..UplinkConfig::new(args.scheduler, args.node, args.zone)
        },
        source,
        interval: Duration::from_millis(args.interval_ms),
        pod_resources: args.pod_resources_socket,
    };
    let stopped = runtime::run(config, stop_signal())
        .await
        .context("running the agent")?;
    let u = &stopped.uplink;
    eprintln!(
        "confirmed {} batches, dropped {}, unsent {}, reconnects {}; commands applied {}, \
         failed {}; limits restored {}",
        u.confirmed,
        u.dropped,
        u.unsent,
        u.reconnects,
        stopped.commands_applied,
        stopped.commands_failed,
        stopped.restored.len()
    );
    Ok(())
}
