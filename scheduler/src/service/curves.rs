//! The curve store: power curves per (accelerator model, workload), fed by the `PowerCurve`
//! messages agents send with their batches, and turned into the planner's [`Profile`]s.
//!
//! Each agent's latest curve for a key replaces its previous one (an agent sends everything it
//! has fitted so far, averaged over all its samples). Curves of the same key from several
//! agents are merged limit by limit: each agent that measured a limit weighs the same.
//!
//! A profile is named `<accelerator>/<workload>` with the accelerator the model's lower-case
//! name, as the placement cycle names accelerators of registered nodes; its throughput is
//! relative to the highest measured limit (1.0 there), as the planner expects.
//!
//! Curves are not persisted: agents send theirs again every minute.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use offpeak_proto::v1::PowerCurve;
use thiserror::Error;

use super::metering::MAX_PLAUSIBLE_POWER_WATTS;
use crate::scenario::{Profile, ProfilePoint};
use crate::units::Watts;

/// The most points one curve may have. A Zeus sweep has one point per limit step (7 to 20 on
/// today's GPUs); 256 leaves room for 1 W steps across any GPU's range and stops a runaway
/// agent from filling the scheduler's memory.
pub const MAX_CURVE_POINTS: usize = 256;

/// Why a curve was refused. The label names the reason in metrics.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CurveRejection {
    #[error("the curve names no device model")]
    NoModel,
    #[error("the curve names no workload")]
    NoWorkload,
    #[error("the curve has no points")]
    NoPoints,
    #[error("the curve has {0} points, more than the limit of {MAX_CURVE_POINTS}")]
    TooManyPoints(usize),
    #[error("point at {limit_watts} W: {reason}")]
    BadPoint { limit_watts: u32, reason: String },
    #[error("power limit {0} W appears twice")]
    DuplicateLimit(u32),
}

impl CurveRejection {
    /// A short, stable name for the `reason` label of the rejected-curves counter.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoModel => "no_model",
            Self::NoWorkload => "no_workload",
            Self::NoPoints => "no_points",
            Self::TooManyPoints(_) => "too_many_points",
            Self::BadPoint { .. } => "bad_point",
            Self::DuplicateLimit(_) => "duplicate_limit",
        }
    }
}

/// What a curve is kept for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CurveKey {
    pub model: String,
    pub workload: String,
}

impl CurveKey {
    /// The planner's profile name: `<accelerator>/<workload>`.
    pub fn profile_name(&self) -> String {
        let accelerator = crate::placement::spec::accelerator_name(&self.model);
        format!("{accelerator}/{}", self.workload)
    }
}

/// One checked point: limit (W) → (throughput per second, draw in W).
type Points = BTreeMap<u32, (f64, f64)>;

/// Curves by key, then by the agent that sent them.
#[derive(Debug, Clone, Default)]
pub struct CurveStore {
    curves: Arc<Mutex<BTreeMap<CurveKey, BTreeMap<String, Points>>>>,
}

impl CurveStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<CurveKey, BTreeMap<String, Points>>> {
        // Updates replace one map entry whole; a poisoned lock still guards consistent data.
        self.curves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `agent_id`'s latest curve, replacing what it sent before for the same key.
    pub fn record(&self, agent_id: &str, curve: &PowerCurve) -> Result<CurveKey, CurveRejection> {
        let points = check(curve)?;
        let key = CurveKey {
            model: curve.device_model.clone(),
            workload: curve.workload.clone(),
        };
        self.lock()
            .entry(key.clone())
            .or_default()
            .insert(agent_id.to_owned(), points);
        Ok(key)
    }

    /// The keys with at least one curve.
    pub fn keys(&self) -> Vec<CurveKey> {
        self.lock().keys().cloned().collect()
    }

    /// The merged curve of a key as a planner profile.
    pub fn profile(&self, model: &str, workload: &str) -> Option<Profile> {
        let key = CurveKey {
            model: model.to_owned(),
            workload: workload.to_owned(),
        };
        let curves = self.lock();
        to_profile(&key, curves.get(&key)?)
    }

    /// Every key's merged curve as a planner profile, in key order.
    pub fn profiles(&self) -> Vec<Profile> {
        self.lock()
            .iter()
            .filter_map(|(key, by_agent)| to_profile(key, by_agent))
            .collect()
    }
}

fn check(curve: &PowerCurve) -> Result<Points, CurveRejection> {
    if curve.device_model.trim().is_empty() {
        return Err(CurveRejection::NoModel);
    }
    if curve.workload.trim().is_empty() {
        return Err(CurveRejection::NoWorkload);
    }
    if curve.points.is_empty() {
        return Err(CurveRejection::NoPoints);
    }
    if curve.points.len() > MAX_CURVE_POINTS {
        return Err(CurveRejection::TooManyPoints(curve.points.len()));
    }
    let mut points = Points::new();
    for p in &curve.points {
        let bad = |reason: String| CurveRejection::BadPoint {
            limit_watts: p.power_limit_watts,
            reason,
        };
        if p.power_limit_watts == 0 {
            return Err(bad("a power limit of 0 W".into()));
        }
        if !(p.throughput.is_finite() && p.throughput > 0.0) {
            return Err(bad(format!(
                "throughput {} is not a positive number",
                p.throughput
            )));
        }
        if !(p.watts.is_finite() && p.watts >= 0.0 && p.watts <= MAX_PLAUSIBLE_POWER_WATTS) {
            return Err(bad(format!(
                "draw {} W is not between 0 and {MAX_PLAUSIBLE_POWER_WATTS} W",
                p.watts
            )));
        }
        if points
            .insert(p.power_limit_watts, (p.throughput, p.watts))
            .is_some()
        {
            return Err(CurveRejection::DuplicateLimit(p.power_limit_watts));
        }
    }
    Ok(points)
}

