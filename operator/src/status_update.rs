//! Building a job's next status (pure): conditions that keep their transition time while
//! their status holds, the plan as shown by `kubectl get tj`, and the Event a phase change
//! deserves.
//!
//! Conditions: `Valid` (the object can be submitted), `Submitted` (the scheduler has the job
//! and a plan for it), `Running`, `Suspended`, `Complete`, `Failed` (from the phase).

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use offpeak_proto::v1::{JobPlan, PlanPhase};

use crate::crd::{JobPhase, MeteredStatus, PlanStatus, PlannedNode};
use crate::decide::PhaseDetail;

pub const VALID: &str = "Valid";
pub const SUBMITTED: &str = "Submitted";
pub const RUNNING: &str = "Running";
pub const SUSPENDED: &str = "Suspended";
pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";

/// A condition's new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl ConditionUpdate {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Sets a condition, keeping its `lastTransitionTime` when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let status = if update.status { "True" } else { "False" };
    let existing = conditions.iter_mut().find(|c| c.type_ == update.type_);
    let since = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(to_timestamp(now)),
    };
    let condition = Condition {
        type_: update.type_.to_string(),
        status: status.to_string(),
        reason: update.reason,
        message: update.message,
        observed_generation: generation,
        last_transition_time: since,
    };
    match existing {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

/// The four conditions that follow from the phase.
pub fn phase_conditions(d: &PhaseDetail) -> [ConditionUpdate; 4] {
    let is = |p: JobPhase| d.phase == p;
    let cond = |type_, on: bool| {
        if on {
            ConditionUpdate::new(type_, true, d.reason, d.message.clone())
        } else {
            ConditionUpdate::new(type_, false, phase_name(d.phase), "")
        }
    };
    [
        cond(RUNNING, is(JobPhase::Running)),
        cond(SUSPENDED, is(JobPhase::Suspended)),
        cond(COMPLETE, is(JobPhase::Succeeded)),
        cond(FAILED, is(JobPhase::Failed)),
    ]
}

/// The phase's name as it appears in the status.
pub fn phase_name(p: JobPhase) -> &'static str {
    match p {
        JobPhase::Pending => "Pending",
        JobPhase::Starting => "Starting",
        JobPhase::Running => "Running",
        JobPhase::Suspended => "Suspended",
        JobPhase::Succeeded => "Succeeded",
        JobPhase::Failed => "Failed",
        JobPhase::Rejected => "Rejected",
        JobPhase::Invalid => "Invalid",
    }
}

/// An Event to publish about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// The Event a phase change deserves (none when the phase stays).
pub fn transition_event(previous: Option<JobPhase>, now: &PhaseDetail) -> Option<EventSpec> {
    if previous == Some(now.phase) {
        return None;
    }
    let reason = match (previous, now.phase) {
        (Some(JobPhase::Suspended), JobPhase::Starting) => "Resuming",
        (None, JobPhase::Pending) => "Submitted",
        (_, phase) => phase_name(phase),
    };
    let warning = matches!(
        now.phase,
        JobPhase::Failed | JobPhase::Rejected | JobPhase::Invalid
    );
    Some(EventSpec {
        warning,
        reason: reason.to_string(),
        note: now.message.clone(),
    })
}

/// The plan as the status shows it (money rounded to cents, carbon to grams).
pub fn plan_status(plan: &JobPlan) -> PlanStatus {
    let at = |unix: i64| {
        (unix > 0)
            .then(|| DateTime::from_timestamp(unix, 0))
            .flatten()
    };
    let phase = PlanPhase::try_from(plan.phase).unwrap_or(PlanPhase::Unspecified);
    PlanStatus {
        phase: phase
            .as_str_name()
            .trim_start_matches("PLAN_PHASE_")
            .to_string(),
        start: at(plan.start_unix_s),
        end: at(plan.end_unix_s),
        zone: (!plan.zone.is_empty()).then(|| plan.zone.clone()),
        nodes: plan
            .nodes
            .iter()
            .map(|n| PlannedNode {
                node: n.node.clone(),
                gpus: n.gpus,
            })
            .collect(),
        power_limit_watts: (plan.power_limit_watts > 0).then_some(plan.power_limit_watts),
        estimated_cost: round(plan.estimated_cost, 100.0),
        currency: plan.currency.clone(),
        estimated_carbon_kg: round(plan.estimated_carbon_kg, 1000.0),
        estimated_saving: round(plan.estimated_saving, 100.0),
        reason: plan.reason.clone(),
        revision: plan.revision,
    }
}

