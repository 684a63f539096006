//! Reconciler scenarios that need no scheduler answer: the finalizer is added first, a
//! scheduler that cannot be reached sets a condition and backs off, an object that cannot run
//! as written gets a condition and no requeue, a plan not yet due patches the status and
//! creates nothing, and the energy the scheduler metered reaches the status. Each asserts the
//! exact Kubernetes API calls (mock API server).

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::runtime::controller::Action;
use offpeak_operator::crd::{FINALIZER, JobPhase};
use offpeak_operator::reconcile::{error_policy, reconcile};
use offpeak_proto::v1::PlanPhase;
use serde_json::{Value, json};
use support::api::{Expect, mock_client};
use support::fixtures::{self as fx, uri};

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("in range")
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn a_new_job_gets_the_finalizer_and_nothing_else() {
    let (client, server) = mock_client();
    let job = fx::job(2, now());
    let mut finalized = fx::finalized(job.clone());
    finalized.metadata.resource_version = Some("101".into());
    let serving = server.serve(vec![
        Expect::patch(uri::job())
            .body(|b| {
                assert_eq!(
                    *b,
                    json!([
                        {"op": "test", "path": "/metadata/finalizers", "value": null},
                        {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
                    ])
                );
            })
            .reply(serde_json::to_value(&finalized).expect("json")),
    ]);
    // No scheduler is needed: nothing is submitted before the finalizer is in place.
    let ctx = fx::context(client, &fx::dead_address(), now());
    let action = reconcile(Arc::new(job), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    serving.finish().await;
}

#[tokio::test]
async fn an_unreachable_scheduler_sets_a_condition_and_backs_off() {
    let (client, server) = mock_client();
    let job = fx::finalized(fx::job(2, now()));
    let serving = server.serve(vec![
        Expect::patch(uri::status())
            .body(|b| {
                let status = &b["status"];
                let submitted = condition(status, "Submitted");
                assert_eq!(submitted["status"], "False");
                assert_eq!(submitted["reason"], "SchedulerUnavailable");
                assert!(
                    submitted["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("the scheduler could not be reached")),
                    "{submitted}"
                );
                assert_eq!(condition(status, "Valid")["status"], "True");
                assert_eq!(status["effectiveCaps"]["priceCapPerMWh"], 150.0);
                assert!(status.get("submittedGeneration").is_none());
            })
            .reply_with(fx::with_applied_status(&job)),
    ]);
    let ctx = fx::context(client, &fx::dead_address(), now());
    let job = Arc::new(job);
    let err = reconcile(job.clone(), ctx.clone())
        .await
        .expect_err("scheduler down");
    assert_eq!(err.kind(), "submit_job");
    assert!(
        err.to_string()
            .contains("submitting ml/bert to the scheduler"),
        "{err}"
    );
    // Retries back off per job: 5 s, 10 s, 20 s ... up to 5 min.
    let waits: Vec<Action> = (0..8)
        .map(|_| error_policy(job.clone(), &err, ctx.clone()))
        .collect();
    let secs = [5, 10, 20, 40, 80, 160, 300, 300];
    let expected: Vec<Action> = secs
        .iter()
        .map(|s| Action::requeue(Duration::from_secs(*s)))
        .collect();
    assert_eq!(waits, expected);
    assert_eq!(ctx.metrics.reconciles("submit_job"), 1);
    serving.finish().await;
}

#[tokio::test]
async fn a_deadline_already_past_is_a_condition_not_a_crash_loop() {
    let (client, server) = mock_client();
    let mut job = fx::finalized(fx::job(2, now()));
    job.spec.max_delay = None;
    job.spec.deadline = Some(now() - chrono::Duration::minutes(5));
    let serving = server.serve(vec![
        Expect::post(uri::events()).body(|b| {
            assert_eq!(b["reason"], "Invalid");
            assert_eq!(b["type"], "Warning");
            assert!(
                b["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("already past")),
                "{b}"
            );
        }),
        Expect::patch(uri::status())
            .body(|b| {
                let status = &b["status"];
                assert_eq!(status["phase"], "Invalid");
                let valid = condition(status, "Valid");
                assert_eq!(
                    (valid["status"].as_str(), valid["reason"].as_str()),
                    (Some("False"), Some("DeadlineInPast"))
                );
            })
            .reply_with(fx::with_applied_status(&job)),
    ]);
    let ctx = fx::context(client, &fx::dead_address(), now());
    let action = reconcile(Arc::new(job), ctx.clone())
        .await
        .expect("no error: nothing to retry");
    assert_eq!(
        action,
        Action::await_change(),
        "no requeue until the object changes"
    );
    serving.finish().await;
}

#[tokio::test]
async fn a_plan_not_yet_due_patches_the_status_and_creates_nothing() {
    let (client, server) = mock_client();
    let job = fx::submitted(fx::finalized(fx::job(2, now())), JobPhase::Pending, None);
    let start = now().timestamp() + 3 * 3600;
    let mut plan = fx::plan(PlanPhase::Planned, start, 2);
    plan.reason = "waiting for a cheaper window".into();
    plan.signals_degraded = true;
    let serving = server.serve(vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(&[])),
        Expect::patch(uri::status())
            .body(move |b| {
                let status = &b["status"];
                assert_eq!(status["phase"], "Pending");
                assert_eq!(status["plan"]["phase"], "PLANNED");
                assert_eq!(status["plan"]["start"], "2027-01-15T11:00:00Z");
                assert_eq!(status["plan"]["zone"], "DE-LU");
                assert_eq!(status["plan"]["estimatedCost"], 41.23);
                assert_eq!(status["plan"]["powerLimitWatts"], 250);
                assert_eq!(status["signalsDegraded"], true);
                let submitted = condition(status, "Submitted");
                assert_eq!(submitted["status"], "True");
                assert_eq!(submitted["message"], "waiting for a cheaper window");
                assert_eq!(condition(status, "Running")["status"], "False");
            })
            .reply_with(fx::with_applied_status(&job)),
    ]);
    let ctx = fx::context(client, &fx::dead_address(), now());
    ctx.plans.upsert(plan);
    let action = reconcile(Arc::new(job), ctx.clone())
        .await
        .expect("reconcile");
    // Woken at the planned start at the latest (the plan stream triggers it too).
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    serving.finish().await;
}

#[tokio::test]
async fn the_energy_the_scheduler_metered_is_in_the_status() {
    let (client, server) = mock_client();
    let job = fx::submitted(
        fx::finalized(fx::job(2, now())),
        JobPhase::Running,
        Some("RUNNING"),
    );
    let mut plan = fx::plan(PlanPhase::Run, now().timestamp() - 600, 3);
    plan.metered_it_kwh = 12.34567;
    plan.metered_cost = 1.2345;
    plan.metered_carbon_kg = 3.45678;
    let pods: Vec<_> = (0..2)
        .map(|rank| fx::pod(&job, &plan, rank, "Running", false))
        .collect();
    let serving = server.serve(vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(&pods)),
        Expect::patch(uri::status())
            .body(move |b| {
                let status = &b["status"];
                assert_eq!(status["phase"], "Running");
                assert_eq!(
                    status["metered"],
                    json!({"energyKwh": 12.346, "cost": 1.23, "carbonKg": 3.457})
                );
            })
            .reply_with(fx::with_applied_status(&job)),
    ]);
    let ctx = fx::context(client, &fx::dead_address(), now());
    ctx.plans.upsert(plan);
    reconcile(Arc::new(job), ctx.clone())
        .await
        .expect("reconcile");
    serving.finish().await;
}
