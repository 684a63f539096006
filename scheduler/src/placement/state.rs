//! The live jobs, their committed runs and their plans, and how a policy's plan is applied to
//! them. Synchronous and free of transports: the cycle drives it, under one lock.
//!
//! A job's life: submitted (queued), planned (a tentative start, zone, nodes and power limit,
//! or a rejection), started (its run is committed: written to the store, then fixed whole),
//! and, for a preemptible job whose run ended short of its work, queued again (SUSPEND until
//! its next run starts). It ends when the operator reports success or failure, or on
//! cancellation; a run in progress then ends at the next slot boundary, freeing its nodes.
//! A job whose planned runs are over but which is not reported finished shows RUN (its pods
//! are not stopped by a plan that merely ran out), and, while the operator reports it running,
//! keeps its nodes one slot at a time.
//!
//! Holds: a job held by its user (`held`) is kept but left out of planning (no capacity is
//! reserved for it); a run it has in progress ends at the next slot boundary, and a
//! non-preemptible job starts over when it is released (the work of its cut run is lost). A
//! job whose namespace's monthly budget its estimate would overrun is held the same way
//! (`placement::budget`) until the month's spending or the budget changes.
//!
//! Metering: each cycle brings every job's metered energy up to what the node agents reported
//! for its worker pods (`metering`), and keeps the month-to-date cost of each namespace. That
//! side (metering, the budget rule, power-limit failures) is in `state/accounting.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Duration, Utc};

mod accounting;

use super::frame::{Frame, FrameJob, FrameRun};
use super::metering::{self, JobMetered};
use super::spec::JobSpec;
use super::store::{CommittedRun, Store};
use super::view::view_of;
use super::{Phase, PlacementError, PlanView, ReportedState, Settings};
use crate::planner::Plan;
use crate::planner::progress::{self, check_start};
use crate::units::{Hours, KgCo2e, Money, Slot};

/// Runs that ended longer ago than this are dropped from the store at start-up: no job waits
/// a month between two of its runs (the longest planning horizon is 31 days).
const PRUNE_AFTER: Duration = Duration::days(45);

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ending {
    Succeeded,
    Failed(String),
    Cancelled,
}

#[derive(Debug)]
pub(super) struct LiveJob {
    pub(super) spec: JobSpec,
    /// Raised on every spec change, so that a plan made for an older spec is not applied.
    version: u64,
    pub(super) runs: Vec<CommittedRun>,
    /// The first of `runs` whose work counts (a non-preemptible job held after it started
    /// starts over).
    pub(super) restart: usize,
    pub(super) ending: Option<(Ending, DateTime<Utc>)>,
    reported: Option<ReportedState>,
    pub(super) view: PlanView,
    /// Energy metered on its pods, per zone and slot.
    pub(super) metered: JobMetered,
    /// Held for its namespace's budget, with the estimate it was held with.
    budget_hold: Option<Money>,
    /// Power limits of its run in progress that could not be applied, one line per device.
    pub(super) power_failures: Vec<String>,
}

impl LiveJob {
    /// The runs whose work counts towards the job.
    pub(super) fn progress_runs(&self) -> &[CommittedRun] {
        &self.runs[self.restart.min(self.runs.len())..]
    }

    /// Work done by its committed runs (those that count), hours.
    pub(super) fn done(&self) -> f64 {
        self.progress_runs().iter().map(|r| r.work_done.0).sum()
    }
}

/// What a planning frame takes from the state.
#[derive(Debug, Default)]
pub struct FrameJobs {
    /// Jobs to plan.
    pub queue: Vec<FrameJob>,
    /// Runs holding nodes.
    pub running: Vec<FrameRun>,
    /// How many jobs were left out because they are held.
    pub held: usize,
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// The same job as before: nothing to plan; its current plan.
    Unchanged(Box<PlanView>),
    /// New or changed: it needs planning.
    Changed,
}

