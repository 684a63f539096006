//! Linux RAPL through the powercap sysfs tree: CPU package, DRAM and platform energy.
//!
//! Each zone is a directory `<root>/intel-rapl:<n>[:<m>]` holding `name`, `energy_uj` (a
//! counter that wraps at `max_energy_range_uj`) and `max_energy_range_uj`. The root is a
//! parameter ([`DEFAULT_POWERCAP_ROOT`] on a real machine) so tests build a fake tree.
//!
//! Energy comes from the counter, unwrapped into a 64-bit total since the source started;
//! power is the counter's increase over the interval since the previous reading. Since 2020
//! (CVE-2020-8694) `energy_uj` is readable by root only on most kernels: a permission error
//! surfaces as a read error naming the file.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::source::{
    DeviceInfo, DeviceKind, PowerSource, Provenance, ReadFailure, Reading, SetLimitFailure,
    SourceError, epoch_now,
};

/// Where the kernel exposes powercap zones.
pub const DEFAULT_POWERCAP_ROOT: &str = "/sys/class/powercap";

/// The most one RAPL zone can plausibly draw. A counter lower than its last value is a
/// wrap-around only if the implied draw stays below this; otherwise the counter went
/// backwards (a reset, a firmware fault). Server CPU packages are rated at ~500 W at most, so
/// 5 kW leaves a wide margin while still catching a backwards step (a false wrap implies
/// hundreds of kilojoules, far above it for any realistic sampling interval).
pub const MAX_PLAUSIBLE_ZONE_WATTS: f64 = 5_000.0;

const ZONE_PREFIX: &str = "intel-rapl:";
const MICROJOULES_PER_MILLIJOULE: u64 = 1_000;

#[derive(Debug)]
struct Zone {
    energy_path: PathBuf,
    max_range_uj: u64,
    last_raw_uj: u64,
    last_at: Duration,
    total_uj: u64,
    last_power_watts: f64,
}

/// RAPL zones found under a powercap root.
#[derive(Debug)]
pub struct RaplSource {
    clock: Arc<dyn Clock>,
    devices: Vec<DeviceInfo>,
    zones: Vec<Zone>,
    /// The unwrapped totals start from zero with the source.
    epoch: u64,
}

/// The numeric path of a zone directory name: `intel-rapl:0:1` → `[0, 1]`.
fn zone_indices(dir_name: &str) -> Option<Vec<u32>> {
    dir_name
        .strip_prefix(ZONE_PREFIX)?
        .split(':')
        .map(|n| n.parse().ok())
        .collect()
}

fn read_trimmed(path: &Path) -> Result<String, ReadFailure> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| ReadFailure::Io {
            path: path.to_owned(),
            source,
        })
}

fn read_u64(path: &Path) -> Result<u64, ReadFailure> {
    let text = read_trimmed(path)?;
    text.parse().map_err(|_| ReadFailure::Garbage {
        path: path.to_owned(),
        content: text,
    })
}

impl RaplSource {
    /// Finds the zones under `root` and takes a first counter reading of each as the baseline.
    ///
    /// Kept: every top-level zone (`package-N`, `psys`) and the `dram` sub-zones. Left out:
    /// the `core` and `uncore` sub-zones, whose energy the package already counts, so summing
    /// the devices of this source never counts a joule twice.
    pub fn new(root: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        let root = root.as_ref();
        let init = |reason: String| SourceError::Init {
            backend: "RAPL",
            reason,
        };
        let entries = fs::read_dir(root).map_err(|e| init(format!("{}: {e}", root.display())))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| init(format!("{}: {e}", root.display())))?;
            let dir_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(indices) = zone_indices(&dir_name) {
                found.push((indices, dir_name, entry.path()));
            }
        }
        // Numeric order, so intel-rapl:10 comes after intel-rapl:2 and device indices are stable.
        found.sort();
        let now = clock.now();
        let mut devices = Vec::new();
        let mut zones = Vec::new();
        for (indices, dir_name, dir) in found {
            let name = read_trimmed(&dir.join("name")).map_err(|e| init(e.to_string()))?;
            let kind = match (indices.len(), name.as_str()) {
                (_, "dram") => DeviceKind::Dram,
                (1, n) if n.starts_with("package") => DeviceKind::CpuPackage,
                (1, _) => DeviceKind::Platform,
                _ => continue,
            };
            let max_range_uj =
                read_u64(&dir.join("max_energy_range_uj")).map_err(|e| init(e.to_string()))?;
            let energy_path = dir.join("energy_uj");
            let first_uj = read_u64(&energy_path).map_err(|e| init(e.to_string()))?;
            devices.push(DeviceInfo {
                uuid: format!("rapl:{dir_name}"),
                model: format!("RAPL {name}"),
                kind,
                power_limit: None,
            });
            zones.push(Zone {
                energy_path,
                max_range_uj,
                last_raw_uj: first_uj,
                last_at: now,
                total_uj: 0,
                last_power_watts: 0.0,
            });
        }
        if zones.is_empty() {
            return Err(init(format!(
                "no {ZONE_PREFIX}* package, psys or dram zones under {}",
                root.display()
            )));
        }
        Ok(Self {
            clock,
            devices,
            zones,
            epoch: epoch_now(),
        })
    }
}

