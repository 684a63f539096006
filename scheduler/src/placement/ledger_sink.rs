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
//! Off the planning path: the cycle computes what closed (cheap) and queues it; one blocking
//! task at a time ([`writer`]) owns the ledger connection and appends everything queued in one
//! transaction, again while more was queued meanwhile. The cycle never waits for it. A failed
//! append is logged, counted (`offpeak_ledger_append_failures_total`) and retried by the next
//! cycle with everything still queued; the connection is opened afresh and what the ledger
//! holds is read back first, so a commit that was in doubt is never appended twice. Restarts:
//! what the ledger holds is read back (a `LiveBook`: the exact energy behind each record)
//! before the first append, so the slots of the jobs submitted again are compared with it and
//! only what is new is appended.
//!
//! Layout: here the counters, what is taken from each cycle ([`LedgerSink::capture`]: market
//! slots, metered slots, counterfactuals) and the hand-over to [`writer`].
//!
//! Not covered: the energy of a job forgotten (`done_retention` after it ended) while the
//! ledger was unreachable *and* the scheduler restarted in between; it stays in the placement
//! store. A counterfactual whose slots' prices are no longer known (the job waited longer than
//! the ledger's market slots reach back, e.g. it was submitted before the first scheduler
//! with this ledger started) is not written: that is logged and counted
//! (`offpeak_ledger_counterfactual_unavailable_total`). Nor has a job that failed or was
//! cancelled one (as in a replay, only completed jobs have one). The report then shows no
//! saving on such a job's lines and leaves it out of every aggregate's saving ("over N of M
//! jobs").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::feed::SignalFeed;
use super::frame::Frame;
use super::metering::{JobMetered, Pricer, namespace_of};
use super::spec::JobSpec;
use super::{PlacementConfig, Settings};
use crate::ledger::live::{
    self, LIVE_COUNTERFACTUAL_SOURCE, LiveSlot, SlotSignal, live_counterfactual_id, live_job,
    live_record_id,
};
use crate::ledger::{LedgerLocation, LedgerRecord, MarketSlot, UNASSIGNED, tariff_period};
use crate::planner::context::slots_needed;
use crate::signals::config::PriceSourceConfig;
use crate::signals::tariff::Tariff;
use writer::Writer;

mod writer;

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
    /// The energy of each slot last queued, by job ([`live_job`]) and (zone, start): keyed
    /// as the jobs' metered slots are, so an unchanged slot costs a lookup, no allocation.
    captured: HashMap<String, BTreeMap<(String, i64), u64>>,
    /// Jobs whose counterfactual was made (or found unavailable).
    counterfactual_done: HashSet<String>,
    location: LedgerLocation,
    writer: Writer,
    counters: LedgerCounters,
}