/// What the policy said about one queued job in one plan.
#[derive(Debug, Clone)]
pub(super) enum Decision {
    /// Its run was committed.
    Started,
    /// Its next run (relative to the frame's grid).
    Next {
        start: Slot,
        zone: usize,
        point: usize,
        nodes: Vec<(usize, u32)>,
    },
    Rejected(String),
    /// A start that could not be made (refused by the checks or not recorded).
    NotStarted(String),
    /// Held (by its user, or by its namespace's budget): not planned.
    Held(String),
}

/// The live state.
#[derive(Debug)]
pub struct State {
    settings: Settings,
    jobs: BTreeMap<String, LiveJob>,
    /// Committed runs whose job has not been submitted since a restart: they hold their nodes
    /// all the same, and join their job when it is submitted again.
    orphans: Vec<CommittedRun>,
    /// Metered energy and restarts of jobs not submitted since a restart, by (key, uid).
    orphan_metered: HashMap<(String, String), JobMetered>,
    orphan_restarts: HashMap<(String, String), usize>,
    /// Metered cost per (namespace, UTC month start, Unix seconds), every job's, finished or
    /// forgotten ones too.
    month_cost: BTreeMap<(String, i64), f64>,
    /// Jobs held at the last frame: key -> (spec version, reason).
    held: HashMap<String, (u64, String)>,
    /// Set when a plan held a job for its budget: the capacity it was planned on is free, so
    /// the cycle plans again at once.
    replan: bool,
    store: Store,
    next_version: u64,
}

impl State {
    /// Opens the store and takes up the runs it holds.
    pub fn open(
        settings: Settings,
        store: Option<&Path>,
        now: DateTime<Utc>,
    ) -> Result<Self, PlacementError> {
        let mut store = Store::open(store)?;
        let pruned = store.prune(now - PRUNE_AFTER)?;
        let orphans = store.runs()?;
        let mut orphan_metered: HashMap<(String, String), JobMetered> = HashMap::new();
        let mut month_cost: BTreeMap<(String, i64), f64> = BTreeMap::new();
        let metered = store.metered()?;
        let slots = metered.len();
        for m in metered {
            let month = metering::month_start(m.slot_start).timestamp();
            *month_cost
                .entry((metering::namespace_of(&m.key).to_owned(), month))
                .or_default() += m.cost;
            orphan_metered
                .entry((m.key.clone(), m.uid.clone()))
                .or_default()
                .insert((m.zone.clone(), m.slot_start.timestamp()), m);
        }
        let orphan_restarts = store
            .restarts()?
            .into_iter()
            .map(|(k, u, first)| ((k, u), first))
            .collect();
        tracing::info!(
            runs = orphans.len(),
            metered_slots = slots,
            pruned,
            store = %store.path().map_or_else(|| "memory".into(), |p| p.display().to_string()),
            "placement store opened"
        );
        Ok(Self {
            settings,
            jobs: BTreeMap::new(),
            orphans,
            orphan_metered,
            orphan_restarts,
            month_cost,
            held: HashMap::new(),
            replan: false,
            store,
            next_version: 0,
        })
    }

