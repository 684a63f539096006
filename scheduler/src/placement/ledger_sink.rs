//! The live cycle's ledger (`offpeak serve --placement-config FILE --ledger LEDGER`): every
//! job's metered energy, per zone and slot, appended to the ledger once the slot is closed,
//! priced at that slot's price and carbon intensity in that zone as known then, PUE applied,
//! with the job's namespace, team, cost centre and the zone's tariff period; and, for each job
//! that succeeded, its counterfactual (full power as soon as submitted, in the zone of its first
//! run, at the same prices), so that the monthly report's saving covers live jobs.
//!
//! When a slot is closed: [`SETTLE`] after its end (agents send every few seconds and retry a
//! lost connection at most every 30 s, so five minutes holds nearly every sample), at the first
//! cycle after that (the next slot boundary, or an earlier change). Energy that still arrives
//! for a recorded slot (an agent replaying a long buffer) is appended as a correction of the
//! difference ([`crate::ledger::live`]). A slot whose zone has no signal yet waits for one while
//! the cycle still reads the slot's signals (its history, three days); after that it is
//! recorded [`UNPRICED`](crate::ledger::live::UNPRICED), its energy kept.
//!
//! Off the planning path: the records are computed on the cycle (cheap), and appended by a
//! blocking task that owns the ledger connection, one append at a time; the cycle never waits
//! for it. A failed append is logged, counted (`offpeak_ledger_append_failures_total`) and
//! retried by the next cycle with everything still pending; the connection is opened afresh
//! and what the ledger holds is read back first, so a commit that was in doubt is never
//! appended twice. Restarts: what the ledger holds is read back ([`LiveBook`]) before the
//! first append, so the slots of the jobs submitted again are compared with it and only what
//! is new is appended.
//!
//! Not covered: the energy of a job forgotten (`done_retention` after it ended) while the
//! ledger was unreachable *and* the scheduler restarted in between; it stays in the placement
//! store. A counterfactual whose slots' prices are no longer known (the job waited longer than
//! the ledger's market slots reach back, e.g. it was submitted before the first scheduler
//! with this ledger started) is not written: that is logged and counted
//! (`offpeak_ledger_counterfactual_unavailable_total`), and the job has no saving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use super::feed::SignalFeed;
use super::frame::Frame;
use super::metering::{JobMetered, Pricer, namespace_of};
use super::spec::JobSpec;
use super::{PlacementConfig, Settings};
use crate::ledger::live::{
    self, LIVE_COUNTERFACTUAL_SOURCE, LiveBook, LiveSlot, SlotSignal, live_counterfactual_id,
    live_job, live_record_id,
};
use crate::ledger::{
    Appended, Batch, LedgerError, LedgerLocation, LedgerRecord, LedgerStore, MarketSlot,
    UNASSIGNED, tariff_period,
};
use crate::planner::context::slots_needed;
use crate::signals::config::PriceSourceConfig;
use crate::signals::tariff::Tariff;

/// How long after a slot's end its samples are taken to be in: agents send a batch every few
/// seconds and retry a lost connection at most every 30 s; five minutes also covers a short
/// network cut or a scheduler restart. Later energy is a correction.
pub const SETTLE: Duration = Duration::minutes(5);

/// How far back slots are recorded and the ledger is read back: a day beyond the 45 days the
/// placement store keeps metered energy, so that no slot the state can offer was recorded
/// before the window the book is read over.
const LOOKBACK: Duration = Duration::days(46);

/// How far back the ledger's marks are read: twice [`LOOKBACK`], so that a slot taken in
/// before a long outage of the ledger is still found recorded (or not) when it ends.
const BOOK_WINDOW: Duration = Duration::days(92);

/// How long a stopping cycle waits for its last append: far above an append's usual
/// milliseconds, short enough not to hold up a pod's termination grace period (30 s).
const FINAL_FLUSH: StdDuration = StdDuration::from_secs(10);

