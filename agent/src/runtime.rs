//! The agent put together: an [`Agent`] owns the power source (through its [`Sampler`]), the
//! [`Enforcer`] that applies power limits to it, the uplink that streams batches and the
//! command link that brings commands. It is driven from outside — [`run`] on a real interval
//! for the `offpeak-agent` binary, tests step by step on a manual clock — and [`Agent::stop`]
//! is the graceful shutdown path: no more commands, every commanded limit back to its
//! default, a last batch, the buffer flushed.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use offpeak_proto::v1::{Command, CommandAck, PodRef, SampleBatch};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument as _, info, info_span, warn};

use crate::client::{ClientError, UplinkConfig, UplinkReport, spawn_uplink};
use crate::clock::{Clock, MonotonicClock};
use crate::commands::{CommandLink, LinkReport, spawn_command_link};
use crate::enforce::{Enforcer, Restored};
use crate::nvml::NvmlSource;
use crate::podresources::PodResources;
use crate::rapl::RaplSource;
use crate::sampler::Sampler;
use crate::sim::{PowerProfile, SimConfig, SimulatedSource};
use crate::source::PowerSource;
use crate::tpu::{TpuConfig, TpuSource};

/// Fitted curves ride along every this many batches: once a minute at the default 1 s
/// interval, often enough for the planner, rare enough to cost nothing on the wire.
pub const DEFAULT_CURVES_EVERY: u64 = 60;

/// How often the GPU → pod attribution is refreshed: a pod's first and last seconds on a GPU
/// matter little against a training job's hours, and the kubelet answers from memory.
pub const POD_REFRESH: Duration = Duration::from_secs(10);

/// What the agent did, returned by [`Agent::stop`] with the source.
#[derive(Debug)]
pub struct Stopped<S> {
    pub source: S,
    pub uplink: UplinkReport,
    pub link: LinkReport,
    /// Devices put back to their default limit on the way out.
    pub restored: Vec<Restored>,
    pub commands_applied: u64,
    pub commands_failed: u64,
}

/// A running agent.
#[derive(Debug)]
pub struct Agent<S> {
    sampler: Sampler<S>,
    uplink_tx: mpsc::Sender<SampleBatch>,
    uplink: JoinHandle<UplinkReport>,
    link: CommandLink,
    enforcer: Enforcer,
    batches: u64,
    curves_every: u64,
    commands_applied: u64,
    commands_failed: u64,
}

impl<S: PowerSource> Agent<S> {
    /// Registers the sampler's devices, and starts the uplink and the command link.
    pub fn start(sampler: Sampler<S>, uplink: UplinkConfig) -> Result<Self, ClientError> {
        let devices = sampler.devices();
        let (uplink_tx, uplink_task) = spawn_uplink(uplink.clone(), devices.clone())?;
        let link = spawn_command_link(uplink, devices)?;
        Ok(Self {
            sampler,
            uplink_tx,
            uplink: uplink_task,
            link,
            enforcer: Enforcer::new(),
            batches: 0,
            curves_every: DEFAULT_CURVES_EVERY,
            commands_applied: 0,
            commands_failed: 0,
        })
    }

    /// Sends curves every `batches` batches instead of [`DEFAULT_CURVES_EVERY`].
    pub fn with_curves_every(mut self, batches: u64) -> Self {
        self.curves_every = batches.max(1);
        self
    }

    pub fn sampler(&self) -> &Sampler<S> {
        &self.sampler
    }

    pub fn sampler_mut(&mut self) -> &mut Sampler<S> {
        &mut self.sampler
    }

    /// Devices running at a commanded limit.
    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    /// The agent id, once the command link registered.
    pub fn agent_id(&self) -> Option<String> {
        self.link.agent_id.borrow().clone()
    }

    /// Samples every device (after refreshing the source) and hands the batch to the uplink
    /// (with the curves, every `curves_every` batches).
    pub async fn tick(&mut self) -> Result<(), ClientError> {
        self.sampler.source_mut().refresh().await;
        let samples = self.sampler.sample();
        self.batches += 1;
        let curves = if self.batches.is_multiple_of(self.curves_every) {
            self.sampler.curves()
        } else {
            Vec::new()
        };
        self.send(SampleBatch {
            samples,
            curves,
            ..SampleBatch::default()
        })
        .await
    }

