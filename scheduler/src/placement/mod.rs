//! The live planning cycle behind the placement API (`offpeak serve`): the operator submits
//! jobs, the cycle plans them with the same policy and the same kind of snapshot as
//! `offpeak simulate`, every slot and after every change, and publishes each job's plan.
//!
//! Layout:
//! - [`clock`]: the injected clock ([`SystemClock`], [`ManualClock`] for tests);
//! - [`spec`]: a submitted job, checked field by field ([`JobRequest`] -> [`JobSpec`]);
//! - [`cluster`]: zones, nodes (configured, overlaid by the agents' registry) and power
//!   profiles ([`ProfileSource`]);
//! - [`feed`]: the zones' signals as known now, from provider chains or CSV rows;
//! - [`refreshers`]: one signal refresher task per zone of the provider chains, on the
//!   placement's clock, whose latest snapshots the feed reads;
//! - [`frame`]: one planning instant, owned, lending the policy its [`Snapshot`];
//! - [`state`]: the jobs, their committed runs and their plans; applying a policy's
//!   plan (runs that start are committed and never moved); holds;
//! - [`budget`]: the monthly budget rule and the user's hold, in words;
//! - [`metering`]: a job's energy as the agents metered it on its worker pods, priced per
//!   zone and slot;
//! - [`ledger_sink`]: that energy appended to the ledger once each slot is closed, with the
//!   counterfactual of each job that succeeded (`offpeak serve --ledger`);
//! - [`power`]: power limits sent to the devices a running job's pods use;
//! - `view`: a job's plan as published: phase, next run, reason, estimates of cost, carbon
//!   and saving, metered energy, degraded signals;
//! - [`store`]: committed runs, revisions, metered energy and restarts on SQLite;
//! - [`cycle`]: [`Placement`], the shared handle (submit, cancel, get, watch, report), and
//!   the task that re-plans at every slot boundary and, debounced, after every change;
//! - [`grpc`]: the tonic `PlacementService` over [`Placement`];
//! - [`config`]: the `placement` YAML file of `offpeak serve --placement-config`.
//!
//! [`Snapshot`]: crate::planner::Snapshot

pub mod budget;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod cycle;
pub mod feed;
pub mod frame;
pub mod grpc;
pub mod ledger_sink;
pub mod metering;
pub mod power;
pub mod refreshers;
pub mod spec;
pub mod state;
pub mod store;
mod view;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use thiserror::Error;

pub use clock::{Clock, ManualClock, SystemClock};
pub use cluster::{NodeSpec, ProfileSource, StaticProfiles, ZoneSpec};
pub use cycle::{Cycle, Placement, PlanWatch};
pub use feed::{SignalFeed, TableFeed};
pub use spec::{JobRequest, JobSpec};

use crate::planner::PolicyKind;
use crate::scenario::Profile;
pub use crate::scenario::SignalRows;
use crate::units::{Hours, KgCo2e, KilowattHours, Money, MoneyPerTonne, Watts};

