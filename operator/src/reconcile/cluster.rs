//! The Kubernetes API calls a reconcile makes: list the job's pods, carry out the decided
//! steps, patch the status, publish Events, and delete everything on cleanup.

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error};
use crate::crd::{GANG_GATE, TrainingJob, TrainingJobStatus};
use crate::decide::Step;
use crate::status_update::EventSpec;
use crate::workload;

fn job_name(job: &TrainingJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

fn pods(ctx: &Context, job: &TrainingJob) -> Api<Pod> {
    Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default())
}

fn services(ctx: &Context, job: &TrainingJob) -> Api<Service> {
    Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default())
}

/// Not found is what a delete wants.
fn gone<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The job's pods (by its uid label).
pub async fn list_pods(ctx: &Context, job: &TrainingJob) -> Result<Vec<Pod>, Error> {
    let params = ListParams::default().labels(&workload::selector_string(job));
    let list = pods(ctx, job)
        .list(&params)
        .await
        .map_err(|source| Error::ListPods {
            job: job_name(job),
            source,
        })?;
    Ok(list.items)
}

/// Carries out the steps in order; stops at the first failure (the next reconcile resumes).
pub async fn execute(ctx: &Context, job: &TrainingJob, steps: Vec<Step>) -> Result<(), Error> {
    let apply = PatchParams::apply(&ctx.field_manager);
    for step in steps {
        match step {
            Step::ApplyService(svc) => {
                let name = svc.name_any();
                services(ctx, job)
                    .patch(&name, &apply, &Patch::Apply(&*svc))
                    .await
                    .map_err(|source| Error::ApplyService { name, source })?;
            }
            Step::ApplyPod(pod) => {
                let name = pod.name_any();
                pods(ctx, job)
                    .patch(&name, &apply, &Patch::Apply(&*pod))
                    .await
                    .map_err(|source| Error::ApplyPod { name, source })?;
                ctx.metrics.pod_change("created");
            }
            Step::ReleasePod(name) => {
                // Strategic merge removes only our gate, not gates others may have added.
                let patch =
                    json!({"spec": {"schedulingGates": [{"name": GANG_GATE, "$patch": "delete"}]}});
                pods(ctx, job)
                    .patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
                    .await
                    .map_err(|source| Error::ReleasePod { name, source })?;
                ctx.metrics.pod_change("released");
            }
            Step::DeletePod {
                name,
                grace_seconds,
            } => {
                let params = DeleteParams {
                    grace_period_seconds: Some(grace_seconds),
                    ..Default::default()
                };
                gone(pods(ctx, job).delete(&name, &params).await)
                    .map_err(|source| Error::DeletePod { name, source })?;
                ctx.metrics.pod_change("deleted");
            }
        }
    }
    Ok(())
}

/// Server-side applies the whole status (fields left out are dropped).
pub async fn patch_status(
    ctx: &Context,
    job: &TrainingJob,
    status: &TrainingJobStatus,
) -> Result<(), Error> {
    let api: Api<TrainingJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let patch = Patch::Apply(json!({
        "apiVersion": "offpeak.dev/v1alpha1",
        "kind": "TrainingJob",
        "status": status,
    }));
    // Forced: the status is the operator's alone.
    let params = PatchParams::apply(&ctx.field_manager).force();
    api.patch_status(&job.name_any(), &params, &patch)
        .await
        .map(|_| ())
        .map_err(|source| Error::PatchStatus {
            job: job_name(job),
            source,
        })
}

/// Publishes an Event about the job; a failure is logged, not fatal (Events are advisory).
pub async fn publish(ctx: &Context, job: &TrainingJob, event: EventSpec) {
    let ev = Event {
        type_: if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: event.reason,
        note: Some(event.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &job.object_ref(&())).await {
        tracing::warn!(job = %job_name(job), error = %e, "publishing an event failed");
    }
}

/// Deletes every pod and the Service of the job (graceful for the pods).
pub async fn delete_all(ctx: &Context, job: &TrainingJob) -> Result<(), Error> {
    let selector = workload::selector_string(job);
    let params = DeleteParams {
        grace_period_seconds: Some(workload::grace_seconds(job)),
        ..Default::default()
    };
    pods(ctx, job)
        .delete_collection(&params, &ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::DeletePods {
            job: job_name(job),
            source,
        })?;
    // The Service goes by name, but only if it is this job's (its uid label).
    let name = workload::service_name(&job.name_any());
    let svc = services(ctx, job).get_opt(&name).await;
    let svc = svc.map_err(|source| Error::DeleteService {
        name: name.clone(),
        source,
    })?;
    if svc.is_some_and(|s| s.labels().get(crate::crd::LABEL_JOB_UID) == job.uid().as_ref()) {
        gone(
            services(ctx, job)
                .delete(&name, &DeleteParams::default())
                .await,
        )
        .map_err(|source| Error::DeleteService { name, source })?;
    }
    Ok(())
}
