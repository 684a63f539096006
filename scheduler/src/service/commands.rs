//! The command path: power-limit commands from the planning cycle to the agents, and their
//! acknowledgements back.
//!
//! [`CommandCenter`] is what the planning cycle calls: [`CommandCenter::set_power_limit`] and
//! [`CommandCenter::restore_default`] check the command against the registered device (a limit
//! outside its range is refused here, with the range in the error, and never sent), queue it
//! for the device's agent and return its [`CommandId`]; [`CommandCenter::state`] reads how it
//! went and [`CommandCenter::wait`] awaits the agent's answer.
//!
//! Delivery is at least once: each agent has one queue of unacknowledged commands, delivered
//! in order over its `Commands` stream and delivered again, in order, when the agent opens a
//! new stream. The agent applies each id once and answers repeats with its first answer, so a
//! re-delivered old command cannot undo a newer one. Ids carry the scheduler's start time, so
//! they stay unique across scheduler restarts (queues are in memory: a restart forgets
//! unacknowledged commands, and the planning cycle issues what it still wants again).
//!
//! Failures are never hidden: a refused command is an error to the caller and is counted; a
//! failed acknowledgement is logged, counted and readable as [`CommandState::Failed`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use offpeak_proto::v1::{Command, CommandAck, RestoreDefaultPowerLimit, SetPowerLimit, command};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::registry::{NodeRegistry, UnknownDevice};

/// The most commands waiting for one agent's acknowledgement. The planning cycle sets at most
/// one limit per device per cycle and a node has at most a few dozen devices, so 256 is many
/// cycles of an agent not answering; past it the agent is broken and queueing more only hides
/// that.
pub const MAX_UNACKED_PER_AGENT: usize = 256;

/// Outcomes of finished commands kept for [`CommandCenter::state`]: a day of one command per
/// device per 15-minute slot on 100 GPUs.
pub const REMEMBERED_OUTCOMES: usize = 10_000;

/// A command's id, unique across scheduler restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(String);

impl CommandId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a command is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandState {
    /// Waiting for its agent to connect.
    Queued,
    /// Sent; no acknowledgement yet.
    Sent,
    /// The agent applied it; the device's limit is now this.
    Applied { power_limit_watts: u32 },
    /// The agent could not apply it.
    Failed { error: String },
}

impl CommandState {
    /// Whether the agent answered.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Applied { .. } | Self::Failed { .. })
    }
}

/// Why a command was not queued. The label names the reason in metrics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandRefusal {
    #[error("{0}")]
    Unknown(#[from] UnknownDevice),
    #[error("the device's power limit cannot be set (its agent reported no range)")]
    NoLimitControl,
    #[error("{requested} W is outside the device's allowed range {min}–{max} W")]
    OutOfRange { requested: u32, min: u32, max: u32 },
    #[error("{MAX_UNACKED_PER_AGENT} commands already wait for the agent's acknowledgement")]
    QueueFull,
}

impl CommandRefusal {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unknown(UnknownDevice::Node(_)) => "unknown_node",
            Self::Unknown(UnknownDevice::Device(_)) => "unknown_device",
            Self::NoLimitControl => "no_limit_control",
            Self::OutOfRange { .. } => "out_of_range",
            Self::QueueFull => "queue_full",
        }
    }
}

/// Failure of a command-center operation; each variant is named after the operation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("setting the power limit of {device} on {node} to {watts} W: {reason}")]
    SetPowerLimit {
        node: String,
        device: String,
        watts: u32,
        reason: CommandRefusal,
    },
    #[error("restoring the default power limit of {device} on {node}: {reason}")]
    RestoreDefault {
        node: String,
        device: String,
        reason: CommandRefusal,
    },
    #[error(
        "waiting for command {0}: unknown (never issued here, or forgotten after \
         {REMEMBERED_OUTCOMES} newer ones)"
    )]
    Wait(CommandId),
}

