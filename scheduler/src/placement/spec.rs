//! A job as the operator submits it ([`JobRequest`], field by field as sent) and as the planner
//! takes it ([`JobSpec`], checked). Every refusal names the field, in the wire contract's
//! spelling, so that the operator can put it on the `TrainingJob`'s condition as it is.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::PlacementError;
use crate::units::{GramsPerKwh, Hours, Money, MoneyPerTonne, PricePerMwh};

/// Longest job accepted: a year of work at full power. Beyond it the job is surely a unit
/// mistake (seconds for hours), and the planner would build a year of slots for it.
const MAX_WORK_HOURS: f64 = 24.0 * 365.0;
/// The most GPUs one gang may hold, as the scenario format allows.
const MAX_GANG_GPUS: u64 = u16::MAX as u64;

/// A submitted job, unchecked: the content of the wire contract's `JobSpec`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobRequest {
    pub key: String,
    pub uid: String,
    pub namespace: String,
    pub team: String,
    pub cost_centre: String,
    pub workers: u32,
    pub gpus_per_worker: u32,
    pub accelerator: String,
    pub work_hours: f64,
    pub profile: String,
    pub submit_unix_s: i64,
    pub deadline_unix_s: i64,
    pub preemptible: bool,
    pub price_cap_per_mwh: Option<f64>,
    pub carbon_cap_g_per_kwh: Option<f64>,
    pub monthly_budget: Option<f64>,
    pub carbon_price_per_tonne: Option<f64>,
    pub held: bool,
}

/// A checked job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// `namespace/name`.
    pub key: String,
    pub uid: String,
    pub namespace: String,
    pub team: String,
    pub cost_centre: String,
    pub workers: u32,
    pub gpus_per_worker: u32,
    /// Lower case; `None`: any accelerator.
    pub accelerator: Option<String>,
    pub work: Hours,
    /// `None`: the accelerator's default profile.
    pub profile: Option<String>,
    pub submit: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub preemptible: bool,
    pub price_cap: Option<PricePerMwh>,
    pub carbon_cap: Option<GramsPerKwh>,
    /// The namespace's monthly energy budget (see `placement::budget`).
    pub monthly_budget: Option<Money>,
    /// The job's own carbon price for its objective; `None`: the scheduler's.
    pub carbon_price: Option<MoneyPerTonne>,
    /// Held by its user: not planned, no capacity kept.
    pub held: bool,
}

impl JobSpec {
    /// GPUs the gang holds.
    pub fn gpus(&self) -> u32 {
        self.workers * self.gpus_per_worker
    }
}

/// What a job is checked against: the accelerators of the cluster's nodes, with the GPUs of
/// the largest node of each, and the names of the profiles known.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Lower-case accelerator name -> GPUs of its largest node.
    pub accelerators: BTreeMap<String, u32>,
    /// Profile names, as the profile source has them.
    pub profiles: Vec<String>,
}

/// Accelerator families a device model name is reduced to, so that what NVML reports ("Tesla
/// V100-SXM2-32GB", "NVIDIA H100 80GB HBM3") matches what users write in a job or a profile
/// ("v100", "h100"). Longer names first where one family's name contains another's.
const ACCELERATOR_FAMILIES: [&str; 16] = [
    "gh200", "h200", "h100", "h800", "b200", "b100", "a100", "a800", "a40", "a30", "a10g", "l40s",
    "l40", "v100", "t4", "l4",
];

/// Normalises an accelerator or device model name for comparison: lower case, and reduced to
/// its family when it names a known one as a word ("Tesla V100 (simulated)", "V100" and "v100"
/// all give "v100"); other names are kept whole, lower-cased.
pub fn accelerator_name(s: &str) -> String {
    let lower = s.trim().to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    ACCELERATOR_FAMILIES
        .iter()
        .find(|f| words.contains(f))
        .map(|f| (*f).to_owned())
        .unwrap_or(lower)
}

