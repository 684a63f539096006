//! The simulated source: GPUs running a training job whose draw at each power limit comes from
//! a measured Zeus power-limit sweep (`agent/data/`, see its README), with seeded noise, a
//! warm-up ramp and periodic checkpoint dips, so the whole agent runs and is tested without
//! accelerators.
//!
//! Determinism: time comes from an injected [`Clock`]; the draw is piecewise constant on a grid
//! of [`SimConfig::step`], and each step's noise is a pure function of (seed, device, step
//! index), so the draw does not depend on how often the source is read. The energy counter
//! integrates exactly the draw the source reports (integer milliwatts × nanoseconds), so when
//! reads fall on step boundaries, the counter's increase equals the reported power × the
//! interval, to the millijoule.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::curve::{CurvePoint, PowerCurve};
use crate::source::{
    DeviceInfo, DeviceKind, PowerLimitRange, PowerSource, Provenance, ReadFailure, Reading,
    SetLimitFailure, SourceError, epoch_now,
};

/// The Zeus V100 sweep (Apache-2.0, ml-energy/zeus; see `agent/data/README.md`).
pub const ZEUS_V100_CSV: &str = include_str!("../data/summary_power_v100.csv");
/// The Zeus A40 sweep (same origin).
pub const ZEUS_A40_CSV: &str = include_str!("../data/summary_power_a40.csv");

/// One workload of a Zeus power sweep: the columns that identify a row group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeusWorkload {
    pub dataset: String,
    pub network: String,
    pub batch_size: u32,
    pub optimizer: String,
}

impl ZeusWorkload {
    /// ResNet-50 on ImageNet, batch 256, Adadelta: present in every Zeus GPU sweep.
    pub fn imagenet_resnet50() -> Self {
        Self {
            dataset: "imagenet".into(),
            network: "resnet50".into(),
            batch_size: 256,
            optimizer: "adadelta".into(),
        }
    }

    /// The workload's name in curves and samples, e.g. `imagenet/resnet50/b256/adadelta`.
    pub fn name(&self) -> String {
        format!(
            "{}/{}/b{}/{}",
            self.dataset, self.network, self.batch_size, self.optimizer
        )
    }
}

/// A recorded power profile: one GPU model running one workload at each swept power limit.
/// Throughput is in epochs per second (Zeus records seconds per epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct PowerProfile {
    pub gpu_model: String,
    pub workload: String,
    pub curve: PowerCurve,
}

impl PowerProfile {
    /// Reads the rows of `workload` from a Zeus `summary_power_<gpu>.csv` (columns dataset,
    /// network, batch_size, optimizer, power_limit, time_per_epoch, average_power). `origin`
    /// names the file in errors.
    pub fn from_zeus_csv(
        csv_text: &str,
        origin: &str,
        gpu_model: &str,
        workload: &ZeusWorkload,
    ) -> Result<Self, SourceError> {
        let err = |reason: String| SourceError::LoadProfile {
            origin: origin.to_owned(),
            reason,
        };
        let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| err(format!("header: {e}")))?
            .clone();
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| err(format!("no column {name:?}")))
        };
        let c_dataset = column("dataset")?;
        let c_network = column("network")?;
        let c_batch = column("batch_size")?;
        let c_optimizer = column("optimizer")?;
        let c_limit = column("power_limit")?;
        let c_time = column("time_per_epoch")?;
        let c_power = column("average_power")?;
        let batch = workload.batch_size.to_string();
        let mut points = Vec::new();
        for (i, record) in reader.records().enumerate() {
            // Line numbers are 1-based and the header is line 1.
            let line = i + 2;
            let record = record.map_err(|e| err(format!("line {line}: {e}")))?;
            let field = |c: usize| record.get(c).unwrap_or("");
            if field(c_dataset) != workload.dataset
                || field(c_network) != workload.network
                || field(c_batch) != batch
                || field(c_optimizer) != workload.optimizer
            {
                continue;
            }
            let number = |c: usize, name: &str| {
                field(c).parse::<f64>().map_err(|_| {
                    err(format!(
                        "line {line}: {name} {:?} is not a number",
                        field(c)
                    ))
                })
            };
            let limit_watts = number(c_limit, "power_limit")?;
            let seconds_per_epoch = number(c_time, "time_per_epoch")?;
            let draw_watts = number(c_power, "average_power")?;
            points.push(CurvePoint {
                power_limit_watts: limit_watts,
                throughput_per_s: 1.0 / seconds_per_epoch,
                draw_watts,
            });
        }
        // Two limits is the least that gives a range to set a limit within.
        if points.len() < 2 {
            return Err(err(format!(
                "{} rows for workload {}, need at least 2 power limits",
                points.len(),
                workload.name()
            )));
        }
        let curve = PowerCurve::from_points(points).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            gpu_model: gpu_model.to_owned(),
            workload: workload.name(),
            curve,
        })
    }

    /// The bundled V100 sweep for ResNet-50 on ImageNet (limits 100–250 W).
    pub fn bundled_v100_resnet50() -> Result<Self, SourceError> {
        Self::from_zeus_csv(
            ZEUS_V100_CSV,
            "agent/data/summary_power_v100.csv",
            "Tesla V100 (simulated)",
            &ZeusWorkload::imagenet_resnet50(),
        )
    }

    /// The bundled A40 sweep for ResNet-50 on ImageNet (limits 100–300 W).
    pub fn bundled_a40_resnet50() -> Result<Self, SourceError> {
        Self::from_zeus_csv(
            ZEUS_A40_CSV,
            "agent/data/summary_power_a40.csv",
            "NVIDIA A40 (simulated)",
            &ZeusWorkload::imagenet_resnet50(),
        )
    }

    /// The swept limits as the device's range; the default is the highest (a GPU's default
    /// limit is its maximum unless an operator lowered it).
    fn limit_range(&self) -> Option<PowerLimitRange> {
        let (min_watts, max_watts) = self.curve.limit_range_watts()?;
        Some(PowerLimitRange {
            min_watts,
            max_watts,
            default_watts: max_watts,
        })
    }
}

