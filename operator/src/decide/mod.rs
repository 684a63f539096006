//! The reconciler's decision as a pure function: from the job, its current plan, its pods and
//! the time, what to create, release or delete, and which phase the job is in. The reconciler
//! only carries the steps out, so every scenario is unit-tested here without an API server.
//!
//! Layout: here [`decide`] and its types; [`observe`] reads the pods by rank; `rules` holds
//! the rules below; `tests`.
//!
//! Rules, in order:
//! 1. all workers succeeded: Succeeded (whatever the plan says);
//! 2. a worker failed, or vanished after the gang was released: Failed. A distributed job with
//!    a fixed world size cannot go on with a rank missing, so the surviving workers are deleted
//!    with the job's grace period (they may checkpoint) and the failed pods are kept for their
//!    logs; there is no automatic retry;
//! 3. `spec.suspend`: every pod is deleted (graceful), phase Suspended;
//! 4. otherwise the plan: RUN creates the Service and any missing worker gated, then releases
//!    all gates once every worker exists (all-or-nothing); SUSPEND deletes the pods gracefully;
//!    PLANNED waits (deleting pods if any are left); REJECTED deletes and waits for a new plan;
//!    DONE without success is a failure reported by the scheduler. No plan: nothing is touched.

pub mod observe;
mod rules;

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Pod, Service};
use offpeak_proto::v1::{JobPlan, JobState};

use crate::crd::{JobPhase, TrainingJob, WorkerCounts};
use crate::workload::WorkloadSettings;
use observe::Observed;
use rules::Decision;

/// Longest time between two looks at a job when nothing happens (plans and pods trigger
/// reconciles on change; this is the safety net).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Look again this soon while workers are being created or scheduled.
pub const STARTING_RECHECK: Duration = Duration::from_secs(15);

/// What the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub job: &'a TrainingJob,
    pub plan: Option<&'a JobPlan>,
    /// The job's pods (selected by its uid label).
    pub pods: &'a [Pod],
    pub now: DateTime<Utc>,
    pub settings: &'a WorkloadSettings,
}

/// One change to make in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Server-side apply of the headless Service.
    ApplyService(Box<Service>),
    /// Server-side apply of a (gated) worker pod.
    ApplyPod(Box<Pod>),
    /// Remove the gang gate from a pod.
    ReleasePod(String),
    /// Delete a pod, giving it `grace_seconds` to checkpoint and exit.
    DeletePod { name: String, grace_seconds: u32 },
}

/// The job's phase with the reason (CamelCase) and message behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseDetail {
    pub phase: JobPhase,
    pub reason: &'static str,
    pub message: String,
}

/// What to do and how the job stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub steps: Vec<Step>,
    pub detail: PhaseDetail,
    pub workers: WorkerCounts,
    /// The state the scheduler should know of, when there is one to report.
    pub report: Option<JobState>,
    /// When to look again without a change (None: wait for a change).
    pub requeue: Option<Duration>,
}

/// Decides what the job needs now. `previous` is the phase recorded in the job's status.
pub fn decide(input: Input<'_>, previous: Option<JobPhase>) -> Outcome {
    let workers = input.job.spec.workers;
    let observed = Observed::new(input.pods, workers);
    let mut d = Decision {
        input,
        observed,
        previous,
        steps: Vec::new(),
    };
    let (detail, requeue) = d.phase();
    let report = report_for(&detail, &d.observed);
    Outcome {
        workers: d.observed.counts(),
        steps: d.steps,
        detail,
        report,
        requeue,
    }
}

/// The state to report to the scheduler: what the workers are doing. A stopped job is reported
/// suspended only once its pods are gone (its checkpoint is written by then).
fn report_for(detail: &PhaseDetail, observed: &Observed) -> Option<JobState> {
    match detail.phase {
        JobPhase::Starting => Some(JobState::Starting),
        JobPhase::Running => Some(JobState::Running),
        JobPhase::Suspended if observed.all().next().is_none() => Some(JobState::Suspended),
        JobPhase::Succeeded => Some(JobState::Succeeded),
        JobPhase::Failed => Some(JobState::Failed),
        _ => None,
    }
}

fn or(text: String, fallback: &str) -> String {
    if text.is_empty() {
        fallback.to_string()
    } else {
        text
    }
}

fn dedup(nodes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in nodes {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests;
