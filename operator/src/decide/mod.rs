//! The reconciler's decision as a pure function: from the job, its current plan, its pods and
//! the time, what to create, release or delete, and which phase the job is in. The reconciler
//! only carries the steps out, so every scenario is unit-tested here without an API server.
//!
//! Layout: here [`decide`] and its types; [`observe`] reads the pods by rank; `tests`.
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

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use offpeak_proto::v1::{JobPlan, JobState, PlanPhase};

use crate::crd::{JobPhase, TrainingJob, WorkerCounts};
use crate::workload::{self, WorkloadSettings};
use observe::{Observed, PodPhase};

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

struct Decision<'a> {
    input: Input<'a>,
    observed: Observed,
    previous: Option<JobPhase>,
    steps: Vec<Step>,
}

type Phase = (PhaseDetail, Option<Duration>);

fn detail(phase: JobPhase, reason: &'static str, message: impl Into<String>) -> PhaseDetail {
    PhaseDetail {
        phase,
        reason,
        message: message.into(),
    }
}

impl Decision<'_> {
    fn workers(&self) -> u32 {
        self.input.job.spec.workers
    }

    fn phase(&mut self) -> Phase {
        let live: Vec<_> = self.observed.live().cloned().collect();
        if live.len() == self.workers() as usize
            && live.iter().all(|w| w.phase == PodPhase::Succeeded)
        {
            return (
                detail(JobPhase::Succeeded, "AllWorkersSucceeded", format!("all {} workers succeeded", self.workers())),
                None,
            );
        }
        if let Some(failed) = live.iter().find(|w| w.phase == PodPhase::Failed) {
            let why = failed.failure.clone().unwrap_or_else(|| "no reason given".into());
            let msg = format!("worker {} ({}) failed: {why}", failed.rank, failed.name);
            return self.fail("WorkerFailed", msg);
        }
        if self.input.job.spec.suspend {
            return self.stop(JobPhase::Suspended, "SuspendedBySpec", "spec.suspend is true".into());
        }
        let Some(plan) = self.input.plan else {
            let phase = self.previous.unwrap_or(JobPhase::Pending);
            return (detail(phase, "WaitingForPlan", "waiting for the scheduler's plan"), Some(STARTING_RECHECK));
        };
        let reason = plan.reason.clone();
        match PlanPhase::try_from(plan.phase).unwrap_or(PlanPhase::Unspecified) {
            PlanPhase::Run => self.run(plan),
            PlanPhase::Suspend => self.stop(JobPhase::Suspended, "PlanSuspended", or(reason, "the plan stops the job for now")),
            PlanPhase::Planned if self.observed.all().next().is_some() => {
                self.stop(JobPhase::Suspended, "PlanMoved", or(reason, "the plan moved the run"))
            }
            PlanPhase::Planned => self.wait_for_start(plan),
            PlanPhase::Rejected => {
                let (d, _) = self.stop(JobPhase::Rejected, "Rejected", or(reason, "the scheduler cannot place the job"));
                (d, None)
            }
            PlanPhase::Done => self.fail("SchedulerFinished", or(reason, "the scheduler finished the job before all workers succeeded")),
            PlanPhase::Unspecified => {
                let phase = self.previous.unwrap_or(JobPhase::Pending);
                (detail(phase, "WaitingForPlan", "the plan has no phase yet"), Some(STARTING_RECHECK))
            }
        }
    }

    fn wait_for_start(&self, plan: &JobPlan) -> Phase {
        let phase = if self.previous.is_some_and(JobPhase::has_started) {
            JobPhase::Suspended
        } else {
            JobPhase::Pending
        };
        let wait = DateTime::from_timestamp(plan.start_unix_s, 0)
            .filter(|_| plan.start_unix_s > 0)
            .and_then(|start| (start - self.input.now).to_std().ok())
            .map_or(RESYNC, |until| until.min(RESYNC));
        let message = or(plan.reason.clone(), "waiting for the planned window");
        (detail(phase, "WaitingForWindow", message), Some(wait))
    }

    fn run(&mut self, plan: &JobPlan) -> Phase {
        let job = self.input.job;
        if self.observed.any_terminating() || !self.observed.strays.is_empty() {
            self.delete_strays();
            return (detail(JobPhase::Starting, "WaitingForOldPods", "waiting for the previous run's pods to go"), Some(STARTING_RECHECK));
        }
        let missing: Vec<u32> = (0..self.workers()).filter(|r| !self.observed.by_rank.contains_key(r)).collect();
        let released = self.observed.by_rank.values().find(|w| !w.gated).map(|w| w.rank);
        if let (Some(&rank), Some(_)) = (missing.first(), released) {
            let msg = format!("worker {rank} ({}) disappeared after the workers were released", workload::pod_name(&job.name_any(), rank));
            return self.fail("WorkerLost", msg);
        }
        if !missing.is_empty() {
            return self.create(plan, &missing);
        }
        let gated: Vec<String> = self.observed.by_rank.values().filter(|w| w.gated).map(|w| w.name.clone()).collect();
        if !gated.is_empty() {
            let n = gated.len();
            self.steps.extend(gated.into_iter().map(Step::ReleasePod));
            return (detail(JobPhase::Starting, "ReleasingWorkers", format!("all {} workers exist; released {n}", self.workers())), Some(STARTING_RECHECK));
        }
        let running = self.observed.by_rank.values().filter(|w| w.phase == PodPhase::Running).count();
        let active = self.observed.by_rank.values().all(|w| matches!(w.phase, PodPhase::Running | PodPhase::Succeeded));
        if active && running > 0 {
            let message = format!("{running} of {} workers running in {} at {} W", self.workers(), plan.zone, plan.power_limit_watts);
            (detail(JobPhase::Running, "WorkersRunning", message), Some(RESYNC))
        } else {
            (detail(JobPhase::Starting, "WaitingForWorkers", "workers released; waiting for them to run"), Some(STARTING_RECHECK))
        }
    }

    fn create(&mut self, plan: &JobPlan, missing: &[u32]) -> Phase {
        let job = self.input.job;
        let nodes = match workload::assign_nodes(&plan.nodes, job.spec.workers, job.spec.gpus_per_worker) {
            Ok(nodes) => nodes,
            Err(e) => return (detail(JobPhase::Pending, "PlanDoesNotFit", e.to_string()), None),
        };
        let settings = self.input.settings;
        self.steps.push(Step::ApplyService(Box::new(workload::service(job, settings))));
        for &rank in missing {
            let pod = workload::worker_pod(job, plan, rank, &nodes[rank as usize], settings);
            self.steps.push(Step::ApplyPod(Box::new(pod)));
        }
        let (resuming, verb) = match self.previous {
            Some(JobPhase::Suspended) => ("Resuming", "resuming"),
            _ => ("CreatingWorkers", "starting"),
        };
        let message = format!("{verb}: created {} gated workers on {}", missing.len(), dedup(&nodes).join(", "));
        (detail(JobPhase::Starting, resuming, message), Some(STARTING_RECHECK))
    }

    /// Deletes every pod (gracefully) and settles in `phase` once they are gone.
    fn stop(&mut self, phase: JobPhase, reason: &'static str, message: String) -> Phase {
        let grace = workload::grace_seconds(self.input.job);
        let names: Vec<String> = self.observed.all().filter(|w| !w.terminating).map(|w| w.name.clone()).collect();
        self.steps.extend(names.into_iter().map(|name| Step::DeletePod { name, grace_seconds: grace }));
        let requeue = self.observed.all().next().map(|_| STARTING_RECHECK);
        (detail(phase, reason, message), requeue)
    }

    /// Failed: the survivors are stopped gracefully, finished pods are kept for their logs.
    fn fail(&mut self, reason: &'static str, message: String) -> Phase {
        let grace = workload::grace_seconds(self.input.job);
        let survivors: Vec<String> = self
            .observed
            .all()
            .filter(|w| !w.terminating && !w.phase.is_finished())
            .map(|w| w.name.clone())
            .collect();
        let message = match survivors.len() {
            0 => message,
            n => format!("{message}; stopping the other {n} workers"),
        };
        self.steps.extend(survivors.into_iter().map(|name| Step::DeletePod { name, grace_seconds: grace }));
        (detail(JobPhase::Failed, reason, message), None)
    }

    fn delete_strays(&mut self) {
        let grace = workload::grace_seconds(self.input.job);
        let names: Vec<String> = self.observed.strays.iter().filter(|w| !w.terminating).map(|w| w.name.clone()).collect();
        self.steps.extend(names.into_iter().map(|name| Step::DeletePod { name, grace_seconds: grace }));
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
    if text.is_empty() { fallback.to_string() } else { text }
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