impl std::fmt::Debug for LedgerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerSink")
            .field("ledger", &self.location)
            .finish_non_exhaustive()
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
            counterfactual_done: HashSet::new(),
            writer: Writer::new(location.clone(), counters.clone(), BOOK_WINDOW),
            location,
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
        let read_back = {
            let mut q = self.writer.queue();
            for m in std::mem::take(&mut q.read_market) {
                self.market
                    .entry((m.zone, m.start.timestamp()))
                    .or_insert(SlotSignal {
                        price: m.price,
                        carbon: m.carbon_intensity,
                    });
            }
            q.read_back
        };
        self.capture_market(pricer, closed_by);
        for job in jobs {
            self.capture_job(job, pricer, closed_by, wall);
        }
        // Counterfactuals are priced from the market slots, which the ledger's read back
        // completes after a restart.
        if let Some(frame) = frame
            && read_back
        {
            for job in jobs.iter().filter(|j| j.succeeded && !j.metered.is_empty()) {
                self.capture_counterfactual(job, frame, closed_by);
            }
        }
        let oldest = wall - LOOKBACK;
        // Jobs the state forgot are forgotten here too (their queued slots stay queued).
        let present: HashSet<String> = jobs
            .iter()
            .map(|j| live_job(&j.spec.key, &j.spec.uid))
            .collect();
        let oldest_ts = oldest.timestamp();
        self.captured.retain(|job, seen| {
            seen.retain(|(_, start), _| *start >= oldest_ts);
            present.contains(job)
        });
        self.counterfactual_done.retain(|job| present.contains(job));
        let oldest = oldest.timestamp();
        self.market.retain(|(_, start), _| *start >= oldest);
        let pending = self.writer.queue().slots.len();
        self.counters.pending.set(pending as i64);
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
                self.writer.queue().market.insert(
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
        let job_id = live_job(&spec.key, &spec.uid);
        let mut seen = self.captured.remove(&job_id).unwrap_or_default();
        for (key, m) in job.metered {
            let (zone, start, end) = (&key.0, m.slot_start, m.slot_start + slot);
            if end > closed_by
                || start < wall - LOOKBACK
                || seen.get(key).is_some_and(|mj| *mj >= m.energy_mj)
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
            seen.insert(key.clone(), m.energy_mj);
            let tariff = self.tariffs.get(zone.as_str()).map(AsRef::as_ref);
            self.writer.queue().slots.insert(
                live_record_id(&spec.key, &spec.uid, zone, start),
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
        self.captured.insert(job_id, seen);
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
                self.writer
                    .queue()
                    .counterfactual
                    .insert(id.clone(), records);
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

    /// Starts appending what is queued, unless an append runs already (the writer keeps
    /// appending while more is queued; a failed append waits for this call of a later cycle).
    pub fn flush(&mut self, wall: DateTime<Utc>) {
        self.writer.kick(wall);
    }

    /// Appends what is still queued before the cycle stops, waiting at most [`FINAL_FLUSH`].
    pub async fn finish(&mut self, wall: DateTime<Utc>) {
        if tokio::time::timeout(FINAL_FLUSH, self.writer.finish(wall))
            .await
            .is_err()
        {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::ManualClock;
    use crate::placement::feed::Known;
    use crate::placement::store::MeteredSlot;
    use crate::units::{GramsPerKwh, Hours, PricePerMwh, SlotGrid};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn spec() -> JobSpec {
        JobSpec {
            key: "ml/a".into(),
            uid: "u1".into(),
            namespace: "ml".into(),
            team: "research".into(),
            cost_centre: String::new(),
            workers: 1,
            gpus_per_worker: 2,
            accelerator: None,
            work: Hours(1.0),
            profile: None,
            submit: t("2024-07-01T23:00:00Z"),
            deadline: t("2024-07-03T00:00:00Z"),
            preemptible: false,
            price_cap: None,
            carbon_cap: None,
            monthly_budget: None,
            carbon_price: None,
            held: false,
        }
    }

    fn slot(zone: &str, start: &str, energy_mj: u64) -> ((String, i64), MeteredSlot) {
        (
            (zone.to_owned(), t(start).timestamp()),
            MeteredSlot {
                key: "ml/a".into(),
                uid: "u1".into(),
                zone: zone.into(),
                slot_start: t(start),
                energy_mj,
                cost: 0.0,
                carbon_kg: 0.0,
                priced: false,
            },
        )
    }

    #[test]
    fn closed_slots_name_their_tariff_period_and_wait_for_a_price_while_one_may_come() {
        let clock = Arc::new(ManualClock::new(t("2024-07-01T23:00:00Z")));
        let config = PlacementConfig::new(clock).with_zone("T", 1.2);
        let mut sink = LedgerSink::new(LedgerLocation::Sqlite("unused".into()), &config);
        let tariff = crate::signals::tariff::handwritten::parse(
            br#"tariff:
  name: test
  currency: USD
  time_zone: America/Los_Angeles
  unit: per_kwh
  periods:
    - {name: peak, rate: 0.40, hours: ["16:00-21:00"]}
    - {name: off-peak, rate: 0.20}
"#,
            "test.yaml",
        )
        .expect("tariff");
        sink.tariffs.insert("T".into(), Arc::new(tariff));
        // Known from 23:00Z for 45 quarter-hours (to 10:15Z).
        let known = Known {
            price: vec![PricePerMwh(40.0); 45],
            carbon: vec![GramsPerKwh(250.0); 45],
            degraded: None,
        };
        let pricer = Pricer {
            grid: SlotGrid {
                start: t("2024-07-01T23:00:00Z"),
                minutes: 15,
            },
            zones: [("T", (1.2, &known))].into(),
        };
        let metered: JobMetered = [
            // 17:00 in Los Angeles (PDT): peak; 03:00: off-peak.
            slot("T", "2024-07-02T00:00:00Z", 10),
            slot("T", "2024-07-02T10:00:00Z", 20),
            // Past what is known, within the cycle's history: its price may still come.
            slot("T", "2024-07-02T12:00:00Z", 30),
            // Not closed yet at 13:00 (ends 12:45, settles at 12:50): it is.
            slot("T", "2024-07-02T12:30:00Z", 40),
            // A zone the placement file does not name: never priced, recorded at once.
            slot("X", "2024-07-02T00:00:00Z", 50),
        ]
        .into();
        let spec = spec();
        let facts = JobFacts {
            spec: &spec,
            metered: &metered,
            succeeded: false,
            first_zone: Some("T"),
        };
        sink.capture(&[facts], None, &pricer, t("2024-07-02T12:55:00Z"));
        let q = sink.writer.queue();
        let got: Vec<(&str, u64, &str, Option<f64>, &str)> = q
            .slots
            .values()
            .map(|s| {
                (
                    s.zone.as_str(),
                    s.energy_mj,
                    s.tariff_period.as_str(),
                    s.signal.map(|x| x.price.0),
                    s.team.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("T", 10, "peak", Some(40.0), "research"),
                ("T", 20, "off-peak", Some(40.0), "research"),
                ("X", 50, "spot", None, "research"),
            ]
        );
        assert!(q.slots.values().all(|s| s.cost_centre == UNASSIGNED));
        // Every closed slot of the known signals is a market slot to record.
        assert_eq!(q.market.len(), 45);
    }
}
