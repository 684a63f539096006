//! Power curves: what the agent reports instead of single numbers.
//!
//! - [`PowerCurve`]: throughput and draw against power limit for one (device model, workload),
//!   the Zeus-style sweep. Points are kept sorted by limit; repeated samples at one limit are
//!   averaged. Interpolation is linear between measured limits and refused outside them
//!   (extrapolating a power curve past what was measured invents data).
//! - [`CurveStore`]: one curve per (device model, workload).
//! - [`CurveRecorder`]: builds the curves from a source's own readings, interval by interval;
//! - [`LinearFit`]: draw against utilisation by ordinary least squares.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use thiserror::Error;

use crate::source::Reading;

/// Failure of a curve operation; each variant is named after the operation that failed.
#[derive(Debug, Error, PartialEq)]
pub enum CurveError {
    #[error("adding a sample to a power curve: {0}")]
    AddSample(String),
    #[error("fitting a line: {0}")]
    FitLine(String),
}

/// One measured (or averaged) point of a power curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub power_limit_watts: f64,
    /// Work per second, in the workload's own unit (samples, tokens, epochs).
    pub throughput_per_s: f64,
    /// Average draw at this limit while the workload runs.
    pub draw_watts: f64,
}

impl CurvePoint {
    /// Energy per unit of work in joules: watts are joules per second, so draw / throughput.
    pub fn energy_per_unit_joules(&self) -> f64 {
        self.draw_watts / self.throughput_per_s
    }
}

/// A point with the number of samples averaged into it, so later samples weigh the same.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Averaged {
    point: CurvePoint,
    samples: u32,
}

/// Throughput and draw against power limit for one (device model, workload).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PowerCurve {
    /// Sorted by power limit, one entry per distinct limit.
    points: Vec<Averaged>,
}

impl PowerCurve {
    /// An empty curve.
    pub fn new() -> Self {
        Self::default()
    }

    /// A curve from points in any order (repeated limits are averaged).
    pub fn from_points(points: impl IntoIterator<Item = CurvePoint>) -> Result<Self, CurveError> {
        let mut curve = Self::new();
        for p in points {
            curve.add_sample(p)?;
        }
        Ok(curve)
    }

    /// Adds one measurement: a new limit is inserted in order, a known one is averaged in.
    pub fn add_sample(&mut self, sample: CurvePoint) -> Result<(), CurveError> {
        let CurvePoint {
            power_limit_watts,
            throughput_per_s,
            draw_watts,
        } = sample;
        if !(power_limit_watts.is_finite() && power_limit_watts > 0.0) {
            return Err(CurveError::AddSample(format!(
                "power limit {power_limit_watts} W is not a positive number"
            )));
        }
        // Zero throughput would make energy per unit infinite; such a sample means the job was
        // stalled, which says nothing about the limit.
        if !(throughput_per_s.is_finite() && throughput_per_s > 0.0) {
            return Err(CurveError::AddSample(format!(
                "throughput {throughput_per_s}/s is not a positive number"
            )));
        }
        if !(draw_watts.is_finite() && draw_watts >= 0.0) {
            return Err(CurveError::AddSample(format!(
                "draw {draw_watts} W is not a non-negative number"
            )));
        }
        match self
            .points
            .binary_search_by(|a| a.point.power_limit_watts.total_cmp(&power_limit_watts))
        {
            Ok(i) => {
                let a = &mut self.points[i];
                let n = f64::from(a.samples);
                a.point.throughput_per_s =
                    (a.point.throughput_per_s * n + throughput_per_s) / (n + 1.0);
                a.point.draw_watts = (a.point.draw_watts * n + draw_watts) / (n + 1.0);
                a.samples = a.samples.saturating_add(1);
            }
            Err(i) => self.points.insert(
                i,
                Averaged {
                    point: sample,
                    samples: 1,
                },
            ),
        }
        Ok(())
    }

    /// The points, sorted by power limit.
    pub fn points(&self) -> impl ExactSizeIterator<Item = CurvePoint> + '_ {
        self.points.iter().map(|a| a.point)
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The lowest and highest measured limits.
    pub fn limit_range_watts(&self) -> Option<(f64, f64)> {
        Some((
            self.points.first()?.point.power_limit_watts,
            self.points.last()?.point.power_limit_watts,
        ))
    }

