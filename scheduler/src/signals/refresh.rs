//! Keeping a zone's signals fresh: a [`Refresher`] owns a zone's chains and a [`Clock`], asks
//! each chain again when its first-choice source publishes something new, and retries failures
//! with capped, jittered exponential backoff that honours `Retry-After`.
//!
//! Scheduling, per signal (price and carbon apart, since their providers publish on different
//! schedules), after each fetch through the chain:
//! - the first choice answered fresh data: next at its next publication
//!   ([`Publication::next_after`]) plus a little jitter, so that replicas do not ask at the same
//!   second; a daily publication that has not yet reached the end of the next day
//!   ([`Publication::expected_until`]) is late, and asked again after a backoff;
//! - it failed in a way that may pass ([`Retry::Soon`]: a timeout, HTTP 429 or 5xx) or answered
//!   stale data: after the backoff for the number of failures in a row, and not before the
//!   server's `Retry-After`;
//! - it failed in a way that will not pass before it publishes again ([`Retry::NextPublication`]:
//!   a body that does not parse, HTTP 4xx): at its next publication.
//!
//! The refresher reads and waits on its [`Clock`] ([`Clock::sleep_until`]), so the placement
//! cycle's clock, bridged, drives it in `offpeak serve` and in tests alike; each fetch covers the
//! current slot to [`RefreshSettings::horizon`] ahead, and [`RefreshSettings::history`] before
//! it for a planner's seasonal estimate.
//!
//! Meanwhile the chain has already fallen back (to the next source, the last good series, the
//! seasonal estimate), so the planner always has a full horizon; what it has is published
//! through a `tokio::sync::watch` channel ([`Refresher::subscribe`]).
//!
//! The degraded state is visible three ways: a log line when a signal becomes degraded and
//! when it recovers, the gauges of [`SignalMetrics`] (registered on the registry the service
//! passes to [`register_metrics`]), and [`ZoneStatus`], whose [`ZoneStatus::degraded`] is the
//! one-line field for job status.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use super::chain::{Chain, ChainError, Merged, Origin, Outcome, Retry, SignalKind, ZoneChain};
use super::sources::{CarbonProvider, PriceProvider};
use super::{Publication, SignalProvider, SignalUnit, Window};
use crate::units::{GramsPerKwh, PricePerMwh};

/// A future a [`Clock`] resolves.
pub type Wait<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Where the refresher reads the time from, and how it waits for an instant.
pub trait Clock: fmt::Debug + Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once [`Clock::now`] has reached `at`. By default a tokio sleep for the time
    /// left, which suits clocks that move with tokio's; a clock moved by hand (the placement
    /// cycle's `ManualClock`, through its adapter) wakes its sleepers itself.
    fn sleep_until(&self, at: DateTime<Utc>) -> Wait<'_> {
        let left = (at - self.now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(left))
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A UTC clock that follows tokio's clock from an anchor, so that it moves exactly as
/// `tokio::time` does: in real time normally, in jumps under paused test time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    anchor_utc: DateTime<Utc>,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `t` now.
    pub fn starting_at(t: DateTime<Utc>) -> Self {
        Self {
            anchor_utc: t,
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = self.anchor.elapsed();
        self.anchor_utc + Duration::from_std(elapsed).unwrap_or(Duration::MAX)
    }
}

/// How failures are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The delay after the first failure.
    pub initial: Duration,
    /// Each further failure in a row multiplies the delay by this.
    pub factor: f64,
    /// The delay never grows past this (a `Retry-After` may ask for longer, and is honoured).
    pub max: Duration,
    /// The share of each delay drawn at random: the delay is uniform in
    /// `[d × (1 − jitter), d]`, so that replicas that failed together do not retry together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Half a minute, doubling, up to a quarter of an hour: a provider that is down is asked
    /// about four times an hour, one that hiccupped is asked again within a minute.
    fn default() -> Self {
        Self {
            initial: Duration::seconds(30),
            factor: 2.0,
            max: Duration::minutes(15),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The un-jittered delay after `failures` failures in a row (1 or more).
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = self
            .factor
            .powi(i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX));
        let ms =
            (self.initial.num_milliseconds() as f64 * exp).min(self.max.num_milliseconds() as f64);
        Duration::milliseconds(ms as i64)
    }
}