    fn bump(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// Adds or updates a job. Submitting the same spec again changes nothing; a changed spec
    /// is planned again (its committed runs stay); a new uid under the same key replaces the
    /// old job, whose run in progress ends at the next slot boundary. `submit_given`: whether
    /// the submit time came from the request (else a known job keeps its own).
    pub fn submit(
        &mut self,
        mut spec: JobSpec,
        submit_given: bool,
        now: DateTime<Utc>,
    ) -> Result<Submitted, PlacementError> {
        let version = self.bump();
        let revision = match self.jobs.get_mut(&spec.key) {
            Some(job) if job.spec.uid == spec.uid => {
                if !submit_given {
                    spec.submit = job.spec.submit;
                }
                if job.spec == spec || job.ending.is_some() {
                    return Ok(Submitted::Unchanged(Box::new(job.view.clone())));
                }
                let newly_held = spec.held && !job.spec.held;
                job.spec = spec;
                job.version = version;
                let key = job.spec.key.clone();
                if newly_held {
                    self.hold_runs(&key, now);
                }
                return Ok(Submitted::Changed);
            }
            Some(old) => {
                let cut = cut_runs(&self.settings, &mut old.runs, now);
                let revision = old.view.revision;
                self.record_cut(&cut);
                revision
            }
            None => self.store.revision(&spec.key)?,
        };
        let (mine, mut others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|r| r.key == spec.key && r.uid == spec.uid);
        let id = (spec.key.clone(), spec.uid.clone());
        let metered = self.orphan_metered.remove(&id).unwrap_or_default();
        let restart = self.orphan_restarts.remove(&id).unwrap_or(0);
        // Runs of an older object of the same name: it was deleted, so are its pods.
        let stale: Vec<CommittedRun> = others
            .iter_mut()
            .filter(|r| r.key == spec.key)
            .flat_map(|r| cut_runs(&self.settings, std::slice::from_mut(r), now))
            .collect();
        self.orphans = others;
        self.record_cut(&stale);
        let view = PlanView {
            key: spec.key.clone(),
            uid: spec.uid.clone(),
            phase: Phase::Planned,
            start: None,
            end: None,
            zone: String::new(),
            nodes: Vec::new(),
            power_limit: None,
            estimated_cost: Money(0.0),
            currency: self.settings.currency.clone(),
            estimated_carbon: KgCo2e(0.0),
            estimated_saving: Money(0.0),
            signals_degraded: false,
            reason: "waiting for the first plan".to_owned(),
            // A new job's plan is a change, even before it is planned.
            revision: revision + 1,
            metered: metering::totals(&metered),
        };
        let key = spec.key.clone();
        let held = spec.held;
        self.jobs.insert(
            key.clone(),
            LiveJob {
                spec,
                version,
                runs: mine,
                restart,
                ending: None,
                reported: None,
                view,
                metered,
                budget_hold: None,
                power_failures: Vec::new(),
            },
        );
        if held {
            self.hold_runs(&key, now);
        }
        Ok(Submitted::Changed)
    }

    /// A job its user holds: its run in progress ends at the next boundary; a non-preemptible
    /// job that started will start over when released.
    fn hold_runs(&mut self, key: &str, now: DateTime<Utc>) {
        let Some(job) = self.jobs.get_mut(key) else {
            return;
        };
        let cut = cut_runs(&self.settings, &mut job.runs, now);
        let restart = (!job.spec.preemptible && job.restart < job.runs.len())
            .then(|| (job.spec.key.clone(), job.spec.uid.clone(), job.runs.len()));
        if let Some((_, _, first)) = &restart {
            job.restart = *first;
        }
        self.record_cut(&cut);
        if let Some((key, uid, first)) = restart {
            tracing::info!(job = %key, first_run = first, "held after it started: it will start over");
            if let Err(e) = self.store.write_restart(&key, &uid, first) {
                // A restart would count the lost run's work as done; the run was cut either way.
                tracing::warn!(error = %e, "could not record a job's restart");
            }
        }
    }

    /// Cancels a job (and any runs of it still waiting for a re-submission); returns whether
    /// the key (with that uid, when one is given) was known, and whether anything changed.
    pub fn cancel(&mut self, key: &str, uid: &str, now: DateTime<Utc>) -> (bool, bool) {
        let matches = |k: &str, u: &str| k == key && (uid.is_empty() || u == uid);
        let mut known = false;
        let mut changed = false;
        let mut cut = Vec::new();
        if let Some(job) = self.jobs.get_mut(key)
            && matches(key, &job.spec.uid)
        {
            known = true;
            if job.ending.is_none() {
                job.ending = Some((Ending::Cancelled, now));
                cut.extend(cut_runs(&self.settings, &mut job.runs, now));
                changed = true;
            }
        }
        let mut orphans = std::mem::take(&mut self.orphans);
        for r in orphans.iter_mut().filter(|r| matches(&r.key, &r.uid)) {
            known = true;
            cut.extend(cut_runs(&self.settings, std::slice::from_mut(r), now));
        }
        self.orphans = orphans;
        changed |= !cut.is_empty();
        self.record_cut(&cut);
        (known, changed)
    }

    /// Takes a report of what the job's pods do; returns whether the plan may change.
    pub fn report(
        &mut self,
        key: &str,
        uid: &str,
        state: ReportedState,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, PlacementError> {
        let unknown = || PlacementError::UnknownJob {
            key: key.to_owned(),
            uid: (!uid.is_empty()).then(|| uid.to_owned()),
        };
        let job = self.jobs.get_mut(key).ok_or_else(unknown)?;
        if !uid.is_empty() && job.spec.uid != uid {
            return Err(unknown());
        }
        if job.ending.is_some() {
            return Ok(false);
        }
        let ending = match state {
            ReportedState::Succeeded => Ending::Succeeded,
            ReportedState::Failed => Ending::Failed(message.to_owned()),
            _ => {
                let changed = job.reported != Some(state);
                job.reported = Some(state);
                return Ok(changed);
            }
        };
        job.ending = Some((ending, now));
        job.reported = Some(state);
        let cut = cut_runs(&self.settings, &mut job.runs, now);
        self.record_cut(&cut);
        Ok(true)
    }

    /// A shortened run is recorded so that a restart does not hold its nodes to its old end;
    /// if that fails, a restart holds them too long, which is safe, so it is only logged.
    fn record_cut(&mut self, cut: &[CommittedRun]) {
        if let Err(e) = self.store.write(cut, &[]) {
            tracing::warn!(error = %e, "could not record a shortened run");
        }
    }

    /// The current plan of `key`.
    pub fn view(&self, key: &str) -> Option<PlanView> {
        self.jobs.get(key).map(|j| j.view.clone())
    }

    /// The current plans of the keys starting with `prefix`, in key order.
    pub fn views(&self, prefix: &str) -> Vec<PlanView> {
        self.jobs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, j)| j.view.clone())
            .collect()
    }

