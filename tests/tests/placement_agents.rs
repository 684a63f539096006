//! The placement API plans on the capacity the node agents register: a real `offpeak serve`
//! on loopback with no configured nodes, agents registering over `AgentService`, the operator's
//! side over `PlacementService`. The scheduler's clock is a manual one the test moves.
//!
//! With agents whose kubelet (a pod-resources server on a unix socket, as in `agent_pods.rs`)
//! reports a job's worker pods: the running job's power limit reaches exactly the devices its
//! pods use, once, and its plan shows the energy the pods' counters metered, priced at the
//! zone's signals; a limit an agent cannot apply is named in the plan's reason.

mod agent_common;
mod placement_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent_common::{PATIENCE, counters_all, tick_all};
use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use offpeak_agent::PowerSource as _;
use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use offpeak_proto::v1::{
    CommandAck, CommandsRequest, Device, GetPlanRequest, JobSpec, PlanPhase, PodRef,
    RegisterRequest, Sample, SampleBatch, SubmitJobRequest, WatchPlansRequest, command,
};
use offpeak_scheduler::placement::{ManualClock, PlacementConfig, SignalRows, TableFeed};
use offpeak_scheduler::scenario::{Profile, ProfilePoint};
use offpeak_scheduler::service::NodeRegistry;
use offpeak_scheduler::service::commands::OutcomeLabels;
use offpeak_scheduler::units::Watts;
use placement_common::{
    CARBON, LIMIT_WATTS, Live, PRICE, PUE, SIM_MODEL, ZONE, phase, place_pods, sim_job, sim_t0,
    start_nodes,
};
use tonic::Code;

fn t0() -> DateTime<Utc> {
    "2024-03-01T00:00:00Z".parse().expect("time")
}

fn job(name: &str, workers: u32) -> JobSpec {
    JobSpec {
        key: format!("team/{name}"),
        uid: format!("uid-{name}"),
        workers,
        gpus_per_worker: 8,
        accelerator: "V100".into(),
        work_hours: 1.0,
        submit_unix_s: t0().timestamp(),
        deadline_unix_s: (t0() + chrono::Duration::hours(12)).timestamp(),
        ..JobSpec::default()
    }
}