/// The longest random delay added after a publication: two minutes spreads replicas without
/// leaving the planner long on old data; a short period gets a tenth of itself.
const PUBLICATION_JITTER_MAX: Duration = Duration::minutes(2);
const PUBLICATION_JITTER_SHARE: i32 = 10;
/// How far ahead each signal is fetched when the settings do not say: two days covers every
/// provider's forecast horizon here and a planner's lookahead.
pub const DEFAULT_HORIZON: Duration = Duration::hours(48);

/// What the refresher fetches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshSettings {
    pub slot_minutes: u32,
    /// Each fetch covers from the current slot to this far ahead.
    pub horizon: Duration,
    /// ... and from this far before the current slot (rounded up to whole slots): the recent
    /// past a planner's seasonal estimate reads. Zero by default.
    pub history: Duration,
    pub policy: RetryPolicy,
    /// Seeds the jitter; give each replica its own (the default is taken from the time).
    pub seed: u64,
}

impl RefreshSettings {
    pub fn new(slot_minutes: u32) -> Self {
        Self {
            slot_minutes,
            horizon: DEFAULT_HORIZON,
            history: Duration::zero(),
            policy: RetryPolicy::default(),
            seed: Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64,
        }
    }
}

/// A small deterministic generator (SplitMix64) for jitter: statistical quality is beside the
/// point, reproducibility under a fixed seed is not.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn scale(&mut self, d: Duration, share: f64) -> Duration {
        let ms = d.num_milliseconds() as f64;
        Duration::milliseconds((ms * (1.0 - share * self.next())) as i64)
    }

    fn up_to(&mut self, d: Duration) -> Duration {
        Duration::milliseconds((d.num_milliseconds() as f64 * self.next()) as i64)
    }
}

// ---------------------------------------------------------------------------------------------
// Status and metrics.

/// One signal's refresh state, for job status and `signals show`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalStatus {
    /// `price` or `carbon`.
    pub signal: &'static str,
    /// Why the signal is degraded; `None` while its first choice answers fresh data.
    pub degraded: Option<String>,
    /// Since when it has been degraded without a break.
    pub degraded_since: Option<DateTime<Utc>>,
    /// Failures (or stale or late answers) of the first choice in a row.
    pub consecutive_failures: u32,
    pub last_refresh: Option<DateTime<Utc>>,
    /// The end of the data the sources gave on the last refresh (not counting estimates).
    pub known_until: Option<DateTime<Utc>>,
    pub next_refresh: DateTime<Utc>,
}

/// Both signals of a zone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneStatus {
    pub zone: String,
    pub price: SignalStatus,
    pub carbon: SignalStatus,
}

impl ZoneStatus {
    /// The one-line degraded state for job status (`signals for GB degraded: carbon: ...`),
    /// `None` when both signals are fine.
    pub fn degraded(&self) -> Option<String> {
        let parts: Vec<String> = [&self.price, &self.carbon]
            .into_iter()
            .filter_map(|s| s.degraded.as_ref().map(|r| format!("{}: {r}", s.signal)))
            .collect();
        (!parts.is_empty())
            .then(|| format!("signals for {} degraded: {}", self.zone, parts.join("; ")))
    }
}

/// What a refresher publishes after each refresh: the latest merged series and the status.
#[derive(Debug, Clone)]
pub struct ZoneSnapshot {
    pub status: ZoneStatus,
    pub price: Option<Arc<Merged<PricePerMwh>>>,
    pub carbon: Option<Arc<Merged<GramsPerKwh>>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    zone: String,
    signal: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    zone: String,
    signal: &'static str,
    outcome: &'static str,
}

/// The signal gauges and counters; cheap to clone (they share their values).
#[derive(Debug, Clone, Default)]
pub struct SignalMetrics {
    degraded: Family<SignalLabels, Gauge>,
    failures: Family<SignalLabels, Gauge>,
    known_until: Family<SignalLabels, Gauge>,
    refreshes: Family<RefreshLabels, Counter>,
}

