//! The rules of [`super::decide`], in order (see the module documentation).

use std::time::Duration;

use chrono::DateTime;
use kube::ResourceExt;
use offpeak_proto::v1::{JobPlan, PlanPhase};

use super::observe::{Observed, PodPhase};
use super::{Input, PhaseDetail, RESYNC, STARTING_RECHECK, Step, dedup, or};
use crate::crd::JobPhase;
use crate::workload;

pub(super) struct Decision<'a> {
    pub(super) input: Input<'a>,
    pub(super) observed: Observed,
    pub(super) previous: Option<JobPhase>,
    pub(super) steps: Vec<Step>,
}

pub(super) type Phase = (PhaseDetail, Option<Duration>);

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

    pub(super) fn phase(&mut self) -> Phase {
        let live: Vec<_> = self.observed.live().cloned().collect();
        if live.len() == self.workers() as usize
            && live.iter().all(|w| w.phase == PodPhase::Succeeded)
        {
            return (
                detail(
                    JobPhase::Succeeded,
                    "AllWorkersSucceeded",
                    format!("all {} workers succeeded", self.workers()),
                ),
                None,
            );
        }
        if let Some(failed) = live.iter().find(|w| w.phase == PodPhase::Failed) {
            let why = failed
                .failure
                .clone()
                .unwrap_or_else(|| "no reason given".into());
            let msg = format!("worker {} ({}) failed: {why}", failed.rank, failed.name);
            return self.fail("WorkerFailed", msg);
        }
        if self.input.job.spec.suspend {
            return self.stop(
                JobPhase::Suspended,
                "SuspendedBySpec",
                "spec.suspend is true".into(),
            );
        }
        let Some(plan) = self.input.plan else {
            let phase = self.previous.unwrap_or(JobPhase::Pending);
            return (
                detail(phase, "WaitingForPlan", "waiting for the scheduler's plan"),
                Some(STARTING_RECHECK),
            );
        };
        let reason = plan.reason.clone();
        match PlanPhase::try_from(plan.phase).unwrap_or(PlanPhase::Unspecified) {
            PlanPhase::Run => self.run(plan),
            PlanPhase::Suspend => self.stop(
                JobPhase::Suspended,
                "PlanSuspended",
                or(reason, "the plan stops the job for now"),
            ),
            PlanPhase::Planned if self.observed.all().next().is_some() => self.stop(
                JobPhase::Suspended,
                "PlanMoved",
                or(reason, "the plan moved the run"),
            ),
            PlanPhase::Planned => self.wait_for_start(plan),
            PlanPhase::Rejected => {
                let (d, _) = self.stop(
                    JobPhase::Rejected,
                    "Rejected",
                    or(reason, "the scheduler cannot place the job"),
                );
                (d, None)
            }
            PlanPhase::Done => self.fail(
                "SchedulerFinished",
                or(
                    reason,
                    "the scheduler finished the job before all workers succeeded",
                ),
            ),
            PlanPhase::Unspecified => {
                let phase = self.previous.unwrap_or(JobPhase::Pending);
                (
                    detail(phase, "WaitingForPlan", "the plan has no phase yet"),
                    Some(STARTING_RECHECK),
                )
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
            return (
                detail(
                    JobPhase::Starting,
                    "WaitingForOldPods",
                    "waiting for the previous run's pods to go",
                ),
                Some(STARTING_RECHECK),
            );
        }
        let missing: Vec<u32> = (0..self.workers())
            .filter(|r| !self.observed.by_rank.contains_key(r))
            .collect();
        let released = self
            .observed
            .by_rank
            .values()
            .find(|w| !w.gated)
            .map(|w| w.rank);
        if let (Some(&rank), Some(_)) = (missing.first(), released) {
            let msg = format!(
                "worker {rank} ({}) disappeared after the workers were released",
                workload::pod_name(&job.name_any(), rank)
            );
            return self.fail("WorkerLost", msg);
        }
        if !missing.is_empty() {
            return self.create(plan, &missing);
        }
        let gated: Vec<String> = self
            .observed
            .by_rank
            .values()
            .filter(|w| w.gated)
            .map(|w| w.name.clone())
            .collect();
        if !gated.is_empty() {
            let n = gated.len();
            self.steps.extend(gated.into_iter().map(Step::ReleasePod));
            return (
                detail(
                    JobPhase::Starting,
                    "ReleasingWorkers",
                    format!("all {} workers exist; released {n}", self.workers()),
                ),
                Some(STARTING_RECHECK),
            );
        }
        let running = self
            .observed
            .by_rank
            .values()
            .filter(|w| w.phase == PodPhase::Running)
            .count();
        let active = self
            .observed
            .by_rank
            .values()
            .all(|w| matches!(w.phase, PodPhase::Running | PodPhase::Succeeded));
        if active && running > 0 {
            let message = format!(
                "{running} of {} workers running in {} at {} W",
                self.workers(),
                plan.zone,
                plan.power_limit_watts
            );
            (
                detail(JobPhase::Running, "WorkersRunning", message),
                Some(RESYNC),
            )
        } else {
            (
                detail(
                    JobPhase::Starting,
                    "WaitingForWorkers",
                    "workers released; waiting for them to run",
                ),
                Some(STARTING_RECHECK),
            )
        }
    }

    fn create(&mut self, plan: &JobPlan, missing: &[u32]) -> Phase {
        let job = self.input.job;
        let nodes =
            match workload::assign_nodes(&plan.nodes, job.spec.workers, job.spec.gpus_per_worker) {
                Ok(nodes) => nodes,
                Err(e) => {
                    return (
                        detail(JobPhase::Pending, "PlanDoesNotFit", e.to_string()),
                        None,
                    );
                }
            };
        let settings = self.input.settings;
        self.steps
            .push(Step::ApplyService(Box::new(workload::service(
                job, settings,
            ))));
        for &rank in missing {
            let pod = workload::worker_pod(job, plan, rank, &nodes[rank as usize], settings);
            self.steps.push(Step::ApplyPod(Box::new(pod)));
        }
        let (resuming, verb) = match self.previous {
            Some(JobPhase::Suspended) => ("Resuming", "resuming"),
            _ => ("CreatingWorkers", "starting"),
        };
        let message = format!(
            "{verb}: created {} gated workers on {}",
            missing.len(),
            dedup(&nodes).join(", ")
        );
        (
            detail(JobPhase::Starting, resuming, message),
            Some(STARTING_RECHECK),
        )
    }

    /// Deletes every pod (gracefully) and settles in `phase` once they are gone.
    fn stop(&mut self, phase: JobPhase, reason: &'static str, message: String) -> Phase {
        let grace = workload::grace_seconds(self.input.job);
        let names: Vec<String> = self
            .observed
            .all()
            .filter(|w| !w.terminating)
            .map(|w| w.name.clone())
            .collect();
        self.steps
            .extend(names.into_iter().map(|name| Step::DeletePod {
                name,
                grace_seconds: grace,
            }));
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
        self.steps
            .extend(survivors.into_iter().map(|name| Step::DeletePod {
                name,
                grace_seconds: grace,
            }));
        (detail(JobPhase::Failed, reason, message), None)
    }

    fn delete_strays(&mut self) {
        let grace = workload::grace_seconds(self.input.job);
        let names: Vec<String> = self
            .observed
            .strays
            .iter()
            .filter(|w| !w.terminating)
            .map(|w| w.name.clone())
            .collect();
        self.steps
            .extend(names.into_iter().map(|name| Step::DeletePod {
                name,
                grace_seconds: grace,
            }));
    }
}
