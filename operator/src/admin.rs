//! The operator's admin HTTP port: `/healthz` (the process answers), `/readyz` (the plan stream
//! to the scheduler is open and the controller runs) and `/metrics` (Prometheus text, one
//! registry).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// A label naming an outcome or an operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    kind: &'static str,
}

/// The operator's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    pod_changes: Family<Labels, Counter>,
    scheduler_failures: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("offpeak_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let pod_changes = Family::<Labels, Counter>::default();
        let scheduler_failures = Family::<Labels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of TrainingJobs, by result (ok or the failed operation)",
            reconciles.clone(),
        );
        registry.register(
            "pod_changes",
            "Worker pods created, released from the gang gate and deleted",
            pod_changes.clone(),
        );
        registry.register(
            "scheduler_failures",
            "Placement API calls that failed, by call",
            scheduler_failures.clone(),
        );
        Self {
            registry,
            reconciles,
            pod_changes,
            scheduler_failures,
        }
    }

    /// Counts a reconcile's result (`ok` or the error's kind).
    pub fn reconciled(&self, kind: &'static str) {
        self.reconciles.get_or_create(&Labels { kind }).inc();
    }

    /// Counts a pod change (`created`, `released`, `deleted`).
    pub fn pod_change(&self, kind: &'static str) {
        self.pod_changes.get_or_create(&Labels { kind }).inc();
    }

    /// Counts a failed placement call.
    pub fn scheduler_failure(&self, call: &'static str) {
        self.scheduler_failures
            .get_or_create(&Labels { kind: call })
            .inc();
    }

    /// How many reconciles ended with `kind`.
    pub fn reconciles(&self, kind: &'static str) -> u64 {
        self.reconciles.get_or_create(&Labels { kind }).get()
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    match state.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// Serves the admin routes on `listener` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stop)
        .await
}
