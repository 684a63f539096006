//! The operator's custom resources, defined in Rust; their CRD YAML is generated from here
//! (`cargo run -p offpeak-operator --bin crdgen`) into the Helm chart.
//!
//! Layout:
//! - [`training_job`]: `TrainingJob` spec and its CEL rules;
//! - [`status`]: `TrainingJob` status (phase, conditions, plan, metered energy);
//! - [`energy_policy`]: the cluster-scoped `EnergyPolicy`;
//! - here: the label, annotation and finalizer names the operator writes, and [`crd_files`],
//!   the YAML documents `crdgen` writes and the up-to-date test compares.

pub mod energy_policy;
pub mod status;
pub mod training_job;

use kube::CustomResourceExt;
use thiserror::Error;

pub use energy_policy::{EnergyPolicy, EnergyPolicySpec};
pub use status::{
    EffectiveCaps, JobPhase, MeteredStatus, PlanStatus, PlannedNode, TrainingJobStatus,
    WorkerCounts,
};
pub use training_job::{Checkpoint, CheckpointSignal, ProfileRef, TrainingJob, TrainingJobSpec};

/// The API group of both kinds.
pub const GROUP: &str = "offpeak.dev";
/// Finalizer that keeps a TrainingJob until the scheduler has forgotten it and its pods are
/// gone.
pub const FINALIZER: &str = "offpeak.dev/cleanup";
/// Label on every object the operator creates for a job: the TrainingJob's name.
pub const LABEL_JOB: &str = "offpeak.dev/job";
/// Label on every object the operator creates for a job: the TrainingJob's uid (a re-created
/// job with the same name is a different job).
pub const LABEL_JOB_UID: &str = "offpeak.dev/job-uid";
/// Label on a worker pod: its rank.
pub const LABEL_RANK: &str = "offpeak.dev/rank";
/// Label with the job's team, for cost attribution.
pub const LABEL_TEAM: &str = "offpeak.dev/team";
/// Label with the job's cost centre, for cost attribution.
pub const LABEL_COST_CENTRE: &str = "offpeak.dev/cost-centre";
/// Pod annotation the node agent reads: the planned power limit per accelerator, in watts.
pub const ANNOTATION_POWER_LIMIT: &str = "offpeak.dev/power-limit-watts";
/// Pod annotation: the zone of the planned run.
pub const ANNOTATION_ZONE: &str = "offpeak.dev/zone";
/// Pod annotation: the plan revision the pod was created for.
pub const ANNOTATION_PLAN_REVISION: &str = "offpeak.dev/plan-revision";
/// Scheduling gate that holds a job's pods until all of them exist (all-or-nothing start).
pub const GANG_GATE: &str = "offpeak.dev/gang";

/// The command that regenerates the chart's CRDs.
pub const REGENERATE: &str = "cargo run -p offpeak-operator --bin crdgen";

/// Failure to render the CRDs as YAML.
#[derive(Debug, Error)]
pub enum CrdError {
    #[error("serialising the {kind} CRD as YAML: {source}")]
    Serialize {
        kind: &'static str,
        #[source]
        source: serde_saphyr::ser::Error,
    },
}

/// The CRD files of the chart: (file name, YAML text), in a stable order.
pub fn crd_files() -> Result<Vec<(&'static str, String)>, CrdError> {
    Ok(vec![
        (
            "trainingjobs.offpeak.dev.yaml",
            render("TrainingJob", &TrainingJob::crd())?,
        ),
        (
            "energypolicies.offpeak.dev.yaml",
            render("EnergyPolicy", &EnergyPolicy::crd())?,
        ),
    ])
}

fn render(
    kind: &'static str,
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, CrdError> {
    let yaml =
        serde_saphyr::to_string(crd).map_err(|source| CrdError::Serialize { kind, source })?;
    Ok(format!(
        "# Generated from operator/src/crd by `{REGENERATE}`; do not edit.\n{yaml}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_job_crd_has_names_columns_and_status() {
        let crd = TrainingJob::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["tj".to_string()][..])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Phase", "Planned Start", "Zone", "Est. Cost", "Age"]
        );
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }

    #[test]
    fn energy_policy_is_cluster_scoped() {
        assert_eq!(EnergyPolicy::crd().spec.scope, "Cluster");
    }

    #[test]
    fn crd_yaml_round_trips() {
        for (name, text) in crd_files().expect("renders") {
            let back: serde_json::Value = serde_saphyr::from_str(&text).expect(name);
            assert_eq!(back["kind"], "CustomResourceDefinition", "{name}");
        }
    }
}