/// How the simulated job behaves over time.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seeds the noise; the same seed gives the same draw, bit for bit.
    pub seed: u64,
    /// Relative noise on the draw, uniform in ±this fraction per step. 2 % is about the
    /// step-to-step spread of a steady training job's NVML power reading.
    pub noise_fraction: f64,
    /// The draw is constant within a step. 1 s matches the agent's sampling interval.
    pub step: Duration,
    /// Draw with the job resident but no kernel running (data loading, checkpoint writes).
    /// Only the shape matters here; 40 W is in the range idle datacentre GPUs report.
    pub idle_watts: f64,
    /// Time from job start to steady state (data-loader spin-up, cuDNN autotuning, caches);
    /// draw and throughput ramp linearly over it.
    pub warm_up: Duration,
    /// A checkpoint is written at the end of every such interval of steady training;
    /// `Duration::ZERO` disables checkpoints.
    pub checkpoint_every: Duration,
    /// How long writing a checkpoint stalls training.
    pub checkpoint_duration: Duration,
    /// Share of the steady draw above idle kept during a checkpoint (the GPU mostly waits).
    pub checkpoint_draw_fraction: f64,
    /// SM clock at the highest limit; lower limits scale it with throughput, since a power cap
    /// slows a compute-bound job by lowering its clock.
    pub max_sm_clock_mhz: u32,
    pub memory_clock_mhz: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            noise_fraction: 0.02,
            step: Duration::from_secs(1),
            idle_watts: 40.0,
            warm_up: Duration::from_secs(60),
            checkpoint_every: Duration::from_secs(30 * 60),
            checkpoint_duration: Duration::from_secs(20),
            checkpoint_draw_fraction: 0.1,
            // V100 SXM2 boost and HBM2 clocks (NVIDIA's data sheet figures).
            max_sm_clock_mhz: 1530,
            memory_clock_mhz: 877,
        }
    }
}

impl SimConfig {
    /// No noise, warm-up or checkpoints: the profile's draw, flat, for exact-value tests.
    pub fn flat() -> Self {
        Self {
            noise_fraction: 0.0,
            warm_up: Duration::ZERO,
            checkpoint_every: Duration::ZERO,
            ..Self::default()
        }
    }
}

/// Utilisation of a busy training step: data loading and the optimiser step leave a few
/// percent idle even in steady state.
const STEADY_UTILISATION_PERCENT: f64 = 97.0;
/// Utilisation while a checkpoint is written: the GPU only copies tensors out.
const CHECKPOINT_UTILISATION_PERCENT: f64 = 5.0;
/// Memory utilisation relative to compute utilisation for a convolutional network.
const MEMORY_TO_COMPUTE_UTILISATION: f64 = 0.4;
const PICOJOULES_PER_MILLIJOULE: u128 = 1_000_000_000;

