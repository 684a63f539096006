//! The cluster the live cycle plans for: zones (with their PUE), nodes (a static list from the
//! configuration, overlaid by what the agents registered), and power profiles (through
//! [`ProfileSource`], so that the agents' measured curves can replace the configured ones).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::spec::{ClusterView, accelerator_name};
use crate::scenario::Profile;
use crate::service::{CurveStore, NodeRegistry};

/// A zone the scheduler may place jobs in.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSpec {
    pub name: String,
    /// Facility energy / IT energy.
    pub pue: f64,
}

/// A node known before (or without) its agent registering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub zone: String,
    /// Lower case.
    pub accelerator: String,
    pub gpus: u32,
}

/// Where the planner's power profiles come from. A profile is named
/// `<accelerator>/<workload>`; a job without a profile gets its accelerator's first one in
/// name order.
pub trait ProfileSource: Send + Sync + fmt::Debug {
    /// Every profile known now.
    fn profiles(&self) -> Vec<Profile>;
}

/// Profiles fixed at start-up (the scenario format's `profiles`).
#[derive(Debug, Clone, Default)]
pub struct StaticProfiles(pub Vec<Profile>);

impl ProfileSource for StaticProfiles {
    fn profiles(&self) -> Vec<Profile> {
        self.0.clone()
    }
}

/// The agents' measured curves, then the configured profiles no curve has replaced (by
/// name): what `offpeak serve` plans with.
#[derive(Debug)]
struct MeasuredFirst {
    curves: CurveStore,
    configured: Arc<dyn ProfileSource>,
}

impl ProfileSource for MeasuredFirst {
    fn profiles(&self) -> Vec<Profile> {
        let mut out = self.curves.profiles();
        for p in self.configured.profiles() {
            if !out.iter().any(|m| m.name.eq_ignore_ascii_case(&p.name)) {
                out.push(p);
            }
        }
        out
    }
}

/// Layers the agents' curves over `configured`.
pub fn measured_first(
    curves: CurveStore,
    configured: Arc<dyn ProfileSource>,
) -> Arc<dyn ProfileSource> {
    Arc::new(MeasuredFirst { curves, configured })
}

/// The profile a job without one gets on `accelerator`: the first `<accelerator>/...` in name
/// order.
pub fn default_profile(profiles: &[Profile], accelerator: &str) -> Option<usize> {
    profiles
        .iter()
        .enumerate()
        .filter(|(_, p)| profile_accelerator(p).as_deref() == Some(accelerator))
        .min_by(|a, b| a.1.name.cmp(&b.1.name))
        .map(|(i, _)| i)
}

/// The accelerator a profile belongs to, by its name.
pub fn profile_accelerator(profile: &Profile) -> Option<String> {
    profile
        .name
        .split_once('/')
        .map(|(a, _)| accelerator_name(a))
}

/// The nodes now: the static ones, each replaced by its agent's registration when there is
/// one, and the other registered nodes. A registered node has as many GPUs as devices, of its
/// most common device model. Sorted by name.
pub fn current_nodes(static_nodes: &[NodeSpec], registry: &NodeRegistry) -> Vec<NodeSpec> {
    let mut nodes: BTreeMap<String, NodeSpec> = static_nodes
        .iter()
        .map(|n| (n.name.clone(), n.clone()))
        .collect();
    for (_, name, zone, models) in registry.nodes() {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for m in &models {
            *counts.entry(accelerator_name(m)).or_default() += 1;
        }
        let Some((accelerator, _)) = counts.iter().max_by_key(|(_, c)| **c) else {
            continue;
        };
        nodes.insert(
            name.clone(),
            NodeSpec {
                name,
                zone,
                accelerator: accelerator.clone(),
                gpus: models.len() as u32,
            },
        );
    }
    nodes.into_values().collect()
}

/// What submissions are checked against.
pub fn view(nodes: &[NodeSpec], profiles: &[Profile]) -> ClusterView {
    let mut accelerators: BTreeMap<String, u32> = BTreeMap::new();
    for n in nodes {
        let e = accelerators.entry(n.accelerator.clone()).or_default();
        *e = (*e).max(n.gpus);
    }
    ClusterView {
        accelerators,
        profiles: profiles.iter().map(|p| p.name.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use offpeak_proto::v1::{Device, RegisterRequest};

    use super::*;
    use crate::scenario::ProfilePoint;
    use crate::units::Watts;

    fn profile(name: &str) -> Profile {
        Profile {
            name: name.into(),
            points: vec![ProfilePoint {
                power_limit: Watts(250.0),
                throughput: 1.0,
                draw: Watts(200.0),
            }],
        }
    }

    #[test]
    fn registered_nodes_overlay_the_static_list() {
        let static_nodes = vec![
            NodeSpec {
                name: "n1".into(),
                zone: "A".into(),
                accelerator: "v100".into(),
                gpus: 8,
            },
            NodeSpec {
                name: "n2".into(),
                zone: "A".into(),
                accelerator: "v100".into(),
                gpus: 8,
            },
        ];
        let registry = NodeRegistry::new();
        let devices = (0..4)
            .map(|i| Device {
                uuid: format!("g{i}"),
                model: "A100".into(),
                ..Device::default()
            })
            .collect();
        registry
            .register(&RegisterRequest {
                node: "n2".into(),
                zone: "B".into(),
                devices,
            })
            .expect("register");
        let nodes = current_nodes(&static_nodes, &registry);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].zone, "B");
        assert_eq!(nodes[1].accelerator, "a100");
        assert_eq!(nodes[1].gpus, 4);
        let v = view(&nodes, &[]);
        assert_eq!(v.accelerators.get("a100"), Some(&4));
    }

    #[test]
    fn the_default_profile_is_the_first_of_its_accelerator() {
        let ps = vec![
            profile("v100/zeta"),
            profile("a100/x"),
            profile("V100/alpha"),
        ];
        assert_eq!(default_profile(&ps, "v100"), Some(2));
        assert_eq!(default_profile(&ps, "h100"), None);
        assert_eq!(profile_accelerator(&ps[2]).as_deref(), Some("v100"));
    }
}
