//! The scheduler as a service (`offpeak serve`): the gRPC `AgentService` that node agents
//! register with and stream samples to, and an admin HTTP port for probes and metrics.
//!
//! Layout:
//! - [`registry`]: nodes, their devices, each agent's batch sequence, each device's meter;
//! - [`metering`]: energy from counter deltas, and the checks a sample must pass;
//! - [`grpc`]: the tonic `AgentService` and the one conversion of [`ServiceError`] into a
//!   `tonic::Status`;
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics` (Prometheus text) over axum;
//! - [`commands`]: the command path (power limits down, acknowledgements up) the planning
//!   cycle drives through [`CommandCenter`];
//! - [`curves`]: the agents' power curves, as the planner's profiles ([`CurveStore`]);
//! - [`store`]: the registry's SQLite persistence (`offpeak serve --state FILE`);
//! - the placement API ([`crate::placement`]) on the same gRPC listener, when configured, with
//!   its planning cycle running beside the servers (it meters jobs from the registry's
//!   per-pod energy and sends running jobs' power limits through the [`CommandCenter`]) and,
//!   when its signals come from provider chains, one signal refresher task per zone, whose
//!   metrics are on `/metrics` and which stop with the service; with a ledger (`--ledger`) the
//!   cycle also appends the jobs' metered energy to it (`placement::ledger_sink`);
//! - here: [`ServiceConfig`], [`bind`] / [`Bound::serve`] and [`run`], which bind both
//!   listeners, report the bound addresses and shut both down gracefully.

pub mod admin;
pub mod commands;
pub mod curves;
pub mod grpc;
pub mod metering;
pub mod registry;
pub mod reports_http;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{Instrument as _, info, info_span};

pub use admin::Metrics;
pub use commands::{CommandCenter, CommandId, CommandState};
pub use curves::CurveStore;
pub use registry::NodeRegistry;

/// Where to listen, and the registry to serve.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The gRPC listener (`127.0.0.1:0` picks a free port).
    pub grpc_addr: SocketAddr,
    /// The admin HTTP listener.
    pub admin_addr: SocketAddr,
    /// The registry to serve: in memory ([`NodeRegistry::new`]) or on a SQLite file
    /// ([`NodeRegistry::open`]), which a restarted scheduler reopens.
    pub registry: NodeRegistry,
    /// The command path over `registry` (`CommandCenter::new(registry.clone())`), shared with
    /// the planning cycle.
    pub commands: CommandCenter,
    /// The agents' power curves, shared with the planning cycle.
    pub curves: CurveStore,
    /// The ledger `GET /reports/{month}` reads on the admin port (none: not served).
    pub reports: Option<reports_http::Reports>,
    /// The live planning cycle and its `PlacementService` (none: not served). Its profiles
    /// are layered under `curves`: a measured curve replaces the configured profile of the
    /// same name.
    pub placement: Option<crate::placement::PlacementConfig>,
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
    Commands(#[source] commands::AckFailure),
    #[error("reporting a command acknowledgement: {0}")]
    ReportAck(#[source] commands::AckFailure),
    #[error("opening the scheduler state: {0}")]
    OpenState(#[source] store::StoreError),
    #[error("saving the scheduler state (the stream is not confirmed; the agent replays it): {0}")]
    PersistState(#[source] store::StoreError),
    #[error("opening the ledger for reports")]
    OpenLedger(#[source] crate::ledger::LedgerError),
    #[error("starting the async runtime: {0}")]
    StartRuntime(#[source] std::io::Error),
    #[error(transparent)]
    Placement(crate::placement::PlacementError),
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
    #[command(flatten)]
    pub reports: reports_http::ReportsArgs,
    /// SQLite file keeping the node registry and energy meters across restarts (created if
    /// missing). Without it they are kept in memory and a restart starts from zero.
    #[arg(long, env = "OFFPEAK_STATE")]
    pub state: Option<std::path::PathBuf>,
    /// The placement file (cluster, profiles, signals, planning settings; see
    /// docs/placement.md): serves the PlacementService and runs the live planning cycle.
    /// Without it only node agents are served.
    #[arg(long, env = "OFFPEAK_PLACEMENT_CONFIG")]
    pub placement_config: Option<std::path::PathBuf>,
    /// SQLite file keeping the placement's committed runs across restarts (created if
    /// missing). Without it they are kept in memory.
    #[arg(long, env = "OFFPEAK_PLACEMENT_DB", requires = "placement_config")]
    pub placement_db: Option<std::path::PathBuf>,
}

/// Runs `offpeak serve` on its own runtime until ctrl-c or SIGTERM.
pub fn serve_until_stopped(args: &ServeArgs) -> Result<(), ServiceError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServiceError::StartRuntime)?;
    let registry = match &args.state {
        Some(path) => NodeRegistry::open(path).map_err(ServiceError::OpenState)?,
        None => NodeRegistry::new(),
    };
    let config = ServiceConfig {
        grpc_addr: args.grpc_addr,
        admin_addr: args.admin_addr,
        registry: registry.clone(),
        commands: CommandCenter::new(registry),
        curves: CurveStore::new(),
        reports: reports_http::Reports::from_args(&args.reports)
            .map_err(ServiceError::OpenLedger)?,
        placement: match &args.placement_config {
            Some(path) => Some(
                crate::placement::config::load(
                    path,
                    Arc::new(crate::placement::SystemClock),
                    args.placement_db.clone(),
                )
                .map_err(|e| {
                    ServiceError::Placement(crate::placement::PlacementError::LoadConfig(e))
                })?,
            ),
            None => None,
        },
    };
    runtime.block_on(run(config, stop_signal(), None))
}

/// Completes on ctrl-c (SIGINT) or SIGTERM, what Kubernetes sends to stop a pod.
async fn stop_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                // Without a handler there is no clean way to be stopped; stopping now is better
                // than running unstoppable.
                tracing::error!(error = %e, "cannot listen for SIGTERM; stopping");
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot listen for ctrl-c; stopping");
            }
        }
        () = term => {}
    }
    info!("stop signal received; shutting down");
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
    commands: CommandCenter,
    curves: CurveStore,
    reports: Option<reports_http::Reports>,
    placement: Option<(crate::placement::Placement, crate::placement::Cycle)>,
    metrics: Metrics,
    /// Raised to stop the servers and the signal refreshers (dropping it does too).
    stop: watch::Sender<bool>,
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
    let mut metrics = Metrics::new();
    metrics.register_commands(config.commands.counters());
    let stop = watch::Sender::new(false);
    let placement = match config.placement {
        Some(mut p) => {
            // With a ledger, the cycle appends the jobs' metered energy to it; made before the
            // chains become refreshers, as it reads their tariffs.
            let ledger = config
                .reports
                .as_ref()
                .map(|r| crate::placement::ledger_sink::LedgerSink::new(r.location().clone(), &p));
            p.profiles =
                crate::placement::cluster::measured_first(config.curves.clone(), p.profiles);
            if let crate::placement::SignalFeed::Chains(chains) = &p.signals {
                p.signals = crate::placement::SignalFeed::Refreshed(
                    crate::placement::refreshers::Refreshers::build(
                        chains,
                        &p.settings,
                        Arc::clone(&p.clock),
                    )
                    .map_err(|e| {
                        ServiceError::Placement(crate::placement::PlacementError::BuildSignals(e))
                    })?
                    .with_metrics(&metrics.register_signals())
                    .spawn(&stop.subscribe()),
                );
            }
            let (placement, cycle) = crate::placement::Placement::open_with_commands(
                p,
                config.registry.clone(),
                config.commands.clone(),
            )
            .map_err(ServiceError::Placement)?;
            Some(match ledger {
                Some(sink) => {
                    metrics.register_ledger(sink.counters());
                    (placement, cycle.with_ledger(sink))
                }
                None => (placement, cycle),
            })
        }
        None => None,
    };
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
        commands: config.commands,
        curves: config.curves,
        reports: config.reports,
        placement,
        metrics,
        stop,
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
            let metrics = Arc::new(self.metrics);
            let ready = Arc::new(AtomicBool::new(false));
            let stop_rx = self.stop.subscribe();
            let stop_tx = self.stop;
            let service = grpc::AgentServiceImpl::new(
                self.registry.clone(),
                self.commands.clone(),
                self.curves.clone(),
                Arc::clone(&metrics),
                stop_rx.clone(),
            );
            let (placement, cycle) = self.placement.unzip();
            let placement_service = placement
                .clone()
                .map(crate::placement::grpc::PlacementServiceImpl::new);
            let grpc_server = grpc::serve(
                self.grpc,
                service,
                placement_service,
                wait_for_stop(stop_rx.clone()),
            );
            let cycle = async {
                if let Some(cycle) = cycle {
                    cycle.run().await;
                }
                Ok(())
            };
            let admin_server = admin::serve(
                self.admin,
                admin::AdminState::new(Arc::clone(&metrics), Arc::clone(&ready))
                    .with_reports(self.reports),
                wait_for_stop(stop_rx),
            );
            let signal = async {
                shutdown.await;
                info!("shutting down");
                ready.store(false, Ordering::SeqCst);
                if let Some(p) = &placement {
                    p.shutdown();
                }
                // Nobody listening only means both servers already ended.
                let _ = stop_tx.send(true);
            };
            ready.store(true, Ordering::SeqCst);
            info!("serving");
            // The first server to fail ends the others; otherwise all three end with the signal.
            tokio::try_join!(grpc_server, admin_server, cycle, async {
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
