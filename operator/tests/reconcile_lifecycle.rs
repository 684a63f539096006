//! A TrainingJob's whole life against the real scheduler (its placement service in process on
//! loopback gRPC, with a manual clock) and a mock Kubernetes API server asserting every call:
//! finalizer, submission with a plan not yet due, gang start (Service and gated pods on the
//! planned nodes, then the gates released), running, suspension when the price rises above the
//! job's cap (graceful deletion, reported once the pods are gone), resumption, success.
//!
//! Prices (EUR/MWh, hourly from T0): 200 everywhere except 10 at 01:00 and 30 at 04:00-06:00;
//! the job (2 workers x 8 GPUs, 2 h of work, cap 150, preemptible) is planned by the scheduler
//! to run 01:00-02:00, be suspended at 02:00 (price above its cap) and resume at 04:00.

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use offpeak_operator::crd::{FINALIZER, GANG_GATE, TrainingJob};
use offpeak_operator::plans::watch::PlanWatch;
use offpeak_proto::v1::PlanPhase;
use serde_json::{Value, json};
use support::api::{Expect, mock_client};
use support::fixtures::{self as fx, uri};
use support::scheduler::Scheduler;
use support::steps::{
    applied_pods, condition, event, plan_reaches, released, status_patch, step, step_keeping,
};
use tokio::sync::mpsc;

fn t0() -> DateTime<Utc> {
    "2024-01-01T00:00:00Z".parse().expect("time")
}

fn hourly() -> Vec<(f64, f64)> {
    let mut rows = vec![(200.0, 300.0); 48];
    rows[1] = (10.0, 100.0);
    rows[4] = (30.0, 100.0);
    rows[5] = (30.0, 100.0);
    rows
}

fn job() -> TrainingJob {
    fx::gang_job(t0() + Duration::hours(1))
}

fn apply_pod(rank: u32, node: &'static str) -> Expect {
    Expect::patch(uri::apply_pod(&format!("bert-worker-{rank}"))).body(move |b| {
        assert_eq!(b["spec"]["schedulingGates"], json!([{"name": GANG_GATE}]));
        let field = &b["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchFields"][0];
        assert_eq!(field["values"], json!([node]), "rank {rank}");
        let env = b["spec"]["containers"][0]["env"].as_array().expect("env");
        let var = |n: &str| env.iter().find(|e| e["name"] == n).map(|e| e["value"].clone());
        assert_eq!(var("RANK"), Some(json!(rank.to_string())));
        assert_eq!(var("WORLD_SIZE"), Some(json!("2")));
        assert_eq!(var("NPROC_PER_NODE"), Some(json!("8")));
        assert_eq!(var("MASTER_ADDR"), Some(json!("bert-worker-0.bert.ml.svc.cluster.local")));
        assert_eq!(var("OFFPEAK_POWER_LIMIT_WATTS"), Some(json!("100")));
        assert_eq!(b["metadata"]["annotations"]["offpeak.dev/power-limit-watts"], "100");
    })
}

fn release(rank: u32) -> Expect {
    Expect::patch(uri::pod(&format!("bert-worker-{rank}"))).body(|b| {
        assert_eq!(
            *b,
            json!({"spec": {"schedulingGates": [{"name": GANG_GATE, "$patch": "delete"}]}})
        );
    })
}

fn delete_pod(rank: u32) -> Expect {
    Expect::delete(uri::pod(&format!("bert-worker-{rank}")))
        .body(|b| assert_eq!(b["gracePeriodSeconds"], 120, "the checkpoint grace period"))
}

/// A gang (re)start from no pods: the headless Service, both workers gated on zone A's nodes,
/// the event `reason`, and the job Starting, reported STARTING, its status also passing `check`.
fn gang_start(
    job: &TrainingJob,
    reason: &'static str,
    check: impl FnOnce(&Value) + Send + 'static,
) -> Vec<Expect> {
    vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(&[])),
        Expect::patch(uri::apply_service()).body(|b| assert_eq!(b["spec"]["clusterIP"], "None")),
        apply_pod(0, "A-v100-0"),
        apply_pod(1, "A-v100-1"),
        event(reason),
        status_patch(job, move |s| {
            assert_eq!(s["phase"], "Starting");
            assert_eq!(s["reportedState"], "STARTING");
            check(s);
        }),
    ]
}

/// A suspension of the running `pods`: both deleted with the checkpoint grace period, the
/// event, and the job Suspended, its status passing `check`.
fn suspension(
    job: &TrainingJob,
    pods: &[Pod],
    check: impl FnOnce(&Value) + Send + 'static,
) -> Vec<Expect> {
    vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(pods)),
        delete_pod(0),
        delete_pod(1),
        event("Suspended"),
        status_patch(job, move |s| {
            assert_eq!(s["phase"], "Suspended");
            check(s);
        }),
    ]
}