    /// Whether a job waits to be planned at instant `at` (it is not finished, not running
    /// through `at`, and its planned work is not all done).
    fn queued(&self, job: &LiveJob, at: DateTime<Utc>) -> bool {
        let runs = job.progress_runs();
        job.ending.is_none()
            && !job.runs.iter().any(|r| r.end > at)
            && (runs.is_empty()
                || (job.spec.preemptible
                    && !progress::is_done(
                        job.spec.work,
                        self.settings.checkpoint_overhead,
                        runs.len(),
                        job.done(),
                    )))
    }

    /// The queue and the runs holding nodes at planning instant `at` (wall time `wall`); held
    /// jobs are left out, and remembered for [`State::apply`].
    pub fn frame_jobs(&mut self, at: DateTime<Utc>, wall: DateTime<Utc>) -> FrameJobs {
        let mut held = HashMap::new();
        let mut released = Vec::new();
        for (key, job) in &self.jobs {
            if !self.queued(job, at) {
                continue;
            }
            match self.hold_reason(job, wall) {
                Some(reason) => {
                    held.insert(key.clone(), (job.version, reason));
                }
                None if job.budget_hold.is_some() => released.push(key.clone()),
                None => {}
            }
        }
        for key in released {
            if let Some(job) = self.jobs.get_mut(&key) {
                tracing::info!(job = %key, "the namespace's budget allows the job again");
                job.budget_hold = None;
            }
        }
        let n_held = held.len();
        self.held = held;
        let mut queue = Vec::new();
        let mut running: Vec<FrameRun> = self
            .orphans
            .iter()
            .chain(self.jobs.values().flat_map(|j| j.runs.iter()))
            .filter(|r| r.end > at)
            .map(|r| FrameRun {
                nodes: r.nodes.clone(),
                end: r.end,
            })
            .collect();
        for (key, job) in &self.jobs {
            if self.held.contains_key(key) {
                continue;
            }
            if self.queued(job, at) {
                queue.push(FrameJob {
                    spec: job.spec.clone(),
                    version: job.version,
                    runs_done: job.progress_runs().len(),
                    done: job.done(),
                });
                continue;
            }
            let overrunning = job.ending.is_none()
                && matches!(
                    job.reported,
                    Some(ReportedState::Starting | ReportedState::Running)
                )
                && !job.runs.iter().any(|r| r.end > at);
            if let (true, Some(last)) = (overrunning, job.runs.last()) {
                running.push(FrameRun {
                    nodes: last.nodes.clone(),
                    end: at + self.settings.slot(),
                });
            }
        }
        FrameJobs {
            queue,
            running,
            held: n_held,
        }
    }

