//! Per-device energy metering from cumulative hardware counters, and the checks a sample must
//! pass before it is metered.
//!
//! Energy is the sum of counter deltas between accepted samples, never sampled power × time
//! (issue 4: "energy comes from hardware counters"). The first accepted sample of a device sets
//! its baseline and meters nothing; every later one meters `counter - previous counter`. A
//! sample that is dropped or rejected therefore loses resolution, not energy: the next accepted
//! sample's delta covers the gap.
//!
//! Counter epochs: a sample names the run of its counter (`Sample.counter_epoch`: a boot, a
//! driver load, a restarted source). A sample from a new epoch starts a new baseline and
//! meters nothing, as the first sample does; without epochs a restarted counter would read as
//! one that went backwards and every sample after it would be refused. What the device drew
//! between the old run's last sample and the new run's first is not metered: no counter saw it.

use offpeak_proto::v1::Sample;
use thiserror::Error;

/// The most power one device may report, in watts; above it a sample is rejected as absurd.
///
/// A device here is one accelerator, CPU package or DRAM domain. The hungriest single devices
/// shipping in 2026 (an NVIDIA GB200 superchip board at about 2.7 kW, AMD MI355X at 1.4 kW)
/// stay below 3 kW; 5 kW leaves headroom for the next generation and still catches the usual
/// unit mistake (milliwatts sent as watts is a factor of 1,000).
pub const MAX_PLAUSIBLE_POWER_WATTS: f64 = 5_000.0;

/// Why a sample was not metered. The label names the reason in metrics.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Rejection {
    #[error("device {0:?} is not in the agent's registered inventory")]
    UnknownDevice(String),
    #[error("power {0} W is not a number")]
    NonFinitePower(f64),
    #[error("power {0} W is negative")]
    NegativePower(f64),
    #[error("power {watts} W is above the plausible limit of {MAX_PLAUSIBLE_POWER_WATTS} W", watts = .0)]
    AbsurdPower(f64),
    #[error("energy counter went backwards from {previous_mj} to {current_mj} mJ")]
    CounterWentBackwards { previous_mj: u64, current_mj: u64 },
}

impl Rejection {
    /// A short, stable name for the `reason` label of the rejected-samples counter.
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnknownDevice(_) => "unknown_device",
            Self::NonFinitePower(_) => "non_finite_power",
            Self::NegativePower(_) => "negative_power",
            Self::AbsurdPower(_) => "absurd_power",
            Self::CounterWentBackwards { .. } => "counter_backwards",
        }
    }
}

/// The energy meter of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceMeter {
    /// The counter of the last accepted sample; `None` until the first.
    last_counter_mj: Option<u64>,
    /// The counter epoch of the last accepted sample.
    epoch: u64,
    /// Energy metered so far, millijoules.
    metered_mj: u64,
}

/// A meter's whole state, as it is persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterState {
    pub last_counter_mj: Option<u64>,
    pub epoch: u64,
    pub metered_mj: u64,
}

impl DeviceMeter {
    /// A meter carrying on from a persisted state.
    pub fn from_state(state: MeterState) -> Self {
        Self {
            last_counter_mj: state.last_counter_mj,
            epoch: state.epoch,
            metered_mj: state.metered_mj,
        }
    }

    pub fn state(&self) -> MeterState {
        MeterState {
            last_counter_mj: self.last_counter_mj,
            epoch: self.epoch,
            metered_mj: self.metered_mj,
        }
    }

    /// Energy metered so far, millijoules.
    pub fn metered_mj(&self) -> u64 {
        self.metered_mj
    }

