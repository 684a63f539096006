//! Shared by the agent/scheduler integration tests: a real scheduler service on loopback, and
//! real agents ([`offpeak_agent::runtime::Agent`]) over simulated GPUs on manual clocks, so
//! the energy the sources produce is fixed and the only real waiting is for the runtime to move
//! messages over the sockets.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use offpeak_agent::PowerSource as _;
use offpeak_agent::client::UplinkConfig;
use offpeak_agent::clock::ManualClock;
use offpeak_agent::runtime::{Agent, Stopped};
use offpeak_agent::sampler::Sampler;
use offpeak_agent::sim::{PowerProfile, SimConfig, SimulatedSource};
use offpeak_proto::v1::CommandAck;
use offpeak_scheduler::service::{
    self, BoundAddrs, CommandCenter, CurveStore, NodeRegistry, ServiceConfig,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The agents' sampling interval, on their manual clocks.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Long enough for anything on loopback; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Energy per device, keyed as the registry keys it: (node, device UUID).
pub type Energy = BTreeMap<(String, String), u64>;

/// A scheduler service on loopback.
pub struct Scheduler {
    pub addrs: BoundAddrs,
    pub registry: NodeRegistry,
    pub commands: CommandCenter,
    pub curves: CurveStore,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), service::ServiceError>>,
}

impl Scheduler {
    /// Serves `registry` on `grpc_addr` (port 0: any).
    pub async fn start(registry: NodeRegistry, grpc_addr: SocketAddr) -> anyhow::Result<Self> {
        Self::serve(ServiceConfig {
            grpc_addr,
            admin_addr: "127.0.0.1:0".parse()?,
            commands: CommandCenter::new(registry.clone()),
            curves: CurveStore::new(),
            registry,
            reports: None,
            placement: None,
        })
        .await
    }

    /// Serves `config` as it is (reports, placement and all).
    pub async fn serve(config: ServiceConfig) -> anyhow::Result<Self> {
        let registry = config.registry.clone();
        let commands = config.commands.clone();
        let curves = config.curves.clone();
        let bound = service::bind(config).await?;
        let addrs = bound.addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addrs,
            registry,
            commands,
            curves,
            stop,
            task,
        })
    }

    /// A scheduler with an in-memory registry on any port.
    pub async fn in_memory() -> anyhow::Result<Self> {
        Self::start(NodeRegistry::new(), "127.0.0.1:0".parse()?).await
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addrs.grpc)
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(self.addrs.admin, "/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    /// Stops gracefully and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .context("the scheduler did not stop")???;
        Ok(())
    }
}

/// How a test agent is set up.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    pub node: String,
    pub devices: usize,
    pub sim: SimConfig,
    pub batches_per_stream: usize,
    pub buffer_dir: Option<PathBuf>,
    pub flush_timeout: Duration,
    pub curves_every: u64,
}

impl AgentSetup {
    /// `devices` simulated V100s with short phases (so a couple of minutes cover warm-up and
    /// a checkpoint dip) and noise seeded by `seed`.
    pub fn new(node: &str, seed: u64, devices: usize) -> Self {
        Self {
            node: node.to_owned(),
            devices,
            sim: SimConfig {
                seed,
                warm_up: Duration::from_secs(10),
                checkpoint_every: Duration::from_secs(40),
                checkpoint_duration: Duration::from_secs(5),
                ..SimConfig::default()
            },
            batches_per_stream: 25,
            buffer_dir: None,
            flush_timeout: Duration::from_secs(10),
            curves_every: 60,
        }
    }

    pub fn batches_per_stream(self, n: usize) -> Self {
        Self {
            batches_per_stream: n,
            ..self
        }
    }

    pub fn on_disk(self, dir: &Path) -> Self {
        Self {
            buffer_dir: Some(dir.to_owned()),
            ..self
        }
    }
}

/// A real agent over simulated GPUs on a manual clock.
pub struct SimAgent {
    pub node: String,
    pub clock: ManualClock,
    pub agent: Agent<SimulatedSource>,
}

impl SimAgent {
    pub fn start(setup: AgentSetup, scheduler: String) -> anyhow::Result<Self> {
        let clock = ManualClock::new();
        let source = SimulatedSource::new(
            Arc::new(clock.clone()),
            setup.sim.clone(),
            PowerProfile::bundled_v100_resnet50()?,
            setup.devices,
        )?;
        let sampler = Sampler::new(source, 1_700_000_000_000);
        let config = UplinkConfig {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            batches_per_stream: setup.batches_per_stream,
            buffer_dir: setup.buffer_dir.clone(),
            flush_timeout: setup.flush_timeout,
            ..UplinkConfig::new(scheduler, &setup.node, "DE-LU")
        };
        let agent = Agent::start(sampler, config)?.with_curves_every(setup.curves_every);
        Ok(Self {
            node: setup.node,
            clock,
            agent,
        })
    }

