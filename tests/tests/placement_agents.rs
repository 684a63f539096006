//! The placement API plans on the capacity the node agents register: a real `offpeak serve`
//! on loopback with no configured nodes, agents registering over `AgentService`, the operator's
//! side over `PlacementService`. The scheduler's clock is a manual one the test moves.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use offpeak_proto::v1::{
    Device, JobPlan, JobSpec, PlanPhase, RegisterRequest, SubmitJobRequest, WatchPlansRequest,
};
use offpeak_scheduler::placement::{ManualClock, PlacementConfig, SignalRows, TableFeed};
use offpeak_scheduler::scenario::{Profile, ProfilePoint};
use offpeak_scheduler::service::{self, NodeRegistry, ServiceConfig};
use offpeak_scheduler::units::Watts;
use tokio::sync::oneshot;
use tonic::Code;

const PATIENCE: Duration = Duration::from_secs(20);

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

fn phase(p: &JobPlan) -> PlanPhase {
    PlanPhase::try_from(p.phase).unwrap_or(PlanPhase::Unspecified)
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
    let registry = NodeRegistry::new();
    let bound = service::bind(ServiceConfig {
        grpc_addr: "127.0.0.1:0".parse()?,
        admin_addr: "127.0.0.1:0".parse()?,
        commands: service::CommandCenter::new(registry.clone()),
        curves: service::CurveStore::new(),
        registry,
        reports: None,
        placement: Some(placement),
    })
    .await?;
    let uri = format!("http://{}", bound.addrs().grpc);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
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

    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, server).await???;
    Ok(())
}
