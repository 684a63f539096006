//! The scheduler's `AgentService` and real agents over loopback gRPC: three simulated agents
//! metered exactly, a scheduler restart in the middle with replays de-duplicated, and bad
//! samples rejected and counted.
//!
//! Time: each agent's simulated source runs on a `ManualClock` that the test advances between
//! samples, so the energy the sources produce is fixed; the only real waiting is for the async
//! runtime to move batches over the sockets (and the agents' reconnect backoff, 10 ms here).
//!
//! The restart keeps the registry in memory and hands it to the new server: the registry is
//! not persisted yet, so this shows replay and de-duplication across a server restart, not
//! recovery from a lost registry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use offpeak_agent::PowerSource as _;
use offpeak_agent::client::{Sampler, UplinkConfig, UplinkReport, spawn_uplink};
use offpeak_agent::clock::ManualClock;
use offpeak_agent::sim::{PowerProfile, SimConfig, SimulatedSource};
use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::{Device, RegisterRequest, Sample, SampleBatch};
use offpeak_scheduler::service::{self, BoundAddrs, NodeRegistry, ServiceConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The agents' sampling interval, on their manual clocks.
const INTERVAL: Duration = Duration::from_secs(1);
/// Long enough for anything on loopback; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

struct Scheduler {
    addrs: BoundAddrs,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), service::ServiceError>>,
}

impl Scheduler {
    async fn start(registry: &NodeRegistry, grpc_addr: SocketAddr) -> anyhow::Result<Self> {
        let bound = service::bind(ServiceConfig {
            grpc_addr,
            admin_addr: "127.0.0.1:0".parse()?,
            registry: registry.clone(),
        })
        .await?;
        let addrs = bound.addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
        Ok(Self { addrs, stop, task })
    }

    fn uri(&self) -> String {
        format!("http://{}", self.addrs.grpc)
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(self.addrs.admin, "/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .context("the scheduler did not stop")???;
        Ok(())
    }
}

/// A real uplink fed by a simulated source on a manual clock.
struct SimAgent {
    node: String,
    clock: ManualClock,
    sampler: Sampler<SimulatedSource>,
    tx: mpsc::Sender<Vec<Sample>>,
    uplink: JoinHandle<UplinkReport>,
    /// The counters in the last batch sent.
    last_sent: BTreeMap<(String, String), u64>,
}

/// Samples every agent once, `times` times over.
async fn tick_all(agents: &mut [SimAgent], times: usize) -> anyhow::Result<()> {
    for _ in 0..times {
        for agent in agents.iter_mut() {
            agent.tick().await?;
        }
    }
    Ok(())
}

/// Stops every agent, checks each delivered everything, and returns the energy each device's
/// counter produced with the agents' reports.
async fn finish_all(
    agents: Vec<SimAgent>,
) -> anyhow::Result<(BTreeMap<(String, String), u64>, Vec<UplinkReport>)> {
    let mut produced = BTreeMap::new();
    let mut reports = Vec::new();
    for agent in agents {
        let (counters, report) = agent.finish().await?;
        ensure!(report.unsent == 0 && report.dropped == 0, "{report:?}");
        produced.extend(counters);
        reports.push(report);
    }
    Ok((produced, reports))
}

impl SimAgent {
    fn start(
        node: &str,
        seed: u64,
        devices: usize,
        scheduler: String,
        batches_per_stream: usize,
    ) -> anyhow::Result<Self> {
        let clock = ManualClock::new();
        let source = SimulatedSource::new(
            Arc::new(clock.clone()),
            SimConfig {
                seed,
                // Short phases so that a couple of minutes cover warm-up and a checkpoint dip.
                warm_up: Duration::from_secs(10),
                checkpoint_every: Duration::from_secs(40),
                checkpoint_duration: Duration::from_secs(5),
                ..SimConfig::default()
            },
            PowerProfile::bundled_v100_resnet50()?,
            devices,
        )?;
        let sampler = Sampler::new(source, 1_700_000_000_000);
        let config = UplinkConfig {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            batches_per_stream,
            ..UplinkConfig::new(scheduler, node, "DE-LU")
        };
        let (tx, uplink) = spawn_uplink(config, sampler.devices())?;
        Ok(Self {
            node: node.to_owned(),
            clock,
            sampler,
            tx,
            uplink,
            last_sent: BTreeMap::new(),
        })
    }

