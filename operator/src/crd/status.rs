//! `TrainingJob` status: phase, metav1-style conditions, the scheduler's plan, metered energy,
//! and the bookkeeping the reconciler needs to stay idempotent (which generation was submitted,
//! which state was last reported to the scheduler).

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPhase {
    /// Submitted (or being submitted); waiting for its planned window.
    Pending,
    /// Its worker pods are being created or released, or are not all running yet.
    Starting,
    /// All workers run.
    Running,
    /// Stopped for now (by the plan, e.g. a price cap, or by `spec.suspend`); resumes later.
    Suspended,
    /// Every worker succeeded.
    Succeeded,
    /// A worker failed; the job is over.
    Failed,
    /// The scheduler cannot place the job (see the `Submitted` condition).
    Rejected,
    /// The object passed the schema but cannot run as written (see the `Valid` condition).
    Invalid,
}

impl JobPhase {
    /// Succeeded and Failed are final: nothing more is started.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    /// Whether workers were started at some point in this phase (so a stopped job is
    /// Suspended, not Pending).
    pub fn has_started(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Suspended)
    }
}

/// Observed state of a `TrainingJob`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// Where the job is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Valid, Submitted, Running, Suspended, Complete and Failed, metav1.Condition style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The generation last submitted to the scheduler (unset: not submitted, or cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_generation: Option<i64>,
    /// The job state last reported to the scheduler (STARTING, RUNNING, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_state: Option<String>,
    /// The scheduler's current plan for the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanStatus>,
    /// Energy, cost and carbon metered so far, when the scheduler reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metered: Option<MeteredStatus>,
    /// True when some price or carbon signal behind the plan is estimated or stale.
    #[serde(default)]
    pub signals_degraded: bool,
    /// Worker pods by state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkerCounts>,
    /// The caps the job was submitted with, after its EnergyPolicies were applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_caps: Option<EffectiveCaps>,
}

/// The scheduler's plan, as shown by `kubectl get tj`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// PLANNED, RUN, SUSPEND, REJECTED or DONE.
    pub phase: String,
    /// Start of the current or next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    /// End of the current or next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// Electricity zone of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Nodes of the run and the accelerators used on each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<PlannedNode>,
    /// Power limit per accelerator for the run, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_watts: Option<u32>,
    /// Estimated energy cost of the whole job, in `currency`.
    pub estimated_cost: f64,
    /// Currency of the cost figures.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub currency: String,
    /// Estimated emissions of the whole job, in kgCO2e.
    pub estimated_carbon_kg: f64,
    /// Estimated saving against running at full power as soon as submitted, in `currency`.
    pub estimated_saving: f64,
    /// Why the plan is what it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The scheduler's revision of this job's plan.
    pub revision: u64,
}

/// One node of a planned run.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PlannedNode {
    /// Kubernetes node name.
    pub node: String,
    /// Accelerators used on it.
    pub gpus: u32,
}

/// What the job used so far.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeteredStatus {
    /// Energy in kWh.
    pub energy_kwh: f64,
    /// Energy cost in the scheduler's currency.
    pub cost: f64,
    /// Emissions in kgCO2e.
    pub carbon_kg: f64,
}

/// Worker pods by state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Pods that exist (any state).
    pub created: u32,
    /// Pods still held behind the gang scheduling gate.
    pub gated: u32,
    /// Running pods.
    pub running: u32,
    /// Succeeded pods.
    pub succeeded: u32,
    /// Failed pods.
    pub failed: u32,
}

/// A job's caps after its EnergyPolicies (the stricter value wins).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveCaps {
    /// Price cap in the scheduler's currency per MWh.
    #[serde(
        default,
        rename = "priceCapPerMWh",
        skip_serializing_if = "Option::is_none"
    )]
    pub price_cap_per_mwh: Option<f64>,
    /// Carbon cap in gCO2e/kWh.
    #[serde(
        default,
        rename = "carbonCapGPerKWh",
        skip_serializing_if = "Option::is_none"
    )]
    pub carbon_cap_g_per_kwh: Option<f64>,
    /// The EnergyPolicies that applied, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}
