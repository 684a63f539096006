//! Scheduler ingest rate: `OFFPEAK_BENCH_AGENTS` agents (default 1,000), each on its own
//! loopback connection to a running `offpeak serve`, stream `OFFPEAK_BENCH_BATCHES` batches
//! of 8 samples (default 150) as fast as the scheduler takes them; reports samples metered per
//! second and the CPU the scheduler used (from /proc/<pid>/stat). Target (issue 4): at least
//! 100,000 samples/s on a 2-core machine.
//!
//! The agents' batches are encoded before the clock starts, so the client side costs only the
//! HTTP/2 framing; clients and scheduler still share the machine's cores, so the figure is a
//! lower bound for a scheduler with the machine to itself. Set `OFFPEAK_BENCH_STATE=1` to run
//! the scheduler with its SQLite state file (`--state`), which it writes at each stream's end.
//!
//! Run: `cargo build --release -p offpeak-scheduler -p offpeak-agent &&
//! cargo bench -p offpeak-tests --bench ingest`.

mod bench_common;

use std::time::Instant;

use anyhow::{Context as _, ensure};
use bench_common::{Serve, clock_ticks, proc_stats, seconds_from_env};
use offpeak_proto::v1::agent_service_client::AgentServiceClient;
use offpeak_proto::v1::{Device, RegisterRequest, Sample, SampleBatch};
use offpeak_tests::{RawCodec, STREAM_SAMPLES_PATH};
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};

const DEVICES: usize = 8;
const TARGET_SAMPLES_PER_S: f64 = 100_000.0;

/// One agent's batches, encoded: 1 s apart, counters rising by 250 J a second.
fn batches(agent_id: &str, node: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let samples = (0..DEVICES)
                .map(|d| Sample {
                    device_uuid: format!("GPU-{node}-{d}"),
                    time_unix_ms: 1_700_000_000_000 + i as i64 * 1000,
                    power_watts: 250.0,
                    energy_mj: i as u64 * 250_000,
                    utilization: 97.0,
                    sm_clock_mhz: 1530,
                    power_limit_watts: 250,
                    counter_epoch: 1,
                    ..Sample::default()
                })
                .collect();
            SampleBatch {
                agent_id: agent_id.to_owned(),
                sequence: i as u64 + 1,
                samples,
                curves: vec![],
            }
            .encode_to_vec()
        })
        .collect()
}

async fn register(channel: Channel, node: usize) -> anyhow::Result<String> {
    let devices = (0..DEVICES)
        .map(|d| Device {
            uuid: format!("GPU-{node}-{d}"),
            model: "NVIDIA A100-SXM4-40GB".into(),
            min_power_limit_watts: 100,
            max_power_limit_watts: 400,
            default_power_limit_watts: 400,
        })
        .collect();
    Ok(AgentServiceClient::new(channel)
        .register(RegisterRequest {
            node: format!("bench-{node}"),
            zone: "GB".into(),
            devices,
        })
        .await?
        .into_inner()
        .agent_id)
}

async fn stream(channel: Channel, batches: Vec<Vec<u8>>) -> anyhow::Result<u64> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(STREAM_SAMPLES_PATH);
    let summary = grpc
        .client_streaming(
            tonic::Request::new(tokio_stream::iter(batches)),
            path,
            RawCodec,
        )
        .await?
        .into_inner();
    Ok(summary.accepted)
}

fn main() -> anyhow::Result<()> {
    let agents = seconds_from_env("OFFPEAK_BENCH_AGENTS", 1_000)? as usize;
    let per_agent = seconds_from_env("OFFPEAK_BENCH_BATCHES", 150)? as usize;
    let state_dir = tempfile::tempdir()?;
    let state = state_dir.path().join("state.db");
    let with_state = std::env::var("OFFPEAK_BENCH_STATE").is_ok_and(|v| v == "1");
    let serve = if with_state {
        Serve::start_with(&["--state", &state.to_string_lossy()])?
    } else {
        Serve::start()?
    };
    let ticks = clock_ticks()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (accepted, seconds, server_cpu, client_cpu) = runtime.block_on(async {
        // Connecting, registering and encoding are set-up, not ingest.
        let mut prepared = Vec::with_capacity(agents);
        for node in 0..agents {
            let channel = Endpoint::from_shared(serve.uri())?.connect().await?;
            let agent_id = register(channel.clone(), node).await?;
            prepared.push((channel, batches(&agent_id, node, per_agent)));
        }
        let server_before = proc_stats(serve.child.id(), ticks)?;
        let client_before = proc_stats(std::process::id(), ticks)?;
        let t0 = Instant::now();
        let tasks: Vec<_> = prepared
            .into_iter()
            .map(|(channel, batches)| tokio::spawn(stream(channel, batches)))
            .collect();
        let mut accepted = 0;
        for t in tasks {
            accepted += t.await.context("an agent task failed")??;
        }
        let seconds = t0.elapsed().as_secs_f64();
        let server_cpu =
            proc_stats(serve.child.id(), ticks)?.cpu_seconds - server_before.cpu_seconds;
        let client_cpu =
            proc_stats(std::process::id(), ticks)?.cpu_seconds - client_before.cpu_seconds;
        anyhow::Ok((accepted, seconds, server_cpu, client_cpu))
    })?;
    let expected = (agents * per_agent * DEVICES) as u64;
    let rate = accepted as f64 / seconds;
    let server = proc_stats(serve.child.id(), ticks)?;
    println!(
        "scheduler ingest: {agents} agents x {per_agent} batches x {DEVICES} samples over loopback{}",
        if with_state { ", with --state" } else { "" }
    );
    println!(
        "  metered {accepted} of {expected} samples in {seconds:.2} s = {rate:.0} samples/s (target >= {TARGET_SAMPLES_PER_S:.0})"
    );
    println!(
        "  scheduler cpu {server_cpu:.2} s ({:.2} cores), clients cpu {client_cpu:.2} s ({:.2} cores); \
         scheduler VmHWM {:.0} MiB",
        server_cpu / seconds,
        client_cpu / seconds,
        server.hwm_kib as f64 / 1024.0
    );
    ensure!(
        accepted == expected,
        "the scheduler metered {accepted}, expected {expected}"
    );
    let metered = serve.metric("offpeak_samples_accepted_total")?;
    ensure!(metered == expected, "/metrics says {metered}");
    Ok(())
}