/// Registers the signal metrics on `registry` (the service's, whose `offpeak` prefix makes
/// them `offpeak_signal_degraded`, ...) and returns them for [`Refresher::with_metrics`].
pub fn register_metrics(registry: &mut Registry) -> SignalMetrics {
    let m = SignalMetrics::default();
    registry.register(
        "signal_degraded",
        "1 while a zone's signal is degraded (its first choice did not answer fresh data), else 0",
        m.degraded.clone(),
    );
    registry.register(
        "signal_consecutive_failures",
        "Failed, stale or late answers of the first-choice source in a row",
        m.failures.clone(),
    );
    registry.register(
        "signal_known_until_seconds",
        "Unix time at which the data the sources gave ends (estimates not counted)",
        m.known_until.clone(),
    );
    registry.register(
        "signal_refreshes",
        "Refreshes by outcome: fresh, late, retry (may pass), failed (until the next publication), stale",
        m.refreshes.clone(),
    );
    m
}

impl SignalMetrics {
    fn record(&self, zone: &str, s: &SignalStatus, outcome: &'static str) {
        let labels = SignalLabels {
            zone: zone.to_owned(),
            signal: s.signal,
        };
        self.degraded
            .get_or_create(&labels)
            .set(i64::from(s.degraded.is_some()));
        self.failures
            .get_or_create(&labels)
            .set(i64::from(s.consecutive_failures));
        if let Some(k) = s.known_until {
            self.known_until.get_or_create(&labels).set(k.timestamp());
        }
        self.refreshes
            .get_or_create(&RefreshLabels {
                zone: zone.to_owned(),
                signal: s.signal,
                outcome,
            })
            .inc();
    }
}

// ---------------------------------------------------------------------------------------------
// The refresher.

/// One signal's chain and schedule.
#[derive(Debug)]
struct Track<P: SignalProvider> {
    /// `None` only if a refresh task died (it is then degraded for good).
    chain: Option<Chain<P>>,
    status: SignalStatus,
    last: Option<Arc<Merged<P::Unit>>>,
}

/// How one refresh went, for the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Fresh,
    /// Fresh, but a daily publication that should be out is not.
    Late,
    Retry {
        not_before: Option<DateTime<Utc>>,
    },
    NextPublication,
}

impl Verdict {
    fn label(self, stale: bool) -> &'static str {
        match self {
            Verdict::Fresh => "fresh",
            Verdict::Late => "late",
            Verdict::Retry { .. } if stale => "stale",
            Verdict::Retry { .. } => "retry",
            Verdict::NextPublication => "failed",
        }
    }
}

/// Keeps one zone's signals fresh.
#[derive(Debug)]
pub struct Refresher {
    zone: String,
    price: Track<PriceProvider>,
    carbon: Track<CarbonProvider>,
    clock: Arc<dyn Clock>,
    settings: RefreshSettings,
    jitter: Jitter,
    io: Option<tokio::runtime::Handle>,
    metrics: Option<SignalMetrics>,
    tx: watch::Sender<Arc<ZoneSnapshot>>,
}

impl Refresher {
    /// A refresher over `chain`, due at once.
    pub fn new(chain: ZoneChain, clock: Arc<dyn Clock>, settings: RefreshSettings) -> Self {
        let now = clock.now();
        let status = |signal| SignalStatus {
            signal,
            degraded: None,
            degraded_since: None,
            consecutive_failures: 0,
            last_refresh: None,
            known_until: None,
            next_refresh: now,
        };
        let zone = chain.zone.clone();
        let snapshot = ZoneSnapshot {
            status: ZoneStatus {
                zone: zone.clone(),
                price: status("price"),
                carbon: status("carbon"),
            },
            price: None,
            carbon: None,
        };
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Self {
            zone,
            price: Track {
                chain: Some(chain.price),
                status: status("price"),
                last: None,
            },
            carbon: Track {
                chain: Some(chain.carbon),
                status: status("carbon"),
                last: None,
            },
            clock,
            jitter: Jitter(settings.seed),
            settings,
            io: None,
            metrics: None,
            tx,
        }
    }