/// The suspended job's pods are gone: only now is the scheduler told it is suspended.
fn pods_gone(job: &TrainingJob) -> Vec<Expect> {
    vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(&[])),
        status_patch(job, |s| assert_eq!(s["reportedState"], "SUSPENDED")),
    ]
}

#[tokio::test]
async fn submit_start_suspend_on_a_cap_resume_and_succeed() {
    let scheduler = Scheduler::start(t0(), &hourly()).await;
    let (client, server) = mock_client();
    let ctx = scheduler.context(client);
    let mut job = job();

    // Create: the finalizer first, nothing else.
    let expect = vec![
        Expect::patch(uri::job())
            .body(|b| assert_eq!(b[1]["value"], json!([FINALIZER])))
            .reply(serde_json::to_value(fx::finalized(job.clone())).expect("json")),
    ];
    let (server, result, _) = step(server, &ctx, &job, expect).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
    job = fx::finalized(job);

    // Submitted; the plan is not due yet: status only, no pods.
    let expect = vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(&[])),
        event("Submitted"),
        status_patch(&job, |s| {
            assert_eq!(s["phase"], "Pending");
            assert_eq!(s["submittedGeneration"], 1);
            assert_eq!(s["plan"]["phase"], "PLANNED");
            assert_eq!(s["plan"]["start"], "2024-01-01T01:00:00Z");
            assert_eq!(s["plan"]["zone"], "A");
            assert_eq!(s["plan"]["currency"], "EUR");
            assert_eq!(condition(s, "Submitted")["status"], "True");
        }),
    ];
    let (server, result, _) = step_keeping(server, &ctx, &mut job, expect).await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(std::time::Duration::from_secs(300))
    );

    // The plan stream: the operator learns plan changes from the scheduler.
    let (changed_tx, mut changed_rx) = mpsc::channel(16);
    let (resync_tx, mut resync_rx) = mpsc::channel(4);
    let watch = PlanWatch {
        client: fx::placement(&scheduler.address),
        cache: ctx.plans.clone(),
        key_prefix: "ml/".into(),
        changed: changed_tx,
        resync: resync_tx,
        connected: Arc::new(AtomicBool::new(false)),
    };
    let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel::<()>();
    let watch_task = tokio::spawn(watch.run(async {
        let _ = watch_stopped.await;
    }));
    assert_eq!(resync_rx.recv().await, Some(()), "a resync on connecting");

    // 01:00: the plan says RUN: the Service and both workers, gated, on the planned nodes.
    scheduler.clock.set(t0() + Duration::hours(1));
    let run = plan_reaches(&ctx, PlanPhase::Run).await;
    let trigger = changed_rx.recv().await.expect("a trigger");
    assert_eq!(
        (trigger.name.as_str(), trigger.namespace.as_deref()),
        ("bert", Some("ml"))
    );
    assert_eq!(run.nodes.len(), 2);
    let expect = gang_start(&job, "Starting", |s| assert_eq!(s["plan"]["phase"], "RUN"));
    let (server, result, seen) = step_keeping(server, &ctx, &mut job, expect).await;
    result.expect("reconcile");
    let gated = applied_pods(&seen, "Pending");
    assert_eq!(gated.len(), 2);

    // Both exist: the gates are released together.
    let expect = vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(&gated)),
        release(0),
        release(1),
        status_patch(&job, |s| assert_eq!(s["workers"]["gated"], 2)),
    ];
    let (server, result, _) = step_keeping(server, &ctx, &mut job, expect).await;
    result.expect("reconcile");

    // Running.
    let running = released(&gated, "Running");
    let expect = vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(&running)),
        event("Running"),
        status_patch(&job, |s| {
            assert_eq!(s["phase"], "Running");
            assert_eq!(s["reportedState"], "RUNNING");
            assert_eq!(condition(s, "Running")["status"], "True");
        }),
    ];
    let (server, result, _) = step_keeping(server, &ctx, &mut job, expect).await;
    result.expect("reconcile");

    // Nothing changed: reconciling again reads the pods and writes nothing (idempotent).
    let expect = vec![Expect::get(uri::list_pods()).reply(fx::pod_list(&running))];
    let (server, result, _) = step(server, &ctx, &job, expect).await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(std::time::Duration::from_secs(300))
    );

    // 02:00: the price rises above the cap: the plan suspends the job; the workers are deleted
    // with the checkpoint grace period.
    scheduler.clock.set(t0() + Duration::hours(2));
    let suspend = plan_reaches(&ctx, PlanPhase::Suspend).await;
    assert!(
        suspend.reason.contains("above the job's cap"),
        "{}",
        suspend.reason
    );
    let expect = suspension(&job, &running, |s| {
        assert_eq!(
            s["reportedState"], "RUNNING",
            "not suspended before the pods are gone"
        );
        let c = condition(s, "Suspended");
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("True"), Some("PlanSuspended"))
        );
        assert!(
            c["message"]
                .as_str()
                .is_some_and(|m| m.contains("above the job's cap")),
            "{c}"
        );
    });
    let (server, result, _) = step_keeping(server, &ctx, &mut job, expect).await;
    result.expect("reconcile");

    // The pods are gone: now the scheduler hears the job is suspended.
    let expect = pods_gone(&job);
    let (server, result, _) = step_keeping(server, &ctx, &mut job, expect).await;
    result.expect("reconcile");

    // 04:00: RUN again: resumed with fresh gated pods.
    scheduler.clock.set(t0() + Duration::hours(4));
    plan_reaches(&ctx, PlanPhase::Run).await;
    let expect = gang_start(&job, "Resuming", |_| {});
    let (server, result, seen) = step_keeping(server, &ctx, &mut job, expect).await;
    result.expect("reconcile");
    let pods = applied_pods(&seen, "Pending");

    // Both succeed: the job is complete and the scheduler is told.
    let done = released(&pods, "Succeeded");
    let expect = vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(&done)),
        event("Succeeded"),
        status_patch(&job, |s| {
            assert_eq!(s["phase"], "Succeeded");
            assert_eq!(s["reportedState"], "SUCCEEDED");
            assert_eq!(condition(s, "Complete")["status"], "True");
        }),
    ];
    let (server, result, _) = step_keeping(server, &ctx, &mut job, expect).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
    let plan = scheduler.plan().await;
    assert_eq!(plan.phase, PlanPhase::Done as i32, "{plan:?}");

    // Succeeded is final: no call at all.
    let (_server, result, _) = step(server, &ctx, &job, vec![]).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());

    let _ = stop_watch.send(());
    watch_task.await.expect("watch task");
    scheduler.stop().await;
}

