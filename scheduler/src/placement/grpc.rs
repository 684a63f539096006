//! The tonic `PlacementService` over [`Placement`]: converts messages to and from the domain
//! types; errors become a `tonic::Status` in the service's one conversion
//! (`service::grpc`), through [`ServiceError::Placement`].

use std::pin::Pin;

use offpeak_proto::v1::placement_service_server::{PlacementService, PlacementServiceServer};
use offpeak_proto::v1::{
    CancelJobRequest, CancelJobResponse, GetPlanRequest, JobPlan, JobSpec as WireSpec, JobState,
    JobStateAck, JobStateReport, NodeAssignment, PlanPhase, SubmitJobRequest, WatchPlansRequest,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::{JobRequest, Phase, Placement, PlacementError, PlanView, ReportedState};
use crate::service::ServiceError;

/// The gRPC face of [`Placement`].
#[derive(Debug, Clone)]
pub struct PlacementServiceImpl {
    placement: Placement,
}

impl PlacementServiceImpl {
    pub fn new(placement: Placement) -> Self {
        Self { placement }
    }

    /// The tonic service, ready for a router.
    pub fn into_server(self) -> PlacementServiceServer<Self> {
        PlacementServiceServer::new(self)
    }
}

fn status(e: PlacementError) -> Status {
    ServiceError::Placement(e).into()
}

/// The wire spec's content, unchecked.
pub fn job_request(spec: WireSpec) -> JobRequest {
    JobRequest {
        key: spec.key,
        uid: spec.uid,
        namespace: spec.namespace,
        team: spec.team,
        cost_centre: spec.cost_centre,
        workers: spec.workers,
        gpus_per_worker: spec.gpus_per_worker,
        accelerator: spec.accelerator,
        work_hours: spec.work_hours,
        profile: spec.profile,
        submit_unix_s: spec.submit_unix_s,
        deadline_unix_s: spec.deadline_unix_s,
        preemptible: spec.preemptible,
        price_cap_per_mwh: spec.price_cap_per_mwh,
        carbon_cap_g_per_kwh: spec.carbon_cap_g_per_kwh,
        monthly_budget: spec.monthly_budget,
        carbon_price_per_tonne: spec.carbon_price_per_tonne,
        held: spec.held,
    }
}

/// A plan on the wire.
pub fn job_plan(v: PlanView) -> JobPlan {
    let phase = match v.phase {
        Phase::Planned => PlanPhase::Planned,
        Phase::Run => PlanPhase::Run,
        Phase::Suspend => PlanPhase::Suspend,
        Phase::Rejected => PlanPhase::Rejected,
        Phase::Done => PlanPhase::Done,
    };
    JobPlan {
        key: v.key,
        uid: v.uid,
        phase: phase as i32,
        start_unix_s: v.start.map_or(0, |t| t.timestamp()),
        end_unix_s: v.end.map_or(0, |t| t.timestamp()),
        zone: v.zone,
        nodes: v
            .nodes
            .into_iter()
            .map(|(node, gpus)| NodeAssignment { node, gpus })
            .collect(),
        // Profiles hold whole watts (the scenario format checks it).
        power_limit_watts: v.power_limit.map_or(0, |w| w.0.round() as u32),
        estimated_cost: v.estimated_cost.0,
        currency: v.currency,
        estimated_carbon_kg: v.estimated_carbon.0,
        estimated_saving: v.estimated_saving.0,
        signals_degraded: v.signals_degraded,
        reason: v.reason,
        revision: v.revision,
        metered_it_kwh: v.metered.energy.0,
        metered_cost: v.metered.cost.0,
        metered_carbon_kg: v.metered.carbon.0,
    }
}

#[tonic::async_trait]
impl PlacementService for PlacementServiceImpl {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<JobPlan>, Status> {
        let Some(spec) = request.into_inner().job else {
            return Err(status(PlacementError::InvalidSpec {
                key: String::new(),
                field: "job",
                reason: "is missing".into(),
            }));
        };
        let span = tracing::info_span!("submit_job", key = %spec.key, uid = %spec.uid);
        async move {
            let plan = self
                .placement
                .submit(job_request(spec))
                .await
                .inspect_err(|e| {
                    tracing::info!(error = %e, "submission refused");
                });
            Ok(Response::new(job_plan(plan.map_err(status)?)))
        }
        .instrument(span)
        .await
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("cancel_job", key = %r.key, uid = %r.uid);
        async move {
            let known = self
                .placement
                .cancel(&r.key, &r.uid)
                .await
                .map_err(status)?;
            Ok(Response::new(CancelJobResponse { known }))
        }
        .instrument(span)
        .await
    }

    async fn get_plan(
        &self,
        request: Request<GetPlanRequest>,
    ) -> Result<Response<JobPlan>, Status> {
        let key = request.into_inner().key;
        let plan = self.placement.plan(&key).map_err(status)?;
        Ok(Response::new(job_plan(plan)))
    }

    type WatchPlansStream = Pin<Box<dyn Stream<Item = Result<JobPlan, Status>> + Send>>;

    async fn watch_plans(
        &self,
        request: Request<WatchPlansRequest>,
    ) -> Result<Response<Self::WatchPlansStream>, Status> {
        let prefix = request.into_inner().key_prefix;
        let stream = self
            .placement
            .watch(prefix)
            .into_stream()
            .map(|item| item.map(job_plan).map_err(status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_job_state(
        &self,
        request: Request<JobStateReport>,
    ) -> Result<Response<JobStateAck>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("report_job_state", key = %r.key, uid = %r.uid);
        async move {
            let state = match JobState::try_from(r.state) {
                Ok(JobState::Starting) => ReportedState::Starting,
                Ok(JobState::Running) => ReportedState::Running,
                Ok(JobState::Suspended) => ReportedState::Suspended,
                Ok(JobState::Succeeded) => ReportedState::Succeeded,
                Ok(JobState::Failed) => ReportedState::Failed,
                Ok(JobState::Unspecified) | Err(_) => {
                    return Err(status(PlacementError::InvalidReport { key: r.key }));
                }
            };
            self.placement
                .report(&r.key, &r.uid, state, &r.message)
                .await
                .map_err(status)?;
            Ok(Response::new(JobStateAck {}))
        }
        .instrument(span)
        .await
    }
}
