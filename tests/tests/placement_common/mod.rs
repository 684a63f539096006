//! Shared by the live-placement integration tests (`placement_agents.rs`,
//! `placement_ledger.rs`): a real `offpeak serve` on loopback planning in DE-LU on what the
//! agents register, with a manual clock the test moves; and simulated agents on node-a, node-b
//! and node-c whose kubelets (pod-resources servers on unix sockets) name the pods the test
//! sets. Needs `mod agent_common;` beside it in the test crate.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use offpeak_agent::podresources::PodResources;
use offpeak_agent::sim::SimConfig;
use offpeak_proto::kubelet_podresources_v1::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use offpeak_proto::kubelet_podresources_v1::{
    ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse,
    PodResources as KubeletPod,
};
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use offpeak_proto::v1::{JobPlan, JobSpec, PlanPhase, SubmitJobRequest};
use offpeak_scheduler::placement::{ManualClock, PlacementConfig, Settings, SignalRows, TableFeed};
use offpeak_scheduler::scenario::{Profile, ProfilePoint};
use offpeak_scheduler::service::reports_http::Reports;
use offpeak_scheduler::service::{self, CommandCenter, NodeRegistry, ServiceConfig};
use offpeak_scheduler::units::Watts;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::agent_common::{self, AgentSetup, Scheduler, SimAgent};

/// The simulated agents' device model, as the scheduler names its accelerator.
pub const SIM_MODEL: &str = "Tesla V100 (simulated)";
/// The power limit of the profile's one point, the one every run is planned at.
pub const LIMIT_WATTS: u32 = 150;
/// The profile's draw and throughput at that limit (what the counterfactual uses).
pub const DRAW_WATTS: f64 = 140.0;
pub const THROUGHPUT: f64 = 0.9;
/// The agents' zone (`SimAgent` registers in DE-LU), its PUE, price and intensity.
pub const ZONE: &str = "DE-LU";
pub const PUE: f64 = 1.25;
pub const PRICE: f64 = 100.0;
pub const CARBON: f64 = 200.0;
/// Hours of signals from a day before T0: the cycle reads three days back for its estimate
/// (older rows are only missing history) and plans up to two days ahead.
const SIGNAL_HOURS: usize = 72;

/// The scheduler's clock at the start and the jobs' submission: shortly before the simulated
/// agents' first sample (their clocks start at Unix 1.7e9 s, 2023-11-14T22:13:20Z), so the
/// job's run and the first samples share a slot.
pub fn sim_t0() -> DateTime<Utc> {
    "2023-11-14T22:00:00Z".parse().expect("time")
}

/// A job `ml/{name}` of `workers` × `gpus` simulated GPUs, 1 h of work, due in 12 h,
/// submitted at [`sim_t0`].
pub fn sim_job(name: &str, workers: u32, gpus: u32) -> JobSpec {
    JobSpec {
        key: format!("ml/{name}"),
        uid: format!("uid-{name}"),
        namespace: "ml".into(),
        workers,
        gpus_per_worker: gpus,
        work_hours: 1.0,
        submit_unix_s: sim_t0().timestamp(),
        deadline_unix_s: (sim_t0() + chrono::Duration::hours(12)).timestamp(),
        ..JobSpec::default()
    }
}

pub fn phase(p: &JobPlan) -> PlanPhase {
    PlanPhase::try_from(p.phase).unwrap_or(PlanPhase::Unspecified)
}

/// Placement on `clock` in [`ZONE`] at flat signals, with short debounce and power-check
/// intervals and one profile of the simulated model at [`LIMIT_WATTS`] only.
pub fn placement(clock: &ManualClock) -> anyhow::Result<PlacementConfig> {
    let rows = SignalRows::hourly(
        sim_t0() - chrono::Duration::hours(24),
        &vec![(PRICE, CARBON); SIGNAL_HOURS],
    )
    .context("rows")?;
    Ok(PlacementConfig::new(Arc::new(clock.clone()))
        .with_settings(Settings {
            debounce: Duration::from_millis(5),
            power_check: Duration::from_millis(20),
            ..Settings::default()
        })
        .with_zone(ZONE, PUE)
        .with_profile(Profile {
            name: format!("{}/test", SIM_MODEL.to_lowercase()),
            points: vec![ProfilePoint {
                power_limit: Watts(f64::from(LIMIT_WATTS)),
                throughput: THROUGHPUT,
                draw: Watts(DRAW_WATTS),
            }],
        })
        .with_signals(TableFeed::new(None).zone(ZONE, rows)))
}

/// A scheduler serving agents and placement (and reports, when given), and its clock.
pub struct Live {
    pub clock: ManualClock,
    pub scheduler: Scheduler,
}

impl Live {
    /// Serves `placement` (planning on `clock`) over `registry`.
    pub async fn start(
        clock: ManualClock,
        placement: PlacementConfig,
        registry: NodeRegistry,
        reports: Option<Reports>,
    ) -> anyhow::Result<Self> {
        let scheduler = Scheduler::serve(ServiceConfig {
            grpc_addr: "127.0.0.1:0".parse()?,
            admin_addr: "127.0.0.1:0".parse()?,
            commands: CommandCenter::new(registry.clone()),
            curves: service::CurveStore::new(),
            registry,
            reports,
            placement: Some(placement),
        })
        .await?;
        Ok(Self { clock, scheduler })
    }