impl JobRequest {
    /// Checks the request; `now` stands in for a missing submit time.
    pub fn check(
        &self,
        now: DateTime<Utc>,
        cluster: &ClusterView,
    ) -> Result<JobSpec, PlacementError> {
        let bad = |field: &'static str, reason: String| PlacementError::InvalidSpec {
            key: self.key.clone(),
            field,
            reason,
        };
        let key = self.key.trim();
        match key.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
            _ => {
                return Err(bad(
                    "key",
                    format!("`{key}` is not of the form namespace/name"),
                ));
            }
        }
        if self.uid.trim().is_empty() {
            return Err(bad("uid", "must not be empty".into()));
        }
        if self.workers == 0 {
            return Err(bad("workers", "must be at least 1".into()));
        }
        if self.gpus_per_worker == 0 {
            return Err(bad("gpus_per_worker", "must be at least 1".into()));
        }
        let gpus = u64::from(self.workers) * u64::from(self.gpus_per_worker);
        if gpus > MAX_GANG_GPUS {
            return Err(bad(
                "workers",
                format!("{gpus} GPUs in all is more than the {MAX_GANG_GPUS} a gang may hold"),
            ));
        }
        let w = self.work_hours;
        if !(w.is_finite() && w > 0.0 && w <= MAX_WORK_HOURS) {
            return Err(bad(
                "work_hours",
                format!("{w} must be a positive number of hours, at most {MAX_WORK_HOURS}"),
            ));
        }
        let submit = match self.submit_unix_s {
            0 => now,
            s => instant(s)
                .ok_or_else(|| bad("submit_unix_s", format!("{s} is not a time after 1970")))?,
        };
        let deadline = match self.deadline_unix_s {
            0 => return Err(bad("deadline_unix_s", "is required".into())),
            s => instant(s)
                .ok_or_else(|| bad("deadline_unix_s", format!("{s} is not a time after 1970")))?,
        };
        if deadline <= submit {
            return Err(bad(
                "deadline_unix_s",
                format!(
                    "the deadline {} is not after the submit time {}",
                    deadline.to_rfc3339(),
                    submit.to_rfc3339()
                ),
            ));
        }
        let price_cap = match self.price_cap_per_mwh {
            Some(c) if !c.is_finite() => {
                return Err(bad("price_cap_per_mwh", format!("{c} is not a number")));
            }
            Some(c) if c < 0.0 => {
                return Err(bad("price_cap_per_mwh", format!("{c} is below zero")));
            }
            c => c.map(PricePerMwh),
        };
        let non_negative = |field: &'static str, v: Option<f64>| match v {
            Some(c) if !(c.is_finite() && c >= 0.0) => {
                Err(bad(field, format!("{c} must be a number, zero or more")))
            }
            c => Ok(c),
        };
        let carbon_cap =
            non_negative("carbon_cap_g_per_kwh", self.carbon_cap_g_per_kwh)?.map(GramsPerKwh);
        let monthly_budget = non_negative("monthly_budget", self.monthly_budget)?.map(Money);
        let carbon_price =
            non_negative("carbon_price_per_tonne", self.carbon_price_per_tonne)?.map(MoneyPerTonne);
        let accelerator = match accelerator_name(&self.accelerator) {
            a if a.is_empty() => None,
            a => Some(a),
        };
        let largest = match &accelerator {
            Some(a) => *cluster.accelerators.get(a).ok_or_else(|| {
                bad(
                    "accelerator",
                    format!(
                        "unknown accelerator `{}`: no node has it (known: {})",
                        self.accelerator.trim(),
                        list(cluster.accelerators.keys())
                    ),
                )
            })?,
            None => cluster.accelerators.values().copied().max().unwrap_or(0),
        };
        if self.gpus_per_worker > largest {
            return Err(bad(
                "gpus_per_worker",
                format!(
                    "{} is more than any node has (the largest {}node has {largest})",
                    self.gpus_per_worker,
                    accelerator
                        .as_ref()
                        .map(|a| format!("{a} "))
                        .unwrap_or_default()
                ),
            ));
        }
        let profile = match self.profile.trim() {
            "" => None,
            p => Some(
                cluster
                    .profiles
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(p))
                    .cloned()
                    .ok_or_else(|| {
                        bad(
                            "profile",
                            format!(
                                "unknown profile `{p}` (known: {})",
                                list(cluster.profiles.iter())
                            ),
                        )
                    })?,
            ),
        };
        Ok(JobSpec {
            key: key.to_owned(),
            uid: self.uid.trim().to_owned(),
            namespace: self.namespace.clone(),
            team: self.team.clone(),
            cost_centre: self.cost_centre.clone(),
            workers: self.workers,
            gpus_per_worker: self.gpus_per_worker,
            accelerator,
            work: Hours(w),
            profile,
            submit,
            deadline,
            preemptible: self.preemptible,
            price_cap,
            carbon_cap,
            monthly_budget,
            carbon_price,
            held: self.held,
        })
    }
}