/// What the job is doing during one step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Ramping up; the fraction of steady state reached.
    WarmUp(f64),
    Steady,
    Checkpoint,
}

#[derive(Debug, Clone)]
struct SimGpu {
    index: u64,
    limit_watts: f64,
    /// Simulated time up to which energy and work have been integrated.
    integrated_to: Duration,
    energy_pj: u128,
    work_units: f64,
}

/// Simulated GPUs, all running the same profiled workload from the source's creation.
#[derive(Debug)]
pub struct SimulatedSource {
    clock: Arc<dyn Clock>,
    config: SimConfig,
    profile: PowerProfile,
    range: PowerLimitRange,
    /// When the job started, on `clock`.
    start: Duration,
    devices: Vec<DeviceInfo>,
    gpus: Vec<SimGpu>,
    /// The counters start from zero with the source: see [`PowerSource::counter_epoch`].
    epoch: u64,
}

impl SimulatedSource {
    /// `count` GPUs running `profile` at its default (highest) limit, starting now.
    pub fn new(
        clock: Arc<dyn Clock>,
        config: SimConfig,
        profile: PowerProfile,
        count: usize,
    ) -> Result<Self, SourceError> {
        let init = |reason: String| SourceError::Init {
            backend: "simulated",
            reason,
        };
        let range = profile
            .limit_range()
            .ok_or_else(|| init("the profile has no points".into()))?;
        if config.step.is_zero() {
            return Err(init("the step must be longer than zero".into()));
        }
        // Noise of 100 % or more would allow a zero or negative draw.
        if !(0.0..1.0).contains(&config.noise_fraction) {
            return Err(init(format!(
                "noise fraction {} is outside [0, 1)",
                config.noise_fraction
            )));
        }
        if !(0.0..=1.0).contains(&config.checkpoint_draw_fraction) {
            return Err(init(format!(
                "checkpoint draw fraction {} is outside [0, 1]",
                config.checkpoint_draw_fraction
            )));
        }
        if !(config.idle_watts.is_finite() && config.idle_watts >= 0.0) {
            return Err(init(format!(
                "idle draw {} W is not a non-negative number",
                config.idle_watts
            )));
        }
        let start = clock.now();
        let devices = (0..count)
            .map(|i| DeviceInfo {
                uuid: format!("GPU-sim-{:016x}-{i}", config.seed),
                model: profile.gpu_model.clone(),
                kind: DeviceKind::Gpu,
                power_limit: Some(range),
            })
            .collect();
        let gpus = (0..count)
            .map(|i| SimGpu {
                index: i as u64,
                limit_watts: range.default_watts,
                integrated_to: Duration::ZERO,
                energy_pj: 0,
                work_units: 0.0,
            })
            .collect();
        Ok(Self {
            clock,
            config,
            profile,
            range,
            start,
            devices,
            gpus,
            epoch: epoch_now(),
        })
    }

    /// The profile being played.
    pub fn profile(&self) -> &PowerProfile {
        &self.profile
    }

    /// Work done so far on `device`, in the profile's unit (epochs), up to now.
    pub fn work_done(&mut self, device: usize) -> Option<f64> {
        let now = self.job_time();
        let (config, profile) = (&self.config, &self.profile);
        let gpu = self.gpus.get_mut(device)?;
        integrate(config, profile, gpu, now);
        Some(gpu.work_units)
    }

    /// Time since the job started; a clock that went backwards counts as no time passing.
    fn job_time(&self) -> Duration {
        self.clock.now().saturating_sub(self.start)
    }
}

fn phase_at(config: &SimConfig, t: Duration) -> Phase {
    if t < config.warm_up {
        return Phase::WarmUp(t.as_secs_f64() / config.warm_up.as_secs_f64());
    }
    let steady = t - config.warm_up;
    if !config.checkpoint_every.is_zero() {
        let into_interval = steady.as_nanos() % config.checkpoint_every.as_nanos();
        let checkpoint_from = config
            .checkpoint_every
            .saturating_sub(config.checkpoint_duration)
            .as_nanos();
        if into_interval >= checkpoint_from {
            return Phase::Checkpoint;
        }
    }
    Phase::Steady
}

