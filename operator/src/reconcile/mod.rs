//! The `TrainingJob` reconciler: `reconcile(job, ctx)` for the controller, idempotent.
//!
//! Layout:
//! - here: [`reconcile`] (finalizer, then [`apply`] or [`cleanup`]) and [`error_policy`]
//!   (per-job exponential backoff);
//! - [`context`]: the shared [`Context`];
//! - [`error`]: [`Error`], one variant per failed operation;
//! - [`scheduler`]: SubmitJob, CancelJob, ReportJobState and what their failures mean;
//! - [`cluster`]: the Kubernetes calls (list pods, carry out steps, status, Events, deletion).
//!
//! One apply pass: check the object and resolve its EnergyPolicies ([`crate::submission`]);
//! submit it when the scheduler has no plan for it or the spec changed; list its pods;
//! [`decide`]; carry the steps out; report a changed job state to the scheduler; publish an
//! Event on a phase change; patch the status if it changed.
//! Objects that cannot run as written get a condition and wait for an edit: no requeue.

pub mod cluster;
pub mod context;
pub mod error;
pub mod scheduler;

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use offpeak_proto::v1::JobPlan;
use tracing::{info, instrument, warn};

pub use context::{Clock, Context, ContextConfig};
pub use error::Error;

use crate::crd::{FINALIZER, JobPhase, TrainingJob, TrainingJobStatus};
use crate::decide::{self, Input};
use crate::policy::{self, Resolved};
use crate::status_update::{self as su, ConditionUpdate};
use crate::submission::{self, InvalidJob, Submission, job_key};
use scheduler::CallFailure;

/// Reconciles one TrainingJob: adds the finalizer, then applies the plan or cleans up.
#[instrument(skip_all, fields(job = %job.name_any(), ns = job.namespace().unwrap_or_default()))]
pub async fn reconcile(job: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = job.namespace().ok_or(Error::MissingNamespace)?;
    let key = job_key(&ns, &job.name_any());
    let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(job) => apply(&job, &ctx).await,
            Finalizer::Cleanup(job) => cleanup(&job, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match &result {
        Ok(_) => {
            ctx.succeeded(&key);
            ctx.metrics.reconciled("ok");
        }
        Err(e) => ctx.metrics.reconciled(e.kind()),
    }
    result
}

/// Retries a failed job with exponential backoff (5 s doubling to 5 min), per job.
pub fn error_policy(job: Arc<TrainingJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = job_key(&job.namespace().unwrap_or_default(), &job.name_any());
    let wait = ctx.backoff(&key);
    warn!(%key, error = %error, retry_in_s = wait.as_secs(), "reconcile failed");
    Action::requeue(wait)
}

/// The status being built in one pass, with what it started from.
struct Pass<'a> {
    job: &'a TrainingJob,
    ctx: &'a Context,
    key: String,
    uid: String,
    old: TrainingJobStatus,
    next: TrainingJobStatus,
}

impl Pass<'_> {
    fn condition(&mut self, update: ConditionUpdate) {
        let generation = self.job.meta().generation;
        su::set_condition(
            &mut self.next.conditions,
            update,
            generation,
            self.ctx.now(),
        );
    }

    /// Sets the phase (with its conditions) and publishes the Event a change deserves.
    async fn settle(&mut self, detail: &decide::PhaseDetail) {
        self.next.phase = Some(detail.phase);
        for update in su::phase_conditions(detail) {
            self.condition(update);
        }
        if let Some(event) = su::transition_event(self.old.phase, detail) {
            info!(key = %self.key, reason = %event.reason, note = %event.note, "phase change");
            cluster::publish(self.ctx, self.job, event).await;
        }
    }

    async fn save(&self) -> Result<(), Error> {
        if self.next == self.old {
            return Ok(());
        }
        cluster::patch_status(self.ctx, self.job, &self.next).await
    }
}

