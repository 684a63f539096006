//! The refresher, under paused tokio time, against loopback servers serving recorded answers:
//! failures back off exponentially with jitter up to a cap, `Retry-After` is honoured,
//! timeouts are retried, broken answers wait for the next publication, a fresh answer returns
//! to the provider's publication schedule, a daily publication that is late is asked for
//! again, and the degraded state shows as a log line, a metric and a status field.
//!
//! The servers and the requests run on a separate real-time runtime ([`IoRuntime`]): paused
//! time jumps to the next timer whenever the test's runtime is idle, which would otherwise
//! fire request timeouts while a server is still answering.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use offpeak_scheduler::signals::HttpFetcher;
use offpeak_scheduler::signals::chain::{SignalKind, ZoneChain};
use offpeak_scheduler::signals::config::{self, SignalsConfig};
use offpeak_scheduler::signals::refresh::{
    Clock, RefreshSettings, Refresher, RetryPolicy, TokioClock, register_metrics,
};
use prometheus_client::registry::Registry;
mod common;

use common::http::{Reply, Server, fetcher, read, serve, utc};
use common::io::IoRuntime;

const UK_NATIONAL: &str = "uk_carbon_intensity/national_2023-12-03.json";
const AWATTAR: &str = "awattar/marketdata_AT_2023-07-02.json";
/// Just after the UK fixture's first half-hour: its forecast is fresh.
const UK_NOW: &str = "2023-12-03T10:40:00Z";

/// Hourly prices in a CSV, UTC, from `from` for `hours` hours.
fn price_csv(from: DateTime<Utc>, hours: i64) -> String {
    let mut s = String::from("time,price\n");
    for h in 0..hours {
        let t = from + Duration::hours(h);
        s.push_str(&format!("{},{}\n", t.format("%Y-%m-%dT%H:%M:%SZ"), 50 + h));
    }
    s
}

/// A zone `zone` whose carbon comes from `carbon` and whose price from `price` (one YAML list
/// item each).
fn config(dir: &Path, zone: &str, carbon: &str, price: &str) -> SignalsConfig {
    std::fs::write(
        dir.join("prices.csv"),
        price_csv(utc("2023-07-01T00:00:00Z"), 24 * 200),
    )
    .expect("prices");
    let text = format!(
        "signals:
  slot_minutes: 30
  zones:
    - name: {zone}
      max_age_hours: 6
      price:
        - {price}
      carbon:
        - {carbon}
"
    );
    let path = dir.join("offpeak.yaml");
    std::fs::write(&path, &text).expect("write config");
    config::load(&path).unwrap_or_else(|e| panic!("config: {e}\n{text}"))
}

const CSV_PRICE: &str = "csv: {path: prices.csv, value_column: price, time_zone: UTC, unit: per_mwh, currency: GBP, resolution_minutes: 60}";
const CSV_CARBON: &str = "csv: {path: prices.csv, value_column: price, time_zone: UTC, unit: g_per_kwh, basis: direct, resolution_minutes: 60}";

fn uk(base: &str) -> String {
    format!("uk_carbon: {{base_url: \"{base}\"}}")
}

struct Setup {
    io: IoRuntime,
    server: Server,
    refresher: Refresher,
    clock: Arc<TokioClock>,
    _dir: tempfile::TempDir,
}

