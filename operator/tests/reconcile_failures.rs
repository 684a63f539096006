//! Reconciler scenarios that end a job, against the real scheduler on loopback gRPC and a mock
//! Kubernetes API server asserting every call: a worker fails (the survivors are stopped
//! gracefully, the job fails, the scheduler is told), the object is deleted (finalizer: the
//! scheduler forgets the job, pods and Service go, the finalizer is removed), and jobs the
//! scheduler refuses (unknown accelerator, more GPUs per worker than any node has) get a
//! condition and no requeue.

mod support;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus};
use kube::runtime::controller::Action;
use offpeak_operator::crd::{FINALIZER, JobPhase, TrainingJob};
use offpeak_proto::v1::PlanPhase;
use serde_json::json;
use support::api::{Expect, mock_client};
use support::fixtures::{self as fx, uri};
use support::scheduler::Scheduler;
use support::steps::{condition, keep_status, released, status_patch, step};

fn t0() -> DateTime<Utc> {
    "2024-01-01T00:00:00Z".parse().expect("time")
}

/// Cheapest in the first hours: a submitted job runs at once.
fn cheap() -> Vec<(f64, f64)> {
    let mut rows = vec![(60.0, 200.0); 48];
    rows[..3].fill((5.0, 50.0));
    rows
}

fn job() -> TrainingJob {
    fx::finalized(fx::gang_job(t0() + chrono::Duration::hours(1)))
}

async fn plan_phase(scheduler: &Scheduler) -> PlanPhase {
    PlanPhase::try_from(scheduler.plan().await.phase).expect("phase")
}

/// The job submitted and running (as the API server holds it after earlier reconciles).
async fn running_job(scheduler: &Scheduler) -> TrainingJob {
    let job = job();
    let plan = scheduler.submit(&job).await;
    assert_eq!(plan.phase, PlanPhase::Run as i32, "{plan:?}");
    fx::submitted(job, JobPhase::Running, Some("RUNNING"))
}

#[tokio::test]
async fn a_failed_worker_fails_the_job_and_stops_the_others_gracefully() {
    let scheduler = Scheduler::start(t0(), &cheap()).await;
    let (client, server) = mock_client();
    let ctx = scheduler.context(client);
    let mut job = running_job(&scheduler).await;
    let plan = fx::plan(PlanPhase::Run, t0().timestamp(), 1);
    let mut pods = released(
        &[
            fx::pod(&job, &plan, 0, "Running", false),
            fx::pod(&job, &plan, 1, "Failed", false),
        ],
        "Running",
    );
    pods[1].status.as_mut().expect("status").phase = Some("Failed".into());
    pods[1].status.as_mut().expect("status").container_statuses = Some(vec![ContainerStatus {
        name: "trainer".into(),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 137,
                reason: Some("OOMKilled".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    let expect = vec![
        Expect::get(uri::list_pods()).reply(fx::pod_list(&pods)),
        // The survivor gets its grace period to checkpoint; the failed pod stays for its logs.
        Expect::delete(uri::pod("bert-worker-0")).body(|b| assert_eq!(b["gracePeriodSeconds"], 120)),
        Expect::post(uri::events()).body(|b| {
            assert_eq!((b["reason"].as_str(), b["type"].as_str()), (Some("Failed"), Some("Warning")));
            assert_eq!(
                b["note"],
                "worker 1 (bert-worker-1) failed: OOMKilled (exit code 137); stopping the other 1 workers"
            );
        }),
        status_patch(&job, |s| {
            assert_eq!(s["phase"], "Failed");
            assert_eq!(s["reportedState"], "FAILED");
            let c = condition(s, "Failed");
            assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("True"), Some("WorkerFailed")));
            assert_eq!(s["workers"]["failed"], 1);
        }),
    ];
    // The cache is empty (as after an operator restart): the job is re-submitted first.
    let (server, result, seen) = step(server, &ctx, &job, expect).await;
    assert_eq!(
        result.expect("reconcile"),
        Action::await_change(),
        "no retry"
    );
    keep_status(&mut job, &seen);
    assert_eq!(
        plan_phase(&scheduler).await,
        PlanPhase::Done,
        "the scheduler was told"
    );

    // Failed is final: no call at all, no requeue.
    let (_server, result, _) = step(server, &ctx, &job, vec![]).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
    scheduler.stop().await;
}

#[tokio::test]
async fn deleting_a_job_cancels_it_and_removes_pods_service_and_finalizer() {
    let scheduler = Scheduler::start(t0(), &cheap()).await;
    let (client, server) = mock_client();
    let ctx = scheduler.context(client);
    let mut job = running_job(&scheduler).await;
    job.metadata.deletion_timestamp = Some(fx::time(t0().timestamp() + 60));
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bert", "namespace": "ml",
                     "labels": {"offpeak.dev/job": "bert", "offpeak.dev/job-uid": fx::UID}},
        "spec": {"clusterIP": "None"},
    });
    let mut without_finalizer = serde_json::to_value(&job).expect("json");
    without_finalizer["metadata"]["finalizers"] = json!([]);
    let expect = vec![
        Expect::delete(format!(
            "/api/v1/namespaces/ml/pods?&labelSelector=offpeak.dev%2Fjob%3Dbert%2Coffpeak.dev%2Fjob-uid%3D{}",
            fx::UID
        ))
        .body(|b| assert_eq!(b["gracePeriodSeconds"], 120))
        .reply(fx::pod_list(&[])),
        Expect::get(uri::service()).reply(service.clone()),
        Expect::delete(format!("{}?", uri::service())).reply(service),
        Expect::patch(uri::job())
            .body(|b| {
                assert_eq!(
                    *b,
                    json!([
                        {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                        {"op": "remove", "path": "/metadata/finalizers/0"},
                    ])
                );
            })
            .reply(without_finalizer),
    ];
    let (_server, result, _) = step(server, &ctx, &job, expect).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
    assert_eq!(
        plan_phase(&scheduler).await,
        PlanPhase::Done,
        "cancelled with the scheduler"
    );
    scheduler.stop().await;
}

