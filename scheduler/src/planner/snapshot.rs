//! The planner's input and output.

use crate::scenario::{Node, Profile};
use crate::units::{GramsPerKwh, Hours, Money, MoneyPerTonne, PricePerMwh, Slot};

/// Everything a policy may know at instant `now`.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    /// The injected clock: the slot whose start is now.
    pub now: Slot,
    /// No run may end after this slot (the end of the signal data).
    pub end: Slot,
    pub slot_hours: Hours,
    pub checkpoint_overhead: Hours,
    pub carbon_price: MoneyPerTonne,
    /// Currency of prices and objectives, for messages.
    pub currency: &'a str,
    /// Lookahead in slots: signals are known up to `now + lookahead` (as the scenario says).
    pub lookahead: Slot,
    pub zones: Vec<ZoneView<'a>>,
    pub profiles: &'a [Profile],
    pub nodes: &'a [Node],
    /// Runs in progress, one entry per node they hold (they started before `now`).
    pub active: &'a [Active],
    /// Jobs submitted by `now` that are neither running nor finished.
    pub queue: &'a [Pending],
}

impl Snapshot<'_> {
    /// The first slot whose signals are not known (the same for every zone).
    pub fn known_until(&self) -> Slot {
        self.zones
            .iter()
            .map(|z| z.price.len() as Slot)
            .min()
            .unwrap_or(self.now)
    }
}

/// A zone's known signals: slots `0..known_until`, history included.
#[derive(Debug, Clone, Copy)]
pub struct ZoneView<'a> {
    pub name: &'a str,
    pub pue: f64,
    pub price: &'a [PricePerMwh],
    pub carbon: &'a [GramsPerKwh],
}

/// GPUs a run in progress holds on one node until `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    pub node: usize,
    pub gpus: u32,
    pub end: Slot,
}

/// A queued job and its progress.
#[derive(Debug, Clone)]
pub struct Pending {
    pub gpus: u32,
    pub accelerator: usize,
    pub profile: usize,
    /// First slot it may run in.
    pub earliest: Slot,
    /// Runs ending after this slot are late.
    pub deadline: Slot,
    pub preemptible: bool,
    pub price_cap: Option<PricePerMwh>,
    /// Highest carbon intensity any slot of its runs may have (gCO2e/kWh).
    pub carbon_cap: Option<GramsPerKwh>,
    /// Its own carbon price, where it has one (the live cycle passes the one its EnergyPolicy
    /// sets): its objective weighs emissions at this price instead of the snapshot's.
    pub carbon_price: Option<MoneyPerTonne>,
    /// Work still owed if its next run is its last (overhead of that run included).
    pub work_left: Hours,
    /// Runs it has had so far.
    pub runs_done: u32,
}

/// What a policy decided.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Runs that start now.
    pub starts: Vec<Start>,
    /// Where each other queued job is expected to go (for status displays).
    pub intents: Vec<Intent>,
    /// Jobs that cannot be placed, with the reason.
    pub rejections: Vec<Rejection>,
}

/// A run starting now.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// Index into `Snapshot::queue`.
    pub pending: usize,
    pub zone: usize,
    /// Index of the profile point (power limit).
    pub point: usize,
    /// Exclusive end slot.
    pub end: Slot,
    /// (node index, GPUs on it).
    pub nodes: Vec<(usize, u32)>,
}

/// A tentative placement of a job that does not start now.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub pending: usize,
    pub start: Slot,
    pub zone: usize,
    pub point: usize,
    /// Estimated objective (energy cost + carbon price × emissions) of the whole remaining job.
    pub objective: Money,
    /// The nodes reserved for its first run in this plan, (node index, GPUs); tentative, and
    /// empty where no one set of nodes holds the whole run.
    pub nodes: Vec<(usize, u32)>,
}

/// A job the policy gives up on.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub pending: usize,
    pub reason: String,
}
