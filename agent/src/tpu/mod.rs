//! TPUs: the TPU runtime's metrics service says how busy each chip is (its TensorCore duty
//! cycle) and how much of its HBM is in use, but not what it draws. Power is estimated from the
//! duty cycle with a per-generation model, energy is the agent's integral of that estimate, and
//! every reading says so ([`Provenance::Estimated`], `estimated = true` on the wire). Cloud
//! TPUs give users no power cap, so power-limit commands are refused (a failed acknowledgement).
//!
//! Layout:
//! - [`profile`]: generations, the published per-chip figures, the duty cycle → watts model;
//! - [`metrics`]: the gRPC client of the runtime's metrics service and the checks on its
//!   answers;
//! - [`energy`]: the energy integral (the reason TPU energy is integrated is there);
//! - here: [`TpuSource`], the [`PowerSource`], and [`TpuSource::start`], which waits for the
//!   runtime when the chips must be discovered from it.
//!
//! The runtime's metrics service lives in the TPU workload's process, so it exists only while
//! a workload runs. Between workloads every read fails with an error naming the address, the
//! agent keeps running, and the next refresh tries again. Chips come from `--tpu-chips` (so
//! the agent registers before any workload starts) or, without it, from the runtime's first
//! answer, which [`TpuSource::start`] waits for with backoff.

pub mod energy;
pub mod metrics;
pub mod profile;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::source::{
    DeviceInfo, DeviceKind, PowerSource, Provenance, ReadFailure, Reading, SetLimitFailure,
    SourceError, epoch_now,
};
use energy::EnergyIntegral;
pub use metrics::{ChipMetrics, RuntimeMetrics, TpuMetricsError};
pub use profile::{DutyCycle, TpuGeneration, TpuPowerModel};