    /// The curve at `limit_watts`, linear between the two measured limits around it; `None`
    /// outside the measured range (or on an empty curve).
    pub fn at(&self, limit_watts: f64) -> Option<CurvePoint> {
        let i = self
            .points
            .partition_point(|a| a.point.power_limit_watts < limit_watts);
        let hi = self.points.get(i)?.point;
        if hi.power_limit_watts == limit_watts {
            return Some(hi);
        }
        let lo = self.points.get(i.checked_sub(1)?)?.point;
        let t =
            (limit_watts - lo.power_limit_watts) / (hi.power_limit_watts - lo.power_limit_watts);
        let lerp = |a: f64, b: f64| a + t * (b - a);
        Some(CurvePoint {
            power_limit_watts: limit_watts,
            throughput_per_s: lerp(lo.throughput_per_s, hi.throughput_per_s),
            draw_watts: lerp(lo.draw_watts, hi.draw_watts),
        })
    }

    /// The measured point with the least energy per unit of work (the lowest limit among
    /// equals, since it also leaves the most headroom).
    pub fn most_efficient(&self) -> Option<CurvePoint> {
        self.points().min_by(|a, b| {
            a.energy_per_unit_joules()
                .total_cmp(&b.energy_per_unit_joules())
        })
    }
}

/// What a curve is kept for: the device model and the workload running on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CurveKey {
    pub device_model: String,
    pub workload: String,
}

/// One [`PowerCurve`] per (device model, workload).
#[derive(Debug, Clone, Default)]
pub struct CurveStore {
    curves: BTreeMap<CurveKey, PowerCurve>,
}

impl CurveStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample to the curve for (`device_model`, `workload`), creating it if new.
    pub fn record(
        &mut self,
        device_model: &str,
        workload: &str,
        sample: CurvePoint,
    ) -> Result<(), CurveError> {
        let key = CurveKey {
            device_model: device_model.to_owned(),
            workload: workload.to_owned(),
        };
        // Validate before inserting so a bad first sample leaves no empty curve behind.
        let mut curve = self.curves.get(&key).cloned().unwrap_or_default();
        curve.add_sample(sample)?;
        self.curves.insert(key, curve);
        Ok(())
    }

    pub fn get(&self, device_model: &str, workload: &str) -> Option<&PowerCurve> {
        self.curves.get(&CurveKey {
            device_model: device_model.to_owned(),
            workload: workload.to_owned(),
        })
    }

    /// Every curve, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&CurveKey, &PowerCurve)> {
        self.curves.iter()
    }
}

/// The previous reading of a device, as far as curves need it.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Duration,
    energy_mj: u64,
    work_done: f64,
    limit_watts: f64,
}

/// Builds power curves from readings: each interval between two readings of a device at the
/// same power limit gives one point, its draw the counter's energy over the interval and its
/// throughput the work done over it. Intervals with no work (a stalled job, a checkpoint
/// write) say nothing about the limit and are skipped; so are readings from sources that do
/// not report work done (curves then come from a profile run's job).
#[derive(Debug, Default)]
pub struct CurveRecorder {
    marks: HashMap<String, Mark>,
    store: CurveStore,
}

