//! `offpeak-operator`: parses the command line, then reconciles TrainingJobs until SIGTERM or
//! ctrl-c.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use offpeak_operator::run::{self, OperatorConfig};
use offpeak_operator::workload::{DEFAULT_MASTER_PORT, WorkloadSettings};

/// offpeak Kubernetes operator: submits TrainingJobs to the scheduler and starts their worker
/// pods together when and where the plan says.
#[derive(Debug, Parser)]
#[command(name = "offpeak-operator", version, about)]
struct Args {
    /// The scheduler's gRPC address.
    #[arg(
        long,
        env = "OFFPEAK_SCHEDULER",
        default_value = "http://offpeak-scheduler:7700"
    )]
    scheduler: String,
    /// Field manager for server-side apply.
    #[arg(
        long,
        env = "OFFPEAK_FIELD_MANAGER",
        default_value = "offpeak-operator"
    )]
    field_manager: String,
    /// The one namespace whose TrainingJobs to reconcile; every namespace when unset.
    #[arg(long, env = "OFFPEAK_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Admin HTTP listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "OFFPEAK_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// Rendezvous port the workers get as MASTER_PORT.
    #[arg(long, env = "OFFPEAK_MASTER_PORT", default_value_t = DEFAULT_MASTER_PORT)]
    master_port: u16,
    /// Extended resource name of one accelerator.
    #[arg(long, env = "OFFPEAK_GPU_RESOURCE", default_value = "nvidia.com/gpu")]
    gpu_resource: String,
    /// The cluster's DNS domain (for MASTER_ADDR).
    #[arg(long, env = "OFFPEAK_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.master_port > 0, "--master-port must be above zero");
    let config = OperatorConfig {
        scheduler: args.scheduler,
        field_manager: args.field_manager,
        namespace: args.namespace.filter(|ns| !ns.is_empty()),
        admin_addr: args.admin_addr,
        settings: WorkloadSettings {
            master_port: args.master_port,
            gpu_resource: args.gpu_resource,
            cluster_domain: args.cluster_domain,
        },
    };
    run::run(config, shutdown_signal())
        .await
        .context("running the operator")
}

/// Completes on ctrl-c or SIGTERM (what Kubernetes sends to stop a pod).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