fn instant(unix_s: i64) -> Option<DateTime<Utc>> {
    (unix_s > 0)
        .then(|| DateTime::<Utc>::from_timestamp(unix_s, 0))
        .flatten()
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_models_reduce_to_their_accelerator_family() {
        for (model, family) in [
            ("Tesla V100-SXM2-32GB", "v100"),
            ("Tesla V100 (simulated)", "v100"),
            ("NVIDIA H100 80GB HBM3", "h100"),
            ("NVIDIA A100-SXM4-40GB", "a100"),
            ("NVIDIA L40S", "l40s"),
            ("V100", "v100"),
            (" tpu-v5e ", "tpu-v5e"),
        ] {
            assert_eq!(accelerator_name(model), family, "{model}");
        }
    }

    fn cluster() -> ClusterView {
        ClusterView {
            accelerators: [("v100".to_owned(), 8), ("a100".to_owned(), 4)].into(),
            profiles: vec!["v100/resnet50".to_owned()],
        }
    }

    fn request() -> JobRequest {
        JobRequest {
            key: "ml/train".into(),
            uid: "u1".into(),
            workers: 2,
            gpus_per_worker: 4,
            accelerator: "V100".into(),
            work_hours: 2.0,
            submit_unix_s: 1_704_067_200,
            deadline_unix_s: 1_704_067_200 + 86_400,
            ..JobRequest::default()
        }
    }

    fn field_of(r: &JobRequest) -> &'static str {
        let now = DateTime::<Utc>::from_timestamp(1_704_067_200, 0).expect("time");
        match r.check(now, &cluster()) {
            Err(PlacementError::InvalidSpec { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_good_request_is_accepted_and_normalised() {
        let now = DateTime::<Utc>::from_timestamp(1_704_067_200, 0).expect("time");
        let spec = request().check(now, &cluster()).expect("valid");
        assert_eq!(spec.accelerator.as_deref(), Some("v100"));
        assert_eq!(spec.gpus(), 8);
        assert_eq!(spec.profile, None);
        let mut r = request();
        r.carbon_cap_g_per_kwh = Some(150.0);
        r.monthly_budget = Some(0.0);
        r.carbon_price_per_tonne = Some(90.0);
        r.held = true;
        let spec = r.check(now, &cluster()).expect("valid");
        assert_eq!(spec.carbon_cap, Some(GramsPerKwh(150.0)));
        assert_eq!(spec.monthly_budget, Some(Money(0.0)));
        assert_eq!(spec.carbon_price, Some(MoneyPerTonne(90.0)));
        assert!(spec.held);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Edit = Box<dyn Fn(&mut JobRequest)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("key", Box::new(|r| r.key = "train".into())),
            ("uid", Box::new(|r| r.uid.clear())),
            ("workers", Box::new(|r| r.workers = 0)),
            ("gpus_per_worker", Box::new(|r| r.gpus_per_worker = 0)),
            ("gpus_per_worker", Box::new(|r| r.gpus_per_worker = 9)),
            ("work_hours", Box::new(|r| r.work_hours = f64::NAN)),
            ("work_hours", Box::new(|r| r.work_hours = -1.0)),
            ("deadline_unix_s", Box::new(|r| r.deadline_unix_s = 0)),
            (
                "deadline_unix_s",
                Box::new(|r| r.deadline_unix_s = r.submit_unix_s - 1),
            ),
            (
                "price_cap_per_mwh",
                Box::new(|r| r.price_cap_per_mwh = Some(-1.0)),
            ),
            (
                "carbon_cap_g_per_kwh",
                Box::new(|r| r.carbon_cap_g_per_kwh = Some(-5.0)),
            ),
            (
                "carbon_cap_g_per_kwh",
                Box::new(|r| r.carbon_cap_g_per_kwh = Some(f64::INFINITY)),
            ),
            (
                "monthly_budget",
                Box::new(|r| r.monthly_budget = Some(-1.0)),
            ),
            (
                "monthly_budget",
                Box::new(|r| r.monthly_budget = Some(f64::NAN)),
            ),
            (
                "carbon_price_per_tonne",
                Box::new(|r| r.carbon_price_per_tonne = Some(-80.0)),
            ),
            ("accelerator", Box::new(|r| r.accelerator = "tpu".into())),
            ("profile", Box::new(|r| r.profile = "h100/llama".into())),
            ("submit_unix_s", Box::new(|r| r.submit_unix_s = -5)),
        ];
        for (want, edit) in cases {
            let mut r = request();
            edit(&mut r);
            assert_eq!(field_of(&r), want, "{r:?}");
        }
        // the largest node of the job's accelerator counts, not the largest node overall
        let mut r = request();
        r.accelerator = "a100".into();
        r.gpus_per_worker = 8;
        r.workers = 1;
        assert_eq!(field_of(&r), "gpus_per_worker");
    }
}