/// What the ledger reads of one live job (`State::ledger_facts`).
#[derive(Debug, Clone, Copy)]
pub struct JobFacts<'a> {
    pub spec: &'a JobSpec,
    pub metered: &'a JobMetered,
    /// The operator reported it succeeded.
    pub succeeded: bool,
    /// The zone of its first run, if it ran.
    pub first_zone: Option<&'a str>,
}

/// The ledger's counters, on `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct LedgerCounters {
    /// Appends committed (one transaction each, whether or not anything in it was new).
    pub appends: Counter,
    /// Records appended (first records of slots and corrections).
    pub appended: Counter,
    /// Corrections among them (energy that arrived after its slot was recorded).
    pub corrections: Counter,
    /// Appends that failed (retried by the next cycle).
    pub failures: Counter,
    /// Slots waiting to be appended.
    pub pending: Gauge,
    /// Jobs that succeeded without a counterfactual (see the module's doc).
    pub counterfactual_unavailable: Counter,
}

impl LedgerCounters {
    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ledger_appends",
            "Ledger appends the live cycle committed (one transaction each)",
            self.appends.clone(),
        );
        registry.register(
            "ledger_records_appended",
            "Metered records the live cycle appended to the ledger (corrections included)",
            self.appended.clone(),
        );
        registry.register(
            "ledger_corrections_appended",
            "Corrections appended for energy that arrived after its slot was recorded",
            self.corrections.clone(),
        );
        registry.register(
            "ledger_append_failures",
            "Ledger appends that failed; what they held is retried by the next cycle",
            self.failures.clone(),
        );
        registry.register(
            "ledger_pending_slots",
            "Metered slots waiting to be appended to the ledger",
            self.pending.clone(),
        );
        registry.register(
            "ledger_counterfactual_unavailable",
            "Jobs that succeeded whose counterfactual could not be priced (no saving shown)",
            self.counterfactual_unavailable.clone(),
        );
    }
}

/// The zones whose first price source is a tariff: their records name its periods.
fn tariffs_of(feed: &SignalFeed) -> BTreeMap<String, Arc<Tariff>> {
    let SignalFeed::Chains(cfg) = feed else {
        // Rows of a CSV are a market's or a flat price, without period names.
        return BTreeMap::new();
    };
    cfg.zones
        .iter()
        .filter_map(|z| match z.price.first() {
            Some(PriceSourceConfig::Tariff { tariff }) => {
                Some((z.name.clone(), Arc::clone(tariff)))
            }
            _ => None,
        })
        .collect()
}

/// The ledger connection and what it holds, owned by whichever side (cycle or blocking task)
/// holds the worker.
struct Worker {
    location: LedgerLocation,
    /// Counted as soon as an append ends, not when the cycle next looks.
    counters: LedgerCounters,
    store: Option<Box<dyn LedgerStore>>,
    /// What the ledger holds of live records; `None`: to be read back first.
    book: Option<LiveBook>,
}

/// One append's content.
struct Flush {
    now: DateTime<Utc>,
    slots: Vec<LiveSlot>,
    market: Vec<MarketSlot>,
    /// By job.
    counterfactual: Vec<(String, Vec<LedgerRecord>)>,
}

/// What one append did.
struct Flushed {
    appended: Appended,
    corrections: usize,
    /// Market slots read back from the ledger (when the book was).
    read_market: Option<Vec<MarketSlot>>,
}

impl Worker {
    fn flush(&mut self, job: &Flush) -> Result<Flushed, LedgerError> {
        let result = self.try_flush(job);
        match &result {
            Ok(flushed) => {
                let c = &self.counters;
                c.appends.inc();
                c.appended.inc_by(flushed.appended.records as u64);
                c.corrections.inc_by(flushed.corrections as u64);
            }
            Err(_) => {
                self.counters.failures.inc();
                // A commit may have happened before the error: read the ledger back before
                // the next append, on a fresh connection.
                self.store = None;
                self.book = None;
            }
        }
        result
    }