    async fn send(&self, batch: SampleBatch) -> Result<(), ClientError> {
        self.uplink_tx
            .send(batch)
            .await
            .map_err(|_| ClientError::UplinkStopped)
    }

    /// The next command from the scheduler (cancel-safe, for `select!`); `None` once the link
    /// is gone.
    pub async fn next_command(&mut self) -> Option<Command> {
        self.link.commands.recv().await
    }

    /// Applies one command and queues its acknowledgement.
    pub async fn handle(&mut self, command: Command) -> CommandAck {
        let agent_id = self.agent_id().unwrap_or_default();
        let (ack, device) = self
            .enforcer
            .apply(self.sampler.source_mut(), &agent_id, &command);
        if let Some(device) = device {
            self.sampler.limit_changed(&device);
        }
        if ack.ok {
            self.commands_applied += 1;
        } else {
            self.commands_failed += 1;
        }
        if self.link.acks.send(ack.clone()).await.is_err() {
            warn!(command = %ack.command_id, "the command link stopped; acknowledgement not sent");
        }
        ack
    }

    /// Applies every command already received; returns how many.
    pub async fn handle_received(&mut self) -> usize {
        let mut n = 0;
        while let Ok(command) = self.link.commands.try_recv() {
            self.handle(command).await;
            n += 1;
        }
        n
    }

    /// Takes a new GPU → pod attribution. A device whose pod went away (or was replaced) had
    /// its job end: a limit commanded for that job is lifted.
    pub fn update_pods(&mut self, pods: HashMap<String, PodRef>) {
        let ended: Vec<String> = self
            .enforcer
            .changed()
            .keys()
            .filter(|uuid| self.sampler.pod_of(uuid) != pods.get(*uuid))
            .filter(|uuid| self.sampler.pod_of(uuid).is_some())
            .cloned()
            .collect();
        for uuid in ended {
            info!(device = %uuid, "the pod using the device is gone; lifting its limit");
            if self
                .enforcer
                .restore(self.sampler.source_mut(), &uuid)
                .is_some()
            {
                self.sampler.limit_changed(&uuid);
            }
        }
        self.sampler.set_pods(pods);
    }

    /// Stops gracefully: takes no more commands, puts every commanded limit back to its
    /// default, sends a last batch (with the restored limits and the final counters and
    /// curves), flushes the buffer and the acknowledgements.
    pub async fn stop(mut self) -> Result<Stopped<S>, ClientError> {
        self.link.commands.close();
        let restored = self.enforcer.restore_all(self.sampler.source_mut());
        for r in &restored {
            self.sampler.limit_changed(&r.device_uuid);
        }
        self.sampler.source_mut().refresh().await;
        let last = SampleBatch {
            samples: self.sampler.sample(),
            curves: self.sampler.curves(),
            ..SampleBatch::default()
        };
        self.send(last).await?;
        drop(self.uplink_tx);
        let uplink = self.uplink.await.unwrap_or_else(|e| {
            warn!(error = %e, "the uplink task failed");
            UplinkReport::default()
        });
        drop(self.link.acks);
        let link = self.link.task.await.unwrap_or_else(|e| {
            warn!(error = %e, "the command link task failed");
            LinkReport::default()
        });
        Ok(Stopped {
            source: self.sampler.into_source(),
            uplink,
            link,
            restored,
            commands_applied: self.commands_applied,
            commands_failed: self.commands_failed,
        })
    }
}

/// Where readings come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// Simulated GPUs playing a bundled Zeus profile.
    Sim {
        profile: SimProfile,
        devices: usize,
        seed: u64,
    },
    /// NVIDIA GPUs through NVML; `library` overrides where `libnvidia-ml.so` is loaded from.
    Nvml { library: Option<PathBuf> },
    /// CPU package and DRAM energy from the powercap tree under `root`.
    Rapl { root: PathBuf },
    /// TPU chips, power estimated from the duty cycle their runtime reports.
    Tpu(TpuConfig),
}

/// Which bundled profile the simulated source plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimProfile {
    V100,
    A40,
}

/// Everything `offpeak-agent` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub uplink: UplinkConfig,
    pub source: SourceKind,
    /// Time between samples.
    pub interval: Duration,
    /// The kubelet's pod-resources socket, for GPU → pod attribution; `None`: none.
    pub pod_resources: Option<PathBuf>,
}

