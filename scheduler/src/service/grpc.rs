//! The tonic `AgentService`: registration and sample ingest, plus the single place where a
//! [`ServiceError`] becomes a `tonic::Status`.

use std::future::Future;
use std::sync::Arc;

use offpeak_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use offpeak_proto::v1::{
    AckResponse, Command, CommandAck, CommandsRequest, RegisterRequest, RegisterResponse,
    SampleBatch, StreamSummary,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::admin::Metrics;
use super::registry::NodeRegistry;
use super::{IngestFailure, ServiceError};

/// Every service error reaches a client through here, with a code chosen for what the client
/// should do next: fix its request (`INVALID_ARGUMENT`), register again (`NOT_FOUND`), retry
/// later and replay (`UNAVAILABLE`), or give up on a call that does not exist yet
/// (`UNIMPLEMENTED`).
impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            ServiceError::Register { .. } => Code::InvalidArgument,
            ServiceError::Ingest { reason, .. } => match reason {
                IngestFailure::UnknownAgent => Code::NotFound,
                IngestFailure::ShuttingDown => Code::Unavailable,
                // A broken stream keeps the transport's own code (usually CANCELLED or
                // UNKNOWN), which says more than a code picked here could.
                IngestFailure::Receive(status) => status.code(),
            },
            ServiceError::Commands(_) | ServiceError::ReportAck(_) => Code::Unimplemented,
            // Binding and serving errors never answer a call; should one, it is ours.
            ServiceError::BindGrpc { .. }
            | ServiceError::BindAdmin { .. }
            | ServiceError::ServeGrpc(_)
            | ServiceError::ServeAdmin(_)
            | ServiceError::StartRuntime(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// The service state behind the gRPC handlers.
#[derive(Debug, Clone)]
pub struct AgentServiceImpl {
    registry: NodeRegistry,
    metrics: Arc<Metrics>,
    /// Raised when the server stops, so that open sample streams end instead of holding the
    /// graceful shutdown open forever.
    stop: watch::Receiver<bool>,
}

impl AgentServiceImpl {
    pub fn new(registry: NodeRegistry, metrics: Arc<Metrics>, stop: watch::Receiver<bool>) -> Self {
        Self {
            registry,
            metrics,
            stop,
        }
    }

    fn ingest(&self, batch: &SampleBatch, summary: &mut StreamSummary) -> Result<(), ServiceError> {
        let outcome = self.registry.ingest(batch)?;
        if outcome.duplicates > 0 {
            debug!(
                sequence = batch.sequence,
                samples = outcome.duplicates,
                "replayed batch already metered; skipped"
            );
        }
        for (device, rejection) in &outcome.rejected {
            warn!(sequence = batch.sequence, device = %device, reason = %rejection, "sample rejected");
            self.metrics.rejected(rejection.label());
        }
        let rejected = outcome.rejected.len() as u64;
        self.metrics
            .ingested(outcome.accepted, outcome.duplicates, outcome.energy_mj);
        summary.accepted += outcome.accepted;
        summary.duplicates += outcome.duplicates;
        summary.rejected += rejected;
        Ok(())
    }
}

#[tonic::async_trait]
impl AgentService for AgentServiceImpl {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        let span = info_span!("register", node = %request.node, zone = %request.zone);
        let _entered = span.enter();
        let registration = self.registry.register(&request).inspect_err(|e| {
            warn!(error = %e, "registration refused");
        })?;
        info!(
            agent_id = %registration.agent_id,
            devices = request.devices.len(),
            last_sequence = registration.last_sequence,
            "registered"
        );
        Ok(Response::new(RegisterResponse {
            agent_id: registration.agent_id,
            last_sequence: registration.last_sequence,
        }))
    }

    async fn stream_samples(
        &self,
        request: Request<Streaming<SampleBatch>>,
    ) -> Result<Response<StreamSummary>, Status> {
        let span = info_span!("stream_samples", agent_id = tracing::field::Empty);
        async move {
            let mut stream = request.into_inner();
            let mut stop = self.stop.clone();
            let mut summary = StreamSummary::default();
            let mut agent_id = String::new();
            loop {
                let next = tokio::select! {
                    next = stream.message() => next,
                    _ = stop.wait_for(|stopped| *stopped) => {
                        info!(?summary, "ending the stream: shutting down");
                        return Err(ServiceError::Ingest {
                            agent_id,
                            reason: IngestFailure::ShuttingDown,
                        }
                        .into());
                    }
                };
                let batch = match next {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(status) => {
                        warn!(%status, "sample stream broke");
                        return Err(ServiceError::Ingest {
                            agent_id,
                            reason: IngestFailure::Receive(status),
                        }
                        .into());
                    }
                };
                if agent_id.is_empty() {
                    agent_id.clone_from(&batch.agent_id);
                    tracing::Span::current().record("agent_id", agent_id.as_str());
                }
                self.ingest(&batch, &mut summary).inspect_err(|e| {
                    warn!(error = %e, "batch refused");
                })?;
            }
            debug!(?summary, "stream closed by the agent");
            Ok(Response::new(summary))
        }
        .instrument(span)
        .await
    }

    type CommandsStream = tokio_stream::Empty<Result<Command, Status>>;

    async fn commands(
        &self,
        _request: Request<CommandsRequest>,
    ) -> Result<Response<Self::CommandsStream>, Status> {
        Err(ServiceError::Commands("power-limit commands are not implemented yet").into())
    }

    async fn report_ack(
        &self,
        _request: Request<CommandAck>,
    ) -> Result<Response<AckResponse>, Status> {
        Err(ServiceError::ReportAck("power-limit commands are not implemented yet").into())
    }
}

/// Serves `service` on `listener` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    service: AgentServiceImpl,
    stop: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    tonic::transport::Server::builder()
        .add_service(AgentServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
        .map_err(ServiceError::ServeGrpc)
}
