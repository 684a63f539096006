//! Event-driven replay of a scenario through a policy.
//!
//! At every slot boundary where a job is waiting, the policy gets a [`Snapshot`] holding only
//! what could be known then: the jobs submitted so far and the signals of slots before
//! `now + lookahead` (the signal slices are cut there, so no policy can read further). The
//! runs it starts are fixed whole at their start, which is what makes the spec's honesty
//! property hold: nothing learnt after a run starts can change it.

use thiserror::Error;

use crate::planner::progress::{self as job_progress, check_start};
use crate::planner::{Active, Pending, Policy, Snapshot, ZoneView};
use crate::scenario::Scenario;
use crate::units::Slot;

/// A run as the simulator recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub start: Slot,
    pub end: Slot,
    pub zone: usize,
    pub point: usize,
    pub nodes: Vec<(usize, u32)>,
}

/// How a job ended up.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All its work is done, in these runs.
    Done(Vec<RunRecord>),
    /// It was not (completely) run, for this reason.
    Unscheduled(String),
}

/// The result of a replay: one outcome per scenario job, in file order.
#[derive(Debug, Clone)]
pub struct Replay {
    pub policy: String,
    pub outcomes: Vec<Outcome>,
    /// Every run each job was started with, whatever its outcome (scenario order).
    pub started: Vec<Vec<RunRecord>>,
    /// Number of times the policy was asked to plan.
    pub decisions: usize,
}