    /// Runs the requests on `io` rather than the current runtime: the service's I/O runtime,
    /// or in tests a real-time one, so that paused test time cannot fire request timeouts
    /// while a loopback server is still answering.
    pub fn with_io(mut self, io: tokio::runtime::Handle) -> Self {
        self.io = Some(io);
        self
    }

    /// Records every refresh in `metrics`.
    pub fn with_metrics(mut self, metrics: SignalMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The latest snapshot, now and after every refresh.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ZoneSnapshot>> {
        self.tx.subscribe()
    }

    /// Both signals' state.
    pub fn status(&self) -> ZoneStatus {
        ZoneStatus {
            zone: self.zone.clone(),
            price: self.price.status.clone(),
            carbon: self.carbon.status.clone(),
        }
    }

    /// When the next signal is due.
    pub fn next_due(&self) -> DateTime<Utc> {
        self.price
            .status
            .next_refresh
            .min(self.carbon.status.next_refresh)
    }

    /// Refreshes every signal due now, schedules each again and publishes a snapshot. Returns
    /// the signals refreshed.
    pub async fn refresh_due(&mut self) -> Result<Vec<SignalKind>, ChainError> {
        let now = self.clock.now();
        let mut done = Vec::new();
        if self.price.status.next_refresh <= now {
            self.refresh_price(now).await?;
            done.push(SignalKind::Price);
        }
        if self.carbon.status.next_refresh <= now {
            self.refresh_carbon(now).await?;
            done.push(SignalKind::Carbon);
        }
        self.publish();
        Ok(done)
    }

    /// Refreshes on schedule until `shutdown` resolves, waiting on the refresher's clock.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let clock = Arc::clone(&self.clock);
        loop {
            if let Err(e) = self.refresh_due().await {
                // The window is built from the settings, so this is a configuration mistake;
                // keep trying on the retry schedule rather than spinning, and say so to the
                // subscribers, who may be waiting for a first snapshot.
                tracing::error!(zone = %self.zone, error = %e, "signal refresh impossible");
                let now = clock.now();
                let retry = now + self.settings.policy.max;
                for status in [&mut self.price.status, &mut self.carbon.status] {
                    status.next_refresh = retry;
                    status.last_refresh = Some(now);
                    status.degraded = Some(format!("the refresh is impossible: {e}"));
                    status.degraded_since.get_or_insert(now);
                }
                self.publish();
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = clock.sleep_until(self.next_due()) => {}
            }
        }
    }

    fn window(&self, now: DateTime<Utc>) -> Window {
        let slot_s = i64::from(self.settings.slot_minutes.max(1)) * 60;
        let start_ts = now.timestamp().div_euclid(slot_s) * slot_s;
        let start = DateTime::from_timestamp(start_ts, 0).unwrap_or(now);
        let back = self.settings.history.num_seconds().max(0);
        let from = start - Duration::seconds((back + slot_s - 1).div_euclid(slot_s) * slot_s);
        let span = self.settings.horizon.num_seconds().max(slot_s);
        let to = start + Duration::seconds(span.div_euclid(slot_s) * slot_s);
        Window { from, to }
    }

    async fn refresh_price(&mut self, now: DateTime<Utc>) -> Result<(), ChainError> {
        let window = self.window(now);
        let slot = self.settings.slot_minutes;
        let merged = fetch(&mut self.price.chain, self.io.as_ref(), now, window, slot).await?;
        self.settle(SignalKind::Price, now, window, merged);
        Ok(())
    }

    async fn refresh_carbon(&mut self, now: DateTime<Utc>) -> Result<(), ChainError> {
        let window = self.window(now);
        let slot = self.settings.slot_minutes;
        let merged = fetch(&mut self.carbon.chain, self.io.as_ref(), now, window, slot).await?;
        self.settle(SignalKind::Carbon, now, window, merged);
        Ok(())
    }

