//! The `EnergyPolicy` custom resource (`offpeak.dev/v1alpha1`, cluster-scoped): caps and
//! defaults a cluster operator sets for the TrainingJobs in the namespaces its
//! `namespaceSelector` matches (every namespace when unset).
//!
//! One cluster-scoped kind with a selector covers both "cluster-wide" (no selector) and
//! "per namespace" (a selector on `kubernetes.io/metadata.name`) without two kinds whose
//! precedence would need rules of their own. How several policies and a job's own caps combine
//! is in [`crate::policy`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Caps, budget and defaults for the TrainingJobs of the selected namespaces.
// Several printer columns share a type; clippy reads the repeated `type_` as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "offpeak.dev",
    version = "v1alpha1",
    kind = "EnergyPolicy",
    shortname = "ep",
    category = "offpeak",
    derive = "PartialEq",
    doc = "Energy caps, budget and defaults for the TrainingJobs in the selected namespaces.",
    printcolumn(
        name = "Price Cap",
        type_ = "number",
        json_path = ".spec.priceCapPerMWh"
    ),
    printcolumn(
        name = "Carbon Cap",
        type_ = "number",
        json_path = ".spec.carbonCapGPerKWh"
    ),
    printcolumn(name = "Budget", type_ = "number", json_path = ".spec.monthlyBudget"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EnergyPolicySpec {
    /// Namespaces the policy applies to (by their labels); every namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Highest energy price a job may run at, in the scheduler's currency per MWh.
    #[serde(
        default,
        rename = "priceCapPerMWh",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("self >= 0.0").message("priceCapPerMWh must not be negative"))]
    pub price_cap_per_mwh: Option<f64>,
    /// Highest grid carbon intensity a job may run at, in gCO2e/kWh.
    #[serde(
        default,
        rename = "carbonCapGPerKWh",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("self >= 0.0").message("carbonCapGPerKWh must not be negative"))]
    pub carbon_cap_g_per_kwh: Option<f64>,
    /// Energy spend allowed per calendar month, in the scheduler's currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("monthlyBudget must not be negative"))]
    pub monthly_budget: Option<f64>,
    /// Price put on emissions when comparing windows, in the scheduler's currency per tCO2e.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("carbonPricePerTonne must not be negative"))]
    pub carbon_price_per_tonne: Option<f64>,
    /// Deadline of a job that sets neither deadline nor maxDelay, as a delay after its creation
    /// ("48h").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("defaultMaxDelay must be a positive duration such as 48h"))]
    pub default_max_delay: Option<kube::core::Duration>,
}