/// Merges the agents' curves limit by limit and scales throughput to the highest limit.
fn to_profile(key: &CurveKey, by_agent: &BTreeMap<String, Points>) -> Option<Profile> {
    let mut sums: BTreeMap<u32, (f64, f64, u32)> = BTreeMap::new();
    for points in by_agent.values() {
        for (&limit, &(throughput, watts)) in points {
            let s = sums.entry(limit).or_default();
            s.0 += throughput;
            s.1 += watts;
            s.2 += 1;
        }
    }
    let merged: Vec<(u32, f64, f64)> = sums
        .into_iter()
        .map(|(limit, (t, w, n))| (limit, t / f64::from(n), w / f64::from(n)))
        .collect();
    let &(_, full_throughput, _) = merged.last()?;
    Some(Profile {
        name: key.profile_name(),
        points: merged
            .into_iter()
            .map(|(limit, throughput, watts)| ProfilePoint {
                power_limit: Watts(f64::from(limit)),
                throughput: throughput / full_throughput,
                draw: Watts(watts),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use offpeak_proto::v1::CurvePoint;

    use super::*;

    fn curve(model: &str, points: &[(u32, f64, f64)]) -> PowerCurve {
        PowerCurve {
            device_model: model.into(),
            workload: "resnet50".into(),
            points: points
                .iter()
                .map(|&(power_limit_watts, throughput, watts)| CurvePoint {
                    power_limit_watts,
                    throughput,
                    watts,
                })
                .collect(),
        }
    }

    #[test]
    fn a_curve_becomes_a_profile_relative_to_its_highest_limit() -> Result<(), CurveRejection> {
        let store = CurveStore::new();
        store.record(
            "a1",
            &curve("Tesla V100", &[(250, 4.0, 220.0), (150, 3.0, 140.0)]),
        )?;
        let p = store
            .profile("Tesla V100", "resnet50")
            .ok_or(CurveRejection::NoPoints)?;
        assert_eq!(p.name, "v100/resnet50");
        assert_eq!(
            p.points,
            vec![
                ProfilePoint {
                    power_limit: Watts(150.0),
                    throughput: 0.75,
                    draw: Watts(140.0)
                },
                ProfilePoint {
                    power_limit: Watts(250.0),
                    throughput: 1.0,
                    draw: Watts(220.0)
                },
            ]
        );
        assert_eq!(p.full_power(), 1);
        Ok(())
    }

    #[test]
    fn agents_curves_are_merged_and_an_agents_new_curve_replaces_its_old()
    -> Result<(), CurveRejection> {
        let store = CurveStore::new();
        store.record("a1", &curve("A40", &[(300, 9.0, 999.0)]))?;
        store.record("a1", &curve("A40", &[(300, 4.0, 290.0), (200, 2.0, 190.0)]))?;
        store.record("a2", &curve("A40", &[(300, 6.0, 300.0)]))?;
        let p = store
            .profile("A40", "resnet50")
            .ok_or(CurveRejection::NoPoints)?;
        // 300 W: (4 + 6) / 2 = 5 per s, (290 + 300) / 2 W; 200 W only from a1.
        assert_eq!(p.points[1].draw, Watts(295.0));
        assert_eq!(p.points[0].throughput, 2.0 / 5.0);
        assert_eq!(store.profiles().len(), 1);
        assert_eq!(store.keys().len(), 1);
        Ok(())
    }

    #[test]
    fn bad_curves_are_refused_with_the_reason_and_leave_nothing() {
        let store = CurveStore::new();
        let cases = [
            (curve("", &[(100, 1.0, 90.0)]), "no_model"),
            (
                PowerCurve {
                    workload: String::new(),
                    ..curve("m", &[(100, 1.0, 90.0)])
                },
                "no_workload",
            ),
            (curve("m", &[]), "no_points"),
            (curve("m", &[(0, 1.0, 90.0)]), "bad_point"),
            (curve("m", &[(100, 0.0, 90.0)]), "bad_point"),
            (curve("m", &[(100, f64::NAN, 90.0)]), "bad_point"),
            (curve("m", &[(100, 1.0, -1.0)]), "bad_point"),
            (curve("m", &[(100, 1.0, 1.0e9)]), "bad_point"),
            (
                curve("m", &[(100, 1.0, 90.0), (100, 2.0, 95.0)]),
                "duplicate_limit",
            ),
            (
                curve("m", &vec![(100, 1.0, 90.0); MAX_CURVE_POINTS + 1]),
                "too_many_points",
            ),
        ];
        for (c, label) in cases {
            let e = store.record("a1", &c).err();
            assert_eq!(e.as_ref().map(CurveRejection::label), Some(label), "{e:?}");
        }
        assert!(store.profiles().is_empty());
    }
}
