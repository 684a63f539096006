//! The scheduler's `AgentService` and real agents over loopback gRPC: three simulated agents
//! metered exactly what their counters produced; a scheduler restart in the middle, the second
//! scheduler a new process's worth of state read back from the SQLite file, with replays
//! de-duplicated and no energy lost or doubled; and an agent restart whose on-disk buffer
//! delivers what the scheduler never saw.

mod agent_common;

use agent_common::{
    AgentSetup, Scheduler, SimAgent, counters_all, finish_all, http_get, metric, tick_all,
    wait_until_metered,
};
use anyhow::ensure;
use offpeak_scheduler::service::NodeRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_are_metered_exactly_what_their_counters_produced() -> anyhow::Result<()> {
    let scheduler = Scheduler::in_memory().await?;
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
        let setup = AgentSetup::new(&format!("node-{i}"), i as u64 + 1, devices);
        agents.push(SimAgent::start(setup, scheduler.uri())?);
    }
    tick_all(&mut agents, 120).await?;
    let (produced, _) = finish_all(agents).await?;
    // The sources' counters started at zero, so what they read now is all they produced.
    ensure!(produced.len() == 9);
    ensure!(produced.values().all(|&mj| mj > 0));
    assert_eq!(scheduler.registry.energy_by_device(), produced);

    let text = scheduler.metrics().await?;
    let total: u64 = produced.values().sum();
    assert_eq!(
        metric(&text, "offpeak_energy_metered_millijoules_total")?,
        total
    );
    // 121 samples per device (120 ticks and the last batch when stopping), 9 devices.
    assert_eq!(metric(&text, "offpeak_samples_accepted_total")?, 121 * 9);
    assert_eq!(metric(&text, "offpeak_samples_duplicate_total")?, 0);
    scheduler.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_restart_from_its_state_file_neither_loses_nor_doubles_energy()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state.db");
    let first = Scheduler::start(NodeRegistry::open(&state)?, "127.0.0.1:0".parse()?).await?;
    let grpc_addr = first.addrs.grpc;
    let devices = [1, 2, 3];
    let mut agents = Vec::new();
    for (i, n) in devices.into_iter().enumerate() {
        // One stream for the whole test: nothing is confirmed before the restart, so every
        // batch the first scheduler metered is replayed to the second.
        let setup =
            AgentSetup::new(&format!("node-{i}"), i as u64 + 10, n).batches_per_stream(10_000);
        agents.push(SimAgent::start(setup, first.uri())?);
    }
    const BEFORE: usize = 30;
    tick_all(&mut agents, BEFORE - 1).await?;
    // The counters the last batch before the restart carries (reading the simulator at the
    // time it will sample changes nothing).
    let sent = counters_all(&mut agents)?;
    tick_all(&mut agents, 1).await?;
    wait_until_metered(&first.registry, &sent).await?;
    let metered_before = first.registry.energy_by_device();
    first.stop().await?;

    // The scheduler is away: the agents keep sampling into their buffers. The second one
    // starts from the state file alone, on the same address.
    tick_all(&mut agents, 20).await?;
    let reopened = NodeRegistry::open(&state)?;
    assert_eq!(reopened.energy_by_device(), metered_before);
    let second = Scheduler::start(reopened, grpc_addr).await?;
    tick_all(&mut agents, 20).await?;
    let (produced, reports) = finish_all(agents).await?;
    for stopped in &reports {
        ensure!(stopped.uplink.reconnects >= 1, "{:?}", stopped.uplink);
    }
    assert_eq!(second.registry.energy_by_device(), produced);
    let text = second.metrics().await?;
    let replayed_samples = (BEFORE * devices.iter().sum::<usize>()) as u64;
    assert_eq!(
        metric(&text, "offpeak_samples_duplicate_total")?,
        replayed_samples
    );
    second.stop().await?;
    // And the file has the final totals for the next start.
    assert_eq!(NodeRegistry::open(&state)?.energy_by_device(), produced);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_delivers_its_disk_buffer_after_the_scheduler_returns()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state.db");
    let buffer = dir.path().join("buffer");
    let first = Scheduler::start(NodeRegistry::open(&state)?, "127.0.0.1:0".parse()?).await?;
    let grpc_addr = first.addrs.grpc;
    let setup = AgentSetup {
        // Giving up flushing quickly: the scheduler is down when this agent stops.
        flush_timeout: std::time::Duration::from_millis(300),
        ..AgentSetup::new("node-r", 7, 2)
            .batches_per_stream(10_000)
            .on_disk(&buffer)
    };
    let mut before = SimAgent::start(setup.clone(), first.uri())?;
    tick_all(std::slice::from_mut(&mut before), 9).await?;
    let sent = before.counters()?;
    tick_all(std::slice::from_mut(&mut before), 1).await?;
    wait_until_metered(&first.registry, &sent).await?;
    first.stop().await?;
    tick_all(std::slice::from_mut(&mut before), 10).await?;
    let (old_counters, stopped) = before.finish().await?;
    // Nothing was confirmed (one long stream), so all 21 batches wait on disk.
    assert_eq!(stopped.uplink.unsent, 21, "{:?}", stopped.uplink);

    // The scheduler comes back from its file; a new agent process (a new source: its counters
    // start again from zero, under a new epoch) finds the old batches and replays them first.
    let second = Scheduler::start(NodeRegistry::open(&state)?, grpc_addr).await?;
    let mut after = SimAgent::start(setup, second.uri())?;
    tick_all(std::slice::from_mut(&mut after), 15).await?;
    let (new_counters, stopped) = after.finish().await?;
    assert_eq!((stopped.uplink.unsent, stopped.uplink.dropped), (0, 0));
    let expected: agent_common::Energy = old_counters
        .iter()
        .map(|(k, v)| (k.clone(), v + new_counters[k]))
        .collect();
    assert_eq!(second.registry.energy_by_device(), expected);
    let text = second.metrics().await?;
    // The first 10 batches were metered by the first scheduler before it stopped.
    assert_eq!(metric(&text, "offpeak_samples_duplicate_total")?, 10 * 2);
    assert!(std::fs::read_dir(&buffer)?.next().is_none(), "buffer left");
    second.stop().await
}
