//! What a job's pods are doing, by rank.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::crd::{GANG_GATE, LABEL_RANK, WorkerCounts};

/// A pod's phase as Kubernetes reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    fn of(pod: &Pod) -> Self {
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            Some("Pending") | None => Self::Pending,
            Some(_) => Self::Unknown,
        }
    }

    /// The pod's containers will not run again.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// One worker pod.
#[derive(Debug, Clone)]
pub struct Worker {
    pub rank: u32,
    pub name: String,
    pub phase: PodPhase,
    /// Still held behind the gang gate.
    pub gated: bool,
    /// Being deleted.
    pub terminating: bool,
    /// Why it failed, from its container's termination state.
    pub failure: Option<String>,
}

/// A job's pods: workers by rank, and pods that are not a current worker (no or a duplicate
/// rank, or a rank beyond `workers` after the job shrank).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub by_rank: BTreeMap<u32, Worker>,
    pub strays: Vec<Worker>,
}

impl Observed {
    pub fn new(pods: &[Pod], workers: u32) -> Self {
        let mut out = Self::default();
        for pod in pods {
            let rank = pod
                .labels()
                .get(LABEL_RANK)
                .and_then(|r| r.parse::<u32>().ok());
            let worker = Worker {
                rank: rank.unwrap_or(u32::MAX),
                name: pod.name_any(),
                phase: PodPhase::of(pod),
                gated: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.scheduling_gates.as_ref())
                    .is_some_and(|g| g.iter().any(|g| g.name == GANG_GATE)),
                terminating: pod.metadata.deletion_timestamp.is_some(),
                failure: failure_of(pod),
            };
            match rank {
                Some(r) if r < workers && !out.by_rank.contains_key(&r) => {
                    out.by_rank.insert(r, worker);
                }
                _ => out.strays.push(worker),
            }
        }
        out
    }

    /// Every pod, workers first.
    pub fn all(&self) -> impl Iterator<Item = &Worker> {
        self.by_rank.values().chain(&self.strays)
    }

    /// Workers not being deleted.
    pub fn live(&self) -> impl Iterator<Item = &Worker> {
        self.by_rank.values().filter(|w| !w.terminating)
    }

    pub fn any_terminating(&self) -> bool {
        self.all().any(|w| w.terminating)
    }

    pub fn counts(&self) -> WorkerCounts {
        let mut c = WorkerCounts::default();
        for w in self.all() {
            c.created += 1;
            c.gated += u32::from(w.gated);
            c.running += u32::from(w.phase == PodPhase::Running);
            c.succeeded += u32::from(w.phase == PodPhase::Succeeded);
            c.failed += u32::from(w.phase == PodPhase::Failed);
        }
        c
    }
}

fn failure_of(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .find(|t| t.exit_code != 0);
    match terminated {
        Some(t) => Some(match &t.reason {
            Some(reason) => format!("{reason} (exit code {})", t.exit_code),
            None => format!("exit code {}", t.exit_code),
        }),
        None => status.reason.clone().or_else(|| status.message.clone()),
    }
}
