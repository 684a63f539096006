//! The admin HTTP port: `/healthz` (the process answers), `/readyz` (it serves gRPC and is not
//! shutting down) and `/metrics` (Prometheus text exposition).

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

use super::ServiceError;

/// The `reason` label of rejected samples.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    reason: &'static str,
}

/// The service's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    accepted: Counter,
    duplicates: Counter,
    rejected: Family<RejectLabels, Counter>,
    energy_mj: Counter,
    curves_accepted: Counter,
    curves_rejected: Family<RejectLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("offpeak");
        let accepted = Counter::default();
        let duplicates = Counter::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let energy_mj = Counter::default();
        registry.register("samples_accepted", "Samples metered", accepted.clone());
        registry.register(
            "samples_duplicate",
            "Samples in replayed batches that were already metered, skipped",
            duplicates.clone(),
        );
        registry.register(
            "samples_rejected",
            "Samples refused, by reason",
            rejected.clone(),
        );
        registry.register(
            "energy_metered_millijoules",
            "Energy metered from device counter deltas, in millijoules",
            energy_mj.clone(),
        );
        let curves_accepted = Counter::default();
        let curves_rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "curves_accepted",
            "Power curves taken into the curve store",
            curves_accepted.clone(),
        );
        registry.register(
            "curves_rejected",
            "Power curves refused, by reason",
            curves_rejected.clone(),
        );
        Self {
            registry,
            accepted,
            duplicates,
            rejected,
            energy_mj,
            curves_accepted,
            curves_rejected,
        }
    }

    /// Exposes the command path's counters: commands sent, acknowledgements by outcome
    /// (failures included) and commands refused by reason.
    pub fn register_commands(&mut self, counters: &super::commands::CommandCounters) {
        self.registry.register(
            "commands_sent",
            "Power-limit commands written to agents' streams (re-deliveries included)",
            counters.sent.clone(),
        );
        self.registry.register(
            "command_acks",
            "Command acknowledgements from agents, by outcome (applied, failed)",
            counters.acks.clone(),
        );
        self.registry.register(
            "commands_refused",
            "Commands refused before reaching an agent, by reason",
            counters.refused.clone(),
        );
    }

    /// Registers the signal refreshers' gauges and counters (`offpeak_signal_degraded`, ...)
    /// and returns them for the refreshers to record in.
    pub fn register_signals(&mut self) -> crate::signals::refresh::SignalMetrics {
        crate::signals::refresh::register_metrics(&mut self.registry)
    }

    /// Exposes the live cycle's ledger counters (`offpeak_ledger_*`).
    pub fn register_ledger(&mut self, counters: &crate::placement::ledger_sink::LedgerCounters) {
        counters.register(&mut self.registry);
    }

    /// Counts a curve taken, or refused for `reason`.
    pub fn curve(&self, rejected: Option<&'static str>) {
        match rejected {
            None => {
                self.curves_accepted.inc();
            }
            Some(reason) => {
                self.curves_rejected
                    .get_or_create(&RejectLabels { reason })
                    .inc();
            }
        }
    }

    /// Counts what a batch's ingest accepted, skipped as a replay, and metered.
    pub fn ingested(&self, accepted: u64, duplicates: u64, energy_mj: u64) {
        self.accepted.inc_by(accepted);
        self.duplicates.inc_by(duplicates);
        self.energy_mj.inc_by(energy_mj);
    }

    /// Counts one rejected sample.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
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
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    pub(super) reports: Option<super::reports_http::Reports>,
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Self {
        Self {
            metrics,
            ready,
            reports: None,
        }
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let reports = state.reports.clone().map(|r| r.router());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(reports.unwrap_or_default())
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
) -> Result<(), ServiceError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stop)
        .await
        .map_err(ServiceError::ServeAdmin)
}
