//! The operator's view of the scheduler's plans.
//!
//! Layout:
//! - here: [`PlanCache`], the latest plan of each job by key, which the reconciler reads (tests
//!   seed it directly);
//! - [`watch`]: the task that keeps the cache filled from the scheduler's `WatchPlans` stream
//!   and asks the controller to reconcile a job whenever its plan changes.

pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use kube::runtime::reflector::ObjectRef;
use offpeak_proto::v1::JobPlan;

use crate::crd::TrainingJob;

/// The latest plan of each job, keyed `namespace/name`. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct PlanCache {
    plans: Arc<RwLock<HashMap<String, JobPlan>>>,
}

impl PlanCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The plan of job `key` if it is about the object with `uid` (a plan for an earlier object
    /// of the same name is not this job's).
    pub fn get(&self, key: &str, uid: &str) -> Option<JobPlan> {
        let plans = self.plans.read().unwrap_or_else(PoisonError::into_inner);
        plans.get(key).filter(|p| p.uid == uid).cloned()
    }

    /// Stores `plan` unless the cache holds a newer revision for the same object; returns
    /// whether anything changed.
    pub fn upsert(&self, plan: JobPlan) -> bool {
        let mut plans = self.plans.write().unwrap_or_else(PoisonError::into_inner);
        match plans.get(&plan.key) {
            Some(old) if old.uid == plan.uid && old.revision > plan.revision => false,
            Some(old) if *old == plan => false,
            _ => {
                plans.insert(plan.key.clone(), plan);
                true
            }
        }
    }

    /// Forgets job `key`.
    pub fn remove(&self, key: &str) {
        let mut plans = self.plans.write().unwrap_or_else(PoisonError::into_inner);
        plans.remove(key);
    }

    /// Forgets everything (the scheduler's stream restarted: it may have lost jobs).
    pub fn clear(&self) {
        let mut plans = self.plans.write().unwrap_or_else(PoisonError::into_inner);
        plans.clear();
    }

    /// Number of plans held.
    pub fn len(&self) -> usize {
        self.plans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The TrainingJob a scheduler key names, if the key is `namespace/name`.
pub fn object_ref(key: &str) -> Option<ObjectRef<TrainingJob>> {
    let (namespace, name) = key.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty()).then(|| ObjectRef::new(name).within(namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(key: &str, uid: &str, revision: u64) -> JobPlan {
        JobPlan {
            key: key.into(),
            uid: uid.into(),
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_newest_revision_and_checks_the_uid() {
        let cache = PlanCache::new();
        assert!(cache.upsert(plan("ml/a", "u1", 2)));
        assert!(!cache.upsert(plan("ml/a", "u1", 1)), "older revision");
        assert!(!cache.upsert(plan("ml/a", "u1", 2)), "same plan");
        assert_eq!(cache.get("ml/a", "u1").map(|p| p.revision), Some(2));
        assert!(cache.get("ml/a", "u0").is_none(), "other object");
        // A re-created object replaces the old one's plan whatever the revision.
        assert!(cache.upsert(plan("ml/a", "u2", 1)));
        assert_eq!(cache.get("ml/a", "u2").map(|p| p.revision), Some(1));
        cache.remove("ml/a");
        assert!(cache.is_empty());
    }

    #[test]
    fn keys_name_objects() {
        let r = object_ref("ml/bert").expect("key");
        assert_eq!(r.name, "bert");
        assert_eq!(r.namespace.as_deref(), Some("ml"));
        assert!(object_ref("bert").is_none());
        assert!(object_ref("/bert").is_none());
    }
}
