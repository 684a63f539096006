//! The TPU energy counter: the time integral of the estimated power.
//!
//! Everywhere else energy comes from a counter: NVML's total-energy counter, RAPL's
//! `energy_uj`, the simulator's exact integral of the draw it plays (issue 4: "not from
//! integrating sampled power"); the one other integral is NVML's fallback for GPUs that predate
//! the counter. A TPU has no counter the agent can read and its runtime reports no power, so
//! this is where TPU energy is integrated — trapezoids between consecutive readings of the
//! estimated power — and why it is marked estimated like the power it comes from.
//!
//! Only time bracketed by two good readings is counted. After a failed reading (the runtime
//! went away, its answer was rejected) the next good reading starts afresh: what the chips did
//! in between is unknown, and counting it (at the last power, or at idle) would put energy
//! nobody observed on whichever job the next sample is attributed to.

use std::time::Duration;

/// One chip's integrated energy.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnergyIntegral {
    /// The last good reading: when, and the estimated power then.
    last: Option<(Duration, f64)>,
    total_mj: f64,
}

impl EnergyIntegral {
    /// Adds the interval since the last good reading at `watts` now; returns the counter, in
    /// whole millijoules (it never decreases). A clock that went backwards adds nothing.
    pub fn observe(&mut self, at: Duration, watts: f64) -> u64 {
        if let Some((then, previous)) = self.last
            && at >= then
        {
            let seconds = (at - then).as_secs_f64();
            self.total_mj += (previous + watts) / 2.0 * seconds * 1000.0;
        }
        self.last = Some((at, watts));
        self.counter_mj()
    }

    /// A reading failed: the time until the next good one is not counted.
    pub fn interrupt(&mut self) {
        self.last = None;
    }

    /// The counter, in whole millijoules.
    pub fn counter_mj(&self) -> u64 {
        // Non-negative and finite by construction (watts come from a checked model).
        self.total_mj as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrates_trapezoids_and_skips_interrupted_time() {
        let mut e = EnergyIntegral::default();
        assert_eq!(e.observe(Duration::from_secs(10), 100.0), 0);
        // (100 + 200) / 2 W for 2 s = 300 J.
        assert_eq!(e.observe(Duration::from_secs(12), 200.0), 300_000);
        e.interrupt();
        // The 60 s without a good reading add nothing; the next interval counts again.
        assert_eq!(e.observe(Duration::from_secs(72), 50.0), 300_000);
        assert_eq!(e.observe(Duration::from_millis(72_500), 50.0), 325_000);
        // A clock going backwards adds nothing and never lowers the counter.
        assert_eq!(e.observe(Duration::from_secs(70), 50.0), 325_000);
    }
}
