//! TPUs: the TPU runtime reports how busy each chip is (its TensorCore duty cycle) but no
//! power, so power is estimated from the duty cycle with a per-generation model and every
//! reading says so ([`Provenance::Estimated`], which becomes `estimated = true` on the wire).
//! Energy is the agent's integral of the estimate, also marked estimated; it starts from zero
//! with the source, so the source starts a new counter epoch.
//!
//! The model is linear between the chip's draw idle and at a 100 % duty cycle, the same shape
//! as the GPUs' draw against utilisation ([`crate::curve::LinearFit`]); its two figures come
//! from the operator (measured on the generation in use), never from defaults invented here.
//! Where duty cycles come from is the [`DutyCycleReader`] trait; a reader for libtpu's runtime
//! metrics service is not written yet (issue 4).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::source::{
    DeviceInfo, DeviceKind, PowerSource, Provenance, ReadFailure, Reading, SetLimitFailure,
    SourceError, epoch_now,
};

/// How a TPU generation's draw follows its duty cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct TpuPowerModel {
    /// The generation's name, used as the device model (curves are kept per model).
    pub generation: String,
    /// Draw with a program loaded and the TensorCores idle.
    pub idle_watts: f64,
    /// Draw at a 100 % duty cycle.
    pub busy_watts: f64,
}

impl TpuPowerModel {
    /// The estimated draw at `duty_percent` (clamped to 0–100).
    pub fn watts_at(&self, duty_percent: f64) -> f64 {
        let f = (duty_percent / 100.0).clamp(0.0, 1.0);
        self.idle_watts + f * (self.busy_watts - self.idle_watts)
    }
}

/// What the TPU runtime says about one chip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChipMetrics {
    /// TensorCore duty cycle over the last sample period, 0–100.
    pub duty_cycle_percent: f64,
    /// High-bandwidth memory in use and in total, bytes.
    pub hbm_used_bytes: u64,
    pub hbm_total_bytes: u64,
}

/// Where per-chip metrics come from (the TPU runtime's monitoring service).
pub trait DutyCycleReader: Send {
    /// Chip ids, in a fixed order.
    fn chips(&self) -> Vec<String>;
    /// The metrics of one chip now.
    fn read(&mut self, chip: usize) -> Result<ChipMetrics, String>;
}

#[derive(Debug, Clone, Copy, Default)]
struct Integral {
    last: Option<(Duration, f64)>,
    energy_mj: f64,
}

/// TPU chips with estimated power.
#[derive(Debug)]
pub struct TpuSource<R> {
    reader: R,
    model: TpuPowerModel,
    clock: Arc<dyn Clock>,
    devices: Vec<DeviceInfo>,
    integrals: Vec<Integral>,
    epoch: u64,
}

impl<R: DutyCycleReader + std::fmt::Debug> TpuSource<R> {
    /// Checks the model and finds the chips.
    pub fn new(
        reader: R,
        model: TpuPowerModel,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SourceError> {
        let (idle, busy) = (model.idle_watts, model.busy_watts);
        if !(idle.is_finite() && busy.is_finite() && idle >= 0.0 && busy >= idle) {
            return Err(SourceError::Init {
                backend: "TPU",
                reason: format!(
                    "power model {idle} W idle, {busy} W busy: need 0 ≤ idle ≤ busy, both finite"
                ),
            });
        }
        let devices: Vec<DeviceInfo> = reader
            .chips()
            .into_iter()
            .map(|id| DeviceInfo {
                uuid: id,
                model: model.generation.clone(),
                kind: DeviceKind::Gpu,
                // Cloud TPUs expose no power-limit control.
                power_limit: None,
            })
            .collect();
        if devices.is_empty() {
            return Err(SourceError::Init {
                backend: "TPU",
                reason: "the TPU runtime reports no chips".into(),
            });
        }
        let integrals = vec![Integral::default(); devices.len()];
        Ok(Self {
            reader,
            model,
            clock,
            devices,
            integrals,
            epoch: epoch_now(),
        })
    }
}

impl<R: DutyCycleReader + std::fmt::Debug> PowerSource for TpuSource<R> {
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn counter_epoch(&self) -> u64 {
        self.epoch
    }