    /// Samples now, then moves the clock on by one interval.
    async fn tick(&mut self) -> anyhow::Result<()> {
        let samples = self.sampler.sample();
        for s in &samples {
            self.last_sent
                .insert((self.node.clone(), s.device_uuid.clone()), s.energy_mj);
        }
        self.tx.send(samples).await.context("the uplink stopped")?;
        self.clock.advance(INTERVAL);
        Ok(())
    }

    /// Every device's counter at the clock's current time, keyed as the registry keys them.
    fn counters(&mut self) -> anyhow::Result<BTreeMap<(String, String), u64>> {
        let source = self.sampler.source_mut();
        let mut counters = BTreeMap::new();
        for d in 0..source.devices().len() {
            let reading = source.read(d)?;
            counters.insert((self.node.clone(), reading.device_uuid), reading.energy_mj);
        }
        Ok(counters)
    }

    /// Samples one last time (so the final counters are sent), closes the input, and waits
    /// for the uplink to flush.
    async fn finish(mut self) -> anyhow::Result<(BTreeMap<(String, String), u64>, UplinkReport)> {
        self.tx.send(self.sampler.sample()).await?;
        let counters = self.counters()?;
        drop(self.tx);
        let report = tokio::time::timeout(PATIENCE, self.uplink)
            .await
            .context("the uplink did not stop")??;
        Ok((counters, report))
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
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
fn metric(text: &str, name: &str) -> anyhow::Result<u64> {
    for line in text.lines() {
        if let Some(value) = line.strip_prefix(name).and_then(|r| r.strip_prefix(' ')) {
            return Ok(value.trim().parse()?);
        }
    }
    bail!("no metric {name} in:\n{text}")
}

/// Waits until the registry has metered exactly `expected` for every device listed.
async fn wait_until_metered(
    registry: &NodeRegistry,
    expected: &BTreeMap<(String, String), u64>,
) -> anyhow::Result<()> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_are_metered_exactly_what_their_counters_produced() -> anyhow::Result<()> {
    let registry = NodeRegistry::new();
    let scheduler = Scheduler::start(&registry, "127.0.0.1:0".parse()?).await?;
    for (path, expected) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let (status, body) = http_get(scheduler.addrs.admin, path).await?;
        ensure!(
            status == 200 && body.trim() == expected,
            "{path}: {status} {body}"
        );
    }
    let mut agents = Vec::new();
    for (i, devices) in [2, 3, 4].into_iter().enumerate() {
        // 25 batches per stream: several streams are rotated and confirmed on the way.
        agents.push(SimAgent::start(
            &format!("node-{i}"),
            i as u64 + 1,
            devices,
            scheduler.uri(),
            25,
        )?);
    }
    tick_all(&mut agents, 120).await?;
    let (produced, _) = finish_all(agents).await?;
    // The sources' counters started at zero, so what they read now is all they produced.
    ensure!(produced.len() == 9);
    ensure!(produced.values().all(|&mj| mj > 0));
    let metered = registry.energy_by_device();
    assert_eq!(metered, produced);

    let text = scheduler.metrics().await?;
    let total: u64 = produced.values().sum();
    assert_eq!(
        metric(&text, "offpeak_energy_metered_millijoules_total")?,
        total
    );
    // 121 samples per device, 9 devices.
    assert_eq!(metric(&text, "offpeak_samples_accepted_total")?, 121 * 9);
    assert_eq!(metric(&text, "offpeak_samples_duplicate_total")?, 0);
    scheduler.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_restart_neither_loses_nor_doubles_energy() -> anyhow::Result<()> {
    let registry = NodeRegistry::new();
    let first = Scheduler::start(&registry, "127.0.0.1:0".parse()?).await?;
    let grpc_addr = first.addrs.grpc;
    let devices = [1, 2, 3];
    let mut agents = Vec::new();
    for (i, n) in devices.into_iter().enumerate() {
        // One stream for the whole test: nothing is confirmed before the restart, so every
        // batch the first server metered is replayed to the second.
        agents.push(SimAgent::start(
            &format!("node-{i}"),
            i as u64 + 10,
            n,
            first.uri(),
            10_000,
        )?);
    }
    const BEFORE: usize = 30;
    tick_all(&mut agents, BEFORE).await?;
    let sent: BTreeMap<_, _> = agents.iter().flat_map(|a| a.last_sent.clone()).collect();
    wait_until_metered(&registry, &sent).await?;
    first.stop().await?;

    // The scheduler is away: the agents keep sampling into their buffers.
    tick_all(&mut agents, 20).await?;
    let second = Scheduler::start(&registry, grpc_addr).await?;
    tick_all(&mut agents, 20).await?;
    let (produced, reports) = finish_all(agents).await?;
    for report in &reports {
        ensure!(report.reconnects >= 1, "{report:?}");
    }
    assert_eq!(registry.energy_by_device(), produced);
    let text = second.metrics().await?;
    let replayed_samples = (BEFORE * devices.iter().sum::<usize>()) as u64;
    assert_eq!(
        metric(&text, "offpeak_samples_duplicate_total")?,
        replayed_samples
    );
    second.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_samples_are_rejected_counted_and_not_metered() -> anyhow::Result<()> {
    let registry = NodeRegistry::new();
    let scheduler = Scheduler::start(&registry, "127.0.0.1:0".parse()?).await?;
    let mut client = AgentServiceClient::connect(scheduler.uri()).await?;

    let refused = client.register(RegisterRequest::default()).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::InvalidArgument)
    );
    let agent_id = client
        .register(RegisterRequest {
            node: "bad-node".into(),
            zone: "GB".into(),
            devices: vec![Device {
                uuid: "GPU-0".into(),
                model: "test".into(),
                ..Device::default()
            }],
        })
        .await?
        .into_inner()
        .agent_id;
    let sample = |uuid: &str, power_watts: f64, energy_mj: u64| Sample {
        device_uuid: uuid.into(),
        power_watts,
        energy_mj,
        ..Sample::default()
    };
    let batch = |sequence: u64, s: Sample| SampleBatch {
        agent_id: agent_id.clone(),
        sequence,
        samples: vec![s],
        curves: vec![],
    };
    let batches = vec![
        batch(1, sample("GPU-0", 100.0, 1_000)),
        batch(2, sample("GPU-0", -5.0, 2_000)),
        batch(3, sample("GPU-0", 100.0, 500)),
        batch(4, sample("GPU-9", 100.0, 2_000)),
        batch(5, sample("GPU-0", 1.0e6, 2_000)),
        batch(3, sample("GPU-0", 100.0, 2_000)),
        batch(6, sample("GPU-0", 100.0, 3_000)),
    ];
    let summary = client
        .stream_samples(tokio_stream::iter(batches))
        .await?
        .into_inner();
    assert_eq!(
        (summary.accepted, summary.rejected, summary.duplicates),
        (2, 4, 1)
    );
    assert_eq!(
        registry.energy_by_device(),
        BTreeMap::from([(("bad-node".to_string(), "GPU-0".to_string()), 2_000)])
    );
    let text = scheduler.metrics().await?;
    for reason in [
        "negative_power",
        "counter_backwards",
        "unknown_device",
        "absurd_power",
    ] {
        assert_eq!(
            metric(
                &text,
                &format!("offpeak_samples_rejected_total{{reason=\"{reason}\"}}")
            )?,
            1,
            "{reason}"
        );
    }

    // A stream from an agent that never registered is refused as such.
    let stranger = SampleBatch {
        agent_id: "agent-404".into(),
        sequence: 1,
        samples: vec![],
        curves: vec![],
    };
    let refused = client
        .stream_samples(tokio_stream::iter(vec![stranger]))
        .await;
    assert_eq!(refused.err().map(|s| s.code()), Some(tonic::Code::NotFound));
    scheduler.stop().await
}