/// How the live cycle plans: what a scenario's `scenario.yaml` says for a replay.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Slot length; divides a day.
    pub slot_minutes: u32,
    /// How far ahead plans reach at least.
    pub horizon: Duration,
    /// How far ahead they may reach for a job whose deadline lies further.
    pub max_horizon: Duration,
    /// Signals kept before now, for the seasonal estimate past what is known.
    pub history: Duration,
    /// How far ahead published signals usually reach (a day-ahead market: 24 h); a capped run
    /// longer than what is known but within this waits for the publication.
    pub lookahead: Duration,
    /// Extra work a preemptible job owes for every run after its first.
    pub checkpoint_overhead: Hours,
    pub carbon_price: MoneyPerTonne,
    pub currency: String,
    pub policy: PolicyKind,
    /// Changes arriving within this time of each other are planned together.
    pub debounce: std::time::Duration,
    /// A change planned within this time after a slot boundary may still start runs at that
    /// boundary; later, the plan is for the next boundary.
    pub start_grace: Duration,
    /// Finished jobs are forgotten this long after they end.
    pub done_retention: Duration,
    /// Plan changes a watcher may fall behind by before it is sent a fresh full snapshot.
    pub watch_buffer: usize,
    /// How often the power limits of running jobs are checked against the devices their pods
    /// use (and the answers of the agents read), between planning cycles.
    pub power_check: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            // Day-ahead markets settle in 15-minute products (EPEX since 2025).
            slot_minutes: 15,
            // A week covers the deadlines of nearly all training jobs; longer ones extend it.
            horizon: Duration::days(7),
            // A month: beyond it the seasonal estimate says little and the plan's arrays grow.
            max_horizon: Duration::days(31),
            // What the planner's seasonal estimate reads.
            history: Duration::days(crate::planner::forecast::SEASONAL_DAYS as i64),
            // Day-ahead prices are published for the next day.
            lookahead: Duration::hours(24),
            checkpoint_overhead: Hours(0.0),
            carbon_price: MoneyPerTonne(0.0),
            currency: "USD".to_owned(),
            policy: PolicyKind::Offpeak,
            // The operator re-submits every job after a restart in one burst: a few tens of
            // milliseconds gathers it into one plan, and no caller notices the wait.
            debounce: std::time::Duration::from_millis(50),
            // Starting a minute late is better than waiting a whole slot.
            start_grace: Duration::seconds(60),
            // Long enough for the operator to read the final plan, even after a restart.
            done_retention: Duration::hours(24),
            // Far more than one cycle's changes for a watcher reading normally.
            watch_buffer: 1024,
            // Agents refresh their GPU -> pod attribution every few seconds; a limit reaching a
            // pod's devices within seconds of its first sample costs nothing worth saving.
            power_check: std::time::Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// One slot.
    pub fn slot(&self) -> Duration {
        Duration::minutes(i64::from(self.slot_minutes))
    }

    /// The slot boundary at or before `t` (slots counted from the Unix epoch, so they line up
    /// with hours and days).
    pub fn floor(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let s = self.slot().num_seconds().max(1);
        let ts = t.timestamp();
        DateTime::<Utc>::from_timestamp(ts - ts.rem_euclid(s), 0).unwrap_or(t)
    }

    /// The slot boundary at or after `t`.
    pub fn ceil(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let f = self.floor(t);
        if f == t { f } else { f + self.slot() }
    }
}

/// Everything the placement service needs.
#[derive(Debug, Clone)]
pub struct PlacementConfig {
    pub settings: Settings,
    pub zones: Vec<ZoneSpec>,
    /// Nodes known without their agents (so that jobs can be planned before agents connect).
    pub nodes: Vec<NodeSpec>,
    pub signals: SignalFeed,
    pub profiles: Arc<dyn ProfileSource>,
    pub clock: Arc<dyn Clock>,
    /// The SQLite file committed runs are kept in; `None`: in memory.
    pub store: Option<PathBuf>,
}