    fn read(&mut self, device: usize) -> Result<Reading, SourceError> {
        let fail = |uuid: String, reason| SourceError::Read {
            device: uuid,
            reason,
        };
        let (Some(info), Some(integral)) =
            (self.devices.get(device), self.integrals.get_mut(device))
        else {
            return Err(fail(device.to_string(), ReadFailure::UnknownDevice(device)));
        };
        let metrics = self.reader.read(device).map_err(|detail| {
            fail(
                info.uuid.clone(),
                ReadFailure::Driver {
                    what: "TPU runtime metrics",
                    detail,
                },
            )
        })?;
        if !(0.0..=100.0).contains(&metrics.duty_cycle_percent) {
            return Err(fail(
                info.uuid.clone(),
                ReadFailure::Driver {
                    what: "TPU duty cycle",
                    detail: format!("{} % is outside 0–100 %", metrics.duty_cycle_percent),
                },
            ));
        }
        let now = self.clock.now();
        let watts = self.model.watts_at(metrics.duty_cycle_percent);
        // Trapezoids between readings, as for GPUs without an energy counter.
        if let Some((at, previous)) = integral.last {
            let seconds = now.saturating_sub(at).as_secs_f64();
            integral.energy_mj += (previous + watts) / 2.0 * seconds * 1000.0;
        }
        integral.last = Some((now, watts));
        let hbm = (metrics.hbm_total_bytes > 0).then(|| {
            (metrics.hbm_used_bytes as f64 / metrics.hbm_total_bytes as f64 * 100.0).round() as u32
        });
        Ok(Reading {
            device_uuid: info.uuid.clone(),
            at: now,
            power_watts: watts,
            power_provenance: Provenance::Estimated,
            energy_mj: integral.energy_mj as u64,
            energy_provenance: Provenance::Estimated,
            utilisation_percent: Some(metrics.duty_cycle_percent.round() as u32),
            memory_utilisation_percent: hbm,
            sm_clock_mhz: None,
            memory_clock_mhz: None,
            power_limit_watts: None,
            work_done: None,
        })
    }

    fn set_power_limit(&mut self, device: usize, limit_watts: f64) -> Result<(), SourceError> {
        Err(SourceError::SetPowerLimit {
            device: self
                .devices
                .get(device)
                .map_or_else(|| device.to_string(), |d| d.uuid.clone()),
            requested_watts: limit_watts,
            reason: SetLimitFailure::Unsupported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::sampler::Sampler;

    /// Plays back duty cycles, as a test stand-in for the runtime's monitoring service.
    #[derive(Debug)]
    struct Scripted {
        duty: Vec<f64>,
        step: usize,
    }

    impl DutyCycleReader for Scripted {
        fn chips(&self) -> Vec<String> {
            vec!["tpu-0".into()]
        }

        fn read(&mut self, _chip: usize) -> Result<ChipMetrics, String> {
            let d = self.duty.get(self.step).copied().ok_or("no more data")?;
            self.step += 1;
            Ok(ChipMetrics {
                duty_cycle_percent: d,
                hbm_used_bytes: 8,
                hbm_total_bytes: 32,
            })
        }
    }

    fn model() -> TpuPowerModel {
        TpuPowerModel {
            generation: "TPU test".into(),
            idle_watts: 50.0,
            busy_watts: 150.0,
        }
    }

    #[test]
    fn power_is_estimated_from_duty_cycle_and_marked_estimated() -> Result<(), SourceError> {
        let clock = ManualClock::new();
        let reader = Scripted {
            duty: vec![0.0, 50.0, 100.0, 150.0],
            step: 0,
        };
        let source = TpuSource::new(reader, model(), Arc::new(clock.clone()))?;
        let mut sampler = Sampler::new(source, 0);
        let first = sampler.sample();
        assert_eq!(first[0].power_watts, 50.0);
        assert!(first[0].estimated);
        clock.advance(Duration::from_secs(2));
        let second = sampler.sample();
        assert_eq!(second[0].power_watts, 100.0);
        // Trapezoid: (50 + 100) / 2 W for 2 s = 150 J.
        assert_eq!(second[0].energy_mj, 150_000);
        assert_eq!(second[0].utilization, 50.0);
        clock.advance(Duration::from_secs(1));
        let r = sampler.source_mut().read(0)?;
        assert_eq!((r.power_watts, r.energy_mj), (150.0, 275_000));
        assert_eq!(r.memory_utilisation_percent, Some(25));
        // A duty cycle over 100 % is the runtime's error, reported, not clamped into a number.
        assert!(sampler.source_mut().read(0).is_err());
        assert!(sampler.source_mut().set_power_limit(0, 100.0).is_err());
        Ok(())
    }

    #[test]
    fn a_bad_model_or_no_chips_is_an_init_error() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new());
        let bad = TpuPowerModel {
            busy_watts: 10.0,
            ..model()
        };
        let reader = Scripted {
            duty: vec![],
            step: 0,
        };
        assert!(TpuSource::new(reader, bad, Arc::clone(&clock)).is_err());
    }
}
