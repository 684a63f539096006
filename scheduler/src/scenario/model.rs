//! The validated scenario: every reference resolved to an index, every signal on the slot grid.

use chrono::{DateTime, Utc};

use crate::units::{GramsPerKwh, Hours, MoneyPerTonne, PricePerMwh, Slot, SlotGrid, Watts};

/// A whole scenario, validated.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub grid: SlotGrid,
    /// At slot t the planner may know signals of slots before `t + lookahead_slots`.
    pub lookahead_slots: u32,
    /// Extra work a preemptible job owes for every run after its first.
    pub checkpoint_overhead: Hours,
    pub carbon_price: MoneyPerTonne,
    pub currency: String,
    pub profiles: Vec<Profile>,
    /// Accelerator names, in order of first appearance among the zones' node groups.
    pub accelerators: Vec<String>,
    pub zones: Vec<Zone>,
    /// Nodes named `<zone>-<accelerator>-<i>` as the spec defines.
    pub nodes: Vec<Node>,
    /// Jobs in file order.
    pub jobs: Vec<Job>,
    /// Number of slots every zone has signals for; no run may end after it.
    pub n_slots: Slot,
}

/// Measured per-GPU draw and speed of one workload on one accelerator at each power limit.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// Sorted by power limit, ascending; the last point is full power.
    pub points: Vec<ProfilePoint>,
}

impl Profile {
    /// Index of the full-power point (the highest limit).
    pub fn full_power(&self) -> usize {
        self.points.len() - 1
    }
}

/// One point of a power-limit sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfilePoint {
    pub power_limit: Watts,
    /// Work per hour relative to full power (1.0 at full power).
    pub throughput: f64,
    /// Measured draw per GPU at this limit.
    pub draw: Watts,
}

/// A zone: signals on the slot grid and its power usage effectiveness.
#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    /// Facility energy / IT energy.
    pub pue: f64,
    /// One value per slot, `n_slots` long.
    pub price: Vec<PricePerMwh>,
    pub carbon: Vec<GramsPerKwh>,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub zone: usize,
    pub accelerator: usize,
    pub gpus: u32,
}

/// A training job as submitted.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub submit: DateTime<Utc>,
    pub gpus: u32,
    pub accelerator: usize,
    pub profile: usize,
    /// Hours of running at throughput 1.0.
    pub work: Hours,
    pub deadline: DateTime<Utc>,
    pub preemptible: bool,
    pub price_cap: Option<PricePerMwh>,
    /// The scenario format has no carbon cap (always `None` from files); the planner keeps one
    /// when set.
    pub carbon_cap: Option<GramsPerKwh>,
    pub namespace: String,
}

impl Scenario {
    /// The first slot a job may start in.
    pub fn earliest_slot(&self, job: &Job) -> Slot {
        self.grid.first_slot_at_or_after(job.submit)
    }

    /// The last slot boundary at or before the job's deadline: runs ending after it are late.
    pub fn deadline_slot(&self, job: &Job) -> Slot {
        self.grid.last_boundary_at_or_before(job.deadline)
    }
}