async fn register(
    agents: &mut AgentServiceClient<tonic::transport::Channel>,
    node: &str,
) -> anyhow::Result<()> {
    let devices = (0..8)
        .map(|i| Device {
            uuid: format!("{node}-gpu{i}"),
            model: "V100".into(),
            ..Device::default()
        })
        .collect();
    agents
        .register(RegisterRequest {
            node: node.into(),
            zone: "GB".into(),
            devices,
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn jobs_are_planned_on_the_nodes_agents_register() -> anyhow::Result<()> {
    let clock = ManualClock::new(t0());
    let rows = SignalRows::hourly(t0(), &vec![(40.0, 150.0); 48]).context("rows")?;
    let placement = PlacementConfig::new(Arc::new(clock.clone()))
        .with_zone("GB", 1.1)
        .with_profile(Profile {
            name: "v100/bert".into(),
            points: vec![ProfilePoint {
                power_limit: Watts(250.0),
                throughput: 1.0,
                draw: Watts(230.0),
            }],
        })
        .with_signals(TableFeed::new(None).zone("GB", rows));
    let live = Live::start(clock.clone(), placement, NodeRegistry::new(), None).await?;
    let uri = live.uri();
    let mut agents = AgentServiceClient::connect(uri.clone()).await?;
    let mut operator = PlacementServiceClient::connect(uri).await?;

    // No agent yet: no node has a V100.
    let err = operator
        .submit_job(SubmitJobRequest {
            job: Some(job("early", 1)),
        })
        .await
        .expect_err("no nodes");
    ensure!(
        err.code() == Code::InvalidArgument && err.message().contains("`accelerator`"),
        "{err:?}"
    );

    register(&mut agents, "gpu-node-1").await?;
    let one = operator
        .submit_job(SubmitJobRequest {
            job: Some(job("one", 1)),
        })
        .await?
        .into_inner();
    ensure!(phase(&one) == PlanPhase::Run, "{one:?}");
    ensure!(
        one.nodes.len() == 1 && one.nodes[0].node == "gpu-node-1",
        "{one:?}"
    );

    // Two nodes' worth: rejected while one node exists, planned once a second registers.
    let two = operator
        .submit_job(SubmitJobRequest {
            job: Some(job("two", 2)),
        })
        .await?
        .into_inner();
    ensure!(phase(&two) == PlanPhase::Rejected, "{two:?}");
    ensure!(two.reason.contains("needs 16 GPUs together"), "{two:?}");
    let mut watch = operator
        .watch_plans(WatchPlansRequest {
            key_prefix: "team/two".into(),
        })
        .await?
        .into_inner();
    register(&mut agents, "gpu-node-2").await?;
    // The next slot's plan sees the new node.
    clock.set(t0() + chrono::Duration::minutes(15));
    let planned = tokio::time::timeout(PATIENCE, async {
        while let Some(p) = watch.message().await? {
            if phase(&p) != PlanPhase::Rejected {
                return Ok::<_, anyhow::Error>(Some(p));
            }
        }
        Ok(None)
    })
    .await??
    .context("the watch ended")?;
    let mut nodes: Vec<&str> = planned.nodes.iter().map(|n| n.node.as_str()).collect();
    nodes.sort_unstable();
    ensure!(
        phase(&planned) == PlanPhase::Planned && planned.start_unix_s == one.end_unix_s,
        "two should wait for one's node: {planned:?}"
    );
    ensure!(nodes == ["gpu-node-1", "gpu-node-2"], "{planned:?}");

    live.stop().await
}

/// kWh in millijoules.
const MJ_PER_KWH: f64 = 3.6e9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_jobs_power_limit_reaches_its_pods_devices_and_its_plan_shows_their_energy()
-> anyhow::Result<()> {
    let live = Live::in_memory().await?;
    let dir = tempfile::tempdir()?;
    // node-a and node-b run the job's two workers on both their GPUs; node-c's one GPU runs
    // another job's pod.
    let (mut agents, mut kubelets) = start_nodes(&live.uri(), dir.path(), 10).await?;
    let mut operator = live.operator().await?;
    let plan = operator
        .submit_job(SubmitJobRequest {
            job: Some(sim_job("train", 2, 2)),
        })
        .await?
        .into_inner();
    ensure!(phase(&plan) == PlanPhase::Run, "{plan:?}");
    let mut nodes: Vec<&str> = plan.nodes.iter().map(|n| n.node.as_str()).collect();
    nodes.sort_unstable();
    ensure!(
        nodes == ["node-a", "node-b"] && plan.power_limit_watts == LIMIT_WATTS,
        "{plan:?}"
    );

    // Before the pods: samples name none.
    tick_all(&mut agents, 1).await?;
    let baseline = counters_all(&mut agents)?;
    tick_all(&mut agents, 1).await?;
    place_pods(&mut agents, &mut kubelets).await?;
    tick_all(&mut agents, 1).await?;

    // The job's four devices get the run's limit; the other pod's device gets nothing.
    for agent in &mut agents[..2] {
        for _ in 0..2 {
            let ack = agent.serve_command().await?;
            ensure!(ack.ok && ack.power_limit_watts == LIMIT_WATTS, "{ack:?}");
        }
        for d in 0..2 {
            let limit = agent
                .agent
                .sampler_mut()
                .source_mut()
                .read(d)?
                .power_limit_watts;
            ensure!(
                limit == Some(f64::from(LIMIT_WATTS)),
                "{}: {limit:?}",
                agent.node
            );
        }
    }
    // Once per device and run: later checks send nothing more.
    tick_all(&mut agents, 4).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(live.sent() == 4, "{} commands sent", live.sent());
    ensure!(agents[2].agent.enforcer().changed().is_empty());

    tick_all(&mut agents, 4).await?;
    let last = counters_all(&mut agents)?;
    tick_all(&mut agents, 1).await?;
    // What the sources' counters produced on the job's devices while its pods used them.
    let produced = |node: &str| -> u64 {
        last.iter()
            .filter(|((n, _), _)| n == node)
            .map(|(k, v)| v - baseline[k])
            .sum()
    };
    let per_pod: BTreeMap<(String, String), u64> = [
        (
            ("ml".to_string(), "train-worker-0".to_string()),
            produced("node-a"),
        ),
        (
            ("ml".to_string(), "train-worker-1".to_string()),
            produced("node-b"),
        ),
        (
            ("ml".to_string(), "other-worker-0".to_string()),
            produced("node-c"),
        ),
    ]
    .into();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while live.registry().energy_by_pod() != per_pod {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "metered per pod {:?}, produced {per_pod:?}",
            live.registry().energy_by_pod()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let job_mj = produced("node-a") + produced("node-b");
    ensure!(job_mj > 0);

    // The next cycle prices it: at 100/MWh and 200 g/kWh, PUE 1.25.
    let mut watch = operator
        .watch_plans(WatchPlansRequest {
            key_prefix: "ml/train".into(),
        })
        .await?
        .into_inner();
    live.clock.set(sim_t0() + chrono::Duration::minutes(15));
    let metered = tokio::time::timeout(PATIENCE, async {
        while let Some(p) = watch.message().await? {
            if p.metered_it_kwh > 0.0 {
                return Ok::<_, anyhow::Error>(p);
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await??;
    let kwh = job_mj as f64 / MJ_PER_KWH;
    ensure!(metered.metered_it_kwh == kwh, "{metered:?} vs {kwh} kWh");
    let cost = kwh * PUE * PRICE / 1000.0;
    let carbon = kwh * PUE * CARBON / 1000.0;
    ensure!(
        (metered.metered_cost - cost).abs() < 1e-12
            && (metered.metered_carbon_kg - carbon).abs() < 1e-12,
        "{metered:?}: expected cost {cost}, carbon {carbon} kg"
    );
    ensure!(phase(&metered) == PlanPhase::Run, "{metered:?}");
    let got = operator
        .get_plan(GetPlanRequest {
            key: "ml/train".into(),
        })
        .await?
        .into_inner();
    ensure!(got.metered_it_kwh == kwh, "{got:?}");

    agent_common::finish_all(agents).await?;
    live.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_limit_an_agent_cannot_apply_is_named_in_the_plan() -> anyhow::Result<()> {
    let live = Live::in_memory().await?;
    let mut agents = AgentServiceClient::connect(live.uri()).await?;
    // A hand-driven agent: one GPU that takes the limit, one whose range stops below it.
    let device = |uuid: &str, max: u32| Device {
        uuid: uuid.into(),
        model: SIM_MODEL.into(),
        min_power_limit_watts: 100,
        max_power_limit_watts: max,
        default_power_limit_watts: max,
    };
    let agent_id = agents
        .register(RegisterRequest {
            node: "node-f".into(),
            zone: ZONE.into(),
            devices: vec![device("GPU-f0", 250), device("GPU-f1", 140)],
        })
        .await?
        .into_inner()
        .agent_id;
    let mut commands = agents
        .commands(CommandsRequest {
            agent_id: agent_id.clone(),
        })
        .await?
        .into_inner();
    let mut operator = live.operator().await?;
    let plan = operator
        .submit_job(SubmitJobRequest {
            job: Some(sim_job("fail", 1, 2)),
        })
        .await?
        .into_inner();
    ensure!(phase(&plan) == PlanPhase::Run, "{plan:?}");
    let sample = |uuid: &str| Sample {
        device_uuid: uuid.into(),
        time_unix_ms: (sim_t0() + chrono::Duration::minutes(1)).timestamp_millis(),
        power_watts: 200.0,
        energy_mj: 1_000,
        pod: Some(PodRef {
            namespace: "ml".into(),
            pod: "fail-worker-0".into(),
            container: "trainer".into(),
        }),
        ..Sample::default()
    };
    agents
        .stream_samples(tokio_stream::iter(vec![SampleBatch {
            agent_id: agent_id.clone(),
            sequence: 1,
            samples: vec![sample("GPU-f0"), sample("GPU-f1")],
            curves: vec![],
        }]))
        .await?;
    let command = tokio::time::timeout(PATIENCE, commands.message())
        .await??
        .context("the command stream ended")?;
    match &command.kind {
        Some(command::Kind::SetPowerLimit(s)) => {
            ensure!(s.device_uuid == "GPU-f0" && s.watts == LIMIT_WATTS, "{s:?}");
        }
        other => anyhow::bail!("unexpected command {other:?}"),
    }
    let mut watch = operator
        .watch_plans(WatchPlansRequest {
            key_prefix: "ml/fail".into(),
        })
        .await?
        .into_inner();
    agents
        .report_ack(CommandAck {
            agent_id: agent_id.clone(),
            command_id: command.id.clone(),
            ok: false,
            error: "driver said no".into(),
            power_limit_watts: 0,
        })
        .await?;
    let want = "power limit 150 W not applied on node-f/GPU-f0: driver said no, \
                node-f/GPU-f1: 150 W is outside the device's allowed range 100–140 W";
    let failed = tokio::time::timeout(PATIENCE, async {
        while let Some(p) = watch.message().await? {
            if p.reason.contains("driver said no") {
                return Ok::<_, anyhow::Error>(p);
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await??;
    ensure!(
        phase(&failed) == PlanPhase::Run && failed.reason == format!("running; {want}"),
        "{failed:?}"
    );
    // Counted by the command path: one refused, one failed on the agent.
    let counters = live.scheduler.commands.counters();
    let failed_acks = counters
        .acks
        .get_or_create(&OutcomeLabels { outcome: "failed" })
        .get();
    ensure!(failed_acks == 1, "{failed_acks} failed acknowledgements");
    // Not retried for this run.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(live.sent() == 1, "{} commands sent", live.sent());
    live.stop().await
}
