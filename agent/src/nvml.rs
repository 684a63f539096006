//! NVIDIA GPUs through NVML, via `nvml-wrapper`, which loads `libnvidia-ml.so` at run time: the
//! agent builds and starts on machines without NVIDIA's driver, and [`NvmlSource::new`] then
//! fails with a clear error instead of the process failing to link or panicking.
//!
//! Energy is NVML's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the
//! driver loaded, Volta and later). On older GPUs, which lack it, energy is integrated from
//! sampled power and every reading says so ([`Provenance::Estimated`]).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::Clock as NvmlClock;
use nvml_wrapper::error::NvmlError;

use crate::clock::Clock;
use crate::source::{
    DeviceInfo, DeviceKind, PowerLimitRange, PowerSource, Provenance, ReadFailure, Reading,
    SetLimitFailure, SourceError, epoch_now,
};

/// NVML reports power and power limits in milliwatts.
const MILLIWATTS_PER_WATT: f64 = 1000.0;

/// Per-device state for energy integration where the device has no energy counter.
#[derive(Debug, Clone, Copy)]
struct Integrator {
    last: Option<(Duration, f64)>,
    /// Integrated energy in mJ, kept fractional so rounding does not accumulate.
    energy_mj: f64,
}

/// The GPUs NVML sees on this node.
#[derive(Debug)]
pub struct NvmlSource {
    nvml: Nvml,
    clock: Arc<dyn Clock>,
    devices: Vec<DeviceInfo>,
    integrators: Vec<Integrator>,
    /// See [`PowerSource::counter_epoch`].
    epoch: u64,
}

/// Where Linux publishes a random id that changes at every boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// NVML's total-energy counter runs from the driver's load, which (on a GPU node) is at boot:
/// the boot id names that run. The id is a UUID; its first 64 bits are random enough.
fn boot_epoch() -> Option<u64> {
    let text = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    let hex: String = text
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    u64::from_str_radix(&hex, 16).ok().filter(|&e| e != 0)
}

/// What an NVML initialisation error means for someone running the agent.
fn init_reason(error: &NvmlError) -> String {
    match error {
        NvmlError::LibloadingError(e) => format!(
            "NVIDIA driver library not found ({e}); install the NVIDIA driver, or use \
             another power source on a node without NVIDIA GPUs"
        ),
        NvmlError::LibraryNotFound => "NVIDIA driver library not found".to_owned(),
        NvmlError::FailedToLoadSymbol(s) => {
            format!("the NVIDIA driver library is too old or incomplete (missing symbol: {s})")
        }
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_owned(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".to_owned(),
        other => format!("NVML failed to start: {other}"),
    }
}

fn init_error(error: &NvmlError) -> SourceError {
    SourceError::Init {
        backend: "NVML",
        reason: init_reason(error),
    }
}

/// An optional quantity: `None` where the device does not support it, an error otherwise.
fn optional<T>(result: Result<T, NvmlError>, what: &'static str) -> Result<Option<T>, ReadFailure> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => Err(ReadFailure::Driver {
            what,
            detail: e.to_string(),
        }),
    }
}

fn milliwatts_to_watts(mw: u32) -> f64 {
    f64::from(mw) / MILLIWATTS_PER_WATT
}

impl NvmlSource {
    /// Loads `libnvidia-ml.so` from the loader path and finds every GPU.
    pub fn new(clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        Self::from_nvml(Nvml::init().map_err(|e| init_error(&e))?, clock)
    }

    /// Loads NVML from an explicit library path (a driver installed outside the loader path).
    pub fn with_library_path(path: &OsStr, clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        let nvml = Nvml::builder()
            .lib_path(path)
            .init()
            .map_err(|e| init_error(&e))?;
        Self::from_nvml(nvml, clock)
    }

    fn from_nvml(nvml: Nvml, clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        let init = |what: &str, e: NvmlError| SourceError::Init {
            backend: "NVML",
            reason: format!("{what}: {e}"),
        };
        let count = nvml
            .device_count()
            .map_err(|e| init("counting devices", e))?;
        let mut devices = Vec::new();
        let mut all_have_counters = true;
        for index in 0..count {
            let device = nvml
                .device_by_index(index)
                .map_err(|e| init("opening device", e))?;
            let uuid = device
                .uuid()
                .map_err(|e| init("reading a device UUID", e))?;
            let model = device
                .name()
                .map_err(|e| init("reading a device name", e))?;
            all_have_counters &= device.total_energy_consumption().is_ok();
            // Some GPUs (and most MIG and consumer setups) do not expose limit control.
            let power_limit = match (
                device.power_management_limit_constraints(),
                device.power_management_limit_default(),
            ) {
                (Ok(c), Ok(default_mw)) => Some(PowerLimitRange {
                    min_watts: milliwatts_to_watts(c.min_limit),
                    max_watts: milliwatts_to_watts(c.max_limit),
                    default_watts: milliwatts_to_watts(default_mw),
                }),
                _ => None,
            };
            devices.push(DeviceInfo {
                uuid,
                model,
                kind: DeviceKind::Gpu,
                power_limit,
            });
        }
        let integrators = vec![
            Integrator {
                last: None,
                energy_mj: 0.0,
            };
            devices.len()
        ];
        // Counters integrated by the agent start from zero with the source, so a restarted
        // agent starts a new epoch; hardware counters keep theirs until the next boot.
        let epoch = if all_have_counters {
            boot_epoch().unwrap_or_else(epoch_now)
        } else {
            epoch_now()
        };
        Ok(Self {
            nvml,
            clock,
            devices,
            integrators,
            epoch,
        })
    }

