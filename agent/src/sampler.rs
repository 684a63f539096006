//! Reading a [`PowerSource`] into what a batch carries: one wire [`Sample`] per device, named
//! after the pod using it where attribution knows it, and the power curves fitted from the
//! readings so far ([`CurveRecorder`]).

use std::collections::HashMap;

use offpeak_proto::v1::{self as wire, Device, PodRef, Sample};
use tracing::{debug, info, warn};

use crate::curve::{CurveRecorder, CurveStore};
use crate::source::{DeviceInfo, PowerSource, Provenance, Reading};

/// Reads every device of a source into the samples of one batch, and fits curves on the way.
#[derive(Debug)]
pub struct Sampler<S> {
    source: S,
    /// Unix time, in ms, of the source clock's origin: readings carry clock time.
    unix_origin_ms: i64,
    curves: CurveRecorder,
    /// The pod using each device (by UUID), from the kubelet's pod-resources API.
    pods: HashMap<String, PodRef>,
    /// Devices whose last reading failed, with the error: a device failing the same way every
    /// tick (a TPU node between workloads has no runtime to ask) is logged when it starts and
    /// when it stops, not once a second.
    failing: HashMap<usize, String>,
}

impl<S: PowerSource> Sampler<S> {
    /// `unix_origin_ms` is the Unix time of the source clock's zero.
    pub fn new(source: S, unix_origin_ms: i64) -> Self {
        Self {
            source,
            unix_origin_ms,
            curves: CurveRecorder::new(),
            pods: HashMap::new(),
            failing: HashMap::new(),
        }
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// The source, e.g. to set a limit or read its counters in a test.
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    pub fn into_source(self) -> S {
        self.source
    }

    /// The inventory to register.
    pub fn devices(&self) -> Vec<Device> {
        self.source.devices().iter().map(to_device).collect()
    }

    /// Replaces who uses which device (device UUID → pod); devices not listed are unused.
    pub fn set_pods(&mut self, pods: HashMap<String, PodRef>) {
        self.pods = pods;
    }

    /// The pod using a device, as last attributed.
    pub fn pod_of(&self, device_uuid: &str) -> Option<&PodRef> {
        self.pods.get(device_uuid)
    }

    /// A device's limit changed: the interval up to its next reading is left out of curves.
    pub fn limit_changed(&mut self, device_uuid: &str) {
        self.curves.forget(device_uuid);
    }

    /// Reads every device once. A device that fails to read is logged and left out; the
    /// others' samples still go.
    pub fn sample(&mut self) -> Vec<Sample> {
        let epoch = self.source.counter_epoch();
        let readings = self.source.read_all();
        let mut samples = Vec::with_capacity(readings.len());
        for (device, reading) in readings.into_iter().enumerate() {
            let reading = match reading {
                Ok(r) => r,
                Err(e) => {
                    let error = e.to_string();
                    if self.failing.get(&device) == Some(&error) {
                        debug!(%error, "reading a device failed again; its sample is left out");
                    } else {
                        warn!(%error, "reading a device failed; its sample is left out (repeats of this error are logged at debug level)");
                        self.failing.insert(device, error);
                    }
                    continue;
                }
            };
            if self.failing.remove(&device).is_some() {
                info!(device = %reading.device_uuid, "reading the device works again");
            }
            if let (Some(info), Some(workload)) = (
                self.source.devices().get(device),
                self.source.workload(device),
            ) {
                self.curves.observe(&info.model, workload, &reading);
            }
            let mut sample = to_sample(&reading, self.unix_origin_ms);
            sample.counter_epoch = epoch;
            sample.pod = self.pods.get(&reading.device_uuid).cloned();
            samples.push(sample);
        }
        samples
    }

    /// The curves fitted so far.
    pub fn curve_store(&self) -> &CurveStore {
        self.curves.store()
    }

    /// The curves fitted so far, as the wire carries them.
    pub fn curves(&self) -> Vec<wire::PowerCurve> {
        to_wire_curves(self.curves.store())
    }
}

/// Whole watts, as the wire carries limits (and as limits are set).
fn whole_watts(w: f64) -> u32 {
    w.round().clamp(0.0, f64::from(u32::MAX)) as u32
}

fn to_device(d: &DeviceInfo) -> Device {
    let range = d.power_limit;
    Device {
        uuid: d.uuid.clone(),
        model: d.model.clone(),
        min_power_limit_watts: range.map_or(0, |r| whole_watts(r.min_watts)),
        max_power_limit_watts: range.map_or(0, |r| whole_watts(r.max_watts)),
        default_power_limit_watts: range.map_or(0, |r| whole_watts(r.default_watts)),
    }
}

fn to_sample(r: &Reading, unix_origin_ms: i64) -> Sample {
    let at_ms = i64::try_from(r.at.as_millis()).unwrap_or(i64::MAX);
    Sample {
        device_uuid: r.device_uuid.clone(),
        time_unix_ms: unix_origin_ms.saturating_add(at_ms),
        power_watts: r.power_watts,
        energy_mj: r.energy_mj,
        // Percent, as the sources report it.
        utilization: r.utilisation_percent.map_or(0.0, f64::from),
        sm_clock_mhz: r.sm_clock_mhz.unwrap_or(0),
        pod: None,
        // The wire has one flag for "not read from hardware"; simulated figures must not pass
        // for measured ones either.
        estimated: r.power_provenance != Provenance::Measured
            || r.energy_provenance != Provenance::Measured,
        power_limit_watts: r.power_limit_watts.map_or(0, whole_watts),
        counter_epoch: 0,
    }
}

/// Every curve of a store in wire form.
pub fn to_wire_curves(store: &CurveStore) -> Vec<wire::PowerCurve> {
    store
        .iter()
        .map(|(key, curve)| wire::PowerCurve {
            device_model: key.device_model.clone(),
            workload: key.workload.clone(),
            points: curve
                .points()
                .map(|p| wire::CurvePoint {
                    power_limit_watts: whole_watts(p.power_limit_watts),
                    throughput: p.throughput_per_s,
                    watts: p.draw_watts,
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::sim::{PowerProfile, SimConfig, SimulatedSource};
    use crate::source::SourceError;

    #[test]
    fn samples_carry_counters_unix_time_limits_and_are_marked_not_measured()
    -> Result<(), SourceError> {
        let clock = ManualClock::new();
        let source = SimulatedSource::new(
            Arc::new(clock.clone()),
            SimConfig::flat(),
            PowerProfile::bundled_v100_resnet50()?,
            2,
        )?;
        let mut sampler = Sampler::new(source, 1_700_000_000_000);
        assert_eq!(sampler.devices().len(), 2);
        assert_eq!(sampler.devices()[0].max_power_limit_watts, 250);
        clock.advance(Duration::from_secs(2));
        let samples = sampler.sample();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].time_unix_ms, 1_700_000_002_000);
        assert!(samples[0].estimated);
        assert_eq!(samples[0].power_limit_watts, 250);
        assert_ne!(samples[0].counter_epoch, 0);
        // Flat draw for 2 s: the counter is twice the reported power, in mJ.
        assert_eq!(
            samples[0].energy_mj,
            (samples[0].power_watts * 2_000.0).round() as u64
        );
        Ok(())
    }

    #[test]
    fn curves_follow_the_limits_the_devices_ran_at() -> Result<(), SourceError> {
        let clock = ManualClock::new();
        let profile = PowerProfile::bundled_v100_resnet50()?;
        let source = SimulatedSource::new(
            Arc::new(clock.clone()),
            SimConfig::flat(),
            profile.clone(),
            1,
        )?;
        let mut sampler = Sampler::new(source, 0);
        for limit in [150.0, 250.0] {
            sampler.source_mut().set_power_limit(0, limit)?;
            sampler.limit_changed("GPU-sim-0000000000000000-0");
            for _ in 0..5 {
                sampler.sample();
                clock.advance(Duration::from_secs(1));
            }
        }
        let curves = sampler.curves();
        assert_eq!(curves.len(), 1);
        assert_eq!(curves[0].workload, profile.workload);
        let limits: Vec<u32> = curves[0]
            .points
            .iter()
            .map(|p| p.power_limit_watts)
            .collect();
        assert_eq!(limits, vec![150, 250]);
        // Flat draw: the 150 W point is the profile's, to the milliwatt.
        let recorded = profile.curve.at(150.0).map(|p| p.draw_watts).unwrap_or(0.0);
        assert!((curves[0].points[0].watts - recorded).abs() < 0.001);
        Ok(())
    }

    #[test]
    fn samples_name_the_pod_using_the_device() -> Result<(), SourceError> {
        let clock = ManualClock::new();
        let source = SimulatedSource::new(
            Arc::new(clock),
            SimConfig::flat(),
            PowerProfile::bundled_v100_resnet50()?,
            2,
        )?;
        let mut sampler = Sampler::new(source, 0);
        let pod = PodRef {
            namespace: "ml".into(),
            pod: "train-0".into(),
            container: "worker".into(),
        };
        sampler.set_pods(HashMap::from([(
            "GPU-sim-0000000000000000-1".to_owned(),
            pod.clone(),
        )]));
        let samples = sampler.sample();
        assert_eq!(samples[0].pod, None);
        assert_eq!(samples[1].pod, Some(pod));
        Ok(())
    }
}
