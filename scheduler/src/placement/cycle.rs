//! [`Placement`], the handle the API calls (submit, cancel, get, watch, report), and
//! [`Cycle`], the task that plans: at every slot boundary of the injected clock, after every
//! change, and when a zone's signals were refreshed (changes arriving within the debounce time
//! are planned together).
//!
//! A call that changes something returns once a plan that includes the change has been
//! applied: each change takes a ticket, each cycle publishes the last ticket it covered.
//!
//! Planning instant: at a boundary (or within the start grace after it) the cycle plans for
//! that boundary and commits the runs that start; between boundaries it plans for the next
//! boundary and commits nothing, so runs always start on the grid, as in a replay.
//!
//! Each cycle first brings the jobs' metered energy up to date (so the budget rule sees this
//! month's spending), and, with a command center, sends running jobs' power limits to the
//! devices their pods use; between cycles the power limits are checked every
//! `Settings::power_check`, and a plan is made again when one could not be applied (so the
//! job's reason says so). A plan that held a job for its budget is made again at once, on
//! the capacity it freed.
//!
//! With a ledger, each cycle then appends the metered energy of the slots that closed
//! (`ledger_sink`), off the async threads.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tracing::Instrument as _;

use super::cluster::{self, NodeSpec, ProfileSource, ZoneSpec};
use super::feed::{Known, LiveFeed};
use super::frame::{Frame, FrameInput};
use super::ledger_sink::LedgerSink;
use super::metering::Pricer;
use super::power::Enforcer;
use super::spec::JobRequest;
use super::state::{State, Submitted};
use super::{Clock, PlacementConfig, PlacementError, PlanView, ReportedState, Settings};
use crate::planner::Policy;
use crate::service::{CommandCenter, NodeRegistry};
use crate::units::{Slot, SlotGrid};

/// How long a call waits for the plan that includes its change before answering UNAVAILABLE:
/// far above a full re-plan of ten thousand jobs (a quarter of a second), far below a client's
/// patience.
const PLAN_WAIT: StdDuration = StdDuration::from_secs(30);

struct Inner {
    settings: Settings,
    zones: Vec<ZoneSpec>,
    static_nodes: Vec<NodeSpec>,
    profiles: Arc<dyn ProfileSource>,
    clock: Arc<dyn Clock>,
    registry: NodeRegistry,
    policy: Arc<dyn Policy>,
    state: Mutex<State>,
    plans: broadcast::Sender<PlanView>,
    wake: Notify,
    /// Tickets handed out to changes, and the last ticket a finished cycle covered.
    requested: AtomicU64,
    planned: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("settings", &self.settings)
            .field("zones", &self.zones)
            .finish_non_exhaustive()
    }
}

/// The live placement service: shared by the API handlers and the cycle.
#[derive(Debug, Clone)]
pub struct Placement {
    inner: Arc<Inner>,
}

/// The planning task; [`Cycle::run`] until the placement is shut down.
#[derive(Debug)]
pub struct Cycle {
    placement: Placement,
    feed: LiveFeed,
    /// Power limits to the running jobs' devices (none: no command path).
    power: Option<Enforcer>,
    /// The jobs' metered energy to the ledger (none: no ledger).
    ledger: Option<LedgerSink>,
}

impl Placement {
    /// Opens the store and builds the service; the returned [`Cycle`] must be run for plans to
    /// be made. No power limits are sent (see [`Placement::open_with_commands`]).
    pub fn open(
        config: PlacementConfig,
        registry: NodeRegistry,
    ) -> Result<(Self, Cycle), PlacementError> {
        Self::open_inner(config, registry, None)
    }

    /// As [`Placement::open`], sending running jobs' power limits through `commands`.
    pub fn open_with_commands(
        config: PlacementConfig,
        registry: NodeRegistry,
        commands: CommandCenter,
    ) -> Result<(Self, Cycle), PlacementError> {
        Self::open_inner(config, registry, Some(commands))
    }