/// A change that makes a job unacceptable to the scheduler.
type Edit = fn(&mut TrainingJob);

#[tokio::test]
async fn jobs_the_scheduler_refuses_get_a_condition_and_no_requeue() {
    let scheduler = Scheduler::start(t0(), &cheap()).await;
    let cases: [(&str, Edit, &str); 3] = [
        (
            "unknown accelerator",
            |j| j.spec.accelerator = Some("H200".into()),
            "unknown accelerator `H200`",
        ),
        (
            "more GPUs than any node",
            |j| j.spec.gpus_per_worker = 16,
            "16 is more than any node has",
        ),
        (
            // The schema refuses it; an object that got past it is refused by the scheduler.
            "negative carbon cap",
            |j| j.spec.carbon_cap_g_per_kwh = Some(-5.0),
            "`carbon_cap_g_per_kwh`: -5 must be a number, zero or more",
        ),
    ];
    for (what, edit, message) in cases {
        let (client, server) = mock_client();
        let ctx = scheduler.context(client);
        let mut job = job();
        edit(&mut job);
        let expect = vec![
            Expect::post(uri::events()).body(move |b| {
                assert_eq!(
                    (b["reason"].as_str(), b["type"].as_str()),
                    (Some("Rejected"), Some("Warning")),
                    "{what}"
                );
                assert!(
                    b["note"].as_str().is_some_and(|n| n.contains(message)),
                    "{what}: {b}"
                );
            }),
            status_patch(&job, move |s| {
                assert_eq!(s["phase"], "Rejected", "{what}");
                let c = condition(s, "Submitted");
                assert_eq!(
                    (c["status"].as_str(), c["reason"].as_str()),
                    (Some("False"), Some("Refused"))
                );
                assert!(
                    c["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("the scheduler refused the job: ")
                            && m.contains(message)),
                    "{what}: {c}"
                );
            }),
        ];
        let (server, result, seen) = step(server, &ctx, &job, expect).await;
        assert_eq!(
            result.expect("reconcile"),
            Action::await_change(),
            "{what}: no requeue"
        );
        keep_status(&mut job, &seen);
        // Reconciled again unchanged (a resync): refused again, but nothing is written.
        let (_server, result, _) = step(server, &ctx, &job, vec![]).await;
        assert_eq!(result.expect("reconcile"), Action::await_change(), "{what}");
    }
    scheduler.stop().await;
}