    /// The driver version, for the inventory and the probe.
    pub fn driver_version(&self) -> Result<String, SourceError> {
        self.nvml
            .sys_driver_version()
            .map_err(|e| SourceError::Read {
                device: "driver".to_owned(),
                reason: ReadFailure::Driver {
                    what: "driver version",
                    detail: e.to_string(),
                },
            })
    }

    fn read_device(&mut self, device: usize) -> Result<Reading, ReadFailure> {
        let info = self
            .devices
            .get(device)
            .ok_or(ReadFailure::UnknownDevice(device))?;
        let integrator = self
            .integrators
            .get_mut(device)
            .ok_or(ReadFailure::UnknownDevice(device))?;
        let index = u32::try_from(device).map_err(|_| ReadFailure::UnknownDevice(device))?;
        let driver = |what: &'static str| {
            move |e: NvmlError| ReadFailure::Driver {
                what,
                detail: e.to_string(),
            }
        };
        let gpu = self
            .nvml
            .device_by_index(index)
            .map_err(driver("opening the device"))?;
        let now = self.clock.now();
        let power_watts = milliwatts_to_watts(gpu.power_usage().map_err(driver("power"))?);
        let (energy_mj, energy_provenance) =
            match optional(gpu.total_energy_consumption(), "total energy")? {
                Some(mj) => (mj, Provenance::Measured),
                None => {
                    // Trapezoids between readings: the best estimate without a counter.
                    if let Some((at, watts)) = integrator.last {
                        let seconds = now.saturating_sub(at).as_secs_f64();
                        integrator.energy_mj += (watts + power_watts) / 2.0 * seconds * 1000.0;
                    }
                    integrator.last = Some((now, power_watts));
                    (integrator.energy_mj as u64, Provenance::Estimated)
                }
            };
        let utilisation = optional(gpu.utilization_rates(), "utilisation")?;
        Ok(Reading {
            device_uuid: info.uuid.clone(),
            at: now,
            power_watts,
            power_provenance: Provenance::Measured,
            energy_mj,
            energy_provenance,
            utilisation_percent: utilisation.as_ref().map(|u| u.gpu),
            memory_utilisation_percent: utilisation.as_ref().map(|u| u.memory),
            sm_clock_mhz: optional(gpu.clock_info(NvmlClock::SM), "SM clock")?,
            memory_clock_mhz: optional(gpu.clock_info(NvmlClock::Memory), "memory clock")?,
            power_limit_watts: optional(gpu.power_management_limit(), "power limit")?
                .map(milliwatts_to_watts),
            memory: None,
            work_done: None,
        })
    }
}

impl PowerSource for NvmlSource {
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn counter_epoch(&self) -> u64 {
        self.epoch
    }

    fn read(&mut self, device: usize) -> Result<Reading, SourceError> {
        self.read_device(device)
            .map_err(|reason| SourceError::Read {
                device: self
                    .devices
                    .get(device)
                    .map_or_else(|| device.to_string(), |d| d.uuid.clone()),
                reason,
            })
    }

    /// Needs root (or the driver's permission for unprivileged limit control).
    fn set_power_limit(&mut self, device: usize, limit_watts: f64) -> Result<(), SourceError> {
        let fail = |device: String, reason| SourceError::SetPowerLimit {
            device,
            requested_watts: limit_watts,
            reason,
        };
        let Some(info) = self.devices.get(device) else {
            return Err(fail(
                device.to_string(),
                SetLimitFailure::UnknownDevice(device),
            ));
        };
        let Some(range) = info.power_limit else {
            return Err(fail(info.uuid.clone(), SetLimitFailure::Unsupported));
        };
        if !range.contains(limit_watts) {
            return Err(fail(
                info.uuid.clone(),
                SetLimitFailure::OutOfRange {
                    min_watts: range.min_watts,
                    max_watts: range.max_watts,
                },
            ));
        }
        // In range, so finite and below u32::MAX mW.
        let limit_mw = (limit_watts * MILLIWATTS_PER_WATT).round() as u32;
        let driver = |e: NvmlError| {
            let detail = match e {
                NvmlError::NoPermission => {
                    "no permission: setting power limits needs root".to_owned()
                }
                other => other.to_string(),
            };
            fail(info.uuid.clone(), SetLimitFailure::Driver(detail))
        };
        let index = u32::try_from(device)
            .map_err(|_| fail(info.uuid.clone(), SetLimitFailure::UnknownDevice(device)))?;
        let mut gpu = self.nvml.device_by_index(index).map_err(driver)?;
        gpu.set_power_management_limit(limit_mw).map_err(driver)
    }
}
