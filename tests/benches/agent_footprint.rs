//! Agent footprint: `offpeak-agent --source sim` sampling 8 simulated GPUs at 1 Hz against a
//! running `offpeak serve`, for `OFFPEAK_BENCH_SECONDS` (default 60) after a 5 s warm-up;
//! reports the agent's CPU (share of one core, from /proc/<pid>/stat) and resident memory
//! (VmRSS, VmHWM from /proc/<pid>/status). Targets (issue 4): under 0.5 % of one core and under
//! 20 MiB resident. `OFFPEAK_BENCH_DISK_BUFFER=1` runs the agent with its on-disk buffer
//! (`--buffer-dir`), which writes each batch to a file and removes it once confirmed.
//!
//! Run: `cargo build --release -p offpeak-scheduler -p offpeak-agent &&
//! cargo bench -p offpeak-tests --bench agent_footprint`.

mod bench_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bench_common::{Serve, binary, clock_ticks, proc_stats, seconds_from_env};

/// Start-up (loading the profile, connecting, registering) is not the steady state measured.
const WARM_UP: Duration = Duration::from_secs(5);
const TARGET_CORE_SHARE: f64 = 0.005;
const TARGET_RSS_KIB: u64 = 20 * 1024;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; this binary has no options of its own.
    let seconds = seconds_from_env("OFFPEAK_BENCH_SECONDS", 60)?;
    let serve = Serve::start()?;
    let buffer = tempfile::tempdir()?;
    let on_disk = std::env::var("OFFPEAK_BENCH_DISK_BUFFER").is_ok_and(|v| v == "1");
    let mut command = Command::new(binary("offpeak-agent")?);
    if on_disk {
        command.arg("--buffer-dir").arg(buffer.path());
    }
    let mut agent = command
        .args(["--source", "sim", "--devices", "8", "--interval-ms", "1000"])
        .args([
            "--node",
            "bench-node",
            "--zone",
            "GB",
            "--scheduler",
            &serve.uri(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting offpeak-agent")?;
    let pid = agent.id();
    let ticks = clock_ticks()?;
    std::thread::sleep(WARM_UP);
    let start = proc_stats(pid, ticks)?;
    let accepted_start = serve.metric("offpeak_samples_accepted_total")?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let end = proc_stats(pid, ticks)?;
    let wall = t0.elapsed().as_secs_f64();
    let accepted = serve.metric("offpeak_samples_accepted_total")? - accepted_start;
    // A clean stop (SIGINT, as ctrl-c or Kubernetes' SIGTERM handling would) flushes.
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let status = agent.wait()?;

    let share = (end.cpu_seconds - start.cpu_seconds) / wall;
    println!(
        "agent footprint, 8 simulated GPUs at 1 Hz, {wall:.1} s after a {WARM_UP:?} warm-up, \
         buffer {}",
        if on_disk { "on disk" } else { "in memory" }
    );
    println!(
        "  cpu: {:.3} s = {:.3} % of one core (target < {:.1} %)",
        end.cpu_seconds - start.cpu_seconds,
        share * 100.0,
        TARGET_CORE_SHARE * 100.0
    );
    println!(
        "  memory: VmRSS {:.1} MiB, VmHWM {:.1} MiB (target < {} MiB)",
        end.rss_kib as f64 / 1024.0,
        end.hwm_kib as f64 / 1024.0,
        TARGET_RSS_KIB / 1024
    );
    println!("  samples the scheduler accepted meanwhile: {accepted} (8 per second expected)");
    println!("  agent exit on SIGINT: {status}");
    ensure!(accepted > 0, "the scheduler received nothing");
    Ok(())
}
