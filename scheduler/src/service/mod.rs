//! The scheduler as a service (`offpeak serve`): the gRPC `AgentService` that node agents
//! register with and stream samples to, and an admin HTTP port for probes and metrics.
//!
//! Layout:
//! - [`registry`]: nodes, their devices, each agent's batch sequence, each device's meter;
//! - [`metering`]: energy from counter deltas, and the checks a sample must pass;
//! - [`grpc`]: the tonic `AgentService` and the one conversion of [`ServiceError`] into a
//!   `tonic::Status`;
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics` (Prometheus text) over axum;
//! - here: [`ServiceConfig`], [`bind`] / [`Bound::serve`] and [`run`], which bind both
//!   listeners, report the bound addresses and shut both down gracefully.
//!
//! Not here yet (issue 4): the command path (power limits down, acknowledgements up), the curve
//! store feeding the planner, and persistence of the registry and meters.

pub mod admin;
pub mod grpc;
pub mod metering;
pub mod registry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{Instrument as _, info, info_span};

pub use admin::Metrics;
pub use registry::NodeRegistry;

/// Where to listen, and the registry to serve.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The gRPC listener (`127.0.0.1:0` picks a free port).
    pub grpc_addr: SocketAddr,
    /// The admin HTTP listener.
    pub admin_addr: SocketAddr,
    /// The registry to serve. A fresh one for a real start; tests hand the same one to a
    /// restarted server to stand in for the persistence that does not exist yet.
    pub registry: NodeRegistry,
}

/// Why a sample stream could not be ingested.
#[derive(Debug, Error)]
pub enum IngestFailure {
    #[error("unknown agent; register first")]
    UnknownAgent,
    #[error("the scheduler is shutting down; reconnect and replay")]
    ShuttingDown,
    #[error("receiving the stream: {0}")]
    Receive(#[source] tonic::Status),
}

/// Failure of the service; each variant is named after the operation that failed.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("binding the gRPC listener on {addr}: {source}")]
    BindGrpc {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the admin listener on {addr}: {source}")]
    BindAdmin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving gRPC: {0}")]
    ServeGrpc(#[source] tonic::transport::Error),
    #[error("serving the admin port: {0}")]
    ServeAdmin(#[source] std::io::Error),
    #[error("registering node {node:?}: {reason}")]
    Register { node: String, reason: String },
    #[error("ingesting samples from agent {agent_id:?}: {reason}")]
    Ingest {
        agent_id: String,
        #[source]
        reason: IngestFailure,
    },
    #[error("opening the command stream: {0}")]
    Commands(&'static str),
    #[error("reporting a command acknowledgement: {0}")]
    ReportAck(&'static str),
    #[error("starting the async runtime: {0}")]
    StartRuntime(#[source] std::io::Error),
}

/// `offpeak serve`: where to listen.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the gRPC listener node agents connect to (port 0 picks a free one).
    #[arg(long, env = "OFFPEAK_GRPC_ADDR", default_value = "0.0.0.0:7700")]
    pub grpc_addr: SocketAddr,
    /// Address of the admin HTTP listener: /healthz, /readyz, /metrics.
    #[arg(long, env = "OFFPEAK_ADMIN_ADDR", default_value = "0.0.0.0:7701")]
    pub admin_addr: SocketAddr,
}

/// Runs `offpeak serve` on its own runtime until ctrl-c (or SIGINT).
pub fn serve_until_ctrl_c(args: &ServeArgs) -> Result<(), ServiceError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServiceError::StartRuntime)?;
    let config = ServiceConfig {
        grpc_addr: args.grpc_addr,
        admin_addr: args.admin_addr,
        registry: NodeRegistry::new(),
    };
    runtime.block_on(run(
        config,
        async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                // Without a signal handler there is no clean way to be stopped; stopping now
                // is better than running unstoppable.
                tracing::error!(error = %e, "cannot listen for ctrl-c; stopping");
            }
        },
        None,
    ))
}

/// The addresses the listeners were bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// Both listeners, bound and not yet serving.
#[derive(Debug)]
pub struct Bound {
    grpc: TcpListener,
    admin: TcpListener,
    addrs: BoundAddrs,
    registry: NodeRegistry,
}

/// Binds the gRPC and admin listeners.
pub async fn bind(config: ServiceConfig) -> Result<Bound, ServiceError> {
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| ServiceError::BindGrpc {
            addr: config.grpc_addr,
            source,
        })?;
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .map_err(|source| ServiceError::BindAdmin {
            addr: config.admin_addr,
            source,
        })?;
    let local = |l: &TcpListener, requested: SocketAddr| l.local_addr().unwrap_or(requested);
    let addrs = BoundAddrs {
        grpc: local(&grpc, config.grpc_addr),
        admin: local(&admin, config.admin_addr),
    };
    Ok(Bound {
        grpc,
        admin,
        addrs,
        registry: config.registry,
    })
}

impl Bound {
    /// Where the listeners are.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// Serves until `shutdown` completes, then stops gracefully: open sample streams end with
    /// `UNAVAILABLE` (the agents replay what they could not confirm), in-flight requests
    /// finish, and both listeners close.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
        let span = info_span!("serve", grpc = %self.addrs.grpc, admin = %self.addrs.admin);
        async move {
            let metrics = Arc::new(Metrics::new());
            let ready = Arc::new(AtomicBool::new(false));
            let (stop_tx, stop_rx) = watch::channel(false);
            let service = grpc::AgentServiceImpl::new(
                self.registry.clone(),
                Arc::clone(&metrics),
                stop_rx.clone(),
            );
            let grpc_server = grpc::serve(self.grpc, service, wait_for_stop(stop_rx.clone()));
            let admin_server = admin::serve(
                self.admin,
                admin::AdminState::new(Arc::clone(&metrics), Arc::clone(&ready)),
                wait_for_stop(stop_rx),
            );
            let signal = async {
                shutdown.await;
                info!("shutting down");
                ready.store(false, Ordering::SeqCst);
                // Nobody listening only means both servers already ended.
                let _ = stop_tx.send(true);
            };
            ready.store(true, Ordering::SeqCst);
            info!("serving");
            // The first server to fail ends the others; otherwise all three end with the signal.
            tokio::try_join!(grpc_server, admin_server, async {
                signal.await;
                Ok(())
            })?;
            info!("stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// Resolves once the stop flag is raised (or its sender is gone, which means the same).
async fn wait_for_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Binds both listeners, sends their addresses to `bound` (when given), and serves until
/// `shutdown` completes.
pub async fn run(
    config: ServiceConfig,
    shutdown: impl Future<Output = ()>,
    bound: Option<tokio::sync::oneshot::Sender<BoundAddrs>>,
) -> Result<(), ServiceError> {
    let server = bind(config).await?;
    let addrs = server.addrs();
    info!(grpc = %addrs.grpc, admin = %addrs.admin, "listening");
    if let Some(tx) = bound {
        // The caller may have stopped waiting; serving goes on regardless.
        let _ = tx.send(addrs);
    }
    server.serve(shutdown).await
}