/// A uniform number in [-1, 1) from (seed, device, step): SplitMix64's output mix applied to
/// the combined key, so each step's noise is independent of when the source is read.
fn noise(seed: u64, device: u64, step: u64) -> f64 {
    let mut z = seed
        ^ device.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The top 53 bits give a uniform double in [0, 1).
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    2.0 * unit - 1.0
}

/// Draw, throughput and utilisation of `gpu` during the step containing job time `t`.
struct StepState {
    draw_mw: u64,
    throughput_per_s: f64,
    utilisation_percent: f64,
}

fn step_state(config: &SimConfig, profile: &PowerProfile, gpu: &SimGpu, t: Duration) -> StepState {
    let step_ns = config.step.as_nanos();
    let step_index = u64::try_from(t.as_nanos() / step_ns).unwrap_or(u64::MAX);
    let step_start =
        Duration::from_nanos(u64::try_from(t.as_nanos() / step_ns * step_ns).unwrap_or(u64::MAX));
    let phase = phase_at(config, step_start);
    // The limit is always within the profile's range (set_power_limit checks), so `at` finds a
    // point; an empty answer would mean a bug, and an idle GPU is the safe reading.
    let point = profile.curve.at(gpu.limit_watts);
    let (steady_watts, steady_throughput) = point.map_or((config.idle_watts, 0.0), |p| {
        (p.draw_watts, p.throughput_per_s)
    });
    let idle = config.idle_watts;
    let (draw, throughput, utilisation) = match phase {
        Phase::WarmUp(f) => (
            idle + f * (steady_watts - idle),
            f * steady_throughput,
            f * STEADY_UTILISATION_PERCENT,
        ),
        Phase::Steady => (steady_watts, steady_throughput, STEADY_UTILISATION_PERCENT),
        Phase::Checkpoint => (
            idle + config.checkpoint_draw_fraction * (steady_watts - idle),
            0.0,
            CHECKPOINT_UTILISATION_PERCENT,
        ),
    };
    let noisy = draw * (1.0 + config.noise_fraction * noise(config.seed, gpu.index, step_index));
    // Whole milliwatts (NVML's unit) keep the energy integral exact in integers.
    let draw_mw = (noisy.max(0.0) * 1000.0).round() as u64;
    StepState {
        draw_mw,
        throughput_per_s: throughput,
        utilisation_percent: utilisation,
    }
}

/// Integrates energy and work of `gpu` from where it got to up to job time `to`.
fn integrate(config: &SimConfig, profile: &PowerProfile, gpu: &mut SimGpu, to: Duration) {
    let step_ns = config.step.as_nanos();
    while gpu.integrated_to < to {
        let from = gpu.integrated_to;
        let next_boundary_ns = (from.as_nanos() / step_ns + 1) * step_ns;
        let next_boundary =
            Duration::from_nanos(u64::try_from(next_boundary_ns).unwrap_or(u64::MAX));
        let until = next_boundary.min(to);
        let state = step_state(config, profile, gpu, from);
        let dt = until - from;
        // mW × ns = pJ.
        gpu.energy_pj += u128::from(state.draw_mw) * dt.as_nanos();
        gpu.work_units += state.throughput_per_s * dt.as_secs_f64();
        gpu.integrated_to = until;
    }
}

impl PowerSource for SimulatedSource {
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn workload(&self, device: usize) -> Option<&str> {
        self.devices
            .get(device)
            .map(|_| self.profile.workload.as_str())
    }

    fn counter_epoch(&self) -> u64 {
        self.epoch
    }

