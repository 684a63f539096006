//! The command link: receives the scheduler's commands over `AgentService.Commands` and sends
//! each acknowledgement back with `ReportAck`, reconnecting with backoff like the uplink.
//!
//! The link only carries commands; applying them is the [`Enforcer`](crate::enforce::Enforcer)'s
//! job, on the task that owns the power source. An acknowledgement that cannot be delivered
//! because the scheduler is away is kept and sent after the reconnect; one the scheduler
//! refuses (it no longer knows the command, e.g. after its restart) is logged and dropped.

use std::collections::VecDeque;
use std::time::Duration;

use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::{Command, CommandAck, CommandsRequest, Device};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Endpoint;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::client::{ClientError, UplinkConfig, connect_and_register, error_chain};

/// Commands received but not yet taken by the agent. The scheduler keeps at most 256
/// unacknowledged commands per agent, so this never fills in practice.
const COMMAND_QUEUE: usize = 256;

/// Acknowledgements waiting to be sent; they are produced one per command, so the same bound.
const ACK_QUEUE: usize = 256;

/// What the link did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkReport {
    pub commands_received: u64,
    pub acks_sent: u64,
    /// Acknowledgements the scheduler refused, or that could not be sent before stopping.
    pub acks_lost: u64,
    pub reconnects: u64,
}

/// The agent's end of the link.
#[derive(Debug)]
pub struct CommandLink {
    /// Commands from the scheduler, in the order it sent them.
    pub commands: mpsc::Receiver<Command>,
    /// Acknowledgements to send; the link fills in the agent id.
    pub acks: mpsc::Sender<CommandAck>,
    /// The agent id the scheduler gave, once registered.
    pub agent_id: watch::Receiver<Option<String>>,
    pub task: JoinHandle<LinkReport>,
}

/// Starts the link. It runs until the agent drops `acks` (and has every acknowledgement sent,
/// up to the config's flush timeout).
pub fn spawn_command_link(
    config: UplinkConfig,
    devices: Vec<Device>,
) -> Result<CommandLink, ClientError> {
    let endpoint = config.endpoint()?;
    let (command_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (acks, ack_rx) = mpsc::channel(ACK_QUEUE);
    let (id_tx, agent_id) = watch::channel(None);
    let span = info_span!("command_link", node = %config.node, scheduler = %config.scheduler);
    let link = Link {
        backoff: config.backoff_initial,
        config,
        endpoint,
        devices,
        command_tx: Some(command_tx),
        ack_rx,
        acks_closed: false,
        pending: VecDeque::new(),
        id_tx,
        report: LinkReport::default(),
    };
    let task = tokio::spawn(link.run().instrument(span));
    Ok(CommandLink {
        commands,
        acks,
        agent_id,
        task,
    })
}

#[derive(Debug)]
struct Link {
    config: UplinkConfig,
    endpoint: Endpoint,
    devices: Vec<Device>,
    /// `None` once the agent stopped taking commands.
    command_tx: Option<mpsc::Sender<Command>>,
    ack_rx: mpsc::Receiver<CommandAck>,
    acks_closed: bool,
    pending: VecDeque<CommandAck>,
    id_tx: watch::Sender<Option<String>>,
    backoff: Duration,
    report: LinkReport,
}

/// Why a session ended.
enum Ended {
    /// The agent is done and every acknowledgement is sent.
    Done,
    Failed(ClientError),
}

impl Link {
    async fn run(mut self) -> LinkReport {
        let mut flush_deadline = None;
        loop {
            match self.session().await {
                Ended::Done => break,
                Ended::Failed(e) => {
                    self.report.reconnects += 1;
                    warn!(error = %error_chain(&e), retry_in = ?self.backoff, pending_acks = self.pending.len(), "command link down");
                }
            }
            if self.acks_closed {
                let deadline = *flush_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.config.flush_timeout);
                if self.pending.is_empty() || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            self.wait_backoff().await;
            self.backoff = (self.backoff * 2).min(self.config.backoff_max);
        }
        if !self.pending.is_empty() {
            warn!(
                unsent = self.pending.len(),
                "stopping with acknowledgements unsent"
            );
            self.report.acks_lost += self.pending.len() as u64;
        }
        info!(report = ?self.report, "command link stopped");
        self.report
    }

    /// Waits out the backoff, still collecting acknowledgements.
    async fn wait_backoff(&mut self) {
        let sleep = tokio::time::sleep(self.backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                ack = self.ack_rx.recv(), if !self.acks_closed => match ack {
                    Some(ack) => self.pending.push_back(ack),
                    None => self.acks_closed = true,
                },
            }
        }
    }

    async fn session(&mut self) -> Ended {
        match self.try_session().await {
            Ok(()) => Ended::Done,
            Err(e) => Ended::Failed(e),
        }
    }

    async fn try_session(&mut self) -> Result<(), ClientError> {
        let (mut client, registered) =
            connect_and_register(&self.endpoint, &self.config, &self.devices).await?;
        let agent_id = registered.agent_id;
        self.id_tx.send_replace(Some(agent_id.clone()));
        self.backoff = self.config.backoff_initial;
        // Acknowledgements from before the reconnect go first.
        self.send_pending(&mut client, &agent_id).await?;
        if self.acks_closed {
            return Ok(());
        }
        let mut stream = client
            .commands(CommandsRequest {
                agent_id: agent_id.clone(),
            })
            .await
            .map_err(ClientError::ReceiveCommands)?
            .into_inner();
        debug!(%agent_id, "receiving commands");
        loop {
            tokio::select! {
                message = stream.message(), if self.command_tx.is_some() => match message {
                    Ok(Some(command)) => self.forward(command).await,
                    Ok(None) => {
                        return Err(ClientError::ReceiveCommands(tonic::Status::unavailable(
                            "the scheduler ended the command stream",
                        )));
                    }
                    Err(status) => return Err(ClientError::ReceiveCommands(status)),
                },
                ack = self.ack_rx.recv(), if !self.acks_closed => match ack {
                    Some(ack) => {
                        self.pending.push_back(ack);
                        self.send_pending(&mut client, &agent_id).await?;
                    }
                    None => {
                        self.acks_closed = true;
                        return Ok(());
                    }
                },
                else => return Ok(()),
            }
        }
    }

    async fn forward(&mut self, command: Command) {
        self.report.commands_received += 1;
        debug!(command = %command.id, "command received");
        if let Some(tx) = &self.command_tx
            && tx.send(command).await.is_err()
        {
            // The agent stopped taking commands (it is shutting down); the scheduler keeps
            // what is unacknowledged for the next run.
            self.command_tx = None;
        }
    }

    /// Sends queued acknowledgements in order; stops at the first transport failure (the rest
    /// wait for the reconnect).
    async fn send_pending(
        &mut self,
        client: &mut AgentServiceClient<tonic::transport::Channel>,
        agent_id: &str,
    ) -> Result<(), ClientError> {
        while let Some(mut ack) = self.pending.pop_front() {
            ack.agent_id = agent_id.to_owned();
            match client.report_ack(ack.clone()).await {
                Ok(_) => self.report.acks_sent += 1,
                // The scheduler will never take this one (it does not know the command any
                // more); retrying would block the rest.
                Err(status)
                    if matches!(
                        status.code(),
                        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition
                    ) =>
                {
                    warn!(command = %ack.command_id, %status, "acknowledgement refused; dropped");
                    self.report.acks_lost += 1;
                }
                Err(status) => {
                    self.pending.push_front(ack);
                    return Err(ClientError::ReportAck(status));
                }
            }
        }
        Ok(())
    }
}
