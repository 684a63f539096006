//! A job's progress between plans, and the checks a started run must pass: shared by the
//! simulator's replay and the live planning cycle, so both feed the planner the same queue and
//! hold a policy's starts to the same rules.

use super::snapshot::{Snapshot, Start};
use crate::units::{Hours, Slot};

/// Work counted as done when within this many hours of the need: below the checker's 1e-4 h
/// tolerance, above the planner's 5e-5 h rounding margin.
pub const DONE_TOLERANCE_H: f64 = 7e-5;

/// Work a job owes in all after `runs` runs: its work plus a checkpoint overhead for every run
/// after the first.
pub fn work_needed(work: Hours, overhead: Hours, runs: usize) -> f64 {
    work.0 + runs.saturating_sub(1) as f64 * overhead.0
}

/// Work still owed if the job's next run (after `runs_done`) is its last, overhead included.
pub fn work_left(work: Hours, overhead: Hours, runs_done: usize, done: f64) -> Hours {
    Hours((work_needed(work, overhead, runs_done + 1) - done).max(0.0))
}

/// Whether `done` hours of work finish a job that has had `runs` runs.
pub fn is_done(work: Hours, overhead: Hours, runs: usize, done: f64) -> bool {
    done + DONE_TOLERANCE_H >= work_needed(work, overhead, runs)
}

/// Work a run over slots `start..end` does at `throughput`.
pub fn run_work(start: Slot, end: Slot, slot_hours: Hours, throughput: f64) -> f64 {
    f64::from(end.saturating_sub(start)) * slot_hours.0 * throughput
}

/// Checks that `start`, a run a policy wants to start at `snap.now`, is possible: it ends inside
/// the signals, its job may start, its power limit exists, and it holds exactly the job's GPUs
/// on nodes of the run's zone and the job's accelerator that have them free (`node_used`: GPUs
/// in use per node). The reason names what is wrong; the caller names the job.
pub fn check_start(snap: &Snapshot<'_>, start: &Start, node_used: &[u32]) -> Result<(), String> {
    let now = snap.now;
    let Some(job) = snap.queue.get(start.pending) else {
        return Err(format!("start of unknown queue entry {}", start.pending));
    };
    if start.end <= now || start.end > snap.end {
        return Err(format!(
            "run end {} outside {}..={}",
            start.end,
            now + 1,
            snap.end
        ));
    }
    if job.earliest > now {
        return Err("started before it was submitted".to_owned());
    }
    if snap.profiles[job.profile].points.get(start.point).is_none() {
        return Err(format!("no power-limit point {}", start.point));
    }
    let gpus: u32 = start.nodes.iter().map(|n| n.1).sum();
    if gpus != job.gpus {
        return Err(format!("places {gpus} GPUs, needs {}", job.gpus));
    }
    if !job.preemptible && job.runs_done > 0 {
        return Err("a second run of a non-preemptible job".to_owned());
    }
    let mut taken: Vec<(usize, u32)> = Vec::with_capacity(start.nodes.len());
    for &(n, g) in &start.nodes {
        let node = snap
            .nodes
            .get(n)
            .ok_or_else(|| format!("unknown node {n}"))?;
        if node.zone != start.zone || node.accelerator != job.accelerator {
            return Err(format!(
                "node {} is not a fitting node of the run's zone",
                node.name
            ));
        }
        let before: u32 = taken.iter().filter(|t| t.0 == n).map(|t| t.1).sum();
        let used = node_used.get(n).copied().unwrap_or(0) + before;
        if used + g > node.gpus {
            return Err(format!(
                "node {} has {} GPUs free, asked for {g}",
                node.name,
                node.gpus.saturating_sub(used)
            ));
        }
        taken.push((n, g));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overheads_count_from_the_second_run() {
        let (w, o) = (Hours(2.0), Hours(0.25));
        assert_eq!(work_needed(w, o, 0), 2.0);
        assert_eq!(work_needed(w, o, 1), 2.0);
        assert_eq!(work_needed(w, o, 3), 2.5);
        assert_eq!(work_left(w, o, 1, 1.5), Hours(0.75));
        assert_eq!(work_left(w, o, 0, 3.0), Hours(0.0));
        assert!(is_done(w, o, 2, 2.25));
        assert!(!is_done(w, o, 2, 2.2));
        assert_eq!(run_work(4, 8, Hours(0.25), 0.5), 0.5);
    }
}