impl CurveRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one reading of a device of `device_model` running `workload`.
    pub fn observe(&mut self, device_model: &str, workload: &str, reading: &Reading) {
        let (Some(work_done), Some(limit_watts)) = (reading.work_done, reading.power_limit_watts)
        else {
            self.marks.remove(&reading.device_uuid);
            return;
        };
        let mark = Mark {
            at: reading.at,
            energy_mj: reading.energy_mj,
            work_done,
            limit_watts,
        };
        let Some(previous) = self.marks.insert(reading.device_uuid.clone(), mark) else {
            return;
        };
        let seconds = reading.at.saturating_sub(previous.at).as_secs_f64();
        let work = work_done - previous.work_done;
        if previous.limit_watts != limit_watts
            || seconds <= 0.0
            || reading.energy_mj < previous.energy_mj
            || work.is_nan()
            || work <= 0.0
        {
            return;
        }
        let joules = (reading.energy_mj - previous.energy_mj) as f64 / 1000.0;
        let point = CurvePoint {
            power_limit_watts: limit_watts,
            throughput_per_s: work / seconds,
            draw_watts: joules / seconds,
        };
        if let Err(e) = self.store.record(device_model, workload, point) {
            tracing::debug!(error = %e, device = %reading.device_uuid, "interval left out of the curve");
        }
    }

    /// Forgets a device's previous reading: its limit just changed, so the interval up to the
    /// next reading ran partly at the old one.
    pub fn forget(&mut self, device_uuid: &str) {
        self.marks.remove(device_uuid);
    }

    /// The curves so far.
    pub fn store(&self) -> &CurveStore {
        &self.store
    }
}

/// Draw against utilisation: `draw_watts = intercept_watts + slope_watts_per_percent × util`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearFit {
    /// Modelled draw at 0 % utilisation (idle draw with the job resident).
    pub intercept_watts: f64,
    pub slope_watts_per_percent: f64,
    /// Coefficient of determination, 1 for a perfect fit (1 also when every draw is equal).
    pub r_squared: f64,
    pub samples: usize,
}

impl LinearFit {
    /// Ordinary least squares over (utilisation %, draw W) pairs. Needs at least two distinct
    /// utilisations; all values must be finite.
    pub fn fit(samples: &[(f64, f64)]) -> Result<Self, CurveError> {
        if samples.len() < 2 {
            return Err(CurveError::FitLine(format!(
                "needs at least 2 samples, got {}",
                samples.len()
            )));
        }
        if let Some((u, w)) = samples
            .iter()
            .find(|(u, w)| !(u.is_finite() && w.is_finite()))
        {
            return Err(CurveError::FitLine(format!(
                "sample ({u} %, {w} W) is not finite"
            )));
        }
        // usize → f64 is exact for any realistic sample count (below 2^53).
        let n = samples.len() as f64;
        let mean_u = samples.iter().map(|s| s.0).sum::<f64>() / n;
        let mean_w = samples.iter().map(|s| s.1).sum::<f64>() / n;
        // Centred sums: numerically safer than the textbook Σxy − n·x̄·ȳ form.
        let (mut suu, mut suw, mut sww) = (0.0, 0.0, 0.0);
        for (u, w) in samples {
            let (du, dw) = (u - mean_u, w - mean_w);
            suu += du * du;
            suw += du * dw;
            sww += dw * dw;
        }
        if suu == 0.0 {
            return Err(CurveError::FitLine(format!(
                "every sample has the same utilisation ({mean_u} %), so the slope is undefined"
            )));
        }
        let slope = suw / suu;
        let intercept = mean_w - slope * mean_u;
        let r_squared = if sww == 0.0 {
            1.0
        } else {
            (suw * suw) / (suu * sww)
        };
        Ok(Self {
            intercept_watts: intercept,
            slope_watts_per_percent: slope,
            r_squared,
            samples: samples.len(),
        })
    }

