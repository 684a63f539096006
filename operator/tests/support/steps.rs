//! Helpers for multi-step scenarios: run one reconcile against one step's expectations, carry
//! the status and the applied pods over to the next step, wait for a plan to reach the cache;
//! and the expectations most steps share (a status patch, an event).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::runtime::controller::Action;
use offpeak_operator::crd::{TrainingJob, TrainingJobStatus};
use offpeak_operator::reconcile::{Context, Error, reconcile};
use offpeak_proto::v1::{JobPlan, PlanPhase};
use serde_json::Value;

use super::api::{ApiServer, Expect};
use super::fixtures::{KEY, UID, uri, with_applied_status};

/// Longest wait for a plan change to travel from the scheduler to the cache.
const PLAN_PATIENCE: Duration = Duration::from_secs(10);

/// The condition of type `type_` in a status as JSON.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// A status patch of `job` whose status passes `check`, answered as the API server would.
pub fn status_patch(job: &TrainingJob, check: impl FnOnce(&Value) + Send + 'static) -> Expect {
    Expect::patch(uri::status())
        .body(move |b| check(&b["status"]))
        .reply_with(with_applied_status(job))
}

/// An event with `reason`.
pub fn event(reason: &'static str) -> Expect {
    Expect::post(uri::events()).body(move |b| assert_eq!(b["reason"], reason, "{b}"))
}

/// Runs one reconcile of `job` while `server` serves `expectations`; returns the server for
/// the next step, the reconcile's result and the request bodies.
pub async fn step(
    server: ApiServer,
    ctx: &Arc<Context>,
    job: &TrainingJob,
    expectations: Vec<Expect>,
) -> (ApiServer, Result<Action, Error>, Vec<Value>) {
    let serving = server.serve(expectations);
    let result = tokio::time::timeout(
        super::api::VERIFY_TIMEOUT,
        reconcile(Arc::new(job.clone()), ctx.clone()),
    )
    .await
    .expect("reconcile finished");
    let (server, seen) = serving.finish().await;
    (server, result, seen)
}

/// [`step`], then the status it applied carried over to `job` (see [`keep_status`]).
pub async fn step_keeping(
    server: ApiServer,
    ctx: &Arc<Context>,
    job: &mut TrainingJob,
    expectations: Vec<Expect>,
) -> (ApiServer, Result<Action, Error>, Vec<Value>) {
    let (server, result, seen) = step(server, ctx, job, expectations).await;
    keep_status(job, &seen);
    (server, result, seen)
}

/// The status the step applied, if it patched one.
pub fn applied_status(seen: &[Value]) -> Option<TrainingJobStatus> {
    seen.iter()
        .rev()
        .find(|b| b["kind"] == "TrainingJob" && b.get("status").is_some())
        .map(|b| serde_json::from_value(b["status"].clone()).expect("a TrainingJob status"))
}

/// Carries the step's status over to `job` (as the API server would have stored it).
pub fn keep_status(job: &mut TrainingJob, seen: &[Value]) {
    if let Some(status) = applied_status(seen) {
        job.status = Some(status);
    }
}

/// The pods the step applied, as the API server would list them, in pod phase `phase`.
pub fn applied_pods(seen: &[Value], phase: &str) -> Vec<Pod> {
    seen.iter()
        .filter(|b| b["kind"] == "Pod")
        .map(|b| {
            let mut pod: Pod = serde_json::from_value(b.clone()).expect("a Pod");
            pod.status = Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            pod
        })
        .collect()
}

/// `pods` released from their gates and in pod phase `phase`.
pub fn released(pods: &[Pod], phase: &str) -> Vec<Pod> {
    pods.iter()
        .cloned()
        .map(|mut p| {
            p.spec.as_mut().expect("spec").scheduling_gates = None;
            p.status = Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            p
        })
        .collect()
}

/// Waits until the context's plan cache holds the job's plan in `phase`.
pub async fn plan_reaches(ctx: &Context, phase: PlanPhase) -> JobPlan {
    let deadline = tokio::time::Instant::now() + PLAN_PATIENCE;
    loop {
        if let Some(plan) = ctx.plans.get(KEY, UID).filter(|p| p.phase == phase as i32) {
            return plan;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plan never reached {phase:?}; cache has {:?}",
            ctx.plans.get(KEY, UID)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