    fn settle<U: SignalUnit>(
        &mut self,
        kind: SignalKind,
        now: DateTime<Utc>,
        window: Window,
        fetched: Result<Merged<U>, String>,
    ) where
        Self: Keep<U>,
    {
        let publication = self.publication(kind);
        let (verdict, stale, degraded, known_until, merged) = match fetched {
            Ok(m) => {
                let (verdict, stale) = judge(&m, publication, now, window);
                let known = known_until(&m);
                (verdict, stale, m.degraded.clone(), known, Some(m))
            }
            Err(reason) => (Verdict::NextPublication, false, Some(reason), None, None),
        };
        let policy = self.settings.policy;
        let zone = self.zone.clone();
        let jitter_after = publication_jitter(publication);
        let next_publication = publication.next_after(now);
        let mut status = self.status_of(kind).clone();
        status.last_refresh = Some(now);
        if known_until.is_some() {
            status.known_until = known_until;
        }
        status.consecutive_failures = match verdict {
            Verdict::Fresh => 0,
            _ => status.consecutive_failures.saturating_add(1),
        };
        status.next_refresh = match verdict {
            Verdict::Fresh => next_publication + self.jitter.up_to(jitter_after),
            Verdict::NextPublication => next_publication + self.jitter.up_to(jitter_after),
            Verdict::Late | Verdict::Retry { .. } => {
                let backoff = self
                    .jitter
                    .scale(policy.backoff(status.consecutive_failures), policy.jitter);
                let mut due = now + backoff;
                if let Verdict::Retry {
                    not_before: Some(t),
                } = verdict
                {
                    due = due.max(t);
                }
                due
            }
        };
        let was = status.degraded.is_some();
        match (&degraded, was) {
            (Some(reason), false) => {
                tracing::warn!(zone = %zone, signal = %kind, %reason, next_refresh = %status.next_refresh, "signal degraded");
                status.degraded_since = Some(now);
            }
            (None, true) => {
                tracing::info!(zone = %zone, signal = %kind, "signal recovered");
                status.degraded_since = None;
            }
            _ => {}
        }
        status.degraded = degraded;
        if matches!(verdict, Verdict::Late) {
            tracing::info!(zone = %zone, signal = %kind, next_refresh = %status.next_refresh, "today's publication is not out yet");
        }
        if let Some(m) = &self.metrics {
            m.record(&zone, &status, verdict.label(stale));
        }
        *self.status_of_mut(kind) = status;
        if let Some(m) = merged {
            self.keep(m);
        }
    }

    fn publication(&self, kind: SignalKind) -> Publication {
        let first = |p: Option<Publication>| p.unwrap_or(Publication::Document);
        match kind {
            SignalKind::Price => first(
                self.price
                    .chain
                    .as_ref()
                    .and_then(|c| c.sources().first())
                    .map(SignalProvider::publication),
            ),
            SignalKind::Carbon => first(
                self.carbon
                    .chain
                    .as_ref()
                    .and_then(|c| c.sources().first())
                    .map(SignalProvider::publication),
            ),
        }
    }

    fn status_of(&self, kind: SignalKind) -> &SignalStatus {
        match kind {
            SignalKind::Price => &self.price.status,
            SignalKind::Carbon => &self.carbon.status,
        }
    }

    fn status_of_mut(&mut self, kind: SignalKind) -> &mut SignalStatus {
        match kind {
            SignalKind::Price => &mut self.price.status,
            SignalKind::Carbon => &mut self.carbon.status,
        }
    }

    fn publish(&self) {
        let snapshot = ZoneSnapshot {
            status: self.status(),
            price: self.price.last.clone(),
            carbon: self.carbon.last.clone(),
        };
        self.tx.send_replace(Arc::new(snapshot));
    }
}

/// Where a refresher keeps a merged series of unit `U`.
trait Keep<U: SignalUnit> {
    fn keep(&mut self, m: Merged<U>);
}

impl Keep<PricePerMwh> for Refresher {
    fn keep(&mut self, m: Merged<PricePerMwh>) {
        self.price.last = Some(Arc::new(m));
    }
}

impl Keep<GramsPerKwh> for Refresher {
    fn keep(&mut self, m: Merged<GramsPerKwh>) {
        self.carbon.last = Some(Arc::new(m));
    }
}