    fn try_flush(&mut self, job: &Flush) -> Result<Flushed, LedgerError> {
        let store = match self.store.take() {
            Some(s) => s,
            None => self.location.open()?,
        };
        let store = self.store.insert(store);
        let (book, read_market) = match self.book.take() {
            Some(b) => (b, None),
            None => {
                let since = job.now - BOOK_WINDOW;
                let marks = store.live_marks(since)?;
                let market = store.market_between(since, job.now + LOOKBACK)?;
                tracing::info!(marks = marks.len(), "ledger read back");
                (LiveBook::from_marks(&marks), Some(market))
            }
        };
        let book = self.book.insert(book);
        let (records, marks) = book.entries(&job.slots);
        let counterfactual: Vec<LedgerRecord> = job
            .counterfactual
            .iter()
            .flat_map(|(_, r)| r.iter().cloned())
            .collect();
        let appended = store.append_live(
            &Batch {
                market: &job.market,
                counterfactual: &counterfactual,
                records: &records,
            },
            &marks,
        )?;
        book.apply(&marks);
        Ok(Flushed {
            appended,
            corrections: records.iter().filter(|r| r.corrects.is_some()).count(),
            read_market,
        })
    }
}

/// A finished append: the worker back, what it carried, and how it went.
type Done = (Worker, Flush, Result<Flushed, LedgerError>);

/// What a succeeded job's counterfactual is now.
enum Counterfactual {
    /// Some of its slots are not closed yet.
    Wait,
    Unavailable(String),
    Records(Vec<LedgerRecord>),
}

/// The cycle's side of the ledger (see the module's doc).
pub struct LedgerSink {
    settings: Settings,
    settle: Duration,
    /// Zone -> PUE, as configured.
    pue: BTreeMap<String, f64>,
    tariffs: BTreeMap<String, Arc<Tariff>>,
    /// Closed slots' signals, (zone, start) -> signal: seen by the cycle, or read back.
    market: BTreeMap<(String, i64), SlotSignal>,
    /// The energy of each slot last taken into `pending`: original id -> (start, mJ).
    captured: HashMap<String, (DateTime<Utc>, u64)>,
    /// Slots to append, by original id.
    pending: BTreeMap<String, LiveSlot>,
    pending_market: BTreeMap<(String, i64), MarketSlot>,
    /// Counterfactual records to append, by job.
    pending_counterfactual: BTreeMap<String, Vec<LedgerRecord>>,
    /// Jobs whose counterfactual was made (or found unavailable).
    counterfactual_done: HashSet<String>,
    /// Whether the ledger was read back (counterfactuals wait for its market slots).
    read_back: bool,
    location: LedgerLocation,
    /// `None` while an append runs.
    worker: Option<Worker>,
    inflight: Option<JoinHandle<Done>>,
    counters: LedgerCounters,
}

impl std::fmt::Debug for LedgerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerSink")
            .field("ledger", &self.location)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Drop for LedgerSink {
    fn drop(&mut self) {
        // The `postgres` client closes its connection on a runtime of its own, which panics
        // on a tokio worker: close it on a plain thread instead (as `Reports` does).
        let store = self.worker.as_mut().and_then(|w| w.store.take());
        if let Some(store) = store
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::Builder::new()
                .name("ledger-close".into())
                .spawn(move || drop(store));
        }
    }
}

impl LedgerSink {
    /// A sink appending to `location` for the placement `config` describes (its slots,
    /// currency, zones' PUEs and tariffs). Nothing is opened until the first append.
    pub fn new(location: LedgerLocation, config: &PlacementConfig) -> Self {
        let counters = LedgerCounters::default();
        Self {
            settings: config.settings.clone(),
            settle: SETTLE,
            pue: config
                .zones
                .iter()
                .map(|z| (z.name.clone(), z.pue))
                .collect(),
            tariffs: tariffs_of(&config.signals),
            market: BTreeMap::new(),
            captured: HashMap::new(),
            pending: BTreeMap::new(),
            pending_market: BTreeMap::new(),
            pending_counterfactual: BTreeMap::new(),
            counterfactual_done: HashSet::new(),
            read_back: false,
            worker: Some(Worker {
                location: location.clone(),
                counters: counters.clone(),
                store: None,
                book: None,
            }),
            location,
            inflight: None,
            counters,
        }
    }