    /// Fits draw against utilisation over readings that report a utilisation (the others, e.g.
    /// RAPL's, are skipped).
    pub fn from_readings<'a>(
        readings: impl IntoIterator<Item = &'a Reading>,
    ) -> Result<Self, CurveError> {
        let samples: Vec<(f64, f64)> = readings
            .into_iter()
            .filter_map(|r| Some((f64::from(r.utilisation_percent?), r.power_watts)))
            .collect();
        Self::fit(&samples)
    }

    /// The modelled draw at `utilisation_percent`.
    pub fn draw_watts_at(&self, utilisation_percent: f64) -> f64 {
        self.intercept_watts + self.slope_watts_per_percent * utilisation_percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(limit: f64, throughput: f64, draw: f64) -> CurvePoint {
        CurvePoint {
            power_limit_watts: limit,
            throughput_per_s: throughput,
            draw_watts: draw,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn points_are_sorted_and_repeated_limits_averaged() -> Result<(), CurveError> {
        let c = PowerCurve::from_points([
            pt(250.0, 10.0, 240.0),
            pt(150.0, 8.0, 150.0),
            pt(200.0, 9.0, 190.0),
            pt(150.0, 6.0, 140.0),
            pt(150.0, 7.0, 145.0),
        ])?;
        let limits: Vec<f64> = c.points().map(|p| p.power_limit_watts).collect();
        assert_eq!(limits, vec![150.0, 200.0, 250.0]);
        let first = c.points().next();
        assert_eq!(first, Some(pt(150.0, 7.0, 145.0)));
        assert_eq!(c.limit_range_watts(), Some((150.0, 250.0)));
        Ok(())
    }

    #[test]
    fn interpolates_linearly_and_refuses_to_extrapolate() -> Result<(), CurveError> {
        let c = PowerCurve::from_points([pt(100.0, 4.0, 100.0), pt(200.0, 8.0, 180.0)])?;
        let mid = c.at(150.0).ok_or(CurveError::FitLine("no point".into()))?;
        assert!(close(mid.throughput_per_s, 6.0));
        assert!(close(mid.draw_watts, 140.0));
        let quarter = c.at(125.0).ok_or(CurveError::FitLine("no point".into()))?;
        assert!(close(quarter.draw_watts, 120.0));
        assert_eq!(c.at(100.0), Some(pt(100.0, 4.0, 100.0)));
        assert_eq!(c.at(200.0), Some(pt(200.0, 8.0, 180.0)));
        assert_eq!(c.at(99.0), None);
        assert_eq!(c.at(201.0), None);
        assert_eq!(c.at(f64::NAN), None);
        assert_eq!(PowerCurve::new().at(150.0), None);
        Ok(())
    }

    #[test]
    fn most_efficient_point_has_least_energy_per_unit() -> Result<(), CurveError> {
        // J per unit: 100/4 = 25, 150/7 = 21.43, 240/8 = 30.
        let c = PowerCurve::from_points([
            pt(300.0, 8.0, 240.0),
            pt(100.0, 4.0, 100.0),
            pt(200.0, 7.0, 150.0),
        ])?;
        assert!(close(pt(100.0, 4.0, 100.0).energy_per_unit_joules(), 25.0));
        assert_eq!(c.most_efficient(), Some(pt(200.0, 7.0, 150.0)));
        assert_eq!(PowerCurve::new().most_efficient(), None);
        Ok(())
    }

    #[test]
    fn bad_samples_are_rejected_and_leave_no_trace() {
        let mut c = PowerCurve::new();
        assert!(c.add_sample(pt(f64::NAN, 1.0, 1.0)).is_err());
        assert!(c.add_sample(pt(-5.0, 1.0, 1.0)).is_err());
        assert!(c.add_sample(pt(100.0, 0.0, 1.0)).is_err());
        assert!(c.add_sample(pt(100.0, 1.0, -1.0)).is_err());
        assert!(c.add_sample(pt(100.0, 1.0, f64::INFINITY)).is_err());
        assert!(c.is_empty());
        let mut store = CurveStore::new();
        assert!(
            store
                .record("V100", "resnet50", pt(100.0, 0.0, 1.0))
                .is_err()
        );
        assert!(store.get("V100", "resnet50").is_none());
    }

    #[test]
    fn store_keeps_one_curve_per_model_and_workload() -> Result<(), CurveError> {
        let mut store = CurveStore::new();
        store.record("V100", "resnet50", pt(100.0, 1.0, 90.0))?;
        store.record("V100", "resnet50", pt(200.0, 2.0, 180.0))?;
        store.record("V100", "bert", pt(100.0, 3.0, 95.0))?;
        store.record("A40", "resnet50", pt(100.0, 1.5, 99.0))?;
        assert_eq!(
            store
                .get("V100", "resnet50")
                .map(PowerCurve::points)
                .map(|p| p.len()),
            Some(2)
        );
        assert_eq!(store.get("V100", "bert").map(|c| c.points().len()), Some(1));
        assert_eq!(store.get("A40", "bert"), None);
        assert_eq!(store.iter().count(), 3);
        Ok(())
    }

    fn reading(at_s: u64, energy_mj: u64, work_done: Option<f64>, limit: f64) -> Reading {
        Reading {
            device_uuid: "GPU-0".into(),
            at: Duration::from_secs(at_s),
            power_watts: 0.0,
            power_provenance: crate::source::Provenance::Simulated,
            energy_mj,
            energy_provenance: crate::source::Provenance::Simulated,
            utilisation_percent: None,
            memory_utilisation_percent: None,
            sm_clock_mhz: None,
            memory_clock_mhz: None,
            power_limit_watts: Some(limit),
            memory: None,
            work_done,
        }
    }

    #[test]
    fn recorder_turns_intervals_at_one_limit_into_points() {
        let mut r = CurveRecorder::new();
        r.observe("V100", "w", &reading(0, 0, Some(0.0), 200.0));
        // 2 s, 400 J, 4 units: 200 W, 2 units/s.
        r.observe("V100", "w", &reading(2, 400_000, Some(4.0), 200.0));
        // The limit changed: this interval is not taken.
        r.observe("V100", "w", &reading(3, 500_000, Some(5.0), 150.0));
        // No work done (a checkpoint): skipped.
        r.observe("V100", "w", &reading(4, 560_000, Some(5.0), 150.0));
        // 1 s, 120 J, 1.5 units.
        r.observe("V100", "w", &reading(5, 680_000, Some(6.5), 150.0));
        r.forget("GPU-0");
        r.observe("V100", "w", &reading(9, 999_000, Some(9.0), 150.0));
        // A source without work done gives no points.
        r.observe("V100", "w", &reading(10, 1_100_000, None, 150.0));
        r.observe("V100", "w", &reading(11, 1_200_000, None, 150.0));
        let points: Vec<CurvePoint> = r
            .store()
            .get("V100", "w")
            .map(|c| c.points().collect())
            .unwrap_or_default();
        assert_eq!(points, vec![pt(150.0, 1.5, 120.0), pt(200.0, 2.0, 200.0)]);
    }

    #[test]
    fn least_squares_recovers_an_exact_line() -> Result<(), CurveError> {
        // draw = 50 + 2 × util
        let s: Vec<(f64, f64)> = [0.0, 10.0, 50.0, 100.0]
            .iter()
            .map(|&u| (u, 50.0 + 2.0 * u))
            .collect();
        let f = LinearFit::fit(&s)?;
        assert!(close(f.intercept_watts, 50.0));
        assert!(close(f.slope_watts_per_percent, 2.0));
        assert!(close(f.r_squared, 1.0));
        assert!(close(f.draw_watts_at(75.0), 200.0));
        assert_eq!(f.samples, 4);
        Ok(())
    }

    #[test]
    fn least_squares_known_answer_with_residuals() -> Result<(), CurveError> {
        // x = 1,2,3,4; y = 6,5,7,10: x̄ = 2.5, ȳ = 7, Sxx = 5, Sxy = 7, Syy = 14.
        // slope 1.4, intercept 3.5, r² = 49 / 70 = 0.7.
        let f = LinearFit::fit(&[(1.0, 6.0), (2.0, 5.0), (3.0, 7.0), (4.0, 10.0)])?;
        assert!(close(f.slope_watts_per_percent, 1.4));
        assert!(close(f.intercept_watts, 3.5));
        assert!(close(f.r_squared, 0.7));
        Ok(())
    }

    #[test]
    fn least_squares_refuses_degenerate_input() {
        assert!(matches!(LinearFit::fit(&[]), Err(CurveError::FitLine(_))));
        assert!(matches!(
            LinearFit::fit(&[(1.0, 2.0)]),
            Err(CurveError::FitLine(_))
        ));
        assert!(matches!(
            LinearFit::fit(&[(50.0, 100.0), (50.0, 120.0)]),
            Err(CurveError::FitLine(_))
        ));
        assert!(matches!(
            LinearFit::fit(&[(10.0, 100.0), (f64::NAN, 120.0)]),
            Err(CurveError::FitLine(_))
        ));
    }
}
