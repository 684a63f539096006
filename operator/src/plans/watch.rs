//! The plan-watch task: holds a `WatchPlans` stream open to the scheduler, stores every plan in
//! the [`PlanCache`] and sends the job's reference to the controller when its plan changed.
//!
//! On every (re)connection the cache is cleared and a full resync is requested: a restarted
//! scheduler knows only the jobs re-submitted to it, and reconciling every job re-submits the
//! ones it lost (submission is idempotent). Reconnects back off exponentially.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use offpeak_proto::v1::WatchPlansRequest;
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::{PlanCache, object_ref};
use crate::crd::TrainingJob;

/// First wait before reconnecting to the scheduler.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between reconnects: a restarted scheduler is picked up within this.
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Where the watch task delivers what it learns.
#[derive(Debug, Clone)]
pub struct PlanWatch {
    pub client: PlacementServiceClient<Channel>,
    pub cache: PlanCache,
    /// Only jobs whose key starts with this (`namespace/` when one namespace is watched).
    pub key_prefix: String,
    /// A job whose plan changed.
    pub changed: mpsc::Sender<ObjectRef<TrainingJob>>,
    /// Every job should be reconciled (after a reconnection).
    pub resync: mpsc::Sender<()>,
    /// Whether the stream is open now (for readiness).
    pub connected: Arc<AtomicBool>,
}

impl PlanWatch {
    /// Runs until `shutdown` completes or the controller stops listening.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let span = info_span!("plan_watch", prefix = %self.key_prefix);
        tokio::select! {
            () = shutdown => {}
            () = self.watch_forever().instrument(span) => {}
        }
        self.connected.store(false, Ordering::SeqCst);
    }

    async fn watch_forever(&mut self) {
        let mut wait = RECONNECT_MIN;
        loop {
            match self.watch_once().await {
                Ok(Flow::ReceiverGone) => return,
                Ok(Flow::StreamEnded { delivered }) => {
                    info!(delivered, "the scheduler closed the plan stream");
                    if delivered > 0 {
                        wait = RECONNECT_MIN;
                    }
                }
                Err(status) => {
                    warn!(code = ?status.code(), message = status.message(), "plan stream failed")
                }
            }
            self.connected.store(false, Ordering::SeqCst);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RECONNECT_MAX);
        }
    }

    async fn watch_once(&mut self) -> Result<Flow, tonic::Status> {
        let request = WatchPlansRequest {
            key_prefix: self.key_prefix.clone(),
        };
        let mut stream = self.client.watch_plans(request).await?.into_inner();
        self.connected.store(true, Ordering::SeqCst);
        self.cache.clear();
        if self.resync.send(()).await.is_err() {
            return Ok(Flow::ReceiverGone);
        }
        info!("plan stream open");
        let mut delivered = 0_u64;
        while let Some(plan) = stream.message().await? {
            delivered += 1;
            let Some(obj) = object_ref(&plan.key) else {
                warn!(key = %plan.key, "plan with a key that names no namespace/name; ignored");
                continue;
            };
            debug!(key = %plan.key, revision = plan.revision, phase = plan.phase, "plan");
            if self.cache.upsert(plan) && self.changed.send(obj).await.is_err() {
                return Ok(Flow::ReceiverGone);
            }
        }
        Ok(Flow::StreamEnded { delivered })
    }
}

enum Flow {
    StreamEnded { delivered: u64 },
    ReceiverGone,
}
