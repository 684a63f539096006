use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, PodSchedulingGate, PodSpec,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use offpeak_proto::v1::{NodeAssignment, PlanPhase};

use super::*;
use crate::crd::{Checkpoint, CheckpointSignal, GANG_GATE, TrainingJobSpec};

const NOW: i64 = 1_800_000_000;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("in range")
}

fn job(workers: u32) -> TrainingJob {
    let mut spec = TrainingJobSpec::new("img", workers, 4, 8.0);
    spec.preemptible = true;
    spec.checkpoint = Some(Checkpoint {
        signal: CheckpointSignal::SIGTERM,
        grace_period_seconds: 120,
    });
    let mut job = TrainingJob::new("bert", spec);
    job.metadata.namespace = Some("ml".into());
    job.metadata.uid = Some("uid-1".into());
    job.metadata.creation_timestamp = Some(Time(Timestamp::from_second(NOW - 3600).expect("ok")));
    job
}

fn plan(phase: PlanPhase) -> JobPlan {
    JobPlan {
        key: "ml/bert".into(),
        uid: "uid-1".into(),
        phase: phase as i32,
        start_unix_s: NOW,
        end_unix_s: NOW + 8 * 3600,
        zone: "DE-LU".into(),
        nodes: vec![
            NodeAssignment {
                node: "gpu-a".into(),
                gpus: 8,
            },
            NodeAssignment {
                node: "gpu-b".into(),
                gpus: 4,
            },
        ],
        power_limit_watts: 250,
        revision: 3,
        ..Default::default()
    }
}

/// A worker pod as the API server would return it.
fn pod(rank: u32, phase: &str, gated: bool) -> Pod {
    let mut p = crate::workload::worker_pod(
        &job(3),
        &plan(PlanPhase::Run),
        rank,
        "gpu-a",
        &WorkloadSettings::default(),
    );
    let spec: &mut PodSpec = p.spec.as_mut().expect("spec");
    spec.scheduling_gates = gated.then(|| {
        vec![PodSchedulingGate {
            name: GANG_GATE.into(),
        }]
    });
    p.status = Some(PodStatus {
        phase: Some(phase.into()),
        ..Default::default()
    });
    p
}

fn failed(rank: u32, reason: &str, code: i32) -> Pod {
    let mut p = pod(rank, "Failed", false);
    p.status.as_mut().expect("status").container_statuses = Some(vec![ContainerStatus {
        name: "trainer".into(),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(reason.into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    p
}

fn terminating(mut p: Pod) -> Pod {
    p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).expect("ok")));
    p
}

fn run(
    job: &TrainingJob,
    plan: Option<&JobPlan>,
    pods: &[Pod],
    previous: Option<JobPhase>,
) -> Outcome {
    let settings = WorkloadSettings::default();
    decide(
        Input {
            job,
            plan,
            pods,
            now: now(),
            settings: &settings,
        },
        previous,
    )
}

fn names(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match s {
            Step::ApplyService(svc) => format!("service {}", svc.name_any()),
            Step::ApplyPod(p) => format!("apply {}", p.name_any()),
            Step::ReleasePod(n) => format!("release {n}"),
            Step::DeletePod {
                name,
                grace_seconds,
            } => format!("delete {name} {grace_seconds}s"),
        })
        .collect()
}

#[test]
fn a_plan_not_yet_due_creates_nothing_and_wakes_at_the_start() {
    let mut p = plan(PlanPhase::Planned);
    p.start_unix_s = NOW + 120;
    p.reason = "waiting for a cheaper window".into();
    let out = run(&job(3), Some(&p), &[], None);
    assert!(out.steps.is_empty());
    assert_eq!(out.detail.phase, JobPhase::Pending);
    assert_eq!(out.detail.message, "waiting for a cheaper window");
    assert_eq!(out.requeue, Some(Duration::from_secs(120)));
    assert_eq!(out.report, None);
    // A start far away is looked at again after RESYNC anyway.
    p.start_unix_s = NOW + 86_400;
    assert_eq!(run(&job(3), Some(&p), &[], None).requeue, Some(RESYNC));
}

#[test]
fn run_creates_the_service_and_all_workers_gated_on_the_planned_nodes() {
    let out = run(
        &job(3),
        Some(&plan(PlanPhase::Run)),
        &[],
        Some(JobPhase::Pending),
    );
    assert_eq!(
        names(&out.steps),
        [
            "service bert",
            "apply bert-worker-0",
            "apply bert-worker-1",
            "apply bert-worker-2"
        ]
    );
    let nodes: Vec<String> = out
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::ApplyPod(p) => {
                let spec = p.spec.as_ref()?;
                assert_eq!(spec.scheduling_gates.as_ref()?[0].name, GANG_GATE);
                let term = &spec
                    .affinity
                    .as_ref()?
                    .node_affinity
                    .as_ref()?
                    .required_during_scheduling_ignored_during_execution
                    .as_ref()?
                    .node_selector_terms[0];
                term.match_fields.as_ref()?[0]
                    .values
                    .as_ref()?
                    .first()
                    .cloned()
            }
            _ => None,
        })
        .collect();
    assert_eq!(nodes, ["gpu-a", "gpu-a", "gpu-b"]);
    assert_eq!(out.detail.phase, JobPhase::Starting);
    assert_eq!(out.detail.reason, "CreatingWorkers");
    assert_eq!(out.report, Some(JobState::Starting));
}