/// What the scheduler metered on the job's pods so far (energy to the watt-hour, money to the
/// cent, carbon to the gram).
pub fn metered_status(plan: &JobPlan) -> MeteredStatus {
    MeteredStatus {
        energy_kwh: round(plan.metered_it_kwh, 1000.0),
        cost: round(plan.metered_cost, 100.0),
        carbon_kg: round(plan.metered_carbon_kg, 1000.0),
    }
}

fn round(x: f64, per_unit: f64) -> f64 {
    if x.is_finite() {
        (x * per_unit).round() / per_unit
    } else {
        0.0
    }
}

fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).expect("in range")
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            ConditionUpdate::new(RUNNING, false, "Pending", ""),
            Some(1),
            at(100),
        );
        set_condition(
            &mut cs,
            ConditionUpdate::new(RUNNING, false, "Starting", "x"),
            Some(2),
            at(200),
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time.0.as_second(), 100);
        assert_eq!(
            (cs[0].reason.as_str(), cs[0].observed_generation),
            ("Starting", Some(2))
        );
        set_condition(
            &mut cs,
            ConditionUpdate::new(RUNNING, true, "WorkersRunning", ""),
            Some(2),
            at(300),
        );
        assert_eq!(cs[0].status, "True");
        assert_eq!(cs[0].last_transition_time.0.as_second(), 300);
    }

    #[test]
    fn phase_sets_exactly_one_of_its_conditions() {
        let d = PhaseDetail {
            phase: JobPhase::Suspended,
            reason: "PlanSuspended",
            message: "price above cap".into(),
        };
        let cs = phase_conditions(&d);
        let on: Vec<_> = cs.iter().filter(|c| c.status).map(|c| c.type_).collect();
        assert_eq!(on, [SUSPENDED]);
        assert_eq!(cs[1].message, "price above cap");
        assert_eq!(cs[0].reason, "Suspended");
    }

    #[test]
    fn events_on_phase_changes_only() {
        let d = |phase| PhaseDetail {
            phase,
            reason: "r",
            message: "m".into(),
        };
        assert_eq!(
            transition_event(Some(JobPhase::Running), &d(JobPhase::Running)),
            None
        );
        let e = transition_event(Some(JobPhase::Suspended), &d(JobPhase::Starting)).expect("event");
        assert_eq!((e.reason.as_str(), e.warning), ("Resuming", false));
        let e = transition_event(Some(JobPhase::Running), &d(JobPhase::Failed)).expect("event");
        assert_eq!((e.reason.as_str(), e.warning), ("Failed", true));
        let e = transition_event(None, &d(JobPhase::Pending)).expect("event");
        assert_eq!(e.reason, "Submitted");
    }

    #[test]
    fn plan_status_rounds_and_drops_empty_fields() {
        let plan = JobPlan {
            phase: PlanPhase::Planned as i32,
            start_unix_s: 1_800_000_000,
            estimated_cost: 12.3456,
            estimated_carbon_kg: 4.56789,
            estimated_saving: 3.999,
            currency: "EUR".into(),
            revision: 4,
            ..Default::default()
        };
        let s = plan_status(&plan);
        assert_eq!(s.phase, "PLANNED");
        assert_eq!(s.start, Some(at(1_800_000_000)));
        assert_eq!(s.end, None);
        assert_eq!(s.zone, None);
        assert_eq!(s.power_limit_watts, None);
        assert_eq!(s.estimated_cost, 12.35);
        assert_eq!(s.estimated_carbon_kg, 4.568);
        assert_eq!(s.estimated_saving, 4.0);
    }

    #[test]
    fn metered_status_rounds_to_the_watt_hour_cent_and_gram() {
        let plan = JobPlan {
            metered_it_kwh: 12.34567,
            metered_cost: 1.2345,
            metered_carbon_kg: f64::NAN,
            ..Default::default()
        };
        let m = metered_status(&plan);
        assert_eq!((m.energy_kwh, m.cost, m.carbon_kg), (12.346, 1.23, 0.0));
    }
}