/// The apply branch: submit, decide, act, report, record.
pub async fn apply(job: &TrainingJob, ctx: &Context) -> Result<Action, Error> {
    let old = job.status.clone().unwrap_or_default();
    if old.phase.is_some_and(JobPhase::is_terminal) {
        return Ok(Action::await_change());
    }
    let ns = job.namespace().ok_or(Error::MissingNamespace)?;
    let mut pass = Pass {
        job,
        ctx,
        key: job_key(&ns, &job.name_any()),
        uid: job.uid().unwrap_or_default(),
        next: TrainingJobStatus {
            observed_generation: job.meta().generation,
            ..old.clone()
        },
        old,
    };
    let labels = namespace_labels(ctx, &ns)?;
    let submission = match resolve(job, ctx, &labels).and_then(|resolved| {
        let first = pass.old.submitted_generation.is_none();
        submission::build(job, &resolved, ctx.now(), first)
    }) {
        Ok(s) => s,
        Err(invalid) => return invalid_job(&mut pass, &invalid).await,
    };
    pass.condition(ConditionUpdate::new(su::VALID, true, "Valid", ""));
    pass.next.effective_caps = Some(submission.caps.clone());
    let plan = match plan_for(&mut pass, submission).await? {
        PlanFor::Plan(plan) => plan.map(|p| *p),
        PlanFor::Refused(message) => return refused(&mut pass, message).await,
    };
    if let Some(plan) = &plan {
        pass.next.plan = Some(su::plan_status(plan));
        pass.next.metered = Some(su::metered_status(plan));
        pass.next.signals_degraded = plan.signals_degraded;
    }
    let pods = cluster::list_pods(ctx, job).await?;
    let input = Input {
        job,
        plan: plan.as_ref(),
        pods: &pods,
        now: ctx.now(),
        settings: &ctx.settings,
    };
    let outcome = decide::decide(input, pass.old.phase);
    cluster::execute(ctx, job, outcome.steps).await?;
    pass.next.workers = Some(outcome.workers);
    report(&mut pass, outcome.report, &outcome.detail.message).await;
    pass.settle(&outcome.detail).await;
    pass.save().await?;
    Ok(outcome
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// The labels of namespace `ns`, when some EnergyPolicy selects namespaces by label. A namespace
/// missing from the cache is an error (retried), not an empty label set: guessing could leave
/// out a cap that applies.
fn namespace_labels(ctx: &Context, ns: &str) -> Result<BTreeMap<String, String>, Error> {
    let selective = ctx
        .policies
        .state()
        .iter()
        .any(|p| p.spec.namespace_selector.is_some());
    if !selective {
        return Ok(BTreeMap::new());
    }
    ctx.namespaces
        .get(&ObjectRef::new(ns))
        .map(|n| n.labels().clone())
        .ok_or_else(|| Error::NamespaceUnknown(ns.to_string()))
}

/// The job's EnergyPolicies, resolved against its own caps.
fn resolve(
    job: &TrainingJob,
    ctx: &Context,
    labels: &BTreeMap<String, String>,
) -> Result<Resolved, InvalidJob> {
    let policies: Vec<_> = ctx.policies.state().iter().map(|p| (**p).clone()).collect();
    let matching =
        policy::matching(&policies, labels).map_err(|e| InvalidJob::Policy(e.to_string()))?;
    Ok(policy::resolve(&job.spec, &matching))
}

enum PlanFor {
    // Boxed: a plan is large next to a message.
    Plan(Option<Box<JobPlan>>),
    Refused(String),
}

/// Submits the job when the scheduler has no plan for it or its spec changed, and returns its
/// current plan. A suspended job stays submitted, `held` (a cancelled job cannot come back
/// under the same uid): the scheduler keeps no capacity for it, and the operator holds its pods
/// down and reports it suspended.
async fn plan_for(pass: &mut Pass<'_>, submission: Submission) -> Result<PlanFor, Error> {
    let (ctx, generation) = (pass.ctx, pass.job.meta().generation);
    let cached = ctx.plans.get(&pass.key, &pass.uid);
    if cached.is_some() && pass.old.submitted_generation == generation {
        planned(pass, cached.as_ref());
        return Ok(PlanFor::Plan(cached.map(Box::new)));
    }
    match scheduler::submit(ctx, submission.spec).await {
        Ok(plan) => {
            ctx.plans.upsert(plan.clone());
            let plan = ctx.plans.get(&pass.key, &pass.uid).unwrap_or(plan);
            pass.next.submitted_generation = generation;
            planned(pass, Some(&plan));
            Ok(PlanFor::Plan(Some(Box::new(plan))))
        }
        Err(CallFailure::Refused(message)) => Ok(PlanFor::Refused(message)),
        Err(CallFailure::Unavailable(source)) => {
            let message = format!("the scheduler could not be reached: {}", source.message());
            pass.condition(ConditionUpdate::new(
                su::SUBMITTED,
                false,
                "SchedulerUnavailable",
                message,
            ));
            pass.save().await?;
            Err(Error::SubmitJob {
                key: pass.key.clone(),
                source,
            })
        }
    }
}

/// The Submitted condition for a known plan.
fn planned(pass: &mut Pass<'_>, plan: Option<&JobPlan>) {
    let Some(plan) = plan else { return };
    let rejected = plan.phase == offpeak_proto::v1::PlanPhase::Rejected as i32;
    let message = plan.reason.clone();
    let update = if rejected {
        ConditionUpdate::new(su::SUBMITTED, false, "Rejected", message)
    } else {
        ConditionUpdate::new(su::SUBMITTED, true, "Planned", message)
    };
    pass.condition(update);
}

/// Reports the job's state when it changed since the last report. Best effort: a failure is
/// retried on the next reconcile (the reported state is only recorded once acknowledged).
async fn report(pass: &mut Pass<'_>, state: Option<offpeak_proto::v1::JobState>, message: &str) {
    let Some(state) = state else { return };
    let name = scheduler::state_name(state);
    if pass.old.reported_state.as_deref() == Some(name.as_str()) {
        return;
    }
    match scheduler::report(pass.ctx, &pass.key, &pass.uid, state, message).await {
        Ok(()) => pass.next.reported_state = Some(name),
        Err(e) => {
            warn!(key = %pass.key, state = %name, error = %e, "reporting the job state failed; will retry")
        }
    }
}

/// An object that cannot run as written: condition, Event, no requeue.
async fn invalid_job(pass: &mut Pass<'_>, invalid: &InvalidJob) -> Result<Action, Error> {
    pass.condition(ConditionUpdate::new(
        su::VALID,
        false,
        invalid.reason(),
        invalid.to_string(),
    ));
    let detail = decide::PhaseDetail {
        phase: JobPhase::Invalid,
        reason: invalid.reason(),
        message: invalid.to_string(),
    };
    pass.settle(&detail).await;
    pass.save().await?;
    Ok(Action::await_change())
}

/// The scheduler refused the job as it is: condition, Event, no requeue.
async fn refused(pass: &mut Pass<'_>, message: String) -> Result<Action, Error> {
    let message = format!("the scheduler refused the job: {message}");
    pass.condition(ConditionUpdate::new(
        su::SUBMITTED,
        false,
        "Refused",
        message.clone(),
    ));
    pass.next.plan = None;
    let detail = decide::PhaseDetail {
        phase: JobPhase::Rejected,
        reason: "Refused",
        message,
    };
    pass.settle(&detail).await;
    pass.save().await?;
    Ok(Action::await_change())
}

/// The cleanup branch (the object is being deleted): take the job out of the scheduler, then
/// delete its pods (gracefully) and its Service. The finalizer is removed after this succeeds.
pub async fn cleanup(job: &TrainingJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().ok_or(Error::MissingNamespace)?;
    let key = job_key(&ns, &job.name_any());
    let uid = job.uid().unwrap_or_default();
    let submitted = job
        .status
        .as_ref()
        .is_some_and(|s| s.submitted_generation.is_some());
    if submitted || ctx.plans.get(&key, &uid).is_some() {
        scheduler::cancel(ctx, &key, &uid)
            .await
            .map_err(|source| Error::CancelJob {
                key: key.clone(),
                source,
            })?;
    }
    ctx.plans.remove(&key);
    cluster::delete_all(ctx, job).await?;
    info!(%key, "cleaned up");
    Ok(Action::await_change())
}