/// Why an agent's subscription or acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AckFailure {
    #[error("agent {0:?} is not registered")]
    UnknownAgent(String),
    #[error("command {0:?} is unknown here (issued before a scheduler restart?)")]
    UnknownCommand(String),
    #[error("command {command:?} was sent to {owner:?}, not to {agent:?}")]
    WrongAgent {
        command: String,
        owner: String,
        agent: String,
    },
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The command path's counters, registered into the service's metrics.
#[derive(Debug, Clone, Default)]
pub struct CommandCounters {
    /// Commands written to an agent's stream (re-deliveries included).
    pub sent: Counter,
    /// Acknowledgements, by outcome (`applied`, `failed`).
    pub acks: Family<OutcomeLabels, Counter>,
    /// Commands refused before queueing, by reason.
    pub refused: Family<ReasonLabels, Counter>,
}

#[derive(Debug)]
struct Record {
    agent_id: String,
    state: watch::Sender<CommandState>,
}

#[derive(Debug, Default)]
struct AgentQueue {
    unacked: BTreeMap<u64, Command>,
    /// The open stream: its generation (so an old stream closing cannot remove a newer one)
    /// and sender.
    subscriber: Option<(u64, mpsc::UnboundedSender<Command>)>,
}

#[derive(Debug)]
struct Inner {
    /// Prefix of this run's ids.
    run: String,
    next: u64,
    next_generation: u64,
    agents: HashMap<String, AgentQueue>,
    records: BTreeMap<u64, Record>,
}

/// The command path, shared by the gRPC handlers and the planning cycle.
#[derive(Debug, Clone)]
pub struct CommandCenter {
    inner: Arc<Mutex<Inner>>,
    registry: NodeRegistry,
    counters: CommandCounters,
}

/// An agent's open command stream.
#[derive(Debug)]
pub struct Subscription {
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub generation: u64,
}

impl CommandCenter {
    /// Commands for the devices in `registry`.
    pub fn new(registry: NodeRegistry) -> Self {
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self {
            inner: Arc::new(Mutex::new(Inner {
                run: format!("{run:x}"),
                next: 1,
                next_generation: 1,
                agents: HashMap::new(),
                records: BTreeMap::new(),
            })),
            registry,
            counters: CommandCounters::default(),
        }
    }

