//! One planning instant, owned: the grid, the zones' known signals, the nodes, the runs in
//! progress and the queue, from which a [`Snapshot`] is lent to the policy exactly as the
//! simulator lends one (signals cut at what is known, the queue in submit order, work left
//! from [`progress`]). Also the signals extended past what is known by the planner's own
//! seasonal estimate, for the plans' cost and carbon estimates.
//!
//! The grid of a frame starts [`Settings::history`] before the planning instant (the seasonal
//! estimate reads the last days), so slot indices are only meaningful within one frame; what
//! outlives a frame (committed runs) is kept in UTC instants.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::Settings;
use super::cluster::{NodeSpec, ZoneSpec, default_profile, profile_accelerator};
use super::feed::Known;
use super::spec::JobSpec;
use crate::planner::context::slots_needed;
use crate::planner::progress;
use crate::planner::{Active, Pending, Snapshot, ZoneView, forecast};
use crate::scenario::{Node, Profile};
use crate::units::{GramsPerKwh, Hours, KgCo2e, Money, PricePerMwh, Slot, SlotGrid, Watts};

const MINUTES_PER_DAY: u32 = 24 * 60;

/// A zone of a frame: only zones with known signals take part.
#[derive(Debug, Clone)]
pub struct FrameZone {
    pub name: String,
    pub pue: f64,
    /// Known values from slot 0 of the frame's grid.
    pub price: Vec<PricePerMwh>,
    pub carbon: Vec<GramsPerKwh>,
    /// Known values, then the seasonal estimate, over slots `0..end`.
    extended_price: Vec<f64>,
    extended_carbon: Vec<f64>,
    pub degraded: Option<String>,
}

/// A job waiting to be planned, as the core hands it over.
#[derive(Debug, Clone)]
pub struct FrameJob {
    pub spec: JobSpec,
    /// The job's spec version, so that a plan for an older spec is not applied.
    pub version: u64,
    pub runs_done: usize,
    /// Work done so far, hours.
    pub done: f64,
}

/// GPUs a run in progress holds, by node name, until `end`.
#[derive(Debug, Clone)]
pub struct FrameRun {
    pub nodes: Vec<(String, u32)>,
    pub end: DateTime<Utc>,
}

/// A queue entry's job.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub key: String,
    pub version: u64,
}

/// Everything one plan is made from.
#[derive(Debug, Clone)]
pub struct Frame {
    pub grid: SlotGrid,
    /// The planning instant.
    pub now: Slot,
    /// No run may end after this slot.
    pub end: Slot,
    pub settings: Settings,
    pub zones: Vec<FrameZone>,
    pub accelerators: Vec<String>,
    pub profiles: Vec<Profile>,
    pub nodes: Vec<Node>,
    pub active: Vec<Active>,
    pub queue: Vec<Pending>,
    /// One per `queue` entry.
    pub entries: Vec<QueueEntry>,
    /// Jobs that could not be queued, with the reason (no profile for them, ...).
    pub refused: Vec<(QueueEntry, String)>,
}

/// What a frame is built from.
#[derive(Debug)]
pub struct FrameInput<'a> {
    pub settings: &'a Settings,
    pub grid: SlotGrid,
    pub now: Slot,
    pub zones: &'a [ZoneSpec],
    pub nodes: &'a [NodeSpec],
    pub profiles: Vec<Profile>,
    pub signals: &'a BTreeMap<String, Known>,
    pub jobs: Vec<FrameJob>,
    pub running: &'a [FrameRun],
}