    /// Waits until the agent has registered (so the scheduler knows its node and devices).
    pub async fn registered(&self) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(id) = self.agent.agent_id() {
                return Ok(id);
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{} never registered",
                self.node
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Samples now, then moves the clock on by one interval.
    pub async fn tick(&mut self) -> anyhow::Result<()> {
        self.agent.tick().await?;
        self.clock.advance(INTERVAL);
        Ok(())
    }

    /// Every device's counter at the clock's current time.
    pub fn counters(&mut self) -> anyhow::Result<Energy> {
        let node = self.node.clone();
        counters_of(&node, self.agent.sampler_mut().source_mut())
    }

    /// The first device's UUID.
    pub fn device(&self, index: usize) -> String {
        self.agent.sampler().devices()[index].uuid.clone()
    }

    /// Waits for the next command and applies it.
    pub async fn serve_command(&mut self) -> anyhow::Result<CommandAck> {
        let command = tokio::time::timeout(PATIENCE, self.agent.next_command())
            .await
            .context("no command arrived")?
            .context("the command link is gone")?;
        Ok(self.agent.handle(command).await)
    }

    /// Stops the agent gracefully (a last batch at the current time, defaults restored, the
    /// buffer flushed); returns the final counters and what the agent reports.
    pub async fn finish(self) -> anyhow::Result<(Energy, Stopped<SimulatedSource>)> {
        let node = self.node.clone();
        let mut stopped = tokio::time::timeout(PATIENCE, self.agent.stop())
            .await
            .context("the agent did not stop")??;
        let counters = counters_of(&node, &mut stopped.source)?;
        Ok((counters, stopped))
    }
}

fn counters_of(node: &str, source: &mut SimulatedSource) -> anyhow::Result<Energy> {
    let mut counters = BTreeMap::new();
    for d in 0..source.devices().len() {
        let reading = source.read(d)?;
        counters.insert((node.to_owned(), reading.device_uuid), reading.energy_mj);
    }
    Ok(counters)
}

/// Samples every agent once, `times` times over.
pub async fn tick_all(agents: &mut [SimAgent], times: usize) -> anyhow::Result<()> {
    for _ in 0..times {
        for agent in agents.iter_mut() {
            agent.tick().await?;
        }
    }
    Ok(())
}

/// Waits until every agent has registered.
pub async fn registered_all(agents: &[SimAgent]) -> anyhow::Result<()> {
    for a in agents {
        a.registered().await?;
    }
    Ok(())
}

/// Every agent's counters now.
pub fn counters_all(agents: &mut [SimAgent]) -> anyhow::Result<Energy> {
    let mut all = Energy::new();
    for a in agents {
        all.extend(a.counters()?);
    }
    Ok(all)
}

/// Stops every agent, checks each delivered everything, and returns the energy each device's
/// counter produced with the agents' reports.
pub async fn finish_all(
    agents: Vec<SimAgent>,
) -> anyhow::Result<(Energy, Vec<Stopped<SimulatedSource>>)> {
    let mut produced = BTreeMap::new();
    let mut reports = Vec::new();
    for agent in agents {
        let (counters, stopped) = agent.finish().await?;
        let u = &stopped.uplink;
        ensure!(u.unsent == 0 && u.dropped == 0, "{u:?}");
        produced.extend(counters);
        reports.push(stopped);
    }
    Ok((produced, reports))
}

pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample line (`name` includes any labels) of a Prometheus exposition.
pub fn metric(text: &str, name: &str) -> anyhow::Result<u64> {
    for line in text.lines() {
        if let Some(value) = line.strip_prefix(name).and_then(|r| r.strip_prefix(' ')) {
            return Ok(value.trim().parse()?);
        }
    }
    bail!("no metric {name} in:\n{text}")
}

/// Waits until the registry has metered exactly `expected` for every device listed.
pub async fn wait_until_metered(registry: &NodeRegistry, expected: &Energy) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let metered = registry.energy_by_device();
        if expected.iter().all(|(k, v)| metered.get(k) == Some(v)) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("metered {metered:?}, expected {expected:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
