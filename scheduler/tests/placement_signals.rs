//! The live cycle's signals from provider chains, kept fresh by one refresher per zone, over
//! loopback HTTP serving a recorded UK Carbon Intensity answer: a first choice that fails
//! (HTTP 500) degrades the plans, its recovery on the refresher's retry clears that without
//! waiting for a slot boundary, the cycle itself never asks the providers, and `offpeak serve`
//! shows the degraded state on `/metrics` and in the plans it serves.
//!
//! Time: the placement's `ManualClock`, which the refreshers read and wait on too (through
//! `ClockBridge`), so a retry happens exactly when the test moves the clock past it. Tokio
//! time is real, as in the other placement tests: nothing here waits on it except for
//! messages and the cycle's few milliseconds of debounce.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Utc};
use offpeak_proto::v1::placement_service_client::PlacementServiceClient;
use offpeak_proto::v1::{JobSpec, SubmitJobRequest};
use offpeak_scheduler::placement::refreshers::Refreshers;
use offpeak_scheduler::placement::{
    JobRequest, ManualClock, Placement, PlacementConfig, PlanView, PlanWatch, Settings, SignalFeed,
};
use offpeak_scheduler::scenario::{Profile, ProfilePoint};
use offpeak_scheduler::service::{self, NodeRegistry, ServiceConfig};
use offpeak_scheduler::signals::config::{self, SignalsConfig};
use offpeak_scheduler::units::Watts;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{oneshot, watch};

mod common;

use common::http::{Reply, Server, fetcher, read, serve, utc};

/// Long enough for anything on loopback; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);
/// Far longer than the cycle's debounce and a plan of two jobs.
const SETTLE: Duration = Duration::from_millis(200);
const UK_NATIONAL: &str = "uk_carbon_intensity/national_2023-12-03.json";
/// Ten minutes into the recorded forecast (it starts at 10:30Z): fresh, and between the
/// quarter-hour slot boundaries, so that a boundary never plans by surprise.
const NOW: &str = "2023-12-03T10:40:00Z";

fn now() -> DateTime<Utc> {
    utc(NOW)
}

/// Zone `GB`: prices and a fallback carbon intensity from a CSV (hourly, flat, around the
/// recorded day), carbon first from the UK Carbon Intensity API at `base`.
fn signals(dir: &std::path::Path, base: &str) -> anyhow::Result<SignalsConfig> {
    let mut csv = String::from("time,price,carbon\n");
    let from = utc("2023-11-20T00:00:00Z");
    for h in 0..24 * 21 {
        let t = from + chrono::Duration::hours(h);
        csv.push_str(&format!("{},80,250\n", t.format("%Y-%m-%dT%H:%M:%SZ")));
    }
    std::fs::write(dir.join("GB.csv"), csv)?;
    let csv_source = |column: &str, extra: &str| {
        format!(
            "        - csv: {{path: GB.csv, value_column: {column}, time_zone: UTC, {extra}, resolution_minutes: 60}}\n"
        )
    };
    let text = format!(
        "signals:\n  slot_minutes: 30\n  zones:\n    - name: GB\n      max_age_hours: 6\n      price:\n{}      carbon:\n        - uk_carbon: {{base_url: \"{base}\"}}\n{}",
        csv_source("price", "unit: per_mwh, currency: GBP"),
        csv_source("carbon", "unit: g_per_kwh, basis: direct"),
    );
    let path = dir.join("signals.yaml");
    std::fs::write(&path, &text)?;
    Ok(config::load(&path)?)
}

/// One zone `GB` of two 8-GPU nodes, one full-power-only profile, quarter-hour slots.
fn placement(clock: &ManualClock, feed: SignalFeed) -> PlacementConfig {
    let mut cfg = PlacementConfig::new(Arc::new(clock.clone()))
        .with_settings(Settings {
            debounce: Duration::from_millis(2),
            ..Settings::default()
        })
        .with_zone("GB", 1.0)
        .with_nodes("GB", "v100", 8, 2)
        .with_profile(Profile {
            name: "v100/train".into(),
            points: vec![ProfilePoint {
                power_limit: Watts(250.0),
                throughput: 1.0,
                draw: Watts(200.0),
            }],
        });
    cfg.signals = feed;
    cfg
}

/// One 8-GPU worker for an hour, due six hours from now: well inside the recorded forecast,
/// so that nothing of its plan is estimated.
fn job(name: &str) -> JobRequest {
    JobRequest {
        key: format!("ml/{name}"),
        uid: "u".into(),
        workers: 1,
        gpus_per_worker: 8,
        accelerator: "V100".into(),
        work_hours: 1.0,
        submit_unix_s: now().timestamp(),
        deadline_unix_s: (now() + chrono::Duration::hours(6)).timestamp(),
        ..JobRequest::default()
    }
}