    /// Checks `sample` and, if it passes, meters its counter delta; returns the delta.
    /// A rejected sample leaves the meter unchanged.
    pub fn meter(&mut self, sample: &Sample) -> Result<u64, Rejection> {
        check_power(sample.power_watts)?;
        let delta = match self.last_counter_mj {
            None => 0,
            Some(_) if sample.counter_epoch != self.epoch => {
                tracing::info!(
                    device = %sample.device_uuid,
                    from = self.epoch,
                    to = sample.counter_epoch,
                    "the energy counter restarted (new epoch); new baseline"
                );
                0
            }
            Some(previous_mj) if sample.energy_mj < previous_mj => {
                return Err(Rejection::CounterWentBackwards {
                    previous_mj,
                    current_mj: sample.energy_mj,
                });
            }
            Some(previous_mj) => sample.energy_mj - previous_mj,
        };
        self.last_counter_mj = Some(sample.energy_mj);
        self.epoch = sample.counter_epoch;
        // 2^64 mJ is 5 TWh; saturating only matters for a counter that lies.
        self.metered_mj = self.metered_mj.saturating_add(delta);
        Ok(delta)
    }
}

fn check_power(watts: f64) -> Result<(), Rejection> {
    if !watts.is_finite() {
        Err(Rejection::NonFinitePower(watts))
    } else if watts < 0.0 {
        Err(Rejection::NegativePower(watts))
    } else if watts > MAX_PLAUSIBLE_POWER_WATTS {
        Err(Rejection::AbsurdPower(watts))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(power_watts: f64, energy_mj: u64) -> Sample {
        Sample {
            device_uuid: "GPU-0".into(),
            power_watts,
            energy_mj,
            ..Sample::default()
        }
    }

    #[test]
    fn meters_counter_deltas_from_the_first_sample() {
        let mut m = DeviceMeter::default();
        assert_eq!(m.meter(&sample(250.0, 1_000)), Ok(0));
        assert_eq!(m.meter(&sample(250.0, 251_000)), Ok(250_000));
        assert_eq!(m.meter(&sample(250.0, 251_000)), Ok(0));
        assert_eq!(m.metered_mj(), 250_000);
    }

    #[test]
    fn rejects_bad_power_and_backwards_counters_without_metering() {
        let mut m = DeviceMeter::default();
        assert_eq!(m.meter(&sample(100.0, 5_000)), Ok(0));
        assert_eq!(
            m.meter(&sample(-1.0, 6_000)),
            Err(Rejection::NegativePower(-1.0))
        );
        assert_eq!(
            m.meter(&sample(MAX_PLAUSIBLE_POWER_WATTS + 1.0, 6_000)),
            Err(Rejection::AbsurdPower(MAX_PLAUSIBLE_POWER_WATTS + 1.0))
        );
        assert!(matches!(
            m.meter(&sample(f64::NAN, 6_000)),
            Err(Rejection::NonFinitePower(_))
        ));
        assert_eq!(
            m.meter(&sample(100.0, 4_000)),
            Err(Rejection::CounterWentBackwards {
                previous_mj: 5_000,
                current_mj: 4_000
            })
        );
        // The rejected samples left the baseline where it was.
        assert_eq!(m.meter(&sample(100.0, 7_000)), Ok(2_000));
        assert_eq!(m.metered_mj(), 2_000);
    }

    #[test]
    fn a_new_counter_epoch_is_a_new_baseline_not_a_backwards_counter() {
        let mut m = DeviceMeter::default();
        let at = |epoch: u64, energy_mj: u64| Sample {
            counter_epoch: epoch,
            ..sample(100.0, energy_mj)
        };
        assert_eq!(m.meter(&at(1, 50_000)), Ok(0));
        assert_eq!(m.meter(&at(1, 80_000)), Ok(30_000));
        // The source restarted: its counter starts again near zero.
        assert_eq!(m.meter(&at(2, 1_000)), Ok(0));
        assert_eq!(m.meter(&at(2, 4_000)), Ok(3_000));
        assert_eq!(m.metered_mj(), 33_000);
        // Within an epoch, backwards is still backwards.
        assert!(m.meter(&at(2, 3_000)).is_err());
        let restored = DeviceMeter::from_state(m.state());
        assert_eq!(restored, m);
    }
}