    /// Closes slots this long after their end instead of [`SETTLE`].
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The counters, to register on `/metrics`.
    pub fn counters(&self) -> &LedgerCounters {
        &self.counters
    }

    /// Takes the result of the last append, if it finished (or, with `wait`, once it does).
    pub async fn collect(&mut self, wait: bool) {
        let Some(handle) = self.inflight.take_if(|h| wait || h.is_finished()) else {
            return;
        };
        match handle.await {
            Ok((worker, flush, result)) => {
                self.worker = Some(worker);
                self.done(flush, result);
            }
            Err(e) => {
                // The task panicked or was cancelled: its connection is gone with it.
                tracing::error!(error = %e, "the ledger append task failed; retrying next cycle");
                self.counters.failures.inc();
                self.worker = Some(Worker {
                    location: self.location.clone(),
                    counters: self.counters.clone(),
                    store: None,
                    book: None,
                });
            }
        }
    }

    fn done(&mut self, flush: Flush, result: Result<Flushed, LedgerError>) {
        let flushed = match result {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), pending = self.pending.len(),
                    "could not append to the ledger; retrying next cycle");
                return;
            }
        };
        if flushed.appended.records + flushed.appended.counterfactual > 0 {
            tracing::info!(
                records = flushed.appended.records,
                corrections = flushed.corrections,
                counterfactual = flushed.appended.counterfactual,
                market = flushed.appended.market,
                "appended to the ledger"
            );
        }
        for s in &flush.slots {
            let id = s.original_id();
            // A slot that grew meanwhile stays, with its new total.
            if self
                .pending
                .get(&id)
                .is_some_and(|p| p.energy_mj <= s.energy_mj)
            {
                self.pending.remove(&id);
            }
        }
        for m in &flush.market {
            self.pending_market
                .remove(&(m.zone.clone(), m.start.timestamp()));
        }
        for (job, _) in &flush.counterfactual {
            self.pending_counterfactual.remove(job);
        }
        if let Some(market) = flushed.read_market {
            for m in market {
                self.market
                    .entry((m.zone, m.start.timestamp()))
                    .or_insert(SlotSignal {
                        price: m.price,
                        carbon: m.carbon_intensity,
                    });
            }
            self.read_back = true;
        }
        self.counters.pending.set(self.pending.len() as i64);
    }

    /// Takes what closed by `wall`: market slots, the jobs' metered slots, and the
    /// counterfactuals of jobs that succeeded (with `frame`, which resolves their profiles).
    pub fn capture(
        &mut self,
        jobs: &[JobFacts<'_>],
        frame: Option<&Frame>,
        pricer: &Pricer<'_>,
        wall: DateTime<Utc>,
    ) {
        let closed_by = wall - self.settle;
        self.capture_market(pricer, closed_by);
        for job in jobs {
            self.capture_job(job, pricer, closed_by, wall);
        }
        if let Some(frame) = frame
            && self.read_back
        {
            for job in jobs.iter().filter(|j| j.succeeded && !j.metered.is_empty()) {
                self.capture_counterfactual(job, frame, closed_by);
            }
        }
        let oldest = wall - LOOKBACK;
        self.captured.retain(|_, (start, _)| *start >= oldest);
        let oldest = oldest.timestamp();
        self.market.retain(|(_, start), _| *start >= oldest);
        self.counters.pending.set(self.pending.len() as i64);
    }

    fn capture_market(&mut self, pricer: &Pricer<'_>, closed_by: DateTime<Utc>) {
        let grid = pricer.grid;
        for (zone, (_, known)) in &pricer.zones {
            for (i, (price, carbon)) in known.price.iter().zip(&known.carbon).enumerate() {
                let (start, end) = (grid.instant(i as u32), grid.instant(i as u32 + 1));
                if end > closed_by {
                    break;
                }
                let key = ((*zone).to_owned(), start.timestamp());
                if self.market.contains_key(&key) {
                    continue;
                }
                self.market.insert(
                    key.clone(),
                    SlotSignal {
                        price: *price,
                        carbon: *carbon,
                    },
                );
                self.pending_market.insert(
                    key,
                    MarketSlot {
                        zone: (*zone).to_owned(),
                        start,
                        end,
                        price: *price,
                        carbon_intensity: *carbon,
                        currency: self.settings.currency.clone(),
                    },
                );
            }
        }
    }

    /// The signals of `zone` over the slot starting at `start`: as the cycle knows them, or
    /// as they were recorded.
    fn signal(&self, pricer: &Pricer<'_>, zone: &str, start: DateTime<Utc>) -> Option<SlotSignal> {
        pricer
            .signals(zone, start)
            .map(|(price, carbon)| SlotSignal { price, carbon })
            .or_else(|| {
                self.market
                    .get(&(zone.to_owned(), start.timestamp()))
                    .copied()
            })
    }

    fn capture_job(
        &mut self,
        job: &JobFacts<'_>,
        pricer: &Pricer<'_>,
        closed_by: DateTime<Utc>,
        wall: DateTime<Utc>,
    ) {
        let spec = job.spec;
        let slot = self.settings.slot();
        for ((zone, _), m) in job.metered {
            let (start, end) = (m.slot_start, m.slot_start + slot);
            if end > closed_by || start < wall - LOOKBACK {
                continue;
            }
            let id = live_record_id(&spec.key, &spec.uid, zone, start);
            if self
                .captured
                .get(&id)
                .is_some_and(|(_, mj)| *mj >= m.energy_mj)
            {
                continue;
            }
            let signal = self.signal(pricer, zone, start);
            if signal.is_none() && start >= pricer.grid.start && self.pue.contains_key(zone) {
                // Its signal may still come while the cycle reads this slot.
                continue;
            }
            if signal.is_none() {
                tracing::warn!(job = %spec.key, zone = %zone, slot = %start,
                    "no price was ever known for this slot: its energy is recorded unpriced");
            }
            self.captured.insert(id.clone(), (start, m.energy_mj));
            let tariff = self.tariffs.get(zone.as_str()).map(AsRef::as_ref);
            self.pending.insert(
                id,
                LiveSlot {
                    key: spec.key.clone(),
                    uid: spec.uid.clone(),
                    namespace: namespace_of(&spec.key).to_owned(),
                    team: or_unassigned(&spec.team),
                    cost_centre: or_unassigned(&spec.cost_centre),
                    zone: zone.clone(),
                    start,
                    end,
                    gpus: spec.gpus(),
                    energy_mj: m.energy_mj,
                    signal,
                    // A zone the placement file does not name has no PUE: its IT energy is
                    // what is billed.
                    pue: self.pue.get(zone.as_str()).copied().unwrap_or(1.0),
                    tariff_period: tariff_period(tariff, start),
                    currency: self.settings.currency.clone(),
                },
            );
        }
    }

    fn capture_counterfactual(
        &mut self,
        job: &JobFacts<'_>,
        frame: &Frame,
        closed_by: DateTime<Utc>,
    ) {
        let id = live_job(&job.spec.key, &job.spec.uid);
        if self.counterfactual_done.contains(&id) {
            return;
        }
        match self.counterfactual(job, frame, closed_by) {
            Counterfactual::Wait => {}
            Counterfactual::Unavailable(reason) => {
                tracing::warn!(job = %job.spec.key, %reason,
                    "no counterfactual for this job: the report shows no saving for it");
                self.counters.counterfactual_unavailable.inc();
                self.counterfactual_done.insert(id);
            }
            Counterfactual::Records(records) => {
                self.pending_counterfactual.insert(id.clone(), records);
                self.counterfactual_done.insert(id);
            }
        }
    }

    /// The job run at full power from the first slot boundary after its submission, in one
    /// run, in the zone of its first run, at the recorded signals; the same rule as
    /// [`crate::ledger::counterfactual_from_replay`] (capacity is not modelled).
    fn counterfactual(
        &self,
        job: &JobFacts<'_>,
        frame: &Frame,
        closed_by: DateTime<Utc>,
    ) -> Counterfactual {
        let spec = job.spec;
        let zone = match job.first_zone {
            Some(z) => z.to_owned(),
            // Metered without a committed run of its own (planned before a restart that lost
            // its runs): where its energy was first metered.
            None => match job
                .metered
                .values()
                .min_by_key(|m| (m.slot_start, m.zone.clone()))
            {
                Some(m) => m.zone.clone(),
                None => return Counterfactual::Wait,
            },
        };
        let profile = match frame.resolve(spec) {
            Ok((_, p)) => &frame.profiles[p],
            Err(reason) => return Counterfactual::Unavailable(reason),
        };
        let point = profile.points[profile.full_power()];
        let slot = self.settings.slot();
        let slot_h = slot.num_seconds() as f64 / 3600.0;
        let n = slots_needed(spec.work.0, point.throughput, slot_h);
        let first = self.settings.ceil(spec.submit);
        let Ok(n32) = i32::try_from(n) else {
            return Counterfactual::Unavailable(format!("{n} slots is too long a run"));
        };
        if first + slot * n32 > closed_by {
            return Counterfactual::Wait;
        }
        let Some(&pue) = self.pue.get(&zone) else {
            return Counterfactual::Unavailable(format!("zone {zone} is not configured"));
        };
        let gpus = spec.gpus();
        let it_kwh = f64::from(gpus) * point.draw.0 / 1000.0 * slot_h;
        let tariff = self.tariffs.get(&zone).map(AsRef::as_ref);
        let mut out = Vec::with_capacity(n);
        for k in 0..n32 {
            let start = first + slot * k;
            let Some(signal) = self.market.get(&(zone.clone(), start.timestamp())).copied() else {
                return Counterfactual::Unavailable(format!(
                    "no price is recorded for zone {zone} at {start}"
                ));
            };
            out.push(LedgerRecord {
                id: live_counterfactual_id(&spec.key, &spec.uid, &zone, start),
                source: LIVE_COUNTERFACTUAL_SOURCE.to_owned(),
                namespace: namespace_of(&spec.key).to_owned(),
                team: or_unassigned(&spec.team),
                cost_centre: or_unassigned(&spec.cost_centre),
                job: spec.key.clone(),
                zone: zone.clone(),
                tariff_period: tariff_period(tariff, start),
                start,
                end: start + slot,
                gpus,
                price: signal.price,
                carbon_intensity: signal.carbon,
                pue,
                currency: self.settings.currency.clone(),
                amounts: live::priced(f64::from(gpus) * slot_h, it_kwh, pue, signal),
                corrects: None,
            });
        }
        Counterfactual::Records(out)
    }

    /// Starts appending what is pending, unless an append runs already.
    pub fn flush(&mut self, wall: DateTime<Utc>) {
        if self.inflight.is_some()
            || (self.pending.is_empty()
                && self.pending_market.is_empty()
                && self.pending_counterfactual.is_empty())
        {
            return;
        }
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        let flush = Flush {
            now: wall,
            slots: self.pending.values().cloned().collect(),
            market: self.pending_market.values().cloned().collect(),
            counterfactual: self
                .pending_counterfactual
                .iter()
                .map(|(job, r)| (job.clone(), r.clone()))
                .collect(),
        };
        let span = tracing::info_span!("ledger_append", slots = flush.slots.len());
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let result = worker.flush(&flush);
            (worker, flush, result)
        }));
    }

    /// Appends what is still pending before the cycle stops, waiting at most [`FINAL_FLUSH`].
    pub async fn finish(&mut self, wall: DateTime<Utc>) {
        let last = async {
            self.collect(true).await;
            self.flush(wall);
            self.collect(true).await;
        };
        if tokio::time::timeout(FINAL_FLUSH, last).await.is_err() {
            tracing::warn!("the last ledger append did not finish; the next start appends it");
        }
    }
}

fn or_unassigned(s: &str) -> String {
    match s.trim() {
        "" => UNASSIGNED.to_owned(),
        s => s.to_owned(),
    }
}

/// The whole chain of an error, for a log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
