//! The ledger's writer: a queue the cycle fills, drained by one blocking task at a time
//! (`spawn_blocking`, as both ledger clients are synchronous). The task appends everything
//! queued in one transaction, then again while the cycle queued more meanwhile, and ends when
//! the queue is empty or an append failed; the next cycle starts it again. The connection and
//! what the ledger holds ([`LiveBook`]) live in a [`Worker`] the task takes and gives back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use tokio::task::JoinHandle;

use super::LedgerCounters;
use crate::ledger::live::{LiveBook, LiveSlot};
use crate::ledger::{
    Appended, Batch, LedgerError, LedgerLocation, LedgerRecord, LedgerStore, MarketSlot,
};

/// What waits to be appended, and what the writer read back for the cycle.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Metered slots, by original record id.
    pub slots: BTreeMap<String, LiveSlot>,
    /// Market slots, by (zone, start).
    pub market: BTreeMap<(String, i64), MarketSlot>,
    /// Counterfactual records, by job.
    pub counterfactual: BTreeMap<String, Vec<LedgerRecord>>,
    /// Market slots read back from the ledger, for the cycle to take.
    pub read_market: Vec<MarketSlot>,
    /// Whether the ledger was read back since the sink started.
    pub read_back: bool,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.market.is_empty() && self.counterfactual.is_empty()
    }
}

struct Shared {
    queue: Queue,
    /// `None` while the drain task holds it.
    worker: Option<Worker>,
}

/// The ledger connection and what it holds.
struct Worker {
    location: LedgerLocation,
    counters: LedgerCounters,
    store: Option<Box<dyn LedgerStore>>,
    /// What the ledger holds of live records; `None`: to be read back first.
    book: Option<LiveBook>,
}

/// One append's content: a snapshot of the queue.
struct Flush {
    slots: Vec<LiveSlot>,
    market: Vec<MarketSlot>,
    counterfactual: Vec<(String, Vec<LedgerRecord>)>,
}

/// What one append did.
struct Flushed {
    appended: Appended,
    corrections: usize,
    /// Market slots read back from the ledger (when the book was).
    read_market: Option<Vec<MarketSlot>>,
}

/// The cycle's handle on the queue and the drain task.
pub(super) struct Writer {
    shared: Arc<Mutex<Shared>>,
    task: Option<JoinHandle<()>>,
    location: LedgerLocation,
    counters: LedgerCounters,
    /// How far back the ledger's marks and market slots are read.
    window: Duration,
}

impl Writer {
    pub(super) fn new(
        location: LedgerLocation,
        counters: LedgerCounters,
        window: Duration,
    ) -> Self {
        let worker = Worker::new(location.clone(), counters.clone());
        Self {
            shared: Arc::new(Mutex::new(Shared {
                queue: Queue::default(),
                worker: Some(worker),
            })),
            task: None,
            location,
            counters,
            window,
        }
    }

    /// The queue, locked (briefly: the drain task takes snapshots under the same lock).
    pub(super) fn queue(&self) -> MappedQueue<'_> {
        MappedQueue(lock(&self.shared))
    }

    /// Starts draining the queue, unless a drain runs (it takes what was queued meanwhile)
    /// or there is nothing to append.
    pub(super) fn kick(&mut self, now: DateTime<Utc>) {
        let worker = {
            let mut shared = lock(&self.shared);
            if shared.queue.is_empty() {
                return;
            }
            // A drain gives the worker back under the same lock under which it last saw the
            // queue empty (or failed), so a missing worker means a drain that will see what
            // was just queued, unless the task is over: then it panicked.
            match shared.worker.take() {
                Some(w) => w,
                None if self.task.as_ref().is_some_and(JoinHandle::is_finished) => {
                    tracing::error!("the ledger writer failed; starting a new one");
                    self.counters.failures.inc();
                    Worker::new(self.location.clone(), self.counters.clone())
                }
                None => return,
            }
        };
        let shared = Arc::clone(&self.shared);
        let window = self.window;
        let span = tracing::info_span!("ledger_writer");
        self.task = Some(tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            drain(&shared, worker, now, window);
        }));
    }

    /// Waits for the drain in progress, then drains what is left once more.
    pub(super) async fn finish(&mut self, now: DateTime<Utc>) {
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the ledger writer failed");
            self.counters.failures.inc();
            lock(&self.shared)
                .worker
                .get_or_insert_with(|| Worker::new(self.location.clone(), self.counters.clone()));
        }
        self.kick(now);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The `postgres` client closes its connection on a runtime of its own, which panics
        // on a tokio worker: close it on a plain thread instead (as `Reports` does). A drain
        // still running drops its own on its blocking thread.
        let store = lock(&self.shared)
            .worker
            .as_mut()
            .and_then(|w| w.store.take());
        if let Some(store) = store
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::Builder::new()
                .name("ledger-close".into())
                .spawn(move || drop(store));
        }
    }
}