    fn read(&mut self, device: usize) -> Result<Reading, SourceError> {
        let now = self.clock.now();
        let job_time = now.saturating_sub(self.start);
        let (config, profile) = (&self.config, &self.profile);
        let (Some(gpu), Some(info)) = (self.gpus.get_mut(device), self.devices.get(device)) else {
            return Err(SourceError::Read {
                device: device.to_string(),
                reason: ReadFailure::UnknownDevice(device),
            });
        };
        integrate(config, profile, gpu, job_time);
        let state = step_state(config, profile, gpu, job_time);
        let max_throughput = profile
            .curve
            .at(self.range.max_watts)
            .map_or(0.0, |p| p.throughput_per_s);
        // The SM clock follows the limit's slowdown (and is left there through warm-up and
        // checkpoints: the driver keeps clocks up while a context is busy or just idle).
        let clock_ratio = match profile.curve.at(gpu.limit_watts) {
            Some(p) if max_throughput > 0.0 => p.throughput_per_s / max_throughput,
            _ => 1.0,
        };
        let sm_clock_mhz = (f64::from(config.max_sm_clock_mhz) * clock_ratio).round() as u32;
        Ok(Reading {
            device_uuid: info.uuid.clone(),
            at: now,
            power_watts: state.draw_mw as f64 / 1000.0,
            power_provenance: Provenance::Simulated,
            energy_mj: u64::try_from(gpu.energy_pj / PICOJOULES_PER_MILLIJOULE).unwrap_or(u64::MAX),
            energy_provenance: Provenance::Simulated,
            utilisation_percent: Some(state.utilisation_percent.round() as u32),
            memory_utilisation_percent: Some(
                (state.utilisation_percent * MEMORY_TO_COMPUTE_UTILISATION).round() as u32,
            ),
            sm_clock_mhz: Some(sm_clock_mhz),
            memory_clock_mhz: Some(config.memory_clock_mhz),
            power_limit_watts: Some(gpu.limit_watts),
            memory: None,
            work_done: Some(gpu.work_units),
        })
    }

