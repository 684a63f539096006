//! The tonic `AgentService`: registration, sample ingest (energy into the registry, curves
//! into the curve store), the command stream and acknowledgements, plus the single place
//! where a [`ServiceError`] becomes a `tonic::Status`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use offpeak_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use offpeak_proto::v1::{
    AckResponse, Command, CommandAck, CommandsRequest, RegisterRequest, RegisterResponse,
    SampleBatch, StreamSummary,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::admin::Metrics;
use super::commands::{AckFailure, CommandCenter};
use super::curves::CurveStore;
use super::registry::NodeRegistry;
use super::{IngestFailure, ServiceError};
use crate::placement::PlacementError;

/// The largest message the service decodes. A batch of 1,000 samples encodes to about 100 KiB
/// and a node has at most a few dozen devices, so 1 MiB is ten times the largest honest batch
/// while bounding what one misbehaving agent can make the scheduler allocate per message
/// (tonic's own default is 4 MiB). Bigger messages are refused with `OUT_OF_RANGE`.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Commands buffered between the command center and one agent's stream; the center holds at
/// most 256 unacknowledged per agent, so this only absorbs a slow connection.
const COMMAND_STREAM_BUFFER: usize = 64;

/// Every service error reaches a client through here, with a code chosen for what the client
/// should do next: fix its request (`INVALID_ARGUMENT`), register again (`NOT_FOUND`), retry
/// later and replay (`UNAVAILABLE`), or give up.
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
            ServiceError::Commands(f) | ServiceError::ReportAck(f) => match f {
                AckFailure::UnknownAgent(_) | AckFailure::UnknownCommand(_) => Code::NotFound,
                AckFailure::WrongAgent { .. } => Code::InvalidArgument,
            },
            // The agent keeps its batches and replays them once the state can be saved.
            ServiceError::PersistState(_) => Code::Unavailable,
            // The operator fixes the TrainingJob (a condition names the field), looks again
            // after a restart (not found), or retries against the next scheduler.
            ServiceError::Placement(p) => match p {
                PlacementError::InvalidSpec { .. } | PlacementError::InvalidReport { .. } => {
                    Code::InvalidArgument
                }
                PlacementError::UnknownJob { .. } => Code::NotFound,
                PlacementError::ShuttingDown | PlacementError::PlanTimeout(_) => Code::Unavailable,
                PlacementError::OpenStore { .. }
                | PlacementError::ReadStore(_)
                | PlacementError::WriteStore(_)
                | PlacementError::CorruptStore { .. }
                | PlacementError::BuildSignals(_)
                | PlacementError::LoadConfig(_) => Code::Internal,
            },
            // Binding and serving errors never answer a call; should one, it is ours.
            ServiceError::BindGrpc { .. }
            | ServiceError::BindAdmin { .. }
            | ServiceError::ServeGrpc(_)
            | ServiceError::ServeAdmin(_)
            | ServiceError::StartRuntime(_)
            | ServiceError::OpenState(_)
            | ServiceError::OpenLedger(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// The service state behind the gRPC handlers.
#[derive(Debug, Clone)]
pub struct AgentServiceImpl {
    registry: NodeRegistry,
    commands: CommandCenter,
    curves: CurveStore,
    metrics: Arc<Metrics>,
    /// Raised when the server stops, so that open streams end instead of holding the graceful
    /// shutdown open forever.
    stop: watch::Receiver<bool>,
}

impl AgentServiceImpl {
    pub fn new(
        registry: NodeRegistry,
        commands: CommandCenter,
        curves: CurveStore,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            registry,
            commands,
            curves,
            metrics,
            stop,
        }
    }

    fn ingest(&self, batch: &SampleBatch, summary: &mut StreamSummary) -> Result<(), ServiceError> {
        let outcome = self.registry.ingest(batch)?;
        if outcome.replay {
            debug!(
                sequence = batch.sequence,
                samples = outcome.duplicates,
                "replayed batch already metered; skipped"
            );
        } else {
            for curve in &batch.curves {
                match self.curves.record(&batch.agent_id, curve) {
                    Ok(_) => self.metrics.curve(None),
                    Err(rejection) => {
                        warn!(sequence = batch.sequence, model = %curve.device_model, workload = %curve.workload, reason = %rejection, "curve rejected");
                        self.metrics.curve(Some(rejection.label()));
                    }
                }
            }
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

    /// Saves what changed (SQLite, off the async threads). Nothing to do without a store.
    async fn persist(&self) -> Result<(), ServiceError> {
        if !self.registry.is_persistent() {
            return Ok(());
        }
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || registry.persist())
            .await
            .unwrap_or_else(|e| Err(super::store::StoreError::SaveTask(e.to_string())))
            .map(|_| ())
            .map_err(ServiceError::PersistState)
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
        async move {
            let registration = self.registry.register(&request).inspect_err(|e| {
                warn!(error = %e, "registration refused");
            })?;
            self.persist().await.inspect_err(|e| {
                warn!(error = %e, "saving the registration failed");
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
        .instrument(span)
        .await
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
            // Saved before the summary confirms the stream: the agent drops confirmed batches.
            self.persist().await.inspect_err(|e| {
                warn!(error = %e, "not confirming the stream: saving the state failed");
            })?;
            debug!(?summary, "stream closed by the agent");
            Ok(Response::new(summary))
        }
        .instrument(span)
        .await
    }

    type CommandsStream = Pin<Box<ReceiverStream<Result<Command, Status>>>>;

    async fn commands(
        &self,
        request: Request<CommandsRequest>,
    ) -> Result<Response<Self::CommandsStream>, Status> {
        let agent_id = request.into_inner().agent_id;
        let mut subscription = self.commands.subscribe(&agent_id).map_err(|e| {
            warn!(error = %e, "command stream refused");
            ServiceError::Commands(e)
        })?;
        info!(%agent_id, "command stream opened");
        let (tx, rx) = mpsc::channel(COMMAND_STREAM_BUFFER);
        let stopped = super::wait_for_stop(self.stop.clone());
        let center = self.commands.clone();
        let span = info_span!("commands", %agent_id);
        // Forwards until the agent hangs up, the center replaces this stream, or the server
        // stops (a stream left open would hold the graceful shutdown forever).
        tokio::spawn(
            async move {
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        command = subscription.commands.recv() => match command {
                            Some(c) => {
                                if tx.send(Ok(c)).await.is_err() {
                                    break;
                                }
                            }
                            None => break,
                        },
                        () = tx.closed() => break,
                        () = &mut stopped => break,
                    }
                }
                center.unsubscribe(&agent_id, subscription.generation);
                debug!("command stream closed");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_ack(
        &self,
        request: Request<CommandAck>,
    ) -> Result<Response<AckResponse>, Status> {
        let ack = request.into_inner();
        self.commands.acknowledge(&ack).map_err(|e| {
            warn!(agent_id = %ack.agent_id, command = %ack.command_id, error = %e, "acknowledgement refused");
            ServiceError::ReportAck(e)
        })?;
        Ok(Response::new(AckResponse {}))
    }
}

/// Serves `service` on `listener` until `stop` completes, then saves the registry.
pub async fn serve(
    listener: TcpListener,
    service: AgentServiceImpl,
    placement: Option<crate::placement::grpc::PlacementServiceImpl>,
    stop: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let served = tonic::transport::Server::builder()
        .add_service(
            AgentServiceServer::new(service.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_optional_service(
            placement.map(|p| p.into_server().max_decoding_message_size(MAX_MESSAGE_BYTES)),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
        .map_err(ServiceError::ServeGrpc);
    let persisted = service.persist().await;
    served.and(persisted)
}
