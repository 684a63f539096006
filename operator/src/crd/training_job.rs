//! The `TrainingJob` custom resource (`offpeak.dev/v1alpha1`, namespaced, short name `tj`): a
//! distributed training job that offpeak runs when and where electricity is cheap and clean.
//!
//! The schema carries CEL rules (`x-kubernetes-validations`) for every constraint that ties
//! fields together, so `kubectl apply` rejects a bad object with the rule's message. What the
//! schema cannot know (the clock, the cluster's accelerators) is checked by the reconciler and
//! reported as a condition.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Volume, VolumeMount};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::TrainingJobStatus;

/// Longest `TrainingJob` name: its pods are named `<name>-worker-<rank>` and their hostnames
/// must fit a 63-character DNS label, leaving room for `-worker-` and a 5-digit rank.
pub const MAX_NAME_LEN: usize = 50;

/// A distributed training job: `workers` pods of `gpusPerWorker` accelerators each, started
/// together when and where the offpeak scheduler's plan says.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "offpeak.dev",
    version = "v1alpha1",
    kind = "TrainingJob",
    namespaced,
    shortname = "tj",
    category = "offpeak",
    status = "TrainingJobStatus",
    derive = "PartialEq",
    doc = "A distributed training job that offpeak runs when and where electricity is cheap and clean.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Planned Start", type_ = "string", json_path = ".status.plan.start"),
    printcolumn(name = "Zone", type_ = "string", json_path = ".status.plan.zone"),
    printcolumn(name = "Est. Cost", type_ = "number", json_path = ".status.plan.estimatedCost"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 50 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter) of at most 50 characters: it names the job's headless Service and its worker pods' hostnames")
)]
#[x_kube(
    validation = Rule::new("!(has(self.deadline) && has(self.maxDelay))")
        .message("set at most one of deadline (an absolute time) and maxDelay (a delay after creation)"),
    validation = Rule::new("has(self.workHours) || has(self.profileRef)")
        .message("set workHours (hours of running at full power) or profileRef (a measured profile)"),
    validation = Rule::new("!has(self.checkpoint) || self.preemptible")
        .message("checkpoint (signal and grace period) applies only to a preemptible job: set preemptible: true or remove checkpoint"),
)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobSpec {
    /// Container image every worker runs.
    #[x_kube(validation = Rule::new("size(self) > 0").message("image must not be empty"))]
    pub image: String,
    /// Entrypoint of the worker container (the image's when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments of the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment of the worker container. The launcher variables (MASTER_ADDR,
    /// MASTER_PORT, WORLD_SIZE, RANK, NODE_RANK, NPROC_PER_NODE) are set by the operator and
    /// may not be set here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// CPU and memory of each worker. The accelerator limit (`gpusPerWorker`) is added by the
    /// operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Volumes of each worker pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Where the worker container mounts the volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Number of worker pods (torchrun's nodes), started together.
    #[x_kube(validation = Rule::new("self >= 1").message("workers must be at least 1"))]
    pub workers: u32,
    /// Accelerators per worker (torchrun's processes per node).
    #[x_kube(validation = Rule::new("self >= 1").message("gpusPerWorker must be at least 1"))]
    pub gpus_per_worker: u32,
    /// Accelerator model ("A100", "H100", ...); any when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 64").message("accelerator must be a non-empty model name of at most 64 characters"))]
    pub accelerator: Option<String>,
    /// Estimated work: hours of running at full power.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0").message("workHours must be above zero"))]
    pub work_hours: Option<f64>,
    /// A measured power/throughput profile to plan with instead of (or besides) workHours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_ref: Option<ProfileRef>,
    /// Latest time the job must finish by (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// Latest finish as a delay after the job's creation ("36h", "90m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("maxDelay must be a positive duration such as 36h or 90m"))]
    pub max_delay: Option<kube::core::Duration>,
    /// Whether the scheduler may stop the job (after a checkpoint) and resume it later.
    #[serde(default)]
    pub preemptible: bool,
    /// How a preemptible job is asked to checkpoint before it is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// Highest energy price the job may run at, in the scheduler's currency per MWh.
    #[serde(
        default,
        rename = "priceCapPerMWh",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("self >= 0.0").message("priceCapPerMWh must not be negative"))]
    pub price_cap_per_mwh: Option<f64>,
    /// Highest grid carbon intensity the job may run at, in gCO2e/kWh.
    #[serde(
        default,
        rename = "carbonCapGPerKWh",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("self >= 0.0").message("carbonCapGPerKWh must not be negative"))]
    pub carbon_cap_g_per_kwh: Option<f64>,
    /// Cost centre the job's energy is charged to (a label value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')").message("costCentre must be a label value: letters, digits, '-', '_' and '.', starting and ending with a letter or digit"))]
    pub cost_centre: Option<String>,
    /// Team that owns the job (a label value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')").message("team must be a label value: letters, digits, '-', '_' and '.', starting and ending with a letter or digit"))]
    pub team: Option<String>,
    /// Stop the job and keep it out of planning (as in batch/v1 Job); false resumes it.
    #[serde(default)]
    pub suspend: bool,
}

/// A reference to a measured profile known to the scheduler.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProfileRef {
    /// The profile's name.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("profileRef.name must not be empty"))]
    pub name: String,
}

/// How a preemptible job checkpoints when it is stopped.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The signal the training process checkpoints on (SIGTERM unless set).
    #[serde(default)]
    pub signal: CheckpointSignal,
    /// Seconds the workers get to checkpoint and exit before they are killed.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 86400").message("checkpoint.gracePeriodSeconds must be between 1 and 86400"))]
    pub grace_period_seconds: u32,
}

/// Signals a training process may checkpoint on.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum CheckpointSignal {
    /// What Kubernetes sends on pod deletion; needs no hook.
    #[default]
    SIGTERM,
    SIGINT,
    SIGHUP,
    SIGUSR1,
    SIGUSR2,
}

impl CheckpointSignal {
    /// The name `kill -s` takes (without the SIG prefix).
    pub fn kill_name(self) -> &'static str {
        match self {
            Self::SIGTERM => "TERM",
            Self::SIGINT => "INT",
            Self::SIGHUP => "HUP",
            Self::SIGUSR1 => "USR1",
            Self::SIGUSR2 => "USR2",
        }
    }
}

impl TrainingJobSpec {
    /// A minimal spec: the given image, workers and accelerators per worker, `work_hours` of
    /// work, nothing else set. Tests and examples fill in the rest.
    pub fn new(
        image: impl Into<String>,
        workers: u32,
        gpus_per_worker: u32,
        work_hours: f64,
    ) -> Self {
        Self {
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            resources: None,
            volumes: Vec::new(),
            volume_mounts: Vec::new(),
            workers,
            gpus_per_worker,
            accelerator: None,
            work_hours: Some(work_hours),
            profile_ref: None,
            deadline: None,
            max_delay: None,
            preemptible: false,
            checkpoint: None,
            price_cap_per_mwh: None,
            carbon_cap_g_per_kwh: None,
            cost_centre: None,
            team: None,
            suspend: false,
        }
    }

    /// Labels the workers carry for cost attribution (team and cost centre).
    pub fn attribution_labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        if let Some(team) = &self.team {
            labels.insert(super::LABEL_TEAM.to_string(), team.clone());
        }
        if let Some(cc) = &self.cost_centre {
            labels.insert(super::LABEL_COST_CENTRE.to_string(), cc.clone());
        }
        labels
    }
}