#[tokio::test]
async fn spec_suspend_holds_the_job_down_and_unsuspending_resumes_it() {
    let scheduler = Scheduler::start(t0(), &hourly()).await;
    scheduler.clock.set(t0() + Duration::hours(1));
    let (client, server) = mock_client();
    let ctx = scheduler.context(client);
    let mut job = fx::finalized(job());
    let plan = scheduler.submit(&job).await;
    assert_eq!(plan.phase, PlanPhase::Run as i32, "{plan:?}");
    let pods: Vec<_> = (0..2)
        .map(|rank| {
            let mut pod = fx::pod(&job, &plan, rank, "Running", false);
            pod.spec.as_mut().expect("spec").scheduling_gates = None;
            pod
        })
        .collect();
    job = fx::submitted(
        job,
        offpeak_operator::crd::JobPhase::Running,
        Some("RUNNING"),
    );

    // spec.suspend: the workers are deleted gracefully, whatever the plan says.
    job.spec.suspend = true;
    job.metadata.generation = Some(2);
    let expect = suspension(&job, &pods, |s| {
        assert_eq!(s["submittedGeneration"], 2, "still submitted");
        let c = condition(s, "Suspended");
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("True"), Some("SuspendedBySpec"))
        );
    });
    let (server, result, _) = step_keeping(server, &ctx, &mut job, expect).await;
    result.expect("reconcile");

    let expect = pods_gone(&job);
    let (server, result, _) = step_keeping(server, &ctx, &mut job, expect).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());

    // The job was submitted held: from the next boundary the scheduler keeps no nodes for it.
    scheduler.clock.set(t0() + Duration::minutes(75));
    let held = held_plan(&scheduler).await;
    assert!(held.nodes.is_empty() && held.start_unix_s == 0, "{held:?}");

    // Unsuspended: planned again at once (the cheap hour is not over), the workers come back.
    job.spec.suspend = false;
    job.metadata.generation = Some(3);
    let expect = gang_start(&job, "Resuming", |s| {
        assert_eq!(s["submittedGeneration"], 3)
    });
    let (_server, result, _) = step(server, &ctx, &job, expect).await;
    result.expect("reconcile");
    scheduler.stop().await;
}

/// Waits until the scheduler shows the job PLANNED and held by its user.
async fn held_plan(scheduler: &Scheduler) -> offpeak_proto::v1::JobPlan {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let plan = scheduler.plan().await;
        if plan.phase == PlanPhase::Planned as i32 && plan.reason == "held by the user" {
            return plan;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never held: {plan:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