/// A policy asked for something impossible: a bug in the policy, reported instead of obeyed.
#[derive(Debug, Error)]
pub enum SimError {
    #[error("policy {policy} at slot {slot}: {reason}")]
    ApplyDecision {
        policy: String,
        slot: Slot,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Status {
    Future,
    Queued,
    Running(Slot),
    Finished,
    Rejected(String),
}

#[derive(Debug, Clone)]
struct JobState {
    status: Status,
    done: f64,
    runs: Vec<RunRecord>,
}

/// The zones' signals as a policy may see them: slots before `known` only.
pub fn zone_views(sc: &Scenario, known: usize) -> Vec<ZoneView<'_>> {
    sc.zones
        .iter()
        .map(|z| ZoneView {
            name: &z.name,
            pue: z.pue,
            price: &z.price[..known],
            carbon: &z.carbon[..known],
        })
        .collect()
}

/// Replays `scenario` through `policy`; `progress(slot, end)` is called as time advances.
#[tracing::instrument(skip_all, fields(scenario = %scenario.name, policy = policy.name()))]
pub fn simulate(
    scenario: &Scenario,
    policy: &dyn Policy,
    progress: &mut dyn FnMut(Slot, Slot),
) -> Result<Replay, SimError> {
    let sc = scenario;
    let end = sc.n_slots;
    let mut order: Vec<usize> = (0..sc.jobs.len()).collect();
    order.sort_by(|&a, &b| {
        sc.jobs[a]
            .submit
            .cmp(&sc.jobs[b].submit)
            .then(sc.jobs[a].id.cmp(&sc.jobs[b].id))
    });
    let mut state: Vec<JobState> = sc
        .jobs
        .iter()
        .map(|_| JobState {
            status: Status::Future,
            done: 0.0,
            runs: Vec::new(),
        })
        .collect();
    let mut active: Vec<(usize, Active)> = Vec::new();
    let mut node_used = vec![0u32; sc.nodes.len()];
    let mut queue: Vec<usize> = Vec::new();
    let mut next_arrival = 0usize;
    let mut decisions = 0usize;
    let need = |j: usize, runs: usize| {
        job_progress::work_needed(sc.jobs[j].work, sc.checkpoint_overhead, runs)
    };
    let done = |j: usize, runs: usize, d: f64| {
        job_progress::is_done(sc.jobs[j].work, sc.checkpoint_overhead, runs, d)
    };
    let fail = |slot: Slot, reason: String| SimError::ApplyDecision {
        policy: policy.name().to_owned(),
        slot,
        reason,
    };

    let mut t: Slot = 0;
    while t < end {
        progress(t, end);
        // runs that end now free their nodes; their jobs finish or queue again
        active.retain(|(_, a)| {
            if a.end <= t {
                node_used[a.node] -= a.gpus;
                false
            } else {
                true
            }
        });
        for &j in &order[..next_arrival] {
            if let Status::Running(until) = state[j].status
                && until <= t
            {
                let s = &mut state[j];
                if done(j, s.runs.len(), s.done) {
                    s.status = Status::Finished;
                } else {
                    s.status = Status::Queued;
                    queue.push(j);
                }
            }
        }
        let now = sc.grid.instant(t);
        while next_arrival < order.len() && sc.jobs[order[next_arrival]].submit <= now {
            let j = order[next_arrival];
            state[j].status = Status::Queued;
            queue.push(j);
            next_arrival += 1;
        }
        if queue.is_empty() {
            // nothing to decide until the next arrival or the next run end
            let next_end = active.iter().map(|(_, a)| a.end).min();
            let next_sub = order
                .get(next_arrival)
                .map(|&j| sc.grid.first_slot_at_or_after(sc.jobs[j].submit));
            match next_end.into_iter().chain(next_sub).min() {
                Some(n) => {
                    t = n.max(t + 1);
                    continue;
                }
                None => break,
            }
        }
        queue.sort_by(|&a, &b| {
            sc.jobs[a]
                .submit
                .cmp(&sc.jobs[b].submit)
                .then(sc.jobs[a].id.cmp(&sc.jobs[b].id))
        });
        let pending: Vec<Pending> = queue
            .iter()
            .map(|&j| {
                let job = &sc.jobs[j];
                let s = &state[j];
                Pending {
                    gpus: job.gpus,
                    accelerator: job.accelerator,
                    profile: job.profile,
                    earliest: sc.earliest_slot(job),
                    deadline: sc.deadline_slot(job),
                    preemptible: job.preemptible,
                    price_cap: job.price_cap,
                    carbon_cap: job.carbon_cap,
                    carbon_price: None,
                    work_left: job_progress::work_left(
                        job.work,
                        sc.checkpoint_overhead,
                        s.runs.len(),
                        s.done,
                    ),
                    runs_done: s.runs.len() as u32,
                }
            })
            .collect();
        let known = (t.saturating_add(sc.lookahead_slots)).min(end) as usize;
        let actives: Vec<Active> = active.iter().map(|(_, a)| *a).collect();
        let snap = Snapshot {
            now: t,
            end,
            slot_hours: sc.grid.slot_hours(),
            checkpoint_overhead: sc.checkpoint_overhead,
            carbon_price: sc.carbon_price,
            currency: &sc.currency,
            lookahead: sc.lookahead_slots,
            zones: zone_views(sc, known),
            profiles: &sc.profiles,
            nodes: &sc.nodes,
            active: &actives,
            queue: &pending,
        };
        let plan = policy.plan(&snap);
        decisions += 1;

        let mut leaving = vec![false; queue.len()];
        for r in &plan.rejections {
            let qi = r.pending;
            if qi >= queue.len() || leaving[qi] {
                return Err(fail(
                    t,
                    format!("rejection of unknown or already handled queue entry {qi}"),
                ));
            }
            leaving[qi] = true;
            state[queue[qi]].status = Status::Rejected(r.reason.clone());
        }
        for s in &plan.starts {
            let qi = s.pending;
            if qi >= queue.len() || leaving[qi] {
                return Err(fail(
                    t,
                    format!("start of unknown or already handled queue entry {qi}"),
                ));
            }
            let j = queue[qi];
            let job = &sc.jobs[j];
            check_start(&snap, s, &node_used)
                .map_err(|reason| fail(t, format!("job {}: {reason}", job.id)))?;
            let pt = sc.profiles[job.profile].points[s.point];
            for &(n, g) in &s.nodes {
                node_used[n] += g;
                active.push((
                    j,
                    Active {
                        node: n,
                        gpus: g,
                        end: s.end,
                    },
                ));
            }
            leaving[qi] = true;
            let st = &mut state[j];
            st.done += job_progress::run_work(t, s.end, sc.grid.slot_hours(), pt.throughput);
            st.runs.push(RunRecord {
                start: t,
                end: s.end,
                zone: s.zone,
                point: s.point,
                nodes: s.nodes.clone(),
            });
            st.status = Status::Running(s.end);
        }
        let mut k = 0;
        queue.retain(|_| {
            let keep = !leaving[k];
            k += 1;
            keep
        });
        t += 1;
    }
    progress(end, end);
    tracing::debug!(decisions, "replay finished");

    let started: Vec<Vec<RunRecord>> = state.iter().map(|s| s.runs.clone()).collect();
    let outcomes = state
        .into_iter()
        .enumerate()
        .map(|(j, s)| match s.status {
            Status::Finished => Outcome::Done(s.runs),
            Status::Running(until) if until <= end && done(j, s.runs.len(), s.done) => Outcome::Done(s.runs),
            Status::Rejected(reason) if s.runs.is_empty() => Outcome::Unscheduled(reason),
            Status::Rejected(reason) => Outcome::Unscheduled(format!("{reason} (after {} partial runs, which are not kept)", s.runs.len())),
            Status::Future | Status::Queued | Status::Running(_) => {
                let left = need(j, s.runs.len().max(1)) - s.done;
                Outcome::Unscheduled(if s.runs.is_empty() {
                    "no placement was found before the end of the signals".to_owned()
                } else {
                    format!("{left:.2} h of work were left when the signals ended; its partial runs are not kept")
                })
            }
        })
        .collect();
    Ok(Replay {
        policy: policy.name().to_owned(),
        outcomes,
        started,
        decisions,
    })
}
