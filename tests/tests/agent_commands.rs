//! The command path and the curves, end to end over loopback gRPC: a scheduler and three
//! simulated agents; a power-limit command round-trips with its acknowledgement and changes
//! what the device draws; a limit outside the device's range is refused before it is sent; a
//! failure on the agent comes back as a failure (logged, counted, readable); the default is
//! restored when the agent stops; and the curves the agents fit reach the planner as profiles.

mod agent_common;

use std::time::Duration;

use agent_common::{
    AgentSetup, PATIENCE, Scheduler, SimAgent, finish_all, metric, registered_all, tick_all,
};
use anyhow::{Context as _, ensure};
use offpeak_agent::PowerSource as _;
use offpeak_agent::sim::{PowerProfile, SimConfig};
use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::{CommandAck, CommandsRequest, Device, RegisterRequest};
use offpeak_scheduler::service::CommandState;
use offpeak_scheduler::service::commands::{CommandError, CommandRefusal};

async fn wait(
    scheduler: &Scheduler,
    id: &offpeak_scheduler::service::CommandId,
) -> anyhow::Result<CommandState> {
    Ok(tokio::time::timeout(PATIENCE, scheduler.commands.wait(id))
        .await
        .context("no acknowledgement")??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_round_trips_out_of_range_is_refused_and_stop_restores_the_default()
-> anyhow::Result<()> {
    let scheduler = Scheduler::in_memory().await?;
    let mut agents = Vec::new();
    for i in 0..3 {
        let setup = AgentSetup {
            sim: SimConfig {
                seed: i,
                ..SimConfig::flat()
            },
            ..AgentSetup::new(&format!("node-{i}"), i, 2)
        };
        agents.push(SimAgent::start(setup, scheduler.uri())?);
    }
    registered_all(&agents).await?;
    tick_all(&mut agents, 3).await?;
    let gpu = agents[1].device(0);
    let before = agents[1].agent.sampler_mut().source_mut().read(0)?;
    assert_eq!(before.power_limit_watts, Some(250.0));

    // In range: queued, delivered, applied, acknowledged.
    let id = scheduler.commands.set_power_limit("node-1", &gpu, 150)?;
    let ack = agents[1].serve_command().await?;
    assert!(ack.ok, "{ack:?}");
    assert_eq!(ack.command_id, id.to_string());
    assert_eq!(
        wait(&scheduler, &id).await?,
        CommandState::Applied {
            power_limit_watts: 150
        }
    );
    tick_all(&mut agents, 2).await?;
    let capped = agents[1].agent.sampler_mut().source_mut().read(0)?;
    assert_eq!(capped.power_limit_watts, Some(150.0));
    // The simulated draw follows the limit: the Zeus V100 row at 150 W (144.595 W).
    assert_eq!(capped.power_watts, 144.595);
    assert!(capped.power_watts < before.power_watts);
    // The other devices and agents are untouched.
    assert_eq!(
        agents[1]
            .agent
            .sampler_mut()
            .source_mut()
            .read(1)?
            .power_limit_watts,
        Some(250.0)
    );

    // Out of range (the V100's is 100–250 W): refused here, never sent.
    let refused = scheduler.commands.set_power_limit("node-1", &gpu, 300);
    match &refused {
        Err(CommandError::SetPowerLimit {
            reason:
                CommandRefusal::OutOfRange {
                    requested,
                    min,
                    max,
                },
            ..
        }) => assert_eq!((*requested, *min, *max), (300, 100, 250)),
        other => panic!("expected an out-of-range refusal, got {other:?}"),
    }
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("outside the device's allowed range 100–250 W"),
        "{message}"
    );
    assert!(
        scheduler
            .commands
            .set_power_limit("node-9", &gpu, 150)
            .is_err()
    );
    assert!(
        scheduler
            .commands
            .set_power_limit("node-1", "GPU-none", 150)
            .is_err()
    );

    // A limit on node-2 stays set until that agent stops, which puts the default back.
    let gpu2 = agents[2].device(1);
    let id2 = scheduler.commands.set_power_limit("node-2", &gpu2, 100)?;
    assert!(agents[2].serve_command().await?.ok);
    assert!(wait(&scheduler, &id2).await?.is_final());
    tick_all(&mut agents, 2).await?;
    let (_, reports) = finish_all(agents).await?;
    for (i, stopped) in reports.iter().enumerate() {
        let expected = usize::from(i != 0);
        ensure!(
            stopped.restored.len() == expected,
            "agent {i}: {:?}",
            stopped.restored
        );
        ensure!(stopped.restored.iter().all(|r| r.result == Ok(250.0)));
    }
    let mut reports = reports;
    for stopped in &mut reports {
        for d in 0..2 {
            assert_eq!(stopped.source.read(d)?.power_limit_watts, Some(250.0));
        }
    }
    let text = scheduler.metrics().await?;
    assert_eq!(
        metric(&text, "offpeak_command_acks_total{outcome=\"applied\"}")?,
        2
    );
    assert_eq!(
        metric(
            &text,
            "offpeak_commands_refused_total{reason=\"out_of_range\"}"
        )?,
        1
    );
    assert_eq!(
        metric(
            &text,
            "offpeak_commands_refused_total{reason=\"unknown_node\"}"
        )?,
        1
    );
    scheduler.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_command_round_trips_and_an_agent_failure_is_reported_not_hidden()
-> anyhow::Result<()> {
    let scheduler = Scheduler::in_memory().await?;
    let mut agent = SimAgent::start(AgentSetup::new("node-a", 1, 1), scheduler.uri())?;
    agent.registered().await?;
    let gpu = agent.device(0);
    scheduler.commands.set_power_limit("node-a", &gpu, 125)?;
    assert!(agent.serve_command().await?.ok);
    let id = scheduler.commands.restore_default("node-a", &gpu)?;
    let ack = agent.serve_command().await?;
    assert!(ack.ok && ack.power_limit_watts == 250, "{ack:?}");
    assert_eq!(
        wait(&scheduler, &id).await?,
        CommandState::Applied {
            power_limit_watts: 250
        }
    );
    // Nothing left to restore when it stops.
    let (_, stopped) = agent.finish().await?;
    assert!(stopped.restored.is_empty());

    // An agent whose device refuses the limit (here a client speaking the protocol by hand,
    // as a driver error would make the real agent do) reports the failure; the scheduler
    // keeps it, logs it and counts it.
    let mut client = AgentServiceClient::connect(scheduler.uri()).await?;
    let agent_id = client
        .register(RegisterRequest {
            node: "node-b".into(),
            zone: "GB".into(),
            devices: vec![Device {
                uuid: "GPU-b".into(),
                model: "test".into(),
                min_power_limit_watts: 100,
                max_power_limit_watts: 300,
                default_power_limit_watts: 300,
            }],
        })
        .await?
        .into_inner()
        .agent_id;
    let mut commands = client
        .commands(CommandsRequest {
            agent_id: agent_id.clone(),
        })
        .await?
        .into_inner();
    let id = scheduler.commands.set_power_limit("node-b", "GPU-b", 200)?;
    let command = tokio::time::timeout(PATIENCE, commands.message())
        .await??
        .context("the stream ended")?;
    assert_eq!(command.id, id.to_string());
    client
        .report_ack(CommandAck {
            agent_id: agent_id.clone(),
            command_id: command.id.clone(),
            ok: false,
            error: "no permission: setting power limits needs root".into(),
            power_limit_watts: 0,
        })
        .await?;
    assert_eq!(
        wait(&scheduler, &id).await?,
        CommandState::Failed {
            error: "no permission: setting power limits needs root".into()
        }
    );
    // Acknowledging a command nobody sent is refused as such.
    let stray = client
        .report_ack(CommandAck {
            agent_id: agent_id.clone(),
            command_id: "0-1".into(),
            ..CommandAck::default()
        })
        .await;
    assert_eq!(stray.err().map(|s| s.code()), Some(tonic::Code::NotFound));
    let refused = client
        .commands(CommandsRequest {
            agent_id: "agent-404".into(),
        })
        .await;
    assert_eq!(refused.err().map(|s| s.code()), Some(tonic::Code::NotFound));
    let text = scheduler.metrics().await?;
    assert_eq!(
        metric(&text, "offpeak_command_acks_total{outcome=\"failed\"}")?,
        1
    );
    scheduler.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curves_streamed_by_agents_come_out_as_planner_profiles() -> anyhow::Result<()> {
    let scheduler = Scheduler::in_memory().await?;
    let profile = PowerProfile::bundled_v100_resnet50()?;
    let mut agents = Vec::new();
    for i in 0..3 {
        let setup = AgentSetup {
            // Flat draw: the curve points are the profile's exactly (to the milliwatt).
            sim: SimConfig {
                seed: i,
                ..SimConfig::flat()
            },
            curves_every: 4,
            ..AgentSetup::new(&format!("node-{i}"), i, 2)
        };
        agents.push(SimAgent::start(setup, scheduler.uri())?);
    }
    registered_all(&agents).await?;
    // A profile run driven from the scheduler: every device through three limits.
    let sweep = [100, 175, 250];
    for watts in sweep {
        for agent in &mut agents {
            for d in 0..2 {
                let device = agent.device(d);
                scheduler
                    .commands
                    .set_power_limit(&agent.node, &device, watts)?;
                ensure!(agent.serve_command().await?.ok);
            }
        }
        tick_all(&mut agents, 8).await?;
    }
    finish_all(agents).await?;
    let key = (profile.gpu_model.as_str(), profile.workload.as_str());
    let got = scheduler
        .curves
        .profile(key.0, key.1)
        .context("no profile from the agents' curves")?;
    assert_eq!(got.name, "v100/imagenet/resnet50/b256/adadelta");
    let limits: Vec<f64> = got.points.iter().map(|p| p.power_limit.value()).collect();
    assert_eq!(limits, vec![100.0, 175.0, 250.0]);
    let full = profile.curve.at(250.0).context("no 250 W point")?;
    for p in &got.points {
        let recorded = profile
            .curve
            .at(p.power_limit.value())
            .context("limit not in the profile")?;
        // Draw: the simulator rounds it to the milliwatt.
        assert!(
            (p.draw.value() - recorded.draw_watts).abs() < 0.001,
            "{p:?}"
        );
        let relative = recorded.throughput_per_s / full.throughput_per_s;
        assert!(
            (p.throughput - relative).abs() < 1e-9,
            "{p:?} vs {relative}"
        );
    }
    assert_eq!(got.points.last().map(|p| p.throughput), Some(1.0));
    assert_eq!(scheduler.curves.profiles().len(), 1);
    let text = scheduler.metrics().await?;
    assert!(metric(&text, "offpeak_curves_accepted_total")? >= 3);
    scheduler.stop().await?;
    tokio::time::sleep(Duration::ZERO).await;
    Ok(())
}