async fn until(
    watch: &mut PlanWatch,
    key: &str,
    pred: impl Fn(&PlanView) -> bool,
) -> anyhow::Result<PlanView> {
    tokio::time::timeout(PATIENCE, async {
        while let Some(v) = watch.next().await {
            let v = v?;
            if v.key == key && pred(&v) {
                return Ok(v);
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await
    .with_context(|| format!("no matching plan of {key}"))?
}

fn carbon_requests(server: &Server) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /intensity/"))
        .count()
}

#[tokio::test]
async fn a_failing_first_choice_degrades_the_plan_until_the_refresher_retries_it()
-> anyhow::Result<()> {
    let server = serve(vec![(
        "/intensity/",
        Reply::Status(500, "internal error", None),
    )])
    .await;
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(now());
    let settings = placement(&clock, SignalFeed::Table(Default::default())).settings;
    let (stop, stopped) = watch::channel(false);
    let feed = Refreshers::build_with(
        &signals(dir.path(), &server.base)?,
        &settings,
        Arc::new(clock.clone()),
        &fetcher(),
    )
    .spawn(&stopped);
    let (placement, cycle) = Placement::open(
        placement(&clock, SignalFeed::Refreshed(feed)),
        NodeRegistry::new(),
    )?;
    let task = tokio::spawn(cycle.run());

    // The first plan waits for the zone's first refresh: carbon fell back to the CSV.
    let v = placement.submit(job("a")).await?;
    ensure!(v.signals_degraded, "{v:?}");
    ensure!(
        v.reason
            .contains("signals degraded: carbon: using csv#2 because")
            && v.reason.contains("uk-carbon-intensity#1 failed")
            && v.reason.contains("HTTP 500"),
        "{}",
        v.reason
    );
    ensure!(carbon_requests(&server) == 1);
    // The refresher asked for the cycle's whole grid: from the history the planner's seasonal
    // estimate reads (before the current quarter-hour) to the longest horizon.
    let from = utc("2023-12-03T10:30:00Z") - settings.history;
    let to = utc("2023-12-03T10:30:00Z") + settings.max_horizon + settings.slot();
    let asked = format!(
        "GET /intensity/{}/{} ",
        from.format("%Y-%m-%dT%H:%MZ"),
        to.format("%Y-%m-%dT%H:%MZ")
    );
    ensure!(
        server.requests()[0].starts_with(&asked),
        "{asked} vs {:?}",
        server.requests()
    );

    // The provider is back; the refresher retries after its first backoff (15 to 30 s) and
    // the new snapshot wakes the cycle: the plan is no longer degraded, before any boundary.
    // First the cycle finishes the plan the submission's wake-up may still owe it (its
    // debounce is 2 ms), so that only the new snapshot can plan again.
    tokio::time::sleep(SETTLE).await;
    let mut plans = placement.watch("ml/".into());
    server.answer_all(Reply::Body(read(UK_NATIONAL)));
    clock.advance(chrono::Duration::minutes(1));
    let v = until(&mut plans, "ml/a", |v| !v.signals_degraded).await?;
    ensure!(!v.reason.contains("signals degraded"), "{}", v.reason);
    ensure!(carbon_requests(&server) == 2);

    // Cycles in a new slot read the snapshot; the UK forecast is asked again only at its
    // next half-hour publication (11:00 plus up to three minutes of jitter).
    clock.set(utc("2023-12-03T10:45:00Z"));
    let v = placement.submit(job("b")).await?;
    ensure!(!v.signals_degraded, "{v:?}");
    ensure!(
        carbon_requests(&server) == 2,
        "the cycle asked the provider: {:?}",
        server.requests()
    );

    placement.shutdown();
    tokio::time::timeout(PATIENCE, task).await??;
    stop.send_replace(true);
    Ok(())
}

/// `GET path` on `addr`: the status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
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

#[tokio::test]
async fn serve_runs_the_refreshers_and_shows_the_degraded_zone_on_metrics() -> anyhow::Result<()> {
    let server = serve(vec![(
        "/intensity/",
        Reply::Status(500, "internal error", None),
    )])
    .await;
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(now());
    let registry = NodeRegistry::new();
    let bound = service::bind(ServiceConfig {
        grpc_addr: "127.0.0.1:0".parse()?,
        admin_addr: "127.0.0.1:0".parse()?,
        commands: service::CommandCenter::new(registry.clone()),
        curves: service::CurveStore::new(),
        registry,
        reports: None,
        placement: Some(placement(
            &clock,
            SignalFeed::Chains(signals(dir.path(), &server.base)?),
        )),
    })
    .await?;
    let addrs = bound.addrs();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));

    // The plans the service serves say so ...
    let mut client = PlacementServiceClient::connect(format!("http://{}", addrs.grpc)).await?;
    let plan = client
        .submit_job(SubmitJobRequest {
            job: Some(JobSpec {
                key: "ml/a".into(),
                uid: "u".into(),
                namespace: "ml".into(),
                workers: 1,
                gpus_per_worker: 8,
                accelerator: "v100".into(),
                work_hours: 1.0,
                submit_unix_s: now().timestamp(),
                deadline_unix_s: (now() + chrono::Duration::hours(6)).timestamp(),
                ..JobSpec::default()
            }),
        })
        .await?
        .into_inner();
    ensure!(
        plan.signals_degraded && plan.reason.contains("uk-carbon-intensity#1"),
        "{plan:?}"
    );

    // ... and so does the service's one registry, beside its own metrics. (Whether the
    // server or a proxy from the environment refused the request, the zone is degraded.)
    let (status, text) = http_get(addrs.admin, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    for line in [
        "offpeak_signal_degraded{zone=\"GB\",signal=\"carbon\"} 1",
        "offpeak_signal_degraded{zone=\"GB\",signal=\"price\"} 0",
        "offpeak_signal_consecutive_failures{zone=\"GB\",signal=\"carbon\"} 1",
        "offpeak_signal_refreshes_total{zone=\"GB\",signal=\"price\",outcome=\"fresh\"} 1",
        "# TYPE offpeak_samples_accepted counter",
    ] {
        ensure!(text.contains(line), "no `{line}` in:\n{text}");
    }

    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, task)
        .await
        .context("the scheduler did not stop")???;
    Ok(())
}