impl Frame {
    /// Builds the frame.
    pub fn build(input: FrameInput<'_>) -> Self {
        let FrameInput {
            settings,
            grid,
            now,
            zones,
            nodes,
            profiles,
            signals,
            mut jobs,
            running,
        } = input;
        jobs.sort_by(|a, b| {
            a.spec
                .submit
                .cmp(&b.spec.submit)
                .then(a.spec.key.cmp(&b.spec.key))
        });
        let end = extent(settings, &grid, now, &jobs, &profiles);
        let spd = (MINUTES_PER_DAY / grid.minutes) as usize;
        let zones: Vec<FrameZone> = zones
            .iter()
            .filter_map(|z| {
                let k = signals.get(&z.name)?;
                if k.price.is_empty() || k.carbon.is_empty() {
                    tracing::warn!(zone = %z.name, "no signals known: the zone is left out");
                    return None;
                }
                let p: Vec<f64> = k.price.iter().map(|v| v.0).collect();
                let c: Vec<f64> = k.carbon.iter().map(|v| v.0).collect();
                Some(FrameZone {
                    name: z.name.clone(),
                    pue: z.pue,
                    extended_price: forecast::extend(&p, 0, end as usize, spd),
                    extended_carbon: forecast::extend(&c, 0, end as usize, spd),
                    price: k.price.clone(),
                    carbon: k.carbon.clone(),
                    degraded: k.degraded.clone(),
                })
            })
            .collect();
        let mut accelerators: Vec<String> = Vec::new();
        let acc_index = |a: &str, accs: &mut Vec<String>| match accs.iter().position(|x| x == a) {
            Some(i) => i,
            None => {
                accs.push(a.to_owned());
                accs.len() - 1
            }
        };
        let frame_nodes: Vec<Node> = nodes
            .iter()
            .filter_map(|n| {
                let zone = zones.iter().position(|z| z.name == n.zone)?;
                Some(Node {
                    name: n.name.clone(),
                    zone,
                    accelerator: acc_index(&n.accelerator, &mut accelerators),
                    gpus: n.gpus,
                })
            })
            .collect();
        let node_index: BTreeMap<&str, usize> = frame_nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let now_instant = grid.instant(now);
        let mut active = Vec::new();
        for r in running.iter().filter(|r| r.end > now_instant) {
            let end = grid.first_slot_at_or_after(r.end);
            for (name, gpus) in &r.nodes {
                // A node that left (or whose zone has no signals) holds nothing we plan on.
                if let Some(&node) = node_index.get(name.as_str()) {
                    active.push(Active {
                        node,
                        gpus: *gpus,
                        end,
                    });
                }
            }
        }
        let mut frame = Frame {
            grid,
            now,
            end,
            settings: settings.clone(),
            zones,
            accelerators,
            profiles,
            nodes: frame_nodes,
            active,
            queue: Vec::new(),
            entries: Vec::new(),
            refused: Vec::new(),
        };
        for job in jobs {
            let entry = QueueEntry {
                key: job.spec.key.clone(),
                version: job.version,
            };
            match frame.pending(&job) {
                Ok(p) => {
                    frame.queue.push(p);
                    frame.entries.push(entry);
                }
                Err(reason) => frame.refused.push((entry, reason)),
            }
        }
        frame
    }

    /// The accelerator and profile (index) a job runs with, or why it has none.
    pub fn resolve(&self, spec: &JobSpec) -> Result<(String, usize), String> {
        let named = match &spec.profile {
            Some(name) => Some(
                self.profiles
                    .iter()
                    .position(|p| p.name.eq_ignore_ascii_case(name))
                    .ok_or_else(|| format!("the power profile `{name}` is no longer known"))?,
            ),
            None => None,
        };
        let accelerator = match (&spec.accelerator, named) {
            (Some(a), _) => a.clone(),
            (None, Some(p)) => profile_accelerator(&self.profiles[p]).ok_or_else(|| {
                format!(
                    "the profile `{}` names no accelerator",
                    self.profiles[p].name
                )
            })?,
            (None, None) => self
                .roomiest_accelerator()
                .ok_or_else(|| "no accelerator in the cluster has a power profile".to_owned())?,
        };
        let profile = match named {
            Some(p) => p,
            None => default_profile(&self.profiles, &accelerator)
                .ok_or_else(|| format!("no power profile for accelerator {accelerator}"))?,
        };
        Ok((accelerator, profile))
    }

    /// The queue entry of a job, or why it cannot be planned.
    fn pending(&mut self, job: &FrameJob) -> Result<Pending, String> {
        let spec = &job.spec;
        let (accelerator, profile) = self.resolve(spec)?;
        let ai = match self.accelerators.iter().position(|a| *a == accelerator) {
            Some(i) => i,
            None => {
                // No node of it (now): the policy says so in its own words.
                self.accelerators.push(accelerator);
                self.accelerators.len() - 1
            }
        };
        let s = &self.settings;
        Ok(Pending {
            gpus: spec.gpus(),
            accelerator: ai,
            profile,
            earliest: self.grid.first_slot_at_or_after(spec.submit),
            deadline: self.grid.last_boundary_at_or_before(spec.deadline),
            preemptible: spec.preemptible,
            price_cap: spec.price_cap,
            carbon_cap: spec.carbon_cap,
            carbon_price: spec.carbon_price,
            work_left: progress::work_left(
                spec.work,
                s.checkpoint_overhead,
                job.runs_done,
                job.done,
            ),
            runs_done: job.runs_done as u32,
        })
    }