    pub fn counters(&self) -> &CommandCounters {
        &self.counters
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is applied whole under the lock; a poisoned lock guards consistent data.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a power limit for a device of a node; refuses limits outside the registered
    /// device's range.
    pub fn set_power_limit(
        &self,
        node: &str,
        device_uuid: &str,
        watts: u32,
    ) -> Result<CommandId, CommandError> {
        let fail = |reason: CommandRefusal| {
            self.refused(&reason);
            warn!(node, device = device_uuid, watts, %reason, "power-limit command refused");
            CommandError::SetPowerLimit {
                node: node.to_owned(),
                device: device_uuid.to_owned(),
                watts,
                reason,
            }
        };
        let device = self
            .registry
            .device(node, device_uuid)
            .map_err(|e| fail(e.into()))?;
        let range = device.range;
        if !range.settable() {
            return Err(fail(CommandRefusal::NoLimitControl));
        }
        if watts < range.min_watts || watts > range.max_watts {
            return Err(fail(CommandRefusal::OutOfRange {
                requested: watts,
                min: range.min_watts,
                max: range.max_watts,
            }));
        }
        let kind = command::Kind::SetPowerLimit(SetPowerLimit {
            device_uuid: device_uuid.to_owned(),
            watts,
        });
        self.enqueue(&device.agent_id, kind).map_err(fail)
    }

    /// Queues putting a device back to its default limit (the job that lowered it ended).
    pub fn restore_default(
        &self,
        node: &str,
        device_uuid: &str,
    ) -> Result<CommandId, CommandError> {
        let fail = |reason: CommandRefusal| {
            self.refused(&reason);
            warn!(node, device = device_uuid, %reason, "restore command refused");
            CommandError::RestoreDefault {
                node: node.to_owned(),
                device: device_uuid.to_owned(),
                reason,
            }
        };
        let device = self
            .registry
            .device(node, device_uuid)
            .map_err(|e| fail(e.into()))?;
        if !device.range.settable() {
            return Err(fail(CommandRefusal::NoLimitControl));
        }
        let kind = command::Kind::RestoreDefaultPowerLimit(RestoreDefaultPowerLimit {
            device_uuid: device_uuid.to_owned(),
        });
        self.enqueue(&device.agent_id, kind).map_err(fail)
    }

    fn refused(&self, reason: &CommandRefusal) {
        self.counters
            .refused
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    fn enqueue(&self, agent_id: &str, kind: command::Kind) -> Result<CommandId, CommandRefusal> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let queue = inner.agents.entry(agent_id.to_owned()).or_default();
        if queue.unacked.len() >= MAX_UNACKED_PER_AGENT {
            return Err(CommandRefusal::QueueFull);
        }
        let n = inner.next;
        inner.next += 1;
        let id = CommandId(format!("{}-{n}", inner.run));
        let command = Command {
            id: id.0.clone(),
            kind: Some(kind),
        };
        let mut state = CommandState::Queued;
        if let Some((_, tx)) = &queue.subscriber {
            if tx.send(command.clone()).is_ok() {
                self.counters.sent.inc();
                state = CommandState::Sent;
            } else {
                queue.subscriber = None;
            }
        }
        queue.unacked.insert(n, command);
        let (state_tx, _) = watch::channel(state);
        inner.records.insert(
            n,
            Record {
                agent_id: agent_id.to_owned(),
                state: state_tx,
            },
        );
        forget_oldest(&mut inner.records);
        info!(command = %id, agent_id, "command queued");
        Ok(id)
    }

    /// Where a command is; `None` if unknown.
    pub fn state(&self, id: &CommandId) -> Option<CommandState> {
        let inner = self.lock();
        let n = number(&inner.run, id.as_str())?;
        inner.records.get(&n).map(|r| r.state.borrow().clone())
    }

    /// Waits for the agent's answer (`Applied` or `Failed`). Put a timeout around it: an agent
    /// that is away answers when it is back.
    pub async fn wait(&self, id: &CommandId) -> Result<CommandState, CommandError> {
        let mut rx = {
            let inner = self.lock();
            number(&inner.run, id.as_str())
                .and_then(|n| inner.records.get(&n))
                .map(|r| r.state.subscribe())
                .ok_or_else(|| CommandError::Wait(id.clone()))?
        };
        let state = rx
            .wait_for(CommandState::is_final)
            .await
            .map_err(|_| CommandError::Wait(id.clone()))?
            .clone();
        Ok(state)
    }

    /// Opens an agent's command stream: everything unacknowledged is delivered again, in
    /// order, then new commands as they are queued. Replaces the agent's previous stream.
    pub fn subscribe(&self, agent_id: &str) -> Result<Subscription, AckFailure> {
        if !self.registry.knows_agent(agent_id) {
            return Err(AckFailure::UnknownAgent(agent_id.to_owned()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let queue = inner.agents.entry(agent_id.to_owned()).or_default();
        for (n, command) in &queue.unacked {
            if tx.send(command.clone()).is_ok() {
                self.counters.sent.inc();
                if let Some(r) = inner.records.get(n) {
                    r.state.send_replace(CommandState::Sent);
                }
            }
        }
        queue.subscriber = Some((generation, tx));
        Ok(Subscription {
            commands: rx,
            generation,
        })
    }

    /// Closes a stream opened by [`CommandCenter::subscribe`], unless a newer one replaced it.
    pub fn unsubscribe(&self, agent_id: &str, generation: u64) {
        let mut inner = self.lock();
        if let Some(q) = inner.agents.get_mut(agent_id)
            && q.subscriber.as_ref().is_some_and(|(g, _)| *g == generation)
        {
            q.subscriber = None;
        }
    }

    /// Records an agent's answer. Repeating an answer is harmless; a failure is logged and
    /// counted.
    pub fn acknowledge(&self, ack: &CommandAck) -> Result<CommandState, AckFailure> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let unknown = || AckFailure::UnknownCommand(ack.command_id.clone());
        let n = number(&inner.run, &ack.command_id).ok_or_else(unknown)?;
        let record = inner.records.get(&n).ok_or_else(unknown)?;
        if record.agent_id != ack.agent_id {
            return Err(AckFailure::WrongAgent {
                command: ack.command_id.clone(),
                owner: record.agent_id.clone(),
                agent: ack.agent_id.clone(),
            });
        }
        let current = record.state.borrow().clone();
        if current.is_final() {
            return Ok(current);
        }
        let state = if ack.ok {
            info!(command = %ack.command_id, agent_id = %ack.agent_id, watts = ack.power_limit_watts, "command applied");
            CommandState::Applied {
                power_limit_watts: ack.power_limit_watts,
            }
        } else {
            warn!(command = %ack.command_id, agent_id = %ack.agent_id, error = %ack.error, "command failed on the agent");
            CommandState::Failed {
                error: ack.error.clone(),
            }
        };
        let outcome = if ack.ok { "applied" } else { "failed" };
        self.counters
            .acks
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        record.state.send_replace(state.clone());
        if let Some(q) = inner.agents.get_mut(&ack.agent_id) {
            q.unacked.remove(&n);
        }
        Ok(state)
    }
}

/// The sequence number in an id of this run (`<run>-<n>`).
fn number(run: &str, id: &str) -> Option<u64> {
    let (prefix, n) = id.rsplit_once('-')?;
    if prefix != run {
        return None;
    }
    n.parse().ok()
}

/// Keeps at most [`REMEMBERED_OUTCOMES`] finished records, forgetting the oldest.
fn forget_oldest(records: &mut BTreeMap<u64, Record>) {
    let excess = records.len().saturating_sub(REMEMBERED_OUTCOMES);
    if excess == 0 {
        return;
    }
    let finished: Vec<u64> = records
        .iter()
        .filter(|(_, r)| r.state.borrow().is_final())
        .map(|(n, _)| *n)
        .take(excess)
        .collect();
    for n in finished {
        records.remove(&n);
    }
}

#[cfg(test)]
mod tests {
    use offpeak_proto::v1::{Device, RegisterRequest};

    use super::*;

    fn setup() -> (NodeRegistry, CommandCenter, String) {
        let registry = NodeRegistry::new();
        let reg = registry.register(&RegisterRequest {
            node: "n1".into(),
            zone: "GB".into(),
            devices: vec![
                Device {
                    uuid: "GPU-0".into(),
                    model: "V100".into(),
                    min_power_limit_watts: 100,
                    max_power_limit_watts: 250,
                    default_power_limit_watts: 250,
                },
                Device {
                    uuid: "CPU-0".into(),
                    model: "RAPL package-0".into(),
                    ..Device::default()
                },
            ],
        });
        let agent_id = reg.map(|r| r.agent_id).unwrap_or_default();
        let center = CommandCenter::new(registry.clone());
        (registry, center, agent_id)
    }

    fn ack(agent_id: &str, id: &CommandId, ok: bool) -> CommandAck {
        CommandAck {
            agent_id: agent_id.into(),
            command_id: id.to_string(),
            ok,
            error: if ok {
                String::new()
            } else {
                "driver said no".into()
            },
            power_limit_watts: if ok { 150 } else { 0 },
        }
    }

    #[test]
    fn commands_outside_the_range_or_for_unknown_devices_are_refused_and_counted() {
        let (_, center, _) = setup();
        let e = center.set_power_limit("n1", "GPU-0", 300).err();
        assert_eq!(
            e.as_ref().map(ToString::to_string).as_deref(),
            Some(
                "setting the power limit of GPU-0 on n1 to 300 W: 300 W is outside the \
                 device's allowed range 100–250 W"
            )
        );
        assert!(center.set_power_limit("n1", "GPU-0", 99).is_err());
        for (node, device, label) in [
            ("n2", "GPU-0", "unknown_node"),
            ("n1", "GPU-7", "unknown_device"),
            ("n1", "CPU-0", "no_limit_control"),
        ] {
            match center.set_power_limit(node, device, 150) {
                Err(CommandError::SetPowerLimit { reason, .. }) => {
                    assert_eq!(reason.label(), label)
                }
                other => panic!("{node}/{device}: {other:?}"),
            }
        }
        assert!(center.restore_default("n1", "CPU-0").is_err());
        let refused = |reason| {
            center
                .counters()
                .refused
                .get_or_create(&ReasonLabels { reason })
                .get()
        };
        assert_eq!(refused("out_of_range"), 2);
        assert_eq!(refused("no_limit_control"), 2);
    }

    #[tokio::test]
    async fn queued_commands_are_delivered_on_subscribe_and_again_until_acknowledged()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_, center, agent) = setup();
        let c1 = center.set_power_limit("n1", "GPU-0", 150)?;
        assert_eq!(center.state(&c1), Some(CommandState::Queued));
        let mut first = center.subscribe(&agent)?;
        assert_eq!(center.state(&c1), Some(CommandState::Sent));
        let c2 = center.restore_default("n1", "GPU-0")?;
        let got: Vec<String> = [first.commands.recv().await, first.commands.recv().await]
            .into_iter()
            .flatten()
            .map(|c| c.id)
            .collect();
        assert_eq!(got, vec![c1.to_string(), c2.to_string()]);
        assert_eq!(
            center.acknowledge(&ack(&agent, &c1, true))?,
            CommandState::Applied {
                power_limit_watts: 150
            }
        );
        // A new stream gets only what is still unacknowledged.
        let mut second = center.subscribe(&agent)?;
        assert_eq!(
            second.commands.recv().await.map(|c| c.id),
            Some(c2.to_string())
        );
        // The old stream's end does not close the new one.
        center.unsubscribe(&agent, first.generation);
        let c3 = center.set_power_limit("n1", "GPU-0", 200)?;
        assert_eq!(
            second.commands.recv().await.map(|c| c.id),
            Some(c3.to_string())
        );
        let failed = center.acknowledge(&ack(&agent, &c2, false))?;
        assert_eq!(
            failed,
            CommandState::Failed {
                error: "driver said no".into()
            }
        );
        assert_eq!(center.wait(&c2).await?, failed);
        // Answering twice changes nothing and counts once.
        assert_eq!(center.acknowledge(&ack(&agent, &c2, true))?, failed);
        let acks = |outcome| {
            center
                .counters()
                .acks
                .get_or_create(&OutcomeLabels { outcome })
                .get()
        };
        assert_eq!((acks("applied"), acks("failed")), (1, 1));
        Ok(())
    }

    #[tokio::test]
    async fn wait_returns_when_the_agent_answers() -> Result<(), Box<dyn std::error::Error>> {
        let (_, center, agent) = setup();
        let id = center.set_power_limit("n1", "GPU-0", 150)?;
        let waiter = {
            let center = center.clone();
            let id = id.clone();
            tokio::spawn(async move { center.wait(&id).await })
        };
        tokio::task::yield_now().await;
        center.acknowledge(&ack(&agent, &id, true))?;
        assert_eq!(
            waiter.await??,
            CommandState::Applied {
                power_limit_watts: 150
            }
        );
        Ok(())
    }

    #[test]
    fn unknown_agents_commands_and_wrong_owners_are_refused() -> Result<(), CommandError> {
        let (registry, center, agent) = setup();
        assert!(matches!(
            center.subscribe("agent-99"),
            Err(AckFailure::UnknownAgent(_))
        ));
        let id = center.set_power_limit("n1", "GPU-0", 150)?;
        let other = registry
            .register(&RegisterRequest {
                node: "n2".into(),
                ..RegisterRequest::default()
            })
            .map(|r| r.agent_id)
            .unwrap_or_default();
        assert!(matches!(
            center.acknowledge(&ack(&other, &id, true)),
            Err(AckFailure::WrongAgent { .. })
        ));
        let stale = CommandId("1234-1".into());
        assert!(matches!(
            center.acknowledge(&ack(&agent, &stale, true)),
            Err(AckFailure::UnknownCommand(_))
        ));
        assert_eq!(center.state(&stale), None);
        Ok(())
    }

    #[test]
    fn a_full_queue_refuses_more() -> Result<(), CommandError> {
        let (_, center, _) = setup();
        for _ in 0..MAX_UNACKED_PER_AGENT {
            center.set_power_limit("n1", "GPU-0", 150)?;
        }
        match center.set_power_limit("n1", "GPU-0", 150) {
            Err(CommandError::SetPowerLimit {
                reason: CommandRefusal::QueueFull,
                ..
            }) => Ok(()),
            other => panic!("{other:?}"),
        }
    }
}
