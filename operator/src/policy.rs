//! Which `EnergyPolicy` objects apply to a job, and how their values combine with the job's own.
//!
//! The rule, for every value: **the stricter one wins**, whoever sets it.
//! - price cap and carbon cap: the lowest of the job's own cap and every matching policy's cap;
//! - default deadline (`defaultMaxDelay`): used only when the job sets neither `deadline` nor
//!   `maxDelay`; the shortest of the matching policies' wins;
//! - monthly budget: the lowest; carbon price: the highest.
//!
//! A policy matches a namespace when its `namespaceSelector` selects the namespace's labels
//! (every namespace when the selector is unset). A selector that cannot be parsed is an error
//! for the jobs it might cover rather than a policy silently skipped: skipping it could run a
//! job above a cap the cluster operator meant to set.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use thiserror::Error;

use crate::crd::{EnergyPolicy, TrainingJobSpec};

/// A policy whose namespace selector is malformed.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("EnergyPolicy {policy:?} has an invalid namespaceSelector: {message}")]
pub struct PolicySelectorError {
    pub policy: String,
    pub message: String,
}

/// A job's values after its policies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    /// Price cap in the scheduler's currency per MWh.
    pub price_cap_per_mwh: Option<f64>,
    /// Carbon cap in gCO2e/kWh.
    pub carbon_cap_g_per_kwh: Option<f64>,
    /// Deadline delay for a job that sets none.
    pub default_max_delay: Option<Duration>,
    /// Monthly budget in the scheduler's currency.
    pub monthly_budget: Option<f64>,
    /// Carbon price in the scheduler's currency per tCO2e.
    pub carbon_price_per_tonne: Option<f64>,
    /// The policies that applied, by name, sorted.
    pub policies: Vec<String>,
}

/// The policies among `policies` that apply to a namespace with `namespace_labels`.
pub fn matching<'a>(
    policies: &'a [EnergyPolicy],
    namespace_labels: &BTreeMap<String, String>,
) -> Result<Vec<&'a EnergyPolicy>, PolicySelectorError> {
    let mut out = Vec::new();
    for policy in policies {
        let applies = match &policy.spec.namespace_selector {
            None => true,
            Some(selector) => Selector::try_from(selector.clone())
                .map_err(|e| PolicySelectorError {
                    policy: policy.name_any(),
                    message: e.to_string(),
                })?
                .matches(namespace_labels),
        };
        if applies {
            out.push(policy);
        }
    }
    Ok(out)
}

/// Combines a job's own caps with its matching policies (the stricter value wins).
pub fn resolve(job: &TrainingJobSpec, policies: &[&EnergyPolicy]) -> Resolved {
    let mut names: Vec<String> = policies.iter().map(|p| p.name_any()).collect();
    names.sort();
    let specs = || policies.iter().map(|p| &p.spec);
    Resolved {
        price_cap_per_mwh: lowest(job.price_cap_per_mwh, specs().map(|s| s.price_cap_per_mwh)),
        carbon_cap_g_per_kwh: lowest(
            job.carbon_cap_g_per_kwh,
            specs().map(|s| s.carbon_cap_g_per_kwh),
        ),
        default_max_delay: specs()
            .filter_map(|s| s.default_max_delay)
            // The schema rejects negative delays; one that slipped through is ignored.
            .filter(|d| !d.is_negative())
            .map(Duration::from)
            .min(),
        monthly_budget: lowest(None, specs().map(|s| s.monthly_budget)),
        carbon_price_per_tonne: specs()
            .filter_map(|s| s.carbon_price_per_tonne)
            .reduce(f64::max),
        policies: names,
    }
}

