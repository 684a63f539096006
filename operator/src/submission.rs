//! From a `TrainingJob` and its resolved policies to the scheduler's `JobSpec`, with the checks
//! the schema cannot make (the clock, the launcher's reserved environment). A failed check is
//! an [`InvalidJob`]: the reconciler shows it as the `Valid` condition and waits for an edit,
//! it does not retry.

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use offpeak_proto::v1::JobSpec;
use thiserror::Error;

use crate::LAUNCHER_ENV;
use crate::crd::{EffectiveCaps, TrainingJob};
use crate::policy::Resolved;

/// Why a job that passed the schema cannot be submitted as written.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum InvalidJob {
    #[error("the object has no {0} (only objects read from the API server can be submitted)")]
    MissingMetadata(&'static str),
    #[error(
        "no deadline: set spec.deadline or spec.maxDelay, or have an EnergyPolicy with \
         defaultMaxDelay select namespace {namespace:?}"
    )]
    NoDeadline { namespace: String },
    #[error("the deadline {deadline} is already past (now {now})")]
    DeadlineInPast {
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("spec.maxDelay {0} is negative")]
    NegativeMaxDelay(String),
    #[error("the deadline {deadline} is too far in the future to represent")]
    DeadlineOutOfRange { deadline: String },
    #[error("spec.env sets {name}, which the operator sets for the launcher; remove it")]
    ReservedEnv { name: String },
    #[error("{0}")]
    Policy(String),
}

impl InvalidJob {
    /// The condition reason (CamelCase, stable).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingMetadata(_) => "MissingMetadata",
            Self::NoDeadline { .. } => "NoDeadline",
            Self::DeadlineInPast { .. } => "DeadlineInPast",
            Self::NegativeMaxDelay(_) => "NegativeMaxDelay",
            Self::DeadlineOutOfRange { .. } => "DeadlineOutOfRange",
            Self::ReservedEnv { .. } => "ReservedEnv",
            Self::Policy(_) => "InvalidEnergyPolicy",
        }
    }
}

/// The scheduler's key of a job: `namespace/name`.
pub fn job_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What is sent to the scheduler, and the caps it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub spec: JobSpec,
    pub caps: EffectiveCaps,
}

/// Builds the scheduler's view of `job`. `first_submission` enables the checks that only make
/// sense before the job was accepted (a deadline already past): a job that was accepted and
/// then misses its deadline is the scheduler's business, not an invalid object.
pub fn build(
    job: &TrainingJob,
    resolved: &Resolved,
    now: DateTime<Utc>,
    first_submission: bool,
) -> Result<Submission, InvalidJob> {
    let spec = &job.spec;
    if let Some(var) = spec
        .env
        .iter()
        .find(|v| LAUNCHER_ENV.contains(&v.name.as_str()))
    {
        return Err(InvalidJob::ReservedEnv {
            name: var.name.clone(),
        });
    }
    let namespace = job
        .namespace()
        .ok_or(InvalidJob::MissingMetadata("namespace"))?;
    let uid = job.uid().ok_or(InvalidJob::MissingMetadata("uid"))?;
    let created = job
        .creation_timestamp()
        .ok_or(InvalidJob::MissingMetadata("creationTimestamp"))?;
    let submitted = created.0.as_second();
    let deadline = deadline(job, resolved, submitted, &namespace)?;
    if first_submission && deadline <= now.timestamp() {
        return Err(InvalidJob::DeadlineInPast {
            deadline: DateTime::from_timestamp(deadline, 0).unwrap_or(now),
            now,
        });
    }
    let caps = EffectiveCaps {
        price_cap_per_mwh: resolved.price_cap_per_mwh,
        carbon_cap_g_per_kwh: resolved.carbon_cap_g_per_kwh,
        policies: resolved.policies.clone(),
    };
    let spec = JobSpec {
        key: job_key(&namespace, &job.name_any()),
        uid,
        namespace,
        team: spec.team.clone().unwrap_or_default(),
        cost_centre: spec.cost_centre.clone().unwrap_or_default(),
        workers: spec.workers,
        gpus_per_worker: spec.gpus_per_worker,
        accelerator: spec.accelerator.clone().unwrap_or_default(),
        // Zero: the work comes from the profile (the schema requires one of the two).
        work_hours: spec.work_hours.unwrap_or(0.0),
        profile: spec
            .profile_ref
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        submit_unix_s: submitted,
        deadline_unix_s: deadline,
        preemptible: spec.preemptible,
        price_cap_per_mwh: caps.price_cap_per_mwh,
        carbon_cap_g_per_kwh: caps.carbon_cap_g_per_kwh,
        monthly_budget: resolved.monthly_budget,
        carbon_price_per_tonne: resolved.carbon_price_per_tonne,
        // A suspended job stays submitted (a cancelled one could not come back under its
        // uid), held: the scheduler keeps no capacity for it until it is resumed.
        held: spec.suspend,
    };
    Ok(Submission { spec, caps })
}