/// A refresher for zone `name` built by `zone(base)` (the carbon and price YAML items), served
/// by `routes`, with the clock at `now`.
async fn setup(
    name: &str,
    routes: Vec<(&'static str, Reply)>,
    zone: impl FnOnce(&str) -> (String, String),
    now: &str,
    http: HttpFetcher,
) -> Setup {
    let io = IoRuntime::new();
    let server = io.run(serve(routes)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (carbon, price) = zone(&server.base);
    let cfg = config(dir.path(), name, &carbon, &price);
    let chain = ZoneChain::new(cfg.zone(name).expect("zone"), &http);
    let clock = Arc::new(TokioClock::starting_at(utc(now)));
    let mut settings = RefreshSettings::new(30);
    settings.seed = 42;
    let refresher = Refresher::new(chain, clock.clone(), settings).with_io(io.handle());
    Setup {
        io,
        server,
        refresher,
        clock,
        _dir: dir,
    }
}

async fn uk_setup(reply: Reply, http: HttpFetcher) -> Setup {
    uk_setup_in("GB", reply, http).await
}

async fn uk_setup_in(zone: &str, reply: Reply, http: HttpFetcher) -> Setup {
    setup(
        zone,
        vec![("/intensity/", reply)],
        |base| (uk(base), CSV_PRICE.to_owned()),
        UK_NOW,
        http,
    )
    .await
}

/// Sleeps (paused time) until the refresher is due.
async fn until_due(s: &Setup) {
    let wait = (s.refresher.next_due() - s.clock.now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
}

/// Refreshes on schedule (paused time) until `kind` has been refreshed; returns when.
async fn refresh_until(s: &mut Setup, kind: SignalKind) -> DateTime<Utc> {
    loop {
        until_due(s).await;
        let now = s.clock.now();
        if s.refresher
            .refresh_due()
            .await
            .expect("refresh")
            .contains(&kind)
        {
            return now;
        }
    }
}

fn carbon_requests(server: &Server) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /intensity/"))
        .count()
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_with_jitter_up_to_the_cap_then_follow_publications() {
    let mut s = uk_setup(Reply::Status(500, "internal error", None), fetcher()).await;
    let policy = RetryPolicy::default();
    let mut delays = Vec::new();
    for n in 1..=8u32 {
        // The hourly price refreshes in between; only the carbon retries count here.
        let now = refresh_until(&mut s, SignalKind::Carbon).await;
        let carbon = s.refresher.status().carbon;
        assert_eq!(carbon.consecutive_failures, n);
        let delay = carbon.next_refresh - now;
        let full = policy.backoff(n);
        assert!(
            delay >= full / 2 && delay <= full,
            "failure {n}: {delay} outside [{}, {full}]",
            full / 2
        );
        delays.push(delay.num_milliseconds());
        assert!(
            carbon
                .degraded
                .as_deref()
                .is_some_and(|r| r.contains("HTTP 500"))
        );
    }
    assert_eq!(carbon_requests(&s.server), 8);
    // Exponential up to 15 minutes, jittered: no two delays alike, the last ones capped.
    let capped = Duration::minutes(15).num_milliseconds();
    assert!(
        delays[5..].iter().all(|d| *d <= capped && *d >= capped / 2),
        "{delays:?}"
    );
    let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
    assert_eq!(distinct.len(), delays.len(), "{delays:?}");

    // The provider is back: the next refresh is at its next half-hour publication.
    s.server.answer_all(Reply::Body(read(UK_NATIONAL)));
    let now = refresh_until(&mut s, SignalKind::Carbon).await;
    let carbon = s.refresher.status().carbon;
    assert_eq!(carbon.consecutive_failures, 0);
    assert_eq!(carbon.degraded, None);
    let half_hour = 30 * 60;
    let next_publication = (now.timestamp() / half_hour + 1) * half_hour;
    let at = carbon.next_refresh.timestamp();
    // At the publication plus at most a tenth of the period.
    assert!(
        (next_publication..=next_publication + 180).contains(&at),
        "{} not just after {}",
        carbon.next_refresh,
        DateTime::from_timestamp(next_publication, 0).expect("t")
    );
    assert_eq!(carbon.known_until, Some(utc("2023-12-05T10:30:00Z")));
    drop(s.io);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_in_seconds_and_as_a_date() {
    let mut s = uk_setup(
        Reply::Status(429, "Too many requests", Some("600")),
        fetcher(),
    )
    .await;
    let now = refresh_until(&mut s, SignalKind::Carbon).await;
    let carbon = s.refresher.status().carbon;
    // Far more than the first backoff (15 to 30 s): what the server asked.
    assert_eq!(carbon.next_refresh, now + Duration::seconds(600));
    assert_eq!(carbon.consecutive_failures, 1);

    s.server.answer_all(Reply::Status(
        503,
        "maintenance",
        Some("Sun, 03 Dec 2023 12:00:00 GMT"),
    ));
    refresh_until(&mut s, SignalKind::Carbon).await;
    assert_eq!(
        s.refresher.status().carbon.next_refresh,
        utc("2023-12-03T12:00:00Z")
    );
    // A Retry-After shorter than the backoff does not shorten it.
    s.server
        .answer_all(Reply::Status(429, "slow down", Some("1")));
    let now = refresh_until(&mut s, SignalKind::Carbon).await;
    let carbon = s.refresher.status().carbon;
    assert_eq!(carbon.consecutive_failures, 3);
    assert!(
        carbon.next_refresh - now >= Duration::seconds(60),
        "{carbon:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_retried_soon_and_a_broken_answer_waits_for_the_next_publication() {
    let quick = HttpFetcher::direct(StdDuration::from_millis(200)).expect("client");
    let mut s = uk_setup(Reply::Silent, quick).await;
    let now = refresh_until(&mut s, SignalKind::Carbon).await;
    let carbon = s.refresher.status().carbon;
    assert!(
        carbon
            .degraded
            .as_deref()
            .is_some_and(|r| r.contains("no complete answer within"))
    );
    let delay = carbon.next_refresh - now;
    assert!(
        delay >= Duration::seconds(15) && delay <= Duration::seconds(30),
        "{delay}"
    );

    // A body that does not parse will not parse better in a minute: next half-hour.
    s.server
        .answer_all(Reply::Body(read(UK_NATIONAL)[..500].to_vec()));
    refresh_until(&mut s, SignalKind::Carbon).await;
    let carbon = s.refresher.status().carbon;
    assert!(
        carbon
            .degraded
            .as_deref()
            .is_some_and(|r| r.contains("parsing the answer"))
    );
    assert_eq!(carbon.consecutive_failures, 2);
    let due = carbon.next_refresh;
    assert!(
        due >= utc("2023-12-03T11:00:00Z") && due <= utc("2023-12-03T11:03:00Z"),
        "{due}"
    );
}

/// Collects log lines written through `tracing`.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

fn metrics_text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
    out
}

/// Every log line of this test binary. A thread-local subscriber would miss lines whose
/// callsite another test's thread saw first with none, so this one is global; the test that
/// reads it uses a zone of its own.
fn logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

#[tokio::test(start_paused = true)]
async fn the_degraded_state_is_a_log_line_a_metric_and_a_status_field() {
    let logs = logs();
    const ZONE: &str = "LOGGED";

    let mut registry = Registry::with_prefix("offpeak");
    let metrics = register_metrics(&mut registry);
    let mut s = uk_setup_in(ZONE, Reply::Status(500, "internal error", None), fetcher()).await;
    s.refresher = s.refresher.with_metrics(metrics);
    let mut snapshots = s.refresher.subscribe();
    s.refresher.refresh_due().await.expect("refresh");

    let status = s.refresher.status();
    let field = status.degraded().expect("degraded");
    assert!(
        field.starts_with("signals for LOGGED degraded: carbon: "),
        "{field}"
    );
    assert!(field.contains("uk-carbon-intensity#1 failed"), "{field}");
    assert!(field.contains("HTTP 500"), "{field}");
    assert_eq!(status.carbon.degraded_since, Some(s.clock.now()));
    assert_eq!(status.price.degraded, None);
    // The status serialises for the operator.
    let json = serde_json::to_value(&status).expect("json");
    assert_eq!(json["carbon"]["consecutive_failures"], 1);
    // The snapshot went out with it.
    assert!(snapshots.has_changed().expect("channel"));
    let snap = snapshots.borrow_and_update().clone();
    assert_eq!(snap.status, status);
    assert!(snap.price.is_some() && snap.carbon.is_some());

    let text = metrics_text(&registry);
    assert!(
        text.contains("offpeak_signal_degraded{zone=\"LOGGED\",signal=\"carbon\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("offpeak_signal_degraded{zone=\"LOGGED\",signal=\"price\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("offpeak_signal_consecutive_failures{zone=\"LOGGED\",signal=\"carbon\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "offpeak_signal_refreshes_total{zone=\"LOGGED\",signal=\"carbon\",outcome=\"retry\"} 1"
        ),
        "{text}"
    );
    let log = logs.text();
    let line = log
        .lines()
        .find(|l| {
            l.contains("signal degraded")
                && l.contains("signal=carbon")
                && l.contains("zone=LOGGED")
        })
        .unwrap_or_else(|| panic!("no degraded line in:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("HTTP 500"), "{line}");

    // Recovery clears all three.
    s.server.answer_all(Reply::Body(read(UK_NATIONAL)));
    until_due(&s).await;
    s.refresher.refresh_due().await.expect("refresh");
    assert_eq!(s.refresher.status().degraded(), None);
    let text = metrics_text(&registry);
    assert!(
        text.contains("offpeak_signal_degraded{zone=\"LOGGED\",signal=\"carbon\"} 0"),
        "{text}"
    );
    assert!(
        text.contains(
            "offpeak_signal_known_until_seconds{zone=\"LOGGED\",signal=\"carbon\"} 1701772200"
        ),
        "{text}"
    );
    assert!(
        logs.text()
            .lines()
            .any(|l| l.contains("signal recovered") && l.contains("zone=LOGGED"))
    );
}

#[tokio::test(start_paused = true)]
async fn run_refreshes_on_schedule_until_shut_down() {
    let s = uk_setup(Reply::Status(500, "internal error", None), fetcher()).await;
    let mut snapshots = s.refresher.subscribe();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The run takes the refresher; the server, clock and I/O runtime stay with `s`.
    let task = tokio::spawn(s.refresher.run(async {
        let _ = stopped.await;
    }));
    // Three failures, each retried after its backoff, then the provider comes back.
    let mut seen_failures = 0;
    while seen_failures < 3 {
        snapshots.changed().await.expect("refresher alive");
        seen_failures = snapshots.borrow().status.carbon.consecutive_failures;
    }
    s.server.answer_all(Reply::Body(read(UK_NATIONAL)));
    loop {
        snapshots.changed().await.expect("refresher alive");
        if snapshots.borrow().status.carbon.consecutive_failures == 0 {
            break;
        }
    }
    let snap = snapshots.borrow().clone();
    assert_eq!(snap.status.degraded(), None);
    let carbon = snap.carbon.as_ref().expect("carbon");
    assert_eq!(carbon.slots.len(), 48 * 2);
    // Three backoffs of at most 30 s, 60 s and 120 s went by in paused time.
    let elapsed = s.clock.now() - utc(UK_NOW);
    assert!(elapsed <= Duration::seconds(210), "{elapsed}");
    assert!(elapsed >= Duration::seconds(105), "{elapsed}");
    assert_eq!(carbon_requests(&s.server), 4);
    stop.send(()).expect("stop");
    task.await.expect("run ends");
}

#[tokio::test(start_paused = true)]
async fn a_late_daily_publication_is_asked_for_again() {
    // aWATTar publishes the next day's prices at 14:00 Vienna time (12:00Z in summer). The
    // recorded answer holds 2023-07-02 only.
    let awattar = |base: &str| {
        (
            CSV_CARBON.to_owned(),
            format!("awattar: {{base_url: \"{base}\"}}"),
        )
    };
    // Before the publication, today's prices are all there is to expect.
    let mut s = setup(
        "AT",
        vec![("/v1/marketdata", Reply::Body(read(AWATTAR)))],
        awattar,
        "2023-07-02T09:00:00Z",
        fetcher(),
    )
    .await;
    s.refresher.refresh_due().await.expect("refresh");
    let price = s.refresher.status().price;
    assert_eq!(price.consecutive_failures, 0);
    assert!(
        price.next_refresh >= utc("2023-07-02T12:00:00Z")
            && price.next_refresh <= utc("2023-07-02T12:02:00Z"),
        "{}",
        price.next_refresh
    );
    // After it, tomorrow's are missing: asked for again soon, without degrading the zone.
    let now = refresh_until(&mut s, SignalKind::Price).await;
    let price = s.refresher.status().price;
    assert_eq!(price.consecutive_failures, 1);
    assert_eq!(price.degraded, None);
    let delay = price.next_refresh - now;
    assert!(
        delay >= Duration::seconds(15) && delay <= Duration::seconds(30),
        "{delay}"
    );
    drop(s.io);
}