fn lowest(own: Option<f64>, others: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    own.into_iter().chain(others.flatten()).reduce(f64::min)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::*;
    use crate::crd::EnergyPolicySpec;

    fn policy(name: &str, spec: EnergyPolicySpec) -> EnergyPolicy {
        EnergyPolicy::new(name, spec)
    }

    fn caps(price: Option<f64>, carbon: Option<f64>) -> EnergyPolicySpec {
        EnergyPolicySpec {
            price_cap_per_mwh: price,
            carbon_cap_g_per_kwh: carbon,
            ..Default::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn job(price: Option<f64>, carbon: Option<f64>) -> TrainingJobSpec {
        let mut spec = TrainingJobSpec::new("img", 1, 1, 1.0);
        spec.price_cap_per_mwh = price;
        spec.carbon_cap_g_per_kwh = carbon;
        spec
    }

    #[test]
    fn the_stricter_cap_wins_from_either_side() {
        let cluster = policy("cluster", caps(Some(120.0), Some(300.0)));
        // The job's price cap is stricter; the policy's carbon cap is stricter.
        let r = resolve(&job(Some(80.0), Some(450.0)), &[&cluster]);
        assert_eq!(r.price_cap_per_mwh, Some(80.0));
        assert_eq!(r.carbon_cap_g_per_kwh, Some(300.0));
        // A job above the policy's cap gets the policy's.
        let r = resolve(&job(Some(200.0), None), &[&cluster]);
        assert_eq!(r.price_cap_per_mwh, Some(120.0));
        assert_eq!(r.carbon_cap_g_per_kwh, Some(300.0));
        assert_eq!(r.policies, ["cluster"]);
    }

    #[test]
    fn no_policy_leaves_the_jobs_caps_and_unset_stays_unset() {
        let r = resolve(&job(Some(50.0), None), &[]);
        assert_eq!(r.price_cap_per_mwh, Some(50.0));
        assert_eq!(r.carbon_cap_g_per_kwh, None);
        assert!(r.policies.is_empty());
    }

    #[test]
    fn several_policies_combine_strictest_per_value() {
        let a = policy(
            "a",
            EnergyPolicySpec {
                price_cap_per_mwh: Some(90.0),
                monthly_budget: Some(5000.0),
                carbon_price_per_tonne: Some(80.0),
                default_max_delay: Some("72h".parse().expect("duration")),
                ..Default::default()
            },
        );
        let b = policy(
            "b",
            EnergyPolicySpec {
                carbon_cap_g_per_kwh: Some(200.0),
                monthly_budget: Some(3000.0),
                carbon_price_per_tonne: Some(120.0),
                default_max_delay: Some("24h".parse().expect("duration")),
                ..Default::default()
            },
        );
        let r = resolve(&job(None, Some(250.0)), &[&b, &a]);
        assert_eq!(r.price_cap_per_mwh, Some(90.0));
        assert_eq!(r.carbon_cap_g_per_kwh, Some(200.0));
        assert_eq!(r.monthly_budget, Some(3000.0));
        assert_eq!(r.carbon_price_per_tonne, Some(120.0));
        assert_eq!(r.default_max_delay, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(r.policies, ["a", "b"]);
    }

    #[test]
    fn a_zero_cap_is_a_cap() {
        let strict = policy("zero", caps(Some(0.0), None));
        let r = resolve(&job(Some(40.0), None), &[&strict]);
        assert_eq!(r.price_cap_per_mwh, Some(0.0));
    }

    #[test]
    fn selectors_pick_namespaces() {
        let everywhere = policy("everywhere", caps(Some(100.0), None));
        let mut research = policy("research", caps(Some(60.0), None));
        research.spec.namespace_selector = Some(LabelSelector {
            match_labels: Some(labels(&[("team", "research")])),
            ..Default::default()
        });
        let mut not_prod = policy("not-prod", caps(None, Some(150.0)));
        not_prod.spec.namespace_selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "NotIn".into(),
                values: Some(vec!["prod".into()]),
            }]),
            ..Default::default()
        });
        let all = [everywhere, research, not_prod];
        let names = |ls: &BTreeMap<String, String>| -> Vec<String> {
            matching(&all, ls)
                .expect("valid selectors")
                .iter()
                .map(|p| p.name_any())
                .collect()
        };
        assert_eq!(
            names(&labels(&[("team", "research"), ("env", "dev")])),
            ["everywhere", "research", "not-prod"]
        );
        assert_eq!(names(&labels(&[("env", "prod")])), ["everywhere"]);
    }

    #[test]
    fn a_malformed_selector_is_an_error_naming_the_policy() {
        let mut bad = policy("bad", caps(Some(1.0), None));
        bad.spec.namespace_selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        });
        let err = matching(std::slice::from_ref(&bad), &BTreeMap::new()).expect_err("bad operator");
        assert_eq!(err.policy, "bad");
        assert!(
            err.to_string().contains("invalid namespaceSelector"),
            "{err}"
        );
    }
}