    /// For a job that names neither accelerator nor profile: the accelerator with the most
    /// GPUs that has a profile.
    fn roomiest_accelerator(&self) -> Option<String> {
        let mut gpus: BTreeMap<&str, u32> = BTreeMap::new();
        for n in &self.nodes {
            *gpus
                .entry(self.accelerators[n.accelerator].as_str())
                .or_default() += n.gpus;
        }
        gpus.into_iter()
            .filter(|(a, _)| default_profile(&self.profiles, a).is_some())
            .max_by_key(|(_, g)| *g)
            .map(|(a, _)| a.to_owned())
    }

    /// The policy's view.
    pub fn snapshot(&self) -> Snapshot<'_> {
        let s = &self.settings;
        Snapshot {
            now: self.now,
            end: self.end,
            slot_hours: self.grid.slot_hours(),
            checkpoint_overhead: s.checkpoint_overhead,
            carbon_price: s.carbon_price,
            currency: &s.currency,
            lookahead: (s.lookahead.num_minutes() / i64::from(self.grid.minutes)).max(0) as Slot,
            zones: self
                .zones
                .iter()
                .map(|z| ZoneView {
                    name: &z.name,
                    pue: z.pue,
                    price: &z.price,
                    carbon: &z.carbon,
                })
                .collect(),
            profiles: &self.profiles,
            nodes: &self.nodes,
            active: &self.active,
            queue: &self.queue,
        }
    }

    /// The zone called `name`.
    pub fn zone(&self, name: &str) -> Option<usize> {
        self.zones.iter().position(|z| z.name == name)
    }

    /// The slot an instant falls in (clamped to the grid).
    pub fn slot_of(&self, t: DateTime<Utc>) -> Slot {
        self.grid.last_boundary_at_or_before(t)
    }

    /// Energy cost and emissions of `gpus` GPUs drawing `draw` each over slots `a..b` of zone
    /// `z` (PUE applied; estimated values past what is known), and whether any slot of it is
    /// past what is known.
    pub fn window(
        &self,
        z: usize,
        gpus: u32,
        draw: Watts,
        a: Slot,
        b: Slot,
    ) -> (Money, KgCo2e, bool) {
        let zone = &self.zones[z];
        let b = b.min(self.end) as usize;
        let a = (a as usize).min(b);
        let kwh = Watts(draw.0 * f64::from(gpus) * zone.pue) * self.grid.slot_hours();
        let mut cost = Money(0.0);
        let mut carbon = KgCo2e(0.0);
        for s in a..b {
            cost += kwh * PricePerMwh(zone.extended_price[s]);
            carbon += kwh * GramsPerKwh(zone.extended_carbon[s]);
        }
        (
            cost,
            carbon,
            a < b && b > zone.price.len().min(zone.carbon.len()),
        )
    }

    /// The end of what is known of zone `z`'s signals.
    pub fn known_until(&self, z: usize) -> DateTime<Utc> {
        let zone = &self.zones[z];
        self.grid
            .instant(zone.price.len().min(zone.carbon.len()) as Slot)
    }

    /// Slots a job needs for `work` at `throughput`.
    pub fn slots_for(&self, work: Hours, throughput: f64) -> Slot {
        slots_needed(work.0, throughput, self.grid.slot_hours().0) as Slot
    }
}

/// The frame's end: the horizon, or further where a queued job's deadline and length need it,
/// but never past the longest horizon the signals were fetched for.
fn extent(
    settings: &Settings,
    grid: &SlotGrid,
    now: Slot,
    jobs: &[FrameJob],
    profiles: &[Profile],
) -> Slot {
    let per_slot = i64::from(grid.minutes);
    let slots = |d: chrono::Duration| (d.num_minutes() / per_slot).max(1) as Slot;
    let slowest = profiles
        .iter()
        .flat_map(|p| p.points.iter().map(|q| q.throughput))
        .fold(1.0, f64::min);
    let needed = jobs
        .iter()
        .map(|j| {
            let dl = grid
                .last_boundary_at_or_before(j.spec.deadline)
                .saturating_sub(now);
            dl + slots_needed(j.spec.work.0, slowest, grid.slot_hours().0) as Slot
        })
        .max()
        .unwrap_or(0);
    now + needed
        .max(slots(settings.horizon))
        .min(slots(settings.max_horizon))
}