    /// Whether the last plan held a job for its budget (then the cycle plans again at once);
    /// clears the flag.
    pub fn take_replan(&mut self) -> bool {
        std::mem::take(&mut self.replan)
    }

    /// Applies `plan`, made from `frame` at wall time `wall`: commits the runs that start (when
    /// `commit`), records every job's new plan, and returns the plans that changed (each with
    /// its revision raised).
    pub fn apply(
        &mut self,
        frame: &Frame,
        plan: &Plan,
        commit: bool,
        wall: DateTime<Utc>,
    ) -> Vec<PlanView> {
        let mut decisions = self.decide(frame, plan, commit, wall);
        for (key, (version, reason)) in &self.held {
            if self.jobs.get(key).is_some_and(|j| j.version == *version) {
                decisions.insert(key.clone(), Decision::Held(reason.clone()));
            }
        }
        let in_frame: HashSet<(&str, u64)> = frame
            .entries
            .iter()
            .chain(frame.refused.iter().map(|(e, _)| e))
            .map(|e| (e.key.as_str(), e.version))
            .chain(self.held.iter().map(|(k, (v, _))| (k.as_str(), *v)))
            .collect();
        let mut changed = Vec::new();
        let at = frame.grid.instant(frame.now);
        let keys: Vec<String> = self.jobs.keys().cloned().collect();
        for key in keys {
            let Some(job) = self.jobs.get(&key) else {
                continue;
            };
            let considered = in_frame.contains(&(key.as_str(), job.version));
            let queued = self.queued(job, at);
            let decision = decisions.remove(&key);
            let Some(mut view) = view_of(
                frame,
                &self.settings,
                job,
                decision,
                queued,
                considered,
                wall,
            ) else {
                continue;
            };
            view.revision = job.view.revision;
            if let Some(job) = self.jobs.get_mut(&key)
                && view != job.view
            {
                view.revision += 1;
                job.view = view.clone();
                changed.push(view);
            }
        }
        let revisions: Vec<(String, u64)> = changed
            .iter()
            .map(|v| (v.key.clone(), v.revision))
            .collect();
        if let Err(e) = self.store.write(&[], &revisions) {
            // A restart may then hand out a revision again; the plans themselves are right.
            tracing::warn!(error = %e, "could not record plan revisions");
        }
        let retention = self.settings.done_retention;
        self.jobs.retain(|_, j| {
            j.ending
                .as_ref()
                .is_none_or(|(_, at)| wall - *at < retention)
        });
        changed
    }