/// Fetches through `slot`'s chain, on `io` when given (the chain moves there and back). `Err`
/// holds why the signal has no chain any more.
async fn fetch<P>(
    slot: &mut Option<Chain<P>>,
    io: Option<&tokio::runtime::Handle>,
    now: DateTime<Utc>,
    window: Window,
    slot_minutes: u32,
) -> Result<Result<Merged<P::Unit>, String>, ChainError>
where
    P: SignalProvider + Send + Sync + 'static,
    P::Unit: Send + Sync + 'static,
    <P::Unit as SignalUnit>::Basis: Send + Sync,
{
    let Some(mut chain) = slot.take() else {
        return Ok(Err(
            "its refresh task failed earlier; restart the service".to_owned()
        ));
    };
    let Some(io) = io else {
        let r = chain.fetch(now, window, slot_minutes).await;
        *slot = Some(chain);
        return r.map(Ok);
    };
    let task = io.spawn(async move {
        let r = chain.fetch(now, window, slot_minutes).await;
        (chain, r)
    });
    match task.await {
        Ok((chain, r)) => {
            *slot = Some(chain);
            r.map(Ok)
        }
        Err(e) => {
            tracing::error!(error = %e, "signal refresh task failed");
            Ok(Err(format!("the refresh task failed: {e}")))
        }
    }
}

/// How a merged answer should be scheduled, and whether it was stale.
fn judge<U: SignalUnit>(
    m: &Merged<U>,
    publication: Publication,
    now: DateTime<Utc>,
    window: Window,
) -> (Verdict, bool) {
    let Some(first) = m.attempts.first() else {
        return (Verdict::NextPublication, false);
    };
    match (&first.outcome, first.retry) {
        (Outcome::Fresh, _) => {
            let expected = publication.expected_until(now).map(|e| e.min(window.to));
            let covered = first_choice_until(m);
            match (expected, covered) {
                (Some(e), Some(c)) if c < e => (Verdict::Late, false),
                _ => (Verdict::Fresh, false),
            }
        }
        (Outcome::Stale { .. }, _) => (Verdict::Retry { not_before: None }, true),
        (Outcome::Failed(_), Some(Retry::Soon { not_before })) => {
            (Verdict::Retry { not_before }, false)
        }
        (Outcome::Failed(_), _) | (Outcome::NotAsked, _) => (Verdict::NextPublication, false),
    }
}

/// The end of the last slot the first choice itself gave.
fn first_choice_until<U: SignalUnit>(m: &Merged<U>) -> Option<DateTime<Utc>> {
    let step = Duration::minutes(i64::from(m.slot_minutes));
    m.slots
        .iter()
        .rev()
        .find(|s| matches!(s.origin, Origin::Source { position: 1, .. }))
        .map(|s| s.start + step)
}

/// The end of the last slot any source (fresh, stale or kept) gave.
fn known_until<U: SignalUnit>(m: &Merged<U>) -> Option<DateTime<Utc>> {
    let step = Duration::minutes(i64::from(m.slot_minutes));
    m.slots
        .iter()
        .rev()
        .find(|s| {
            matches!(
                s.origin,
                Origin::Source { .. } | Origin::StaleSource { .. } | Origin::LastGood { .. }
            )
        })
        .map(|s| s.start + step)
}

fn publication_jitter(p: Publication) -> Duration {
    match p {
        Publication::Every(period) => {
            (period / PUBLICATION_JITTER_SHARE).min(PUBLICATION_JITTER_MAX)
        }
        Publication::DailyAt { .. } | Publication::Document => PUBLICATION_JITTER_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let secs: Vec<i64> = (1..=8).map(|n| p.backoff(n).num_seconds()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(p.backoff(u32::MAX), Duration::minutes(15));
    }

    #[test]
    fn jitter_stays_within_its_share_and_varies() {
        let mut j = Jitter(7);
        let d = Duration::seconds(100);
        let draws: Vec<i64> = (0..1000)
            .map(|_| j.scale(d, 0.5).num_milliseconds())
            .collect();
        assert!(draws.iter().all(|ms| (50_000..=100_000).contains(ms)));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 900);
        // Spread over the whole range, not bunched at one end.
        assert!(draws.iter().any(|ms| *ms < 55_000) && draws.iter().any(|ms| *ms > 95_000));
    }
}
