//! The plan-watch task against the real scheduler over loopback gRPC: it fills the plan cache
//! from WatchPlans, triggers a reconcile of a job whose plan changed, reports readiness, and
//! after a scheduler restart clears the cache and asks for a full resync (so every job is
//! re-submitted to the scheduler that lost it).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use offpeak_operator::plans::PlanCache;
use offpeak_operator::plans::watch::PlanWatch;
use offpeak_operator::policy::Resolved;
use offpeak_operator::submission;
use offpeak_proto::v1::{PlanPhase, SubmitJobRequest};
use support::fixtures as fx;
use support::scheduler::Scheduler;
use tokio::sync::mpsc;

/// Long enough for anything on loopback, including the watch's reconnect backoff.
const PATIENCE: Duration = Duration::from_secs(20);

fn t0() -> DateTime<Utc> {
    "2024-01-01T00:00:00Z".parse().expect("time")
}

fn hourly() -> Vec<(f64, f64)> {
    let mut rows = vec![(200.0, 300.0); 48];
    rows[3] = (10.0, 100.0);
    rows
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn submit(scheduler: &Scheduler) {
    let mut job = fx::job(1, t0() + chrono::Duration::hours(1));
    job.spec.gpus_per_worker = 8;
    job.spec.work_hours = Some(0.5);
    job.spec.max_delay = Some("12h".parse().expect("duration"));
    let spec = submission::build(&job, &Resolved::default(), t0(), true)
        .expect("valid")
        .spec;
    fx::placement(&scheduler.address)
        .submit_job(SubmitJobRequest { job: Some(spec) })
        .await
        .expect("submitted");
}

#[tokio::test]
async fn plans_flow_into_the_cache_and_a_restart_triggers_a_resync() {
    let scheduler = Scheduler::start(t0(), &hourly()).await;
    let port = scheduler
        .address
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let cache = PlanCache::new();
    let connected = Arc::new(AtomicBool::new(false));
    let (changed_tx, mut changed) = mpsc::channel(16);
    let (resync_tx, mut resync) = mpsc::channel(4);
    let watch = PlanWatch {
        client: fx::placement(&scheduler.address),
        cache: cache.clone(),
        key_prefix: "ml/".into(),
        changed: changed_tx,
        resync: resync_tx,
        connected: connected.clone(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(watch.run(async {
        let _ = stopped.await;
    }));
    within("the first resync", resync.recv())
        .await
        .expect("resync");
    assert!(
        connected.load(Ordering::SeqCst),
        "ready once the stream is open"
    );

    submit(&scheduler).await;
    let job = within("a trigger", changed.recv()).await.expect("trigger");
    assert_eq!(job.name, "bert");
    let plan = cache.get(fx::KEY, fx::UID).expect("the plan is cached");
    assert_eq!(plan.phase, PlanPhase::Planned as i32);
    assert!(cache.get(fx::KEY, "another-uid").is_none());

    // The scheduler restarts on the same port, without the job (no store).
    scheduler.stop().await;
    let restarted = Scheduler::start_on(&format!("127.0.0.1:{port}"), t0(), &hourly()).await;
    within("a resync after the restart", resync.recv())
        .await
        .expect("resync");
    assert!(
        cache.get(fx::KEY, fx::UID).is_none(),
        "the cache forgets what the restarted scheduler does not know"
    );
    assert!(connected.load(Ordering::SeqCst));

    // Re-submitted (as the resync's reconcile does), the plan comes back through the stream.
    submit(&restarted).await;
    within("a trigger after re-submission", changed.recv())
        .await
        .expect("trigger");
    assert!(cache.get(fx::KEY, fx::UID).is_some());

    let _ = stop.send(());
    task.await.expect("watch task");
    assert!(!connected.load(Ordering::SeqCst), "not ready once stopped");
    restarted.stop().await;
}
