//! The state's accounting: each job's metered energy and its namespace's month-to-date cost,
//! the budget rule and the holds, the power limits of the runs in progress, and what the
//! ledger reads of each job (`placement::ledger_sink`).

use chrono::{DateTime, Utc};

use super::{Ending, LiveJob, State};
use crate::placement::budget;
use crate::placement::frame::Frame;
use crate::placement::ledger_sink::JobFacts;
use crate::placement::metering::{self, Pricer};
use crate::placement::power::{ActiveRun, Failures};
use crate::placement::store::MeteredSlot;
use crate::placement::view::next_cost;
use crate::service::NodeRegistry;
use crate::units::{Money, Slot};

impl State {
    /// Month-to-date metered cost of `namespace` at `wall`.
    pub(super) fn spent(&self, namespace: &str, wall: DateTime<Utc>) -> Money {
        let month = metering::month_start(wall).timestamp();
        Money(
            self.month_cost
                .get(&(namespace.to_owned(), month))
                .copied()
                .unwrap_or(0.0),
        )
    }

    /// Why a job is held now, if it is: by its user, or (while the estimate it was held with
    /// still overruns) by its namespace's budget.
    pub(super) fn hold_reason(&self, job: &LiveJob, wall: DateTime<Utc>) -> Option<String> {
        if job.spec.held {
            return Some(budget::HELD_BY_USER.to_owned());
        }
        let (estimate, limit) = (job.budget_hold?, job.spec.monthly_budget?);
        let ns = metering::namespace_of(&job.spec.key);
        budget::exhausted(
            ns,
            self.spent(ns, wall),
            estimate,
            limit,
            &self.settings.currency,
        )
    }

    /// Brings every job's metered energy up to what the registry holds for its pods, prices
    /// what is new at `pricer`'s signals and records it; returns how many slots changed.
    pub fn meter(&mut self, registry: &NodeRegistry, pricer: &Pricer<'_>) -> usize {
        let mut changed: Vec<MeteredSlot> = Vec::new();
        for job in self.jobs.values_mut() {
            let pods = metering::worker_pods(&job.spec.key, job.spec.workers);
            let readings = registry.pod_slot_energy(&pods);
            if readings.is_empty() {
                continue;
            }
            let from = self.settings.floor(job.spec.submit);
            let ns = metering::namespace_of(&job.spec.key).to_owned();
            for (slot, delta) in metering::update(
                &job.spec.key,
                &job.spec.uid,
                &mut job.metered,
                &readings,
                from,
                pricer,
            ) {
                let month = metering::month_start(slot.slot_start).timestamp();
                *self.month_cost.entry((ns.clone(), month)).or_default() += delta;
                changed.push(slot);
            }
        }
        if let Err(e) = self.store.write_metered(&changed) {
            // Kept in memory; the next change of the same slots writes them again.
            tracing::warn!(error = %e, "could not record metered energy");
        }
        changed.len()
    }

    /// What the ledger reads of every job: its spec, metered slots, whether it succeeded and
    /// the zone of its first run.
    pub fn ledger_facts(&self) -> Vec<JobFacts<'_>> {
        self.jobs
            .values()
            .map(|j| JobFacts {
                spec: &j.spec,
                metered: &j.metered,
                succeeded: matches!(j.ending, Some((Ending::Succeeded, _))),
                first_zone: j.runs.first().map(|r| r.zone.as_str()),
            })
            .collect()
    }

    /// The runs in progress at `wall`, for their power limits.
    pub fn active_runs(&self, wall: DateTime<Utc>) -> Vec<ActiveRun> {
        self.jobs
            .values()
            .filter(|j| j.ending.is_none() && !j.spec.held)
            .flat_map(|j| {
                j.runs
                    .iter()
                    .filter(move |r| r.start <= wall && r.end > wall)
                    .map(move |r| ActiveRun {
                        key: j.spec.key.clone(),
                        uid: j.spec.uid.clone(),
                        seq: r.seq,
                        workers: j.spec.workers,
                        // Profiles hold whole watts (the scenario format checks it).
                        watts: r.power_limit.0.round() as u32,
                    })
            })
            .collect()
    }

    /// Takes the power-limit failures of the runs in progress; returns whether any job's
    /// changed (its plan then needs publishing again).
    pub fn set_power_failures(&mut self, mut failures: Failures) -> bool {
        let mut changed = false;
        for (key, job) in &mut self.jobs {
            let now = failures.remove(key).unwrap_or_default();
            if now != job.power_failures {
                job.power_failures = now;
                changed = true;
            }
        }
        changed
    }

    /// Holds a job whose next run, started at `start` in `zone` at power point `point`, would
    /// take its namespace over its monthly budget; returns the reason.
    pub(super) fn over_budget(
        &mut self,
        frame: &Frame,
        key: &str,
        next: (Slot, usize, usize),
        wall: DateTime<Utc>,
    ) -> Option<String> {
        let job = self.jobs.get(key)?;
        let limit = job.spec.monthly_budget?;
        let estimate = next_cost(frame, &self.settings, job, next.0, next.1, next.2)?;
        let ns = metering::namespace_of(key);
        let reason = budget::exhausted(
            ns,
            self.spent(ns, wall),
            estimate,
            limit,
            &self.settings.currency,
        )?;
        tracing::info!(job = %key, %reason, "held for its namespace's budget");
        if let Some(job) = self.jobs.get_mut(key) {
            job.budget_hold = Some(estimate);
        }
        self.replan = true;
        Some(reason)
    }
}