    /// [`placement`] at [`sim_t0`] over an in-memory registry, without reports.
    pub async fn in_memory() -> anyhow::Result<Self> {
        let clock = ManualClock::new(sim_t0());
        let placement = placement(&clock)?;
        Self::start(clock, placement, NodeRegistry::new(), None).await
    }

    pub fn uri(&self) -> String {
        self.scheduler.uri()
    }

    pub fn registry(&self) -> &NodeRegistry {
        &self.scheduler.registry
    }

    pub async fn operator(
        &self,
    ) -> anyhow::Result<PlacementServiceClient<tonic::transport::Channel>> {
        Ok(PlacementServiceClient::connect(self.uri()).await?)
    }

    /// Submits `job`; returns its plan's phase.
    pub async fn submit(&self, job: JobSpec) -> anyhow::Result<PlanPhase> {
        let plan = self
            .operator()
            .await?
            .submit_job(SubmitJobRequest { job: Some(job) })
            .await?
            .into_inner();
        Ok(phase(&plan))
    }

    /// Power-limit commands sent to agents so far.
    pub fn sent(&self) -> u64 {
        self.scheduler.commands.counters().sent.get()
    }

    /// The value of the metric `name` on the admin port.
    pub async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        agent_common::metric(&self.scheduler.metrics().await?, name)
    }

    /// The CSV report of November 2023 on the admin port.
    pub async fn report(&self) -> anyhow::Result<String> {
        let (status, body) =
            agent_common::http_get(self.scheduler.addrs.admin, "/reports/2023-11").await?;
        ensure!(status == 200, "the report answered {status}: {body}");
        Ok(body)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.scheduler.stop().await
    }
}

/// A kubelet's pod-resources service on a unix socket, answering with the pods the test sets.
#[derive(Debug, Clone, Default)]
pub struct Kubelet {
    pods: Arc<Mutex<Vec<KubeletPod>>>,
}

impl Kubelet {
    /// Serves on `socket`; returns the client the agent would use.
    pub fn serve(&self, socket: &Path) -> anyhow::Result<PodResources> {
        let listener = UnixListener::bind(socket)?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PodResourcesListerServer::new(self.clone()))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        Ok(PodResources::new(socket))
    }

    /// One pod `namespace/name` using `gpus`.
    pub fn set(&self, namespace: &str, name: &str, gpus: Vec<String>) {
        *self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = vec![KubeletPod {
            name: name.into(),
            namespace: namespace.into(),
            containers: vec![ContainerResources {
                name: "trainer".into(),
                devices: vec![ContainerDevices {
                    resource_name: "nvidia.com/gpu".into(),
                    device_ids: gpus,
                }],
            }],
        }];
    }
}

#[tonic::async_trait]
impl PodResourcesLister for Kubelet {
    async fn list(
        &self,
        _request: tonic::Request<ListPodResourcesRequest>,
    ) -> Result<tonic::Response<ListPodResourcesResponse>, tonic::Status> {
        let pods = self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok(tonic::Response::new(ListPodResourcesResponse {
            pod_resources: pods,
        }))
    }
}

/// Each node's kubelet and the pod-resources client its agent reads it with.
pub type Kubelets = Vec<(Kubelet, PodResources)>;

/// Starts flat-power agents on node-a and node-b (two GPUs each: the job's two workers) and
/// node-c (one GPU: another job's pod) against `uri`, seeded `seed`, `seed + 1`, `seed + 2`,
/// each with a kubelet on a socket in `dir`; waits until they registered.
pub async fn start_nodes(
    uri: &str,
    dir: &Path,
    seed: u64,
) -> anyhow::Result<(Vec<SimAgent>, Kubelets)> {
    let mut agents = Vec::new();
    let mut kubelets = Vec::new();
    for (i, (node, devices)) in [("node-a", 2), ("node-b", 2), ("node-c", 1)]
        .into_iter()
        .enumerate()
    {
        let setup = AgentSetup {
            sim: SimConfig::flat(),
            ..AgentSetup::new(node, seed + i as u64, devices)
        };
        let agent = SimAgent::start(setup, uri.to_owned())?;
        agent.registered().await?;
        let kubelet = Kubelet::default();
        let client = kubelet.serve(&dir.join(format!("{node}.sock")))?;
        agents.push(agent);
        kubelets.push((kubelet, client));
    }
    Ok((agents, kubelets))
}

/// Puts the pods on all the nodes' devices, in namespace `ml`: `train-worker-0` on node-a,
/// `train-worker-1` on node-b, `other-worker-0` on node-c; the agents read them back.
pub async fn place_pods(agents: &mut [SimAgent], kubelets: &mut Kubelets) -> anyhow::Result<()> {
    for (pod, i) in [
        ("train-worker-0", 0),
        ("train-worker-1", 1),
        ("other-worker-0", 2),
    ] {
        let gpus = (0..agents[i].agent.sampler().devices().len())
            .map(|d| agents[i].device(d))
            .collect();
        kubelets[i].0.set("ml", pod, gpus);
        let map = kubelets[i].1.device_pods().await?;
        agents[i].agent.update_pods(map);
    }
    Ok(())
}