    fn set_power_limit(&mut self, device: usize, limit_watts: f64) -> Result<(), SourceError> {
        let job_time = self.job_time();
        let (config, profile, range) = (&self.config, &self.profile, self.range);
        let (Some(gpu), Some(info)) = (self.gpus.get_mut(device), self.devices.get(device)) else {
            return Err(SourceError::SetPowerLimit {
                device: device.to_string(),
                requested_watts: limit_watts,
                reason: SetLimitFailure::UnknownDevice(device),
            });
        };
        if !range.contains(limit_watts) {
            return Err(SourceError::SetPowerLimit {
                device: info.uuid.clone(),
                requested_watts: limit_watts,
                reason: SetLimitFailure::OutOfRange {
                    min_watts: range.min_watts,
                    max_watts: range.max_watts,
                },
            });
        }
        // Everything up to now ran at the old limit.
        integrate(config, profile, gpu, job_time);
        gpu.limit_watts = limit_watts;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn source(
        config: SimConfig,
        count: usize,
    ) -> Result<(ManualClock, SimulatedSource), SourceError> {
        let clock = ManualClock::new();
        let profile = PowerProfile::bundled_v100_resnet50()?;
        let sim = SimulatedSource::new(Arc::new(clock.clone()), config, profile, count)?;
        Ok((clock, sim))
    }

    #[test]
    fn bundled_profiles_load_with_their_swept_limits() -> TestResult {
        let v100 = PowerProfile::bundled_v100_resnet50()?;
        assert_eq!(v100.curve.limit_range_watts(), Some((100.0, 250.0)));
        assert_eq!(v100.curve.points().len(), 7);
        assert_eq!(v100.workload, "imagenet/resnet50/b256/adadelta");
        let a40 = PowerProfile::bundled_a40_resnet50()?;
        assert_eq!(a40.curve.limit_range_watts(), Some((100.0, 300.0)));
        // Row "imagenet,resnet50,256,adadelta,200,3700.973333333334,184.94427296655326".
        let p = v100.curve.at(200.0).ok_or("no 200 W point")?;
        assert_eq!(p.draw_watts, 184.94427296655326);
        assert_eq!(p.throughput_per_s, 1.0 / 3700.973333333334);
        Ok(())
    }

    #[test]
    fn profile_errors_name_the_problem() {
        let w = ZeusWorkload::imagenet_resnet50();
        let missing = PowerProfile::from_zeus_csv("dataset,network\n", "x.csv", "g", &w);
        assert!(
            matches!(&missing, Err(SourceError::LoadProfile { reason, .. }) if reason.contains("batch_size"))
        );
        let garbage = "dataset,network,batch_size,optimizer,power_limit,time_per_epoch,average_power\n\
                       imagenet,resnet50,256,adadelta,100,abc,99\n";
        let e = PowerProfile::from_zeus_csv(garbage, "x.csv", "g", &w);
        assert!(
            matches!(&e, Err(SourceError::LoadProfile { reason, .. }) if reason.contains("line 2"))
        );
        let other = ZeusWorkload {
            batch_size: 3,
            ..ZeusWorkload::imagenet_resnet50()
        };
        assert!(PowerProfile::from_zeus_csv(ZEUS_V100_CSV, "v100", "g", &other).is_err());
    }

    #[test]
    fn flat_profile_energy_is_exact() -> TestResult {
        let (clock, mut sim) = source(SimConfig::flat(), 1)?;
        sim.set_power_limit(0, 200.0)?;
        clock.advance(Duration::from_secs(10));
        let r = sim.read(0)?;
        // 184.94427296655326 W rounds to 184,944 mW; 10 s of it is 1,849,440 mJ.
        assert_eq!(r.power_watts, 184.944);
        assert_eq!(r.energy_mj, 1_849_440);
        assert_eq!(r.power_limit_watts, Some(200.0));
        assert_eq!(r.energy_provenance, Provenance::Simulated);
        Ok(())
    }

    #[test]
    fn energy_integrates_exactly_the_reported_noisy_draw() -> TestResult {
        let config = SimConfig {
            seed: 42,
            warm_up: Duration::from_secs(5),
            checkpoint_every: Duration::from_secs(20),
            checkpoint_duration: Duration::from_secs(3),
            ..SimConfig::default()
        };
        let (clock, mut sim) = source(config, 2)?;
        let mut previous = sim.read(1)?;
        assert_eq!(previous.energy_mj, 0);
        for _ in 0..100 {
            clock.advance(Duration::from_secs(1));
            let r = sim.read(1)?;
            // 1 s at P mW is exactly P mJ.
            let previous_mw = (previous.power_watts * 1000.0).round() as u64;
            assert_eq!(r.energy_mj - previous.energy_mj, previous_mw);
            previous = r;
        }
        Ok(())
    }

    #[test]
    fn same_seed_same_draw_regardless_of_read_pattern() -> TestResult {
        let config = SimConfig {
            seed: 7,
            ..SimConfig::default()
        };
        let (c1, mut a) = source(config.clone(), 1)?;
        let (c2, mut b) = source(config, 1)?;
        // `a` is read every second, `b` only at the end.
        for _ in 0..3600 {
            c1.advance(Duration::from_secs(1));
            a.read(0)?;
        }
        c2.advance(Duration::from_secs(3600));
        assert_eq!(a.read(0)?, b.read(0)?);
        let (c3, mut c) = source(
            SimConfig {
                seed: 8,
                ..SimConfig::default()
            },
            1,
        )?;
        c3.advance(Duration::from_secs(3600));
        assert_ne!(a.read(0)?.energy_mj, c.read(0)?.energy_mj);
        Ok(())
    }

    #[test]
    fn phases_warm_up_steady_and_checkpoint_dip() -> TestResult {
        let config = SimConfig {
            noise_fraction: 0.0,
            warm_up: Duration::from_secs(60),
            checkpoint_every: Duration::from_secs(600),
            checkpoint_duration: Duration::from_secs(30),
            ..SimConfig::default()
        };
        let (clock, mut sim) = source(config, 1)?;
        let steady = 220.25029530245453; // V100 at 250 W, the default limit
        let at = |sim: &mut SimulatedSource, secs: u64| -> Result<Reading, SourceError> {
            clock.set(Duration::from_secs(secs));
            sim.read(0)
        };
        let start = at(&mut sim, 0)?;
        assert_eq!(start.power_watts, 40.0);
        assert_eq!(start.utilisation_percent, Some(0));
        let half = at(&mut sim, 30)?;
        assert_eq!(
            half.power_watts,
            ((40.0 + 0.5 * (steady - 40.0)) * 1000.0_f64).round() / 1000.0
        );
        let running = at(&mut sim, 100)?;
        assert_eq!(running.power_watts, (steady * 1000.0_f64).round() / 1000.0);
        assert_eq!(running.utilisation_percent, Some(97));
        // Steady from 60 s; the checkpoint occupies the last 30 s of each 600 s: 630..660 s.
        let dip = at(&mut sim, 640)?;
        assert_eq!(
            dip.power_watts,
            ((40.0 + 0.1 * (steady - 40.0)) * 1000.0_f64).round() / 1000.0
        );
        assert_eq!(dip.utilisation_percent, Some(5));
        let after = at(&mut sim, 661)?;
        assert_eq!(after.power_watts, running.power_watts);
        Ok(())
    }

    #[test]
    fn power_limit_is_obeyed_and_out_of_range_rejected() -> TestResult {
        let (clock, mut sim) = source(SimConfig::flat(), 1)?;
        clock.advance(Duration::from_secs(1));
        let full = sim.read(0)?;
        sim.set_power_limit(0, 150.0)?;
        let capped = sim.read(0)?;
        assert!(capped.power_watts < full.power_watts);
        assert_eq!(capped.power_limit_watts, Some(150.0));
        // Between swept limits the draw is interpolated: 137.5 W is between 125 and 150 W.
        sim.set_power_limit(0, 137.5)?;
        let mid = sim.read(0)?.power_watts;
        assert!(mid > 121.9660191434676 && mid < 144.59474877795884);
        for bad in [99.9, 250.1, f64::NAN, -1.0] {
            let e = sim.set_power_limit(0, bad);
            assert!(
                matches!(
                    e,
                    Err(SourceError::SetPowerLimit {
                        reason: SetLimitFailure::OutOfRange {
                            min_watts: 100.0,
                            max_watts: 250.0
                        },
                        ..
                    })
                ),
                "{bad}: {e:?}"
            );
        }
        let msg = sim.set_power_limit(0, 400.0).err().map(|e| e.to_string());
        assert_eq!(
            msg.as_deref(),
            Some(
                "setting the power limit of device GPU-sim-0000000000000000-0 to 400 W: \
                 outside the allowed range 100–250 W"
            )
        );
        // A refused limit leaves the old one in force.
        assert_eq!(sim.read(0)?.power_limit_watts, Some(137.5));
        Ok(())
    }

    #[test]
    fn energy_before_a_limit_change_is_billed_at_the_old_limit() -> TestResult {
        let (clock, mut sim) = source(SimConfig::flat(), 1)?;
        clock.set(Duration::from_millis(2500));
        sim.set_power_limit(0, 100.0)?; // mid-step
        clock.set(Duration::from_secs(5));
        let r = sim.read(0)?;
        // 2.5 s at 220.250 W + 2.5 s at 98.382 W (the 100 W row, 98.38240555274153 W).
        assert_eq!(r.energy_mj, 2500 * 220_250 / 1000 + 2500 * 98_382 / 1000);
        Ok(())
    }

    #[test]
    fn bad_configs_are_init_errors() -> TestResult {
        let profile = PowerProfile::bundled_v100_resnet50()?;
        for config in [
            SimConfig {
                step: Duration::ZERO,
                ..SimConfig::default()
            },
            SimConfig {
                noise_fraction: 1.5,
                ..SimConfig::default()
            },
            SimConfig {
                checkpoint_draw_fraction: f64::NAN,
                ..SimConfig::default()
            },
            SimConfig {
                idle_watts: -1.0,
                ..SimConfig::default()
            },
        ] {
            let clock = Arc::new(ManualClock::new());
            let r = SimulatedSource::new(clock, config, profile.clone(), 1);
            assert!(matches!(
                r,
                Err(SourceError::Init {
                    backend: "simulated",
                    ..
                })
            ));
        }
        Ok(())
    }

    #[test]
    fn unknown_devices_are_errors_not_panics() -> TestResult {
        let (_, mut sim) = source(SimConfig::flat(), 2)?;
        assert!(matches!(
            sim.read(2),
            Err(SourceError::Read {
                reason: ReadFailure::UnknownDevice(2),
                ..
            })
        ));
        assert!(sim.set_power_limit(5, 150.0).is_err());
        assert_eq!(sim.read_all().len(), 2);
        assert_eq!(sim.device_index("GPU-sim-0000000000000000-1"), Some(1));
        Ok(())
    }

    #[test]
    fn work_follows_the_profile_throughput() -> TestResult {
        let (clock, mut sim) = source(SimConfig::flat(), 1)?;
        sim.set_power_limit(0, 250.0)?;
        clock.advance(Duration::from_secs(3514));
        // 3514.986666666666 s per epoch at 250 W.
        let epochs = sim.work_done(0).ok_or("no device")?;
        assert!((epochs - 3514.0 / 3514.986666666666).abs() < 1e-9);
        Ok(())
    }
}