/// How `offpeak-agent --source tpu` reaches the runtime and models the chips.
#[derive(Debug, Clone, PartialEq)]
pub struct TpuConfig {
    /// The runtime's metrics service, e.g. "localhost:8431" ([`metrics::DEFAULT_ADDR`]).
    pub metrics_addr: String,
    pub generation: TpuGeneration,
    /// Per-chip draw at 0 % and 100 % duty cycle; each replaces the published figure.
    pub idle_watts: Option<f64>,
    pub busy_watts: Option<f64>,
    /// The node's chips are runtime devices `0..chips`; `None`: ask the runtime.
    pub chips: Option<u32>,
    /// Waiting for the runtime to discover chips: the first retry delay, doubling up to
    /// `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl TpuConfig {
    /// Retries from 1 s up to 60 s: a workload takes tens of seconds to bring libtpu up, and a
    /// node without one may wait for hours, where a minute between tries costs nothing.
    pub fn new(metrics_addr: impl Into<String>, generation: TpuGeneration) -> Self {
        Self {
            metrics_addr: metrics_addr.into(),
            generation,
            idle_watts: None,
            busy_watts: None,
            chips: None,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// A chip's latest answer, used by at most one reading.
type Fresh = Option<Result<ChipMetrics, Arc<TpuMetricsError>>>;

#[derive(Debug)]
struct Chip {
    /// The runtime's device id.
    device_id: i64,
    fresh: Fresh,
    energy: EnergyIntegral,
}

/// TPU chips with estimated power, read through the runtime's metrics service.
#[derive(Debug)]
pub struct TpuSource {
    client: RuntimeMetrics,
    model: TpuPowerModel,
    clock: Arc<dyn Clock>,
    devices: Vec<DeviceInfo>,
    chips: Vec<Chip>,
    /// When the fresh answers were received, on `clock`.
    answered_at: Duration,
    epoch: u64,
}

fn init_error(reason: impl std::fmt::Display) -> SourceError {
    SourceError::Init {
        backend: "TPU",
        reason: reason.to_string(),
    }
}

impl TpuSource {
    /// A source for chips the caller names (the runtime's device ids); asks the runtime
    /// nothing yet.
    pub fn with_chips(
        client: RuntimeMetrics,
        model: TpuPowerModel,
        device_ids: Vec<i64>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SourceError> {
        if device_ids.is_empty() {
            return Err(init_error("no TPU chips to read"));
        }
        let devices = device_ids
            .iter()
            .map(|id| DeviceInfo {
                uuid: format!("TPU-{}-{id}", model.generation),
                model: model.device_model(),
                kind: DeviceKind::Tpu,
                power_limit: None,
            })
            .collect();
        let chips = device_ids
            .into_iter()
            .map(|device_id| Chip {
                device_id,
                fresh: None,
                energy: EnergyIntegral::default(),
            })
            .collect();
        info!(generation = %model.generation, idle_watts = model.idle_watts, busy_watts = model.busy_watts, origin = %model.origin, "TPU power is estimated from duty cycle");
        Ok(Self {
            client,
            model,
            clock,
            devices,
            chips,
            answered_at: Duration::ZERO,
            // The energy integral starts from zero with the source.
            epoch: epoch_now(),
        })
    }

    /// A source for the chips the runtime reports now (one question; fails if the runtime is
    /// not there or reports none).
    pub async fn discover(
        mut client: RuntimeMetrics,
        model: TpuPowerModel,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SourceError> {
        let snapshot = client.snapshot(None).await.map_err(init_error)?;
        let ids: Vec<i64> = snapshot.keys().copied().collect();
        if ids.is_empty() {
            return Err(init_error(format!(
                "the TPU runtime at {} reports no chips",
                client.addr()
            )));
        }
        Self::with_chips(client, model, ids, clock)
    }

    /// The source `config` describes. Configuration errors fail at once; with no chip count,
    /// the runtime is asked for its chips until it answers (retrying with backoff, logged) or
    /// `shutdown` completes (then `Ok(None)`).
    pub async fn start(
        config: &TpuConfig,
        clock: Arc<dyn Clock>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Option<Self>, SourceError> {
        let model =
            TpuPowerModel::for_generation(config.generation, config.idle_watts, config.busy_watts)
                .map_err(init_error)?;
        let client = RuntimeMetrics::new(&config.metrics_addr).map_err(init_error)?;
        if let Some(n) = config.chips {
            return Self::with_chips(client, model, (0..i64::from(n)).collect(), clock).map(Some);
        }
        tokio::pin!(shutdown);
        let mut delay = config.retry_initial;
        loop {
            match Self::discover(client.clone(), model.clone(), Arc::clone(&clock)).await {
                Ok(source) => return Ok(Some(source)),
                Err(e) => {
                    warn!(error = %e, retry_in = ?delay, "no TPU chips yet; the runtime's metrics service appears when a TPU workload starts");
                }
            }
            tokio::select! {
                () = &mut shutdown => return Ok(None),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(config.retry_max);
        }
    }

    pub fn model(&self) -> &TpuPowerModel {
        &self.model
    }

    /// The runtime's device id of each chip, in device order.
    pub fn device_ids(&self) -> Vec<i64> {
        self.chips.iter().map(|c| c.device_id).collect()
    }
}

impl PowerSource for TpuSource {
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn counter_epoch(&self) -> u64 {
        self.epoch
    }

    /// Asks the runtime for every chip's metrics; each chip's next reading uses the answer.
    async fn refresh(&mut self) {
        let ids = self.device_ids();
        let answer = self.client.snapshot(Some(&ids)).await;
        self.answered_at = self.clock.now();
        match answer {
            Ok(snapshot) => {
                debug!(chips = snapshot.len(), "TPU runtime metrics read");
                for chip in &mut self.chips {
                    chip.fresh = Some(snapshot.get(&chip.device_id).copied().ok_or_else(|| {
                        Arc::new(TpuMetricsError::ChipNotReported {
                            device_id: chip.device_id,
                        })
                    }));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for chip in &mut self.chips {
                    chip.fresh = Some(Err(Arc::clone(&e)));
                }
            }
        }
    }

    fn read(&mut self, device: usize) -> Result<Reading, SourceError> {
        let (Some(info), Some(chip)) = (self.devices.get(device), self.chips.get_mut(device))
        else {
            return Err(SourceError::Read {
                device: device.to_string(),
                reason: ReadFailure::UnknownDevice(device),
            });
        };
        let fail = |e| SourceError::Read {
            device: info.uuid.clone(),
            reason: ReadFailure::TpuRuntime(e),
        };
        let metrics = match chip.fresh.take() {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                chip.energy.interrupt();
                return Err(fail(e));
            }
            None => {
                chip.energy.interrupt();
                return Err(fail(Arc::new(TpuMetricsError::NoFreshAnswer {
                    device_id: chip.device_id,
                })));
            }
        };
        let at = self.answered_at;
        let watts = self.model.watts_at(metrics.duty_cycle);
        let energy_mj = chip.energy.observe(at, watts);
        Ok(Reading {
            device_uuid: info.uuid.clone(),
            at,
            power_watts: watts,
            power_provenance: Provenance::Estimated,
            energy_mj,
            energy_provenance: Provenance::Estimated,
            utilisation_percent: Some(metrics.duty_cycle.percent().round() as u32),
            // The runtime reports HBM capacity in use, not how busy the memory was.
            memory_utilisation_percent: None,
            sm_clock_mhz: None,
            memory_clock_mhz: None,
            power_limit_watts: None,
            memory: metrics.hbm,
            work_done: None,
        })
    }

    /// Refused: Cloud TPUs expose no power cap to users.
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