#[test]
fn gates_are_released_only_when_every_worker_exists() {
    let p = plan(PlanPhase::Run);
    let partial = [pod(0, "Pending", true), pod(2, "Pending", true)];
    let out = run(&job(3), Some(&p), &partial, Some(JobPhase::Starting));
    assert_eq!(
        names(&out.steps),
        ["service bert", "apply bert-worker-1"],
        "create the missing one, release none"
    );
    let all = [
        pod(0, "Pending", true),
        pod(1, "Pending", true),
        pod(2, "Pending", true),
    ];
    let out = run(&job(3), Some(&p), &all, Some(JobPhase::Starting));
    assert_eq!(
        names(&out.steps),
        [
            "release bert-worker-0",
            "release bert-worker-1",
            "release bert-worker-2"
        ]
    );
    assert_eq!(out.detail.reason, "ReleasingWorkers");
}

#[test]
fn released_workers_become_running_then_succeeded() {
    let p = plan(PlanPhase::Run);
    let pending = [
        pod(0, "Running", false),
        pod(1, "Pending", false),
        pod(2, "Running", false),
    ];
    let out = run(&job(3), Some(&p), &pending, Some(JobPhase::Starting));
    assert!(out.steps.is_empty());
    assert_eq!(
        (out.detail.phase, out.detail.reason),
        (JobPhase::Starting, "WaitingForWorkers")
    );
    let running = [
        pod(0, "Running", false),
        pod(1, "Running", false),
        pod(2, "Succeeded", false),
    ];
    let out = run(&job(3), Some(&p), &running, Some(JobPhase::Starting));
    assert_eq!(out.detail.phase, JobPhase::Running);
    assert_eq!(out.report, Some(JobState::Running));
    assert_eq!(out.workers.running, 2);
    let done = [
        pod(0, "Succeeded", false),
        pod(1, "Succeeded", false),
        pod(2, "Succeeded", false),
    ];
    // Success stands even if the plan has moved on meanwhile.
    let out = run(
        &job(3),
        Some(&plan(PlanPhase::Suspend)),
        &done,
        Some(JobPhase::Running),
    );
    assert!(out.steps.is_empty());
    assert_eq!(out.detail.phase, JobPhase::Succeeded);
    assert_eq!(out.report, Some(JobState::Succeeded));
    assert_eq!(out.requeue, None);
}

#[test]
fn a_failed_worker_fails_the_job_and_stops_the_survivors_gracefully() {
    let pods = [
        pod(0, "Running", false),
        failed(1, "OOMKilled", 137),
        pod(2, "Running", false),
    ];
    let out = run(
        &job(3),
        Some(&plan(PlanPhase::Run)),
        &pods,
        Some(JobPhase::Running),
    );
    assert_eq!(
        names(&out.steps),
        ["delete bert-worker-0 120s", "delete bert-worker-2 120s"]
    );
    assert_eq!(out.detail.phase, JobPhase::Failed);
    assert_eq!(out.detail.reason, "WorkerFailed");
    assert_eq!(
        out.detail.message,
        "worker 1 (bert-worker-1) failed: OOMKilled (exit code 137); stopping the other 2 workers"
    );
    assert_eq!(out.report, Some(JobState::Failed));
    assert_eq!(out.requeue, None, "no retry storm");
}

#[test]
fn a_worker_lost_after_release_fails_the_job() {
    let pods = [pod(0, "Running", false), pod(2, "Running", false)];
    let out = run(
        &job(3),
        Some(&plan(PlanPhase::Run)),
        &pods,
        Some(JobPhase::Running),
    );
    assert_eq!(out.detail.reason, "WorkerLost");
    assert!(
        out.detail
            .message
            .starts_with("worker 1 (bert-worker-1) disappeared"),
        "{}",
        out.detail.message
    );
    assert_eq!(
        names(&out.steps),
        ["delete bert-worker-0 120s", "delete bert-worker-2 120s"]
    );
}