impl PlacementConfig {
    /// No zones, nodes, profiles or signals yet, default settings, in memory.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            settings: Settings::default(),
            zones: Vec::new(),
            nodes: Vec::new(),
            signals: SignalFeed::Table(TableFeed::new(None)),
            profiles: Arc::new(StaticProfiles::default()),
            clock,
            store: None,
        }
    }

    /// Adds a zone.
    pub fn with_zone(mut self, name: &str, pue: f64) -> Self {
        self.zones.push(ZoneSpec {
            name: name.to_owned(),
            pue,
        });
        self
    }

    /// Adds `count` nodes of `gpus` accelerators each, named `<zone>-<accelerator>-<i>` as in
    /// a scenario.
    pub fn with_nodes(mut self, zone: &str, accelerator: &str, gpus: u32, count: u32) -> Self {
        let accelerator = spec::accelerator_name(accelerator);
        let have = self
            .nodes
            .iter()
            .filter(|n| n.zone == zone && n.accelerator == accelerator)
            .count();
        for i in have..have + count as usize {
            self.nodes.push(NodeSpec {
                name: format!("{zone}-{accelerator}-{i}"),
                zone: zone.to_owned(),
                accelerator: accelerator.clone(),
                gpus,
            });
        }
        self
    }

    /// Adds a profile to a static profile source (replacing any other source).
    pub fn with_profile(mut self, profile: Profile) -> Self {
        let mut all = self.profiles.profiles();
        all.push(profile);
        self.profiles = Arc::new(StaticProfiles(all));
        self
    }

    pub fn with_signals(mut self, feed: TableFeed) -> Self {
        self.signals = SignalFeed::Table(feed);
        self
    }

    pub fn with_store(mut self, path: impl Into<PathBuf>) -> Self {
        self.store = Some(path.into());
        self
    }

    pub fn with_settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }
}

/// A job's plan phase (the wire contract's `PlanPhase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Queued; the plan holds its tentative placement, if any.
    Planned,
    /// Its workers should be running now.
    Run,
    /// It ran before and should now be stopped (checkpoint and wait).
    Suspend,
    /// It cannot be placed (see the reason).
    Rejected,
    /// Finished, failed or cancelled.
    Done,
}

/// A job's current plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanView {
    pub key: String,
    pub uid: String,
    pub phase: Phase,
    /// Start and end of the current or next run, if any.
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub zone: String,
    pub nodes: Vec<(String, u32)>,
    pub power_limit: Option<Watts>,
    /// Of the whole job: runs done and planned, at known and estimated signals.
    pub estimated_cost: Money,
    pub currency: String,
    pub estimated_carbon: KgCo2e,
    /// Against running it at full power from its submission, in the same zone.
    pub estimated_saving: Money,
    pub signals_degraded: bool,
    pub reason: String,
    /// Increases with every change of this job's plan (across restarts too, with a store).
    pub revision: u64,
    /// What the job's pods have used so far, as the node agents metered it.
    pub metered: Metered,
}

/// Energy metered on a job's pods, and what it cost where and when it was used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metered {
    /// IT energy (before PUE).
    pub energy: KilowattHours,
    /// At the price of the zone and slot it was metered in, PUE applied.
    pub cost: Money,
    /// At the carbon intensity of the zone and slot it was metered in, PUE applied.
    pub carbon: KgCo2e,
}

/// What the operator says a job's pods are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedState {
    Starting,
    Running,
    Suspended,
    Succeeded,
    Failed,
}

/// A placement operation that failed; each variant is named after the operation.
#[derive(Debug, Error)]
pub enum PlacementError {
    #[error("submitting job {key:?}: `{field}`: {reason}")]
    InvalidSpec {
        key: String,
        field: &'static str,
        reason: String,
    },
    #[error("finding job {key:?}: no such job{}", uid.as_ref().map(|u| format!(" with uid {u:?}")).unwrap_or_default())]
    UnknownJob { key: String, uid: Option<String> },
    #[error("reporting the state of job {key:?}: the state is unspecified")]
    InvalidReport { key: String },
    #[error("the scheduler is shutting down; retry against the next one")]
    ShuttingDown,
    #[error("waiting for the plan: no planning cycle finished within {0:?}")]
    PlanTimeout(std::time::Duration),
    #[error("opening the placement store {path}")]
    OpenStore {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("reading the placement store")]
    ReadStore(#[source] rusqlite::Error),
    #[error("writing the placement store")]
    WriteStore(#[source] rusqlite::Error),
    #[error("the placement store holds a bad record for job {key:?}: {reason}")]
    CorruptStore { key: String, reason: String },
    #[error("building the signal providers")]
    BuildSignals(#[source] crate::signals::SignalError),
    #[error("loading the placement configuration: {0}")]
    LoadConfig(#[source] config::ConfigFileError),
}