    fn open_inner(
        config: PlacementConfig,
        registry: NodeRegistry,
        commands: Option<CommandCenter>,
    ) -> Result<(Self, Cycle), PlacementError> {
        let now = config.clock.now();
        // A job's energy is priced per planning slot: the registry's slots are the same.
        registry.set_meter_slot(config.settings.slot_minutes.saturating_mul(60));
        let power = commands.map(|c| Enforcer::new(c, registry.clone()));
        let state = State::open(config.settings.clone(), config.store.as_deref(), now)?;
        let feed = LiveFeed::new(&config.signals, &config.settings, &config.clock)
            .map_err(PlacementError::BuildSignals)?;
        let (plans, _) = broadcast::channel(config.settings.watch_buffer.max(1));
        let placement = Placement {
            inner: Arc::new(Inner {
                policy: Arc::from(config.settings.policy.build()),
                settings: config.settings,
                zones: config.zones,
                static_nodes: config.nodes,
                profiles: config.profiles,
                clock: config.clock,
                registry,
                state: Mutex::new(state),
                plans,
                wake: Notify::new(),
                requested: AtomicU64::new(0),
                planned: watch::Sender::new(0),
                stop: watch::Sender::new(false),
            }),
        };
        let cycle = Cycle {
            placement: placement.clone(),
            feed,
            power,
            ledger: None,
        };
        Ok((placement, cycle))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change to the state is made whole before anything can panic, so a poisoned
        // lock still guards consistent data.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    fn check_running(&self) -> Result<(), PlacementError> {
        if self.stopping() {
            Err(PlacementError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Asks for a plan and waits until one covering everything changed so far is applied.
    async fn replan(&self) -> Result<(), PlacementError> {
        let ticket = self.inner.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.wake.notify_one();
        let mut planned = self.inner.planned.subscribe();
        let mut stop = self.inner.stop.subscribe();
        tokio::select! {
            done = tokio::time::timeout(PLAN_WAIT, planned.wait_for(|p| *p >= ticket)) => match done {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(PlacementError::ShuttingDown),
                Err(_) => Err(PlacementError::PlanTimeout(PLAN_WAIT)),
            },
            _ = stop.wait_for(|s| *s) => Err(PlacementError::ShuttingDown),
        }
    }

    /// Submits a job (idempotent) and returns its plan.
    pub async fn submit(&self, request: JobRequest) -> Result<PlanView, PlacementError> {
        self.check_running()?;
        let now = self.inner.clock.now();
        let nodes = cluster::current_nodes(&self.inner.static_nodes, &self.inner.registry);
        let view = cluster::view(&nodes, &self.inner.profiles.profiles());
        let spec = request.check(now, &view)?;
        let key = spec.key.clone();
        let submitted = self.state().submit(spec, request.submit_unix_s != 0, now)?;
        if let Submitted::Unchanged(plan) = submitted {
            return Ok(*plan);
        }
        self.replan().await?;
        self.plan(&key)
    }

    /// Cancels a job; whether it was known.
    pub async fn cancel(&self, key: &str, uid: &str) -> Result<bool, PlacementError> {
        self.check_running()?;
        let now = self.inner.clock.now();
        let (known, changed) = self.state().cancel(key, uid, now);
        if changed {
            self.replan().await?;
        }
        Ok(known)
    }

    /// The current plan of one job.
    pub fn plan(&self, key: &str) -> Result<PlanView, PlacementError> {
        self.state()
            .view(key)
            .ok_or_else(|| PlacementError::UnknownJob {
                key: key.to_owned(),
                uid: None,
            })
    }

    /// The current plans of the jobs whose key starts with `prefix`.
    pub fn plans(&self, prefix: &str) -> Vec<PlanView> {
        self.state().views(prefix)
    }

    /// Takes the operator's report of what a job's pods do.
    pub async fn report(
        &self,
        key: &str,
        uid: &str,
        state: ReportedState,
        message: &str,
    ) -> Result<(), PlacementError> {
        self.check_running()?;
        let now = self.inner.clock.now();
        if self.state().report(key, uid, state, message, now)? {
            self.replan().await?;
        }
        Ok(())
    }

    /// The plans of the jobs under `prefix`: all of them now, then every change, each job's
    /// revisions in increasing order. A watcher that falls behind by more than the watch
    /// buffer is sent every current plan again (never a silent gap); the stream ends with
    /// [`PlacementError::ShuttingDown`] when the service stops.
    pub fn watch(&self, prefix: String) -> PlanWatch {
        let buffer = self.inner.settings.watch_buffer.max(1);
        let (tx, rx) = mpsc::channel(buffer);
        // Subscribed before the first snapshot is read, so that no change falls in between.
        let changes = self.inner.plans.subscribe();
        let this = self.clone();
        let span = tracing::info_span!("watch_plans", prefix = %prefix);
        tokio::spawn(this.forward(prefix, changes, tx).instrument(span));
        PlanWatch { rx }
    }

    async fn forward(
        self,
        prefix: String,
        mut changes: broadcast::Receiver<PlanView>,
        tx: mpsc::Sender<Result<PlanView, PlacementError>>,
    ) {
        let mut sent: HashMap<String, u64> = HashMap::new();
        let mut stop = self.inner.stop.subscribe();
        let mut pending: Vec<PlanView> = self.plans(&prefix);
        loop {
            for v in pending.drain(..) {
                if sent.get(&v.key).is_some_and(|r| *r >= v.revision) {
                    continue;
                }
                sent.insert(v.key.clone(), v.revision);
                if tx.send(Ok(v)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(v) if v.key.starts_with(&prefix) => pending.push(v),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "watcher fell behind; sending every plan again");
                        pending = self.plans(&prefix);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = stop.wait_for(|s| *s) => break,
                _ = tx.closed() => return,
            }
        }
        let _ = tx.send(Err(PlacementError::ShuttingDown)).await;
    }

    /// Stops planning; calls in flight and watchers end with [`PlacementError::ShuttingDown`].
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }
}

/// A stream of plans (see [`Placement::watch`]).
#[derive(Debug)]
pub struct PlanWatch {
    rx: mpsc::Receiver<Result<PlanView, PlacementError>>,
}

impl PlanWatch {
    /// The next plan; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Result<PlanView, PlacementError>> {
        self.rx.recv().await
    }

    /// As a `Stream`.
    pub fn into_stream(
        self,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<PlanView, PlacementError>> {
        tokio_stream::wrappers::ReceiverStream::new(self.rx)
    }
}

impl Cycle {
    /// Appends the jobs' metered energy to a ledger through `sink` (see
    /// [`super::ledger_sink`]).
    pub fn with_ledger(mut self, sink: LedgerSink) -> Self {
        self.ledger = Some(sink);
        self
    }

    /// The ledger's counters, if there is a ledger.
    pub fn ledger_counters(&self) -> Option<&super::ledger_sink::LedgerCounters> {
        self.ledger.as_ref().map(LedgerSink::counters)
    }

    /// Plans now, then at every slot boundary and after every change, until shut down.
    pub async fn run(mut self) {
        let inner = Arc::clone(&self.placement.inner);
        let mut stop = inner.stop.subscribe();
        let span = tracing::info_span!("placement_cycle");
        async move {
            let mut power_ticks = tokio::time::interval(inner.settings.power_check);
            power_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            'plans: loop {
                if *stop.borrow() {
                    break;
                }
                let (next, again) = self.plan_once().await;
                if again {
                    continue;
                }
                let woken = loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break 'plans,
                        _ = inner.clock.sleep_until(next) => break false,
                        _ = inner.wake.notified() => break true,
                        // New signals (a provider published, or came back): plan on them.
                        () = self.feed.changed() => break true,
                        _ = power_ticks.tick() => {
                            if self.enforce_power() {
                                // A limit could not be applied: the plan's reason says so.
                                break false;
                            }
                        }
                    }
                };
                if woken {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(inner.settings.debounce) => {}
                    }
                }
            }
            if let Some(ledger) = self.ledger.as_mut() {
                ledger.finish(inner.clock.now()).await;
            }
            tracing::info!("planning stopped");
        }
        .instrument(span)
        .await;
    }

    /// Sends the power limits of the runs in progress to the devices their pods use; returns
    /// whether a job's power-limit failures changed.
    fn enforce_power(&mut self) -> bool {
        let Some(power) = self.power.as_mut() else {
            return false;
        };
        let wall = self.placement.inner.clock.now();
        let runs = self.placement.state().active_runs(wall);
        let failures = power.enforce(&runs);
        self.placement.state().set_power_failures(failures)
    }

    /// Plans once; returns the next slot boundary to plan at, and whether to plan again at
    /// once.
    async fn plan_once(&mut self) -> (DateTime<Utc>, bool) {
        let inner = Arc::clone(&self.placement.inner);
        let s = &inner.settings;
        let wall = inner.clock.now();
        let floor = s.floor(wall);
        let (at, commit) = if wall - floor <= s.start_grace {
            (floor, true)
        } else {
            (floor + s.slot(), false)
        };
        let ticket = inner.requested.load(Ordering::SeqCst);
        let history = (s.history.num_minutes() / i64::from(s.slot_minutes)).max(0) as Slot;
        let grid = SlotGrid {
            start: at - s.slot() * history as i32,
            minutes: s.slot_minutes,
        };
        let fetch_slots =
            history + (s.max_horizon.num_minutes() / i64::from(s.slot_minutes)) as Slot;
        let signals = self.signals(wall, grid, fetch_slots).await;
        let pricer = Pricer {
            grid,
            zones: inner
                .zones
                .iter()
                .filter_map(|z| signals.get(&z.name).map(|k| (z.name.as_str(), (z.pue, k))))
                .collect(),
        };
        let metered = self.placement.state().meter(&inner.registry, &pricer);
        // Older slots can no longer be priced here: what was priced is in the placement store.
        inner.registry.prune_pod_slots(grid.start.timestamp());
        let nodes = cluster::current_nodes(&inner.static_nodes, &inner.registry);
        let profiles = inner.profiles.profiles();
        let taken = self.placement.state().frame_jobs(at, wall);
        let (jobs, running, held) = (taken.queue, taken.running, taken.held);
        let queued = jobs.len();
        let frame = Frame::build(FrameInput {
            settings: s,
            grid,
            now: history,
            zones: &inner.zones,
            nodes: &nodes,
            profiles,
            signals: &signals,
            jobs,
            running: &running,
        });
        let policy = Arc::clone(&inner.policy);
        // A full re-plan of a large queue takes a good part of a second: off the async threads.
        let planned = tokio::task::spawn_blocking(move || {
            let plan = policy.plan(&frame.snapshot());
            (frame, plan)
        })
        .await;
        // The runs in progress get their limits before the plans are published, so a failure
        // already known shows in them.
        self.enforce_power();
        let (changes, again, frame) = match planned {
            Ok((frame, plan)) => {
                tracing::debug!(
                    at = %at, commit, queued, held, metered, starts = plan.starts.len(),
                    intents = plan.intents.len(), rejections = plan.rejections.len(),
                    "planned"
                );
                let mut state = self.placement.state();
                let changes = state.apply(&frame, &plan, commit, wall);
                (changes, state.take_replan(), Some(frame))
            }
            Err(e) => {
                tracing::error!(error = %e, "the planner failed; plans are unchanged");
                (Vec::new(), false, None)
            }
        };
        for c in changes {
            // No watcher is not an error.
            let _ = inner.plans.send(c);
        }
        if !again {
            inner.planned.send_replace(ticket);
        }
        if let Some(ledger) = self.ledger.as_mut() {
            // What closed since is queued; the writer appends it off the async threads, so
            // planning never waits for the ledger.
            let state = self.placement.state();
            ledger.capture(&state.ledger_facts(), frame.as_ref(), &pricer, wall);
            drop(state);
            ledger.flush(wall);
        }
        (if commit { at + s.slot() } else { at }, again)
    }

    /// The zones' signals for this cycle: the refreshers' latest snapshots (or the fixed
    /// rows), cut to what is known at `wall`.
    async fn signals(
        &mut self,
        wall: DateTime<Utc>,
        grid: SlotGrid,
        n: Slot,
    ) -> BTreeMap<String, Known> {
        self.feed.fetch(wall, grid, n).await
    }
}