impl Zone {
    /// Takes a counter reading; returns the energy since the previous one, in µJ.
    fn advance(&mut self, raw_uj: u64, now: Duration) -> Result<u64, ReadFailure> {
        let elapsed = now.saturating_sub(self.last_at);
        let delta_uj = if raw_uj >= self.last_raw_uj {
            raw_uj - self.last_raw_uj
        } else {
            // Counting up to the maximum and on from zero. The true step at the wrap is one
            // hardware energy unit (15–61 µJ), not counted: negligible against a wrap's
            // hundreds of kilojoules.
            let wrapped_uj = self.max_range_uj.saturating_sub(self.last_raw_uj) + raw_uj;
            // µJ / µs = W; zero elapsed time makes any wrap implausible.
            let implied_watts =
                wrapped_uj as f64 / (elapsed.as_secs_f64() * 1e6).max(f64::MIN_POSITIVE);
            if raw_uj > self.max_range_uj || implied_watts > MAX_PLAUSIBLE_ZONE_WATTS {
                let failure = ReadFailure::CounterWentBackwards {
                    previous_uj: self.last_raw_uj,
                    current_uj: raw_uj,
                    elapsed_ms: elapsed.as_millis(),
                    implied_watts,
                };
                // Start again from here, so one fault costs one interval, not every reading
                // after it.
                self.last_raw_uj = raw_uj;
                self.last_at = now;
                return Err(failure);
            }
            wrapped_uj
        };
        self.total_uj = self.total_uj.saturating_add(delta_uj);
        if !elapsed.is_zero() {
            // µJ / µs = W.
            self.last_power_watts = delta_uj as f64 / (elapsed.as_secs_f64() * 1e6);
        }
        self.last_raw_uj = raw_uj;
        self.last_at = now;
        Ok(delta_uj)
    }
}

impl PowerSource for RaplSource {
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn counter_epoch(&self) -> u64 {
        self.epoch
    }

    /// Power is the average since the previous reading (the first reading: since the source
    /// was created); a reading at the same instant as the previous one repeats its power.
    fn read(&mut self, device: usize) -> Result<Reading, SourceError> {
        let (Some(zone), Some(info)) = (self.zones.get_mut(device), self.devices.get(device))
        else {
            return Err(SourceError::Read {
                device: device.to_string(),
                reason: ReadFailure::UnknownDevice(device),
            });
        };
        let read_error = |reason| SourceError::Read {
            device: info.uuid.clone(),
            reason,
        };
        let raw_uj = read_u64(&zone.energy_path).map_err(read_error)?;
        let now = self.clock.now();
        zone.advance(raw_uj, now).map_err(read_error)?;
        Ok(Reading {
            device_uuid: info.uuid.clone(),
            at: now,
            power_watts: zone.last_power_watts,
            power_provenance: Provenance::Measured,
            energy_mj: zone.total_uj / MICROJOULES_PER_MILLIJOULE,
            energy_provenance: Provenance::Measured,
            utilisation_percent: None,
            memory_utilisation_percent: None,
            sm_clock_mhz: None,
            memory_clock_mhz: None,
            power_limit_watts: None,
            memory: None,
            work_done: None,
        })
    }

    /// The agent limits accelerators, not CPUs: RAPL limits are not set through this source.
    fn set_power_limit(&mut self, device: usize, limit_watts: f64) -> Result<(), SourceError> {
        let device_name = self
            .devices
            .get(device)
            .map_or_else(|| device.to_string(), |d| d.uuid.clone());
        Err(SourceError::SetPowerLimit {
            device: device_name,
            requested_watts: limit_watts,
            reason: SetLimitFailure::Unsupported,
        })
    }
}
