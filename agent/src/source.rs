//! The power-source abstraction: what a device is, what one reading of it says, and the errors
//! a source reports. The NVML, RAPL, TPU and simulated sources implement [`PowerSource`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

/// What kind of device a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// An accelerator (GPU) with a settable power limit.
    Gpu,
    /// A CPU package (RAPL `package-N`).
    CpuPackage,
    /// The DRAM attached to a CPU package (RAPL `dram`).
    Dram,
    /// The whole platform (RAPL `psys`), or another RAPL zone.
    Platform,
    /// A TPU chip: its power is estimated from its duty cycle, and it has no settable limit.
    Tpu,
}

/// Where a number came from. The ledger bills measured energy; estimated and simulated
/// figures must be labelled as such in every sample (issue 4), never passed off as metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provenance {
    /// Read from the hardware (a power sensor or an energy counter).
    Measured,
    /// Derived by the agent from other readings (e.g. energy integrated from sampled power
    /// where the device has no energy counter).
    Estimated,
    /// Produced by the simulated source from a recorded profile.
    Simulated,
}

/// The power-limit range a device accepts, in watts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerLimitRange {
    pub min_watts: f64,
    pub max_watts: f64,
    /// The limit the device runs at when nobody sets one; restored when a job ends.
    pub default_watts: f64,
}

impl PowerLimitRange {
    /// Whether `limit_watts` is within `[min, max]` (inclusive; NaN is never within).
    pub fn contains(&self, limit_watts: f64) -> bool {
        limit_watts >= self.min_watts && limit_watts <= self.max_watts
    }
}

/// A device as the source found it (the inventory the agent registers with).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Stable identity: the GPU UUID for NVML, `rapl:<zone dir>` for RAPL.
    pub uuid: String,
    /// Model name ("Tesla V100-SXM2-32GB", "package-0"): curves are kept per model.
    pub model: String,
    pub kind: DeviceKind,
    /// `None` where the device's power limit cannot be set through this source.
    pub power_limit: Option<PowerLimitRange>,
}

/// One reading of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device_uuid: String,
    /// When it was read, on the source's injected clock.
    pub at: Duration,
    /// Power draw in watts: instantaneous for NVML and the simulator, the average since the
    /// previous reading for RAPL (which has only an energy counter).
    pub power_watts: f64,
    pub power_provenance: Provenance,
    /// Cumulative energy in millijoules, never decreasing for the life of the source.
    pub energy_mj: u64,
    pub energy_provenance: Provenance,
    /// Share of the last sample period the device was busy, 0–100; `None` where unknown.
    pub utilisation_percent: Option<u32>,
    /// Share of the last sample period device memory was read or written, 0–100.
    pub memory_utilisation_percent: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
    /// The power limit in force, where the device has one.
    pub power_limit_watts: Option<f64>,
    /// Device memory in use and in total, where the source reports it (TPU HBM).
    pub memory: Option<MemoryUse>,
    /// Work done since the source started, in the workload's own unit (epochs, samples),
    /// where the source knows it. Accelerators do not report it (the simulator does, and a
    /// profile run's job would); with it the agent fits throughput against power limit.
    pub work_done: Option<f64>,
}

/// Device memory in use against its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// Something that reads the power of the devices on this node and may set their limits.
pub trait PowerSource {
    /// The devices this source found, in a fixed order; `device` arguments index into it.
    fn devices(&self) -> &[DeviceInfo];

    /// Brings the source's view of its devices up to date before a round of reads. `read` is
    /// synchronous; a source whose devices answer over the network (the TPU runtime's metrics
    /// service) asks them here, once per round, and its reads then use that answer. Sources
    /// that read their devices directly (NVML, RAPL, the simulator) need nothing.
    fn refresh(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Reads one device once.
    fn read(&mut self, device: usize) -> Result<Reading, SourceError>;

    /// Sets a device's power limit; refuses limits outside its [`PowerLimitRange`].
    fn set_power_limit(&mut self, device: usize, limit_watts: f64) -> Result<(), SourceError>;

    /// Reads every device once. One device failing does not hide the others' readings.
    fn read_all(&mut self) -> Vec<Result<Reading, SourceError>> {
        (0..self.devices().len()).map(|d| self.read(d)).collect()
    }

    /// The index of the device with this UUID.
    fn device_index(&self, uuid: &str) -> Option<usize> {
        self.devices().iter().position(|d| d.uuid == uuid)
    }

    /// The name of the workload running on a device, where the source knows it (curves are
    /// kept per device model and workload).
    fn workload(&self, _device: usize) -> Option<&str> {
        None
    }

    /// Identifies the run of this source's energy counters (see `Sample.counter_epoch`): it
    /// changes when the counters restart from zero, so the scheduler takes a new baseline
    /// instead of reading a counter that went backwards. 0: unknown.
    fn counter_epoch(&self) -> u64 {
        0
    }
}

/// A counter epoch for a source whose counters start from zero when it is created: the wall
/// time of creation in nanoseconds, distinct between restarts of the agent.
pub fn epoch_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .max(1)
}

/// Why reading a device failed.
#[derive(Debug, Error)]
pub enum ReadFailure {
    #[error("no device with index {0}")]
    UnknownDevice(usize),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: expected an unsigned integer, found {content:?}")]
    Garbage { path: PathBuf, content: String },
    #[error(
        "energy counter went backwards from {previous_uj} to {current_uj} uJ in {elapsed_ms} ms \
         and a wrap-around cannot explain it (it would mean {implied_watts:.0} W)"
    )]
    CounterWentBackwards {
        previous_uj: u64,
        current_uj: u64,
        elapsed_ms: u128,
        implied_watts: f64,
    },
    #[error("{what}: {detail}")]
    Driver { what: &'static str, detail: String },
    /// The TPU runtime's metrics gave nothing usable for the device (shared by every device of
    /// one failed answer, hence the `Arc`).
    #[error(transparent)]
    TpuRuntime(Arc<crate::tpu::TpuMetricsError>),
}

/// Why setting a power limit failed.
#[derive(Debug, Error)]
pub enum SetLimitFailure {
    #[error("no device with index {0}")]
    UnknownDevice(usize),
    #[error("outside the allowed range {min_watts}–{max_watts} W")]
    OutOfRange { min_watts: f64, max_watts: f64 },
    #[error("this source cannot set the power limit of this device")]
    Unsupported,
    #[error("{0}")]
    Driver(String),
}

/// Failure of a power source; each variant is named after the operation that failed.
#[derive(Debug, Error)]
pub enum SourceError {
    /// Starting the source: loading a library, finding devices, reading their constants.
    #[error("initialising the {backend} power source: {reason}")]
    Init {
        backend: &'static str,
        reason: String,
    },
    /// Reading a device.
    #[error("reading device {device}: {reason}")]
    Read {
        device: String,
        #[source]
        reason: ReadFailure,
    },
    /// Setting a device's power limit.
    #[error("setting the power limit of device {device} to {requested_watts} W: {reason}")]
    SetPowerLimit {
        device: String,
        requested_watts: f64,
        #[source]
        reason: SetLimitFailure,
    },
    /// Loading a recorded power profile for the simulated source.
    #[error("loading power profile {origin}: {reason}")]
    LoadProfile { origin: String, reason: String },
}
