//! Running the operator: [`OperatorConfig`] and [`run`], which wires the Kubernetes client, the
//! EnergyPolicy and Namespace caches, the plan-watch task, the controller and the admin port,
//! and stops them all when `shutdown` completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::admin::{self, AdminState, Metrics};
use crate::crd::{EnergyPolicy, LABEL_JOB, REGENERATE, TrainingJob};
use crate::plans::watch::PlanWatch;
use crate::reconcile::{self, Context, ContextConfig};
use crate::workload::WorkloadSettings;

/// Time allowed to open a connection to the scheduler.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one unary placement call (the scheduler plans within milliseconds; this
/// only bounds a hung connection).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Plan changes buffered between the plan-watch task and the controller.
const TRIGGER_BUFFER: usize = 1024;

/// What the operator needs to run.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The scheduler's gRPC address (`http://offpeak-scheduler:7700`).
    pub scheduler: String,
    /// Server-side apply field manager.
    pub field_manager: String,
    /// The one namespace to watch; all when `None`.
    pub namespace: Option<String>,
    /// The admin HTTP listener.
    pub admin_addr: SocketAddr,
    pub settings: WorkloadSettings,
}

/// Why the operator could not start or stopped.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("creating the Kubernetes client (in cluster, or from KUBECONFIG): {0}")]
    KubeClient(#[source] kube::Error),
    #[error("the scheduler address {address:?} is not a valid URI: {source}")]
    SchedulerAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "listing {kind} failed; are the CRDs installed (`{REGENERATE}`, then kubectl apply -f \
         charts/offpeak/crds)? {source}"
    )]
    CrdMissing {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("binding the admin listener on {addr}: {source}")]
    BindAdmin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the admin port: {0}")]
    ServeAdmin(#[source] std::io::Error),
}

/// Runs the operator with the in-cluster (or KUBECONFIG) client until `shutdown` completes.
pub async fn run(
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::KubeClient)?;
    run_with_client(client, config, shutdown).await
}

/// Runs the operator over `client` until `shutdown` completes.
pub async fn run_with_client(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let channel = Endpoint::from_shared(config.scheduler.clone())
        .map_err(|source| RunError::SchedulerAddress {
            address: config.scheduler.clone(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_lazy();
    let jobs: Api<TrainingJob> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    check_crds(&client, &jobs).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let policies = cache::<EnergyPolicy>(Api::all(client.clone()), stopped());
    let namespaces = cache::<Namespace>(Api::all(client.clone()), stopped());
    let (_, _) = tokio::join!(policies.wait_until_ready(), namespaces.wait_until_ready());
    info!("EnergyPolicy and Namespace caches ready");

    let metrics = Arc::new(Metrics::new());
    let ctx = Context::new(
        client.clone(),
        PlacementServiceClient::new(channel.clone()),
        policies,
        namespaces,
        ContextConfig {
            settings: config.settings.clone(),
            field_manager: config.field_manager.clone(),
        },
    )
    .with_metrics(metrics.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let (changed_tx, changed_rx) = mpsc::channel(TRIGGER_BUFFER);
    let (resync_tx, resync_rx) = mpsc::channel(1);
    let plan_watch = PlanWatch {
        client: PlacementServiceClient::new(channel),
        cache: ctx.plans.clone(),
        key_prefix: config
            .namespace
            .as_ref()
            .map(|ns| format!("{ns}/"))
            .unwrap_or_default(),
        changed: changed_tx,
        resync: resync_tx,
        connected: ready.clone(),
    };
    let watch_task = tokio::spawn(plan_watch.run(stopped()));

    let listener = TcpListener::bind(config.admin_addr)
        .await
        .map_err(|source| RunError::BindAdmin {
            addr: config.admin_addr,
            source,
        })?;
    info!(admin = %config.admin_addr, scheduler = %config.scheduler, "operator starting");
    let admin = tokio::spawn(admin::serve(
        listener,
        AdminState { metrics, ready },
        stopped(),
    ));

    let pods: Api<Pod> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Controller::new(jobs, watcher::Config::default().any_semantic())
        .owns(pods, watcher::Config::default().labels(LABEL_JOB))
        .reconcile_on(ReceiverStream::new(changed_rx))
        .reconcile_all_on(ReceiverStream::new(resync_rx))
        .graceful_shutdown_on(stopped())
        .run(reconcile::reconcile, reconcile::error_policy, Arc::new(ctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "controller");
            }
        })
        .await;
    info!("controller stopped");
    let _ = watch_task.await;
    admin.await.unwrap_or(Ok(())).map_err(RunError::ServeAdmin)
}

async fn check_crds(client: &Client, jobs: &Api<TrainingJob>) -> Result<(), RunError> {
    let one = ListParams::default().limit(1);
    jobs.list(&one)
        .await
        .map_err(|source| RunError::CrdMissing {
            kind: "TrainingJobs",
            source,
        })?;
    Api::<EnergyPolicy>::all(client.clone())
        .list(&one)
        .await
        .map_err(|source| RunError::CrdMissing {
            kind: "EnergyPolicies",
            source,
        })?;
    Ok(())
}

/// A cache of every `K`, kept by a spawned reflector until `stop` completes.
fn cache<K>(api: Api<K>, stop: impl Future<Output = ()> + Send + 'static) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).to_string();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects()
        .for_each(move |result| {
            if let Err(e) = result {
                // Readiness waits for the first full list; say why it does not come.
                warn!(kind = %kind, error = %e, "watching failed; retrying");
            }
            async {}
        });
    tokio::spawn(async move {
        tokio::select! {
            () = stream => {}
            () = stop => {}
        }
    });
    reader
}