/// The locked queue.
pub(super) struct MappedQueue<'a>(MutexGuard<'a, Shared>);

impl std::ops::Deref for MappedQueue<'_> {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        &self.0.queue
    }
}

impl std::ops::DerefMut for MappedQueue<'_> {
    fn deref_mut(&mut self) -> &mut Queue {
        &mut self.0.queue
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Every change under the lock is made whole before anything can panic.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Appends snapshots of the queue until it is empty or an append fails; gives the worker
/// back under the lock it last looked at the queue under.
fn drain(shared: &Mutex<Shared>, mut worker: Worker, now: DateTime<Utc>, window: Duration) {
    loop {
        let flush = {
            let mut shared = lock(shared);
            let q = &shared.queue;
            if q.is_empty() {
                shared.worker = Some(worker);
                return;
            }
            Flush {
                slots: q.slots.values().cloned().collect(),
                market: q.market.values().cloned().collect(),
                counterfactual: q
                    .counterfactual
                    .iter()
                    .map(|(job, r)| (job.clone(), r.clone()))
                    .collect(),
            }
        };
        let result = worker.flush(&flush, now, window);
        let mut shared = lock(shared);
        match result {
            Ok(flushed) => taken(&mut shared.queue, &flush, flushed),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), slots = flush.slots.len(),
                    "could not append to the ledger; the next cycle retries");
                shared.worker = Some(worker);
                return;
            }
        }
        worker.counters.pending.set(shared.queue.slots.len() as i64);
    }
}

/// Takes what an append stored off the queue.
fn taken(q: &mut Queue, flush: &Flush, flushed: Flushed) {
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
        // A slot that grew meanwhile stays, with its new total.
        let id = s.original_id();
        if q.slots.get(&id).is_some_and(|p| p.energy_mj <= s.energy_mj) {
            q.slots.remove(&id);
        }
    }
    for m in &flush.market {
        q.market.remove(&(m.zone.clone(), m.start.timestamp()));
    }
    for (job, _) in &flush.counterfactual {
        q.counterfactual.remove(job);
    }
    if let Some(market) = flushed.read_market {
        q.read_market.extend(market);
        q.read_back = true;
    }
}

impl Worker {
    fn new(location: LedgerLocation, counters: LedgerCounters) -> Self {
        Self {
            location,
            counters,
            store: None,
            book: None,
        }
    }

    fn flush(
        &mut self,
        flush: &Flush,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Result<Flushed, LedgerError> {
        let result = self.try_flush(flush, now, window);
        match &result {
            Ok(flushed) => {
                // Counted as soon as the append ends, not when the cycle next looks.
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

    fn try_flush(
        &mut self,
        flush: &Flush,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Result<Flushed, LedgerError> {
        let store = match self.store.take() {
            Some(s) => s,
            None => self.location.open()?,
        };
        let store = self.store.insert(store);
        let (book, read_market) = match self.book.take() {
            Some(b) => (b, None),
            None => {
                let since = now - window;
                let marks = store.live_marks(since)?;
                let market = store.market_between(since, now + window)?;
                tracing::info!(
                    marks = marks.len(),
                    market = market.len(),
                    "ledger read back"
                );
                (LiveBook::from_marks(&marks), Some(market))
            }
        };
        let book = self.book.insert(book);
        let (records, marks) = book.entries(&flush.slots);
        let counterfactual: Vec<LedgerRecord> = flush
            .counterfactual
            .iter()
            .flat_map(|(_, r)| r.iter().cloned())
            .collect();
        let appended = store.append_live(
            &Batch {
                market: &flush.market,
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