/// The absolute deadline in Unix seconds: the job's own, else creation plus its maxDelay, else
/// creation plus the policies' default.
fn deadline(
    job: &TrainingJob,
    resolved: &Resolved,
    submitted: i64,
    namespace: &str,
) -> Result<i64, InvalidJob> {
    if let Some(deadline) = job.spec.deadline {
        return Ok(deadline.timestamp());
    }
    let delay = match job.spec.max_delay {
        Some(d) if !d.is_negative() => std::time::Duration::from(d),
        Some(d) => return Err(InvalidJob::NegativeMaxDelay(d.to_string())),
        None => resolved.default_max_delay.ok_or(InvalidJob::NoDeadline {
            namespace: namespace.to_string(),
        })?,
    };
    i64::try_from(delay.as_secs())
        .ok()
        .and_then(|s| submitted.checked_add(s))
        .ok_or_else(|| InvalidJob::DeadlineOutOfRange {
            deadline: format!("creation + {}s", delay.as_secs()),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::EnvVar;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::{ProfileRef, TrainingJobSpec};

    const CREATED: i64 = 1_800_000_000;

    fn job(spec: TrainingJobSpec) -> TrainingJob {
        let mut job = TrainingJob::new("bert", spec);
        job.metadata.namespace = Some("ml".into());
        job.metadata.uid = Some("uid-1".into());
        job.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(CREATED).expect("in range")));
        job
    }

    fn at(unix: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(unix, 0).expect("in range")
    }

    fn spec_with_delay(delay: &str) -> TrainingJobSpec {
        let mut spec = TrainingJobSpec::new("img", 2, 4, 10.0);
        spec.max_delay = Some(delay.parse().expect("duration"));
        spec
    }

    #[test]
    fn builds_the_scheduler_spec_with_resolved_caps() {
        let mut spec = spec_with_delay("36h");
        spec.team = Some("nlp".into());
        spec.cost_centre = Some("cc-42".into());
        spec.accelerator = Some("A100".into());
        spec.preemptible = true;
        let resolved = Resolved {
            price_cap_per_mwh: Some(90.0),
            policies: vec!["cluster".into()],
            ..Default::default()
        };
        let s = build(&job(spec), &resolved, at(CREATED + 60), true).expect("valid");
        assert_eq!(s.spec.key, "ml/bert");
        assert_eq!(s.spec.uid, "uid-1");
        assert_eq!(s.spec.workers, 2);
        assert_eq!(s.spec.gpus_per_worker, 4);
        assert_eq!(s.spec.work_hours, 10.0);
        assert_eq!(s.spec.submit_unix_s, CREATED);
        assert_eq!(s.spec.deadline_unix_s, CREATED + 36 * 3600);
        assert_eq!(s.spec.price_cap_per_mwh, Some(90.0));
        assert_eq!(s.spec.carbon_cap_g_per_kwh, None);
        assert_eq!(s.spec.accelerator, "A100");
        assert_eq!(
            (s.spec.team.as_str(), s.spec.cost_centre.as_str()),
            ("nlp", "cc-42")
        );
        assert!(s.spec.preemptible);
        assert_eq!(s.caps.policies, ["cluster"]);
        assert_eq!(
            (s.spec.monthly_budget, s.spec.carbon_price_per_tonne),
            (None, None)
        );
        assert!(!s.spec.held);
    }

    #[test]
    fn budget_carbon_price_and_suspend_reach_the_scheduler() {
        let mut spec = spec_with_delay("36h");
        spec.suspend = true;
        let resolved = Resolved {
            monthly_budget: Some(5000.0),
            carbon_price_per_tonne: Some(120.0),
            ..Default::default()
        };
        let s = build(&job(spec), &resolved, at(CREATED + 60), true).expect("valid");
        assert_eq!(s.spec.monthly_budget, Some(5000.0));
        assert_eq!(s.spec.carbon_price_per_tonne, Some(120.0));
        assert!(s.spec.held, "a suspended job is held");
    }

    #[test]
    fn absolute_deadline_and_profile() {
        let mut spec = TrainingJobSpec::new("img", 1, 1, 1.0);
        spec.work_hours = None;
        spec.profile_ref = Some(ProfileRef {
            name: "llama-7b".into(),
        });
        spec.deadline = Some(at(CREATED + 7200));
        let s = build(&job(spec), &Resolved::default(), at(CREATED), true).expect("valid");
        assert_eq!(s.spec.deadline_unix_s, CREATED + 7200);
        assert_eq!(s.spec.profile, "llama-7b");
        assert_eq!(s.spec.work_hours, 0.0);
    }

    #[test]
    fn policy_default_deadline_applies_only_when_the_job_sets_none() {
        let resolved = Resolved {
            default_max_delay: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let own = build(&job(spec_with_delay("2h")), &resolved, at(CREATED), true);
        assert_eq!(own.expect("valid").spec.deadline_unix_s, CREATED + 7200);
        let none = TrainingJobSpec::new("img", 1, 1, 1.0);
        let s = build(&job(none.clone()), &resolved, at(CREATED), true).expect("valid");
        assert_eq!(s.spec.deadline_unix_s, CREATED + 3600);
        let err = build(&job(none), &Resolved::default(), at(CREATED), true)
            .expect_err("no deadline anywhere");
        assert_eq!(err.reason(), "NoDeadline");
        assert!(err.to_string().contains("\"ml\""), "{err}");
    }

    #[test]
    fn a_past_deadline_is_invalid_only_before_the_first_submission() {
        let mut spec = TrainingJobSpec::new("img", 1, 1, 1.0);
        spec.deadline = Some(at(CREATED - 10));
        let err =
            build(&job(spec.clone()), &Resolved::default(), at(CREATED), true).expect_err("past");
        assert_eq!(err.reason(), "DeadlineInPast");
        assert!(err.to_string().contains("already past"), "{err}");
        // An accepted job that runs late is re-submitted as it is.
        assert!(build(&job(spec), &Resolved::default(), at(CREATED), false).is_ok());
    }

    #[test]
    fn launcher_variables_are_reserved() {
        let mut spec = spec_with_delay("1h");
        spec.env.push(EnvVar {
            name: "WORLD_SIZE".into(),
            value: Some("3".into()),
            ..Default::default()
        });
        let err = build(&job(spec), &Resolved::default(), at(CREATED), true).expect_err("reserved");
        assert_eq!(
            err,
            InvalidJob::ReservedEnv {
                name: "WORLD_SIZE".into()
            }
        );
    }

    #[test]
    fn objects_not_from_the_api_server_are_refused() {
        let bare = TrainingJob::new("x", spec_with_delay("1h"));
        let err = build(&bare, &Resolved::default(), at(CREATED), true).expect_err("bare");
        assert_eq!(err, InvalidJob::MissingMetadata("namespace"));
    }
}
