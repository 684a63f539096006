//! Curve fitting end to end: sweep the simulated GPU's power limit as the agent's profile run
//! would, build the curve from what the source reports (energy counter and work done), and
//! check it finds the same most efficient limit as the recorded Zeus profile.

use std::sync::Arc;
use std::time::Duration;

use offpeak_agent::PowerSource;
use offpeak_agent::clock::ManualClock;
use offpeak_agent::curve::{CurvePoint, CurveStore, LinearFit};
use offpeak_agent::sim::{PowerProfile, SimConfig, SimulatedSource};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Long enough that the ±2 % per-second noise averages out to well under the 3 % gap between
/// the V100 profile's best limit and its neighbours.
const RUN_SECONDS: u64 = 600;

#[test]
fn sweep_of_the_simulator_finds_the_profiles_most_efficient_limit() -> TestResult {
    let profile = PowerProfile::bundled_v100_resnet50()?;
    let expected = profile.curve.most_efficient().ok_or("empty profile")?;
    // Zeus V100 ResNet-50: 150 W costs the least energy per epoch.
    assert_eq!(expected.power_limit_watts, 150.0);
    let limits: Vec<f64> = profile
        .curve
        .points()
        .map(|p| p.power_limit_watts)
        .collect();

    let mut store = CurveStore::new();
    for (i, &limit) in limits.iter().enumerate() {
        let clock = ManualClock::new();
        let config = SimConfig {
            seed: 1000 + i as u64,
            warm_up: Duration::ZERO,
            checkpoint_every: Duration::ZERO,
            ..SimConfig::default()
        };
        let mut sim = SimulatedSource::new(Arc::new(clock.clone()), config, profile.clone(), 1)?;
        sim.set_power_limit(0, limit)?;
        for _ in 0..RUN_SECONDS {
            clock.advance(Duration::from_secs(1));
            sim.read(0)?;
        }
        let end = sim.read(0)?;
        let seconds = RUN_SECONDS as f64;
        let draw_watts = end.energy_mj as f64 / 1000.0 / seconds;
        let throughput_per_s = sim.work_done(0).ok_or("no device")? / seconds;
        // The measured draw is the profile's, within the noise.
        let recorded = profile.curve.at(limit).ok_or("limit not in profile")?;
        assert!(
            (draw_watts / recorded.draw_watts - 1.0).abs() < 0.005,
            "{limit} W"
        );
        store.record(
            &profile.gpu_model,
            &profile.workload,
            CurvePoint {
                power_limit_watts: limit,
                throughput_per_s,
                draw_watts,
            },
        )?;
    }
    let fitted = store
        .get(&profile.gpu_model, &profile.workload)
        .ok_or("no curve")?;
    assert_eq!(fitted.points().len(), limits.len());
    let best = fitted.most_efficient().ok_or("empty curve")?;
    assert_eq!(best.power_limit_watts, expected.power_limit_watts);
    Ok(())
}

#[test]
fn draw_against_utilisation_from_warm_up_readings() -> TestResult {
    let clock = ManualClock::new();
    let config = SimConfig {
        noise_fraction: 0.0,
        warm_up: Duration::from_secs(100),
        checkpoint_every: Duration::ZERO,
        ..SimConfig::default()
    };
    let idle_watts = config.idle_watts;
    let profile = PowerProfile::bundled_v100_resnet50()?;
    let steady_watts = profile.curve.at(250.0).ok_or("no 250 W point")?.draw_watts;
    let mut sim = SimulatedSource::new(Arc::new(clock.clone()), config, profile, 1)?;
    let mut readings = Vec::new();
    for _ in 0..100 {
        readings.push(sim.read(0)?);
        clock.advance(Duration::from_secs(1));
    }
    // During warm-up draw and utilisation (0 → 97 %) ramp together, so the fit is the line
    // from the idle draw to the steady draw; utilisation is reported in whole percent, hence
    // the tolerance.
    let fit = LinearFit::from_readings(&readings)?;
    assert_eq!(fit.samples, 100);
    assert!((fit.intercept_watts - idle_watts).abs() < 0.5, "{fit:?}");
    let slope = (steady_watts - idle_watts) / 97.0;
    assert!(
        (fit.slope_watts_per_percent / slope - 1.0).abs() < 0.01,
        "{fit:?}"
    );
    assert!(fit.r_squared > 0.999, "{fit:?}");
    Ok(())
}
