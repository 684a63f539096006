//! What every reconcile shares: clients, the plan cache, the policy and namespace stores,
//! settings, the clock, metrics, and each job's failure count for backoff.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use tonic::transport::Channel;

use crate::admin::Metrics;
use crate::crd::EnergyPolicy;
use crate::plans::PlanCache;
use crate::workload::WorkloadSettings;

/// The reporting controller's name on Events.
pub const REPORTER: &str = "offpeak-operator";
/// First retry after a failed reconcile.
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// Longest wait between retries of a failing job (a scheduler outage is retried at least this
/// often).
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The wall clock, injectable.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// State shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub placement: PlacementServiceClient<Channel>,
    pub plans: PlanCache,
    pub policies: Store<EnergyPolicy>,
    pub namespaces: Store<Namespace>,
    pub settings: WorkloadSettings,
    /// Server-side apply field manager.
    pub field_manager: String,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub(crate) recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("field_manager", &self.field_manager)
            .field("settings", &self.settings)
            .field("plans", &self.plans.len())
            .finish_non_exhaustive()
    }
}

/// The parts of a [`Context`] that are not clients or stores.
#[derive(Debug, Clone)]
pub struct ContextConfig {
    pub settings: WorkloadSettings,
    pub field_manager: String,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            settings: WorkloadSettings::default(),
            field_manager: REPORTER.to_string(),
        }
    }
}

impl Context {
    /// A context over the given clients and stores.
    pub fn new(
        client: Client,
        placement: PlacementServiceClient<Channel>,
        policies: Store<EnergyPolicy>,
        namespaces: Store<Namespace>,
        config: ContextConfig,
    ) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            placement,
            plans: PlanCache::new(),
            policies,
            namespaces,
            settings: config.settings,
            field_manager: config.field_manager,
            clock: system_clock(),
            metrics: Arc::new(Metrics::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Shares a metrics registry with the admin port.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Counts a failure of job `key`; returns how long to wait before the next try
    /// (doubling from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`]).
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 2_u32.saturating_pow(n.saturating_sub(1).min(16));
        BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
    }

    /// Forgets job `key`'s failures (it reconciled).
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}