#[test]
fn suspend_deletes_every_pod_with_the_grace_period_and_reports_once_gone() {
    let mut p = plan(PlanPhase::Suspend);
    p.reason = "price 182.40 above the cap 150.00".into();
    let pods = [
        pod(0, "Running", false),
        pod(1, "Running", false),
        pod(2, "Succeeded", false),
    ];
    let out = run(&job(3), Some(&p), &pods, Some(JobPhase::Running));
    assert_eq!(
        names(&out.steps),
        [
            "delete bert-worker-0 120s",
            "delete bert-worker-1 120s",
            "delete bert-worker-2 120s"
        ]
    );
    assert_eq!(
        (out.detail.phase, out.detail.reason),
        (JobPhase::Suspended, "PlanSuspended")
    );
    assert_eq!(out.detail.message, "price 182.40 above the cap 150.00");
    assert_eq!(
        out.report, None,
        "not suspended until the checkpoint is written"
    );
    // While they terminate nothing is deleted twice.
    let going: Vec<Pod> = pods.iter().cloned().map(terminating).collect();
    let out = run(&job(3), Some(&p), &going, Some(JobPhase::Suspended));
    assert!(out.steps.is_empty());
    let out = run(&job(3), Some(&p), &[], Some(JobPhase::Suspended));
    assert_eq!(out.report, Some(JobState::Suspended));
    assert_eq!(out.requeue, None);
}

#[test]
fn terminating_pods_killed_by_a_suspend_are_not_a_failure() {
    let pods = [
        terminating(failed(0, "Error", 143)),
        terminating(pod(1, "Running", false)),
    ];
    let out = run(
        &job(2),
        Some(&plan(PlanPhase::Suspend)),
        &pods,
        Some(JobPhase::Suspended),
    );
    assert_eq!(out.detail.phase, JobPhase::Suspended);
}

#[test]
fn resume_waits_for_old_pods_then_recreates() {
    let p = plan(PlanPhase::Run);
    let going = [terminating(pod(0, "Running", false))];
    let out = run(&job(3), Some(&p), &going, Some(JobPhase::Suspended));
    assert!(out.steps.is_empty());
    assert_eq!(out.detail.reason, "WaitingForOldPods");
    let out = run(&job(3), Some(&p), &[], Some(JobPhase::Suspended));
    assert_eq!(out.detail.reason, "Resuming");
    assert_eq!(out.steps.len(), 4);
    assert!(
        out.detail
            .message
            .starts_with("resuming: created 3 gated workers on gpu-a, gpu-b"),
        "{}",
        out.detail.message
    );
}

#[test]
fn a_planned_window_after_a_run_is_suspended_not_pending() {
    let mut p = plan(PlanPhase::Planned);
    p.start_unix_s = NOW + 3600;
    let out = run(&job(3), Some(&p), &[], Some(JobPhase::Suspended));
    assert_eq!(out.detail.phase, JobPhase::Suspended);
    // Pods left over when the plan moves the run are stopped.
    let out = run(
        &job(3),
        Some(&p),
        &[pod(0, "Running", false)],
        Some(JobPhase::Running),
    );
    assert_eq!(names(&out.steps), ["delete bert-worker-0 120s"]);
}

#[test]
fn spec_suspend_stops_the_job_whatever_the_plan() {
    let mut j = job(3);
    j.spec.suspend = true;
    let out = run(
        &j,
        Some(&plan(PlanPhase::Run)),
        &[pod(0, "Running", false)],
        Some(JobPhase::Running),
    );
    assert_eq!(names(&out.steps), ["delete bert-worker-0 120s"]);
    assert_eq!(
        (out.detail.phase, out.detail.reason),
        (JobPhase::Suspended, "SuspendedBySpec")
    );
}

#[test]
fn rejection_is_a_phase_with_the_schedulers_reason_and_no_requeue() {
    let mut p = plan(PlanPhase::Rejected);
    p.reason = "no node has 16 accelerators of type H100".into();
    let out = run(&job(3), Some(&p), &[], None);
    assert_eq!(out.detail.phase, JobPhase::Rejected);
    assert_eq!(
        out.detail.message,
        "no node has 16 accelerators of type H100"
    );
    assert!(out.steps.is_empty());
    assert_eq!(out.requeue, None);
}

#[test]
fn a_plan_whose_nodes_cannot_hold_the_workers_creates_nothing() {
    let mut p = plan(PlanPhase::Run);
    p.nodes.truncate(1);
    p.nodes[0].gpus = 4;
    let out = run(&job(3), Some(&p), &[], None);
    assert!(out.steps.is_empty());
    assert_eq!(out.detail.reason, "PlanDoesNotFit");
    assert!(
        out.detail.message.contains("cannot host 3 workers"),
        "{}",
        out.detail.message
    );
}

#[test]
fn no_plan_touches_nothing() {
    let pods = [pod(0, "Running", false)];
    let out = run(&job(1), None, &pods, Some(JobPhase::Running));
    assert!(out.steps.is_empty());
    assert_eq!(out.detail.phase, JobPhase::Running);
}

#[test]
fn stray_pods_beyond_the_worker_count_are_removed_before_a_run() {
    let pods = [pod(0, "Pending", true), pod(5, "Pending", true)];
    let out = run(
        &job(2),
        Some(&plan(PlanPhase::Run)),
        &pods,
        Some(JobPhase::Starting),
    );
    assert_eq!(names(&out.steps), ["delete bert-worker-5 120s"]);
}