/// Runs the agent on `config.source` until `shutdown` completes, then stops it gracefully
/// and returns what it did.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped<()>, ClientError> {
    let span = info_span!("agent", node = %config.uplink.node);
    async move {
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
        tokio::pin!(shutdown);
        let shutdown = shutdown.as_mut();
        let stopped = match &config.source {
            SourceKind::Sim {
                profile,
                devices,
                seed,
            } => {
                let profile = match profile {
                    SimProfile::V100 => PowerProfile::bundled_v100_resnet50(),
                    SimProfile::A40 => PowerProfile::bundled_a40_resnet50(),
                }
                .map_err(ClientError::StartSource)?;
                let sim = SimConfig {
                    seed: *seed,
                    ..SimConfig::default()
                };
                let source = SimulatedSource::new(Arc::clone(&clock), sim, profile, *devices)
                    .map_err(ClientError::StartSource)?;
                forget_source(drive(source, &clock, &config, shutdown).await?)
            }
            SourceKind::Nvml { library } => {
                let source = match library {
                    Some(path) => {
                        NvmlSource::with_library_path(path.as_os_str(), Arc::clone(&clock))
                    }
                    None => NvmlSource::new(Arc::clone(&clock)),
                }
                .map_err(ClientError::StartSource)?;
                forget_source(drive(source, &clock, &config, shutdown).await?)
            }
            SourceKind::Rapl { root } => {
                let source =
                    RaplSource::new(root, Arc::clone(&clock)).map_err(ClientError::StartSource)?;
                forget_source(drive(source, &clock, &config, shutdown).await?)
            }
            SourceKind::Tpu(tpu) => {
                let mut shutdown = shutdown;
                let started = TpuSource::start(tpu, Arc::clone(&clock), shutdown.as_mut())
                    .await
                    .map_err(ClientError::StartSource)?;
                match started {
                    Some(source) => forget_source(drive(source, &clock, &config, shutdown).await?),
                    None => {
                        info!("stopped while waiting for the TPU runtime; nothing was sampled");
                        stopped_before_start()
                    }
                }
            }
        };
        Ok(stopped)
    }
    .instrument(span)
    .await
}

/// What [`run`] returns when it is stopped before its source started.
fn stopped_before_start() -> Stopped<()> {
    Stopped {
        source: (),
        uplink: UplinkReport::default(),
        link: LinkReport::default(),
        restored: Vec::new(),
        commands_applied: 0,
        commands_failed: 0,
    }
}

fn forget_source<S>(s: Stopped<S>) -> Stopped<()> {
    Stopped {
        source: (),
        uplink: s.uplink,
        link: s.link,
        restored: s.restored,
        commands_applied: s.commands_applied,
        commands_failed: s.commands_failed,
    }
}

/// Unix time of `clock`'s origin, in ms: readings carry clock time.
fn unix_origin_ms(clock: &dyn Clock) -> i64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    now_ms - i64::try_from(clock.now().as_millis()).unwrap_or(0)
}

async fn drive<S: PowerSource>(
    source: S,
    clock: &Arc<dyn Clock>,
    config: &AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped<S>, ClientError> {
    let devices = source.devices().len();
    let sampler = Sampler::new(source, unix_origin_ms(clock.as_ref()));
    let mut agent = Agent::start(sampler, config.uplink.clone())?;
    let mut pods = config
        .pod_resources
        .as_ref()
        .map(|path| PodResources::new(path.clone()));
    let mut ticks = tokio::time::interval(config.interval);
    // A late tick is sampled once, not caught up: the counter carries the energy anyway.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pod_ticks = tokio::time::interval(POD_REFRESH);
    pod_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    info!(interval = ?config.interval, devices, "sampling");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticks.tick() => {
                if let Err(e) = agent.tick().await {
                    // The uplink only ends when we drop its sender, or if it panicked.
                    warn!(error = %e, "stopping");
                    break;
                }
            }
            Some(command) = agent.next_command() => {
                agent.handle(command).await;
            }
            _ = pod_ticks.tick(), if pods.is_some() => {
                if let Some(p) = pods.as_mut() {
                    match p.device_pods().await {
                        Ok(map) => agent.update_pods(map),
                        Err(e) => warn!(error = %e, "GPU → pod attribution failed; keeping the last one"),
                    }
                }
            }
        }
    }
    info!("stopping: restoring default limits and flushing the buffer");
    agent.stop().await
}
