//! The placement calls a reconcile makes, and what their failures mean for the job: a refusal
//! (the scheduler read the job and said no) is the job's problem, shown as a condition and not
//! retried; anything else is the scheduler's, retried with backoff.

use offpeak_proto::v1::{
    CancelJobRequest, JobPlan, JobSpec, JobState, JobStateReport, SubmitJobRequest,
};
use tonic::Code;

use super::Context;

/// How a placement call failed.
#[derive(Debug, Clone)]
pub enum CallFailure {
    /// The scheduler refused the request as it is (retrying the same request cannot help).
    Refused(String),
    /// The scheduler could not be reached or failed; retry later.
    Unavailable(tonic::Status),
}

impl CallFailure {
    fn from_status(status: tonic::Status) -> Self {
        match status.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                Self::Refused(status.message().to_string())
            }
            _ => Self::Unavailable(status),
        }
    }
}

/// Submits (or updates) a job; the scheduler answers with its current plan.
pub async fn submit(ctx: &Context, spec: JobSpec) -> Result<JobPlan, CallFailure> {
    let mut client = ctx.placement.clone();
    match client
        .submit_job(SubmitJobRequest { job: Some(spec) })
        .await
    {
        Ok(plan) => Ok(plan.into_inner()),
        Err(status) => {
            ctx.metrics.scheduler_failure("SubmitJob");
            Err(CallFailure::from_status(status))
        }
    }
}

/// Takes a job out of planning. Unknown keys are fine (idempotent).
pub async fn cancel(ctx: &Context, key: &str, uid: &str) -> Result<(), tonic::Status> {
    let mut client = ctx.placement.clone();
    let request = CancelJobRequest {
        key: key.to_string(),
        uid: uid.to_string(),
    };
    client
        .cancel_job(request)
        .await
        .map(|_| ())
        .inspect_err(|_| {
            ctx.metrics.scheduler_failure("CancelJob");
        })
}

/// Tells the scheduler what the job's pods do.
pub async fn report(
    ctx: &Context,
    key: &str,
    uid: &str,
    state: JobState,
    message: &str,
) -> Result<(), tonic::Status> {
    let mut client = ctx.placement.clone();
    let report = JobStateReport {
        key: key.to_string(),
        uid: uid.to_string(),
        state: state as i32,
        message: message.to_string(),
    };
    client
        .report_job_state(report)
        .await
        .map(|_| ())
        .inspect_err(|_| ctx.metrics.scheduler_failure("ReportJobState"))
}

/// A job state's name without the enum prefix (`RUNNING`), as kept in the status.
pub fn state_name(state: JobState) -> String {
    state
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_string()
}