    /// Turns the policy's plan into one decision per job, committing (and recording) the runs
    /// that start when `commit`. A job the budget rule holds is not started.
    fn decide(
        &mut self,
        frame: &Frame,
        plan: &Plan,
        commit: bool,
        wall: DateTime<Utc>,
    ) -> HashMap<String, Decision> {
        let snap = frame.snapshot();
        let mut used = vec![0u32; frame.nodes.len()];
        for a in &frame.active {
            used[a.node] += a.gpus;
        }
        let current = |qi: usize| {
            let e = frame.entries.get(qi)?;
            let job = self.jobs.get(&e.key)?;
            (job.version == e.version && job.ending.is_none()).then_some(e.key.clone())
        };
        let mut decisions: HashMap<String, Decision> = HashMap::new();
        let mut new_runs: Vec<CommittedRun> = Vec::new();
        let starts: Vec<(String, &crate::planner::Start)> = plan
            .starts
            .iter()
            .filter_map(|s| current(s.pending).map(|k| (k, s)))
            .collect();
        let intents: Vec<(String, &crate::planner::Intent)> = plan
            .intents
            .iter()
            .filter_map(|i| current(i.pending).map(|k| (k, i)))
            .collect();
        let rejections: Vec<(String, String)> = plan
            .rejections
            .iter()
            .filter_map(|r| current(r.pending).map(|k| (k, r.reason.clone())))
            .collect();
        for (key, s) in starts {
            if let Some(reason) = self.over_budget(frame, &key, (frame.now, s.zone, s.point), wall)
            {
                decisions.insert(key, Decision::Held(reason));
                continue;
            }
            if !commit {
                decisions.insert(
                    key,
                    Decision::Next {
                        start: frame.now,
                        zone: s.zone,
                        point: s.point,
                        nodes: s.nodes.clone(),
                    },
                );
                continue;
            }
            if let Err(reason) = check_start(&snap, s, &used) {
                tracing::error!(job = %key, %reason, "the policy started an impossible run; not started");
                decisions.insert(key, Decision::NotStarted(format!("not started: {reason}")));
                continue;
            }
            for &(n, g) in &s.nodes {
                used[n] += g;
            }
            let Some(job) = self.jobs.get(&key) else {
                continue;
            };
            let pending = &frame.queue[s.pending];
            let point = frame.profiles[pending.profile].points[s.point];
            new_runs.push(CommittedRun {
                key: key.clone(),
                uid: job.spec.uid.clone(),
                seq: job.runs.len() as u32,
                start: frame.grid.instant(frame.now),
                end: frame.grid.instant(s.end),
                zone: frame.zones[s.zone].name.clone(),
                nodes: s
                    .nodes
                    .iter()
                    .map(|&(n, g)| (frame.nodes[n].name.clone(), g))
                    .collect(),
                power_limit: point.power_limit,
                work_done: Hours(progress::run_work(
                    frame.now,
                    s.end,
                    frame.grid.slot_hours(),
                    point.throughput,
                )),
            });
            decisions.insert(key, Decision::Started);
        }
        for (key, i) in intents {
            if let Some(reason) = self.over_budget(frame, &key, (i.start, i.zone, i.point), wall) {
                decisions.insert(key, Decision::Held(reason));
                continue;
            }
            decisions.insert(
                key,
                Decision::Next {
                    start: i.start,
                    zone: i.zone,
                    point: i.point,
                    nodes: i.nodes.clone(),
                },
            );
        }
        for (key, reason) in rejections {
            decisions.insert(key, Decision::Rejected(reason));
        }
        for (e, reason) in &frame.refused {
            if self
                .jobs
                .get(&e.key)
                .is_some_and(|j| j.version == e.version)
            {
                decisions.insert(e.key.clone(), Decision::Rejected(reason.clone()));
            }
        }
        if !new_runs.is_empty() {
            // Recorded before anyone is told to start: a run the store does not hold could
            // be moved by a restart.
            match self.store.write(&new_runs, &[]) {
                Ok(()) => {
                    for r in new_runs {
                        tracing::info!(job = %r.key, start = %r.start, end = %r.end, zone = %r.zone, "run committed");
                        if let Some(job) = self.jobs.get_mut(&r.key) {
                            job.runs.push(r);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not record the runs that start; none starts");
                    for r in new_runs {
                        decisions.insert(
                            r.key,
                            Decision::NotStarted(format!(
                                "not started: the run could not be recorded ({e})"
                            )),
                        );
                    }
                }
            }
        }
        decisions
    }
}

/// Ends the runs in progress at `now` at the next slot boundary (at least one slot after their
/// start), scaling their work; returns the runs it changed.
fn cut_runs(
    settings: &Settings,
    runs: &mut [CommittedRun],
    now: DateTime<Utc>,
) -> Vec<CommittedRun> {
    let mut cut = Vec::new();
    for r in runs.iter_mut().filter(|r| r.end > now) {
        let end = settings.ceil(now).max(r.start + settings.slot());
        if end >= r.end {
            continue;
        }
        let share = (end - r.start).num_seconds() as f64 / (r.end - r.start).num_seconds() as f64;
        r.work_done = Hours(r.work_done.0 * share);
        r.end = end;
        cut.push(r.clone());
    }
    cut
}
