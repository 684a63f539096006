//! Prints what NVML reads for each GPU once: inventory, power-limit range, and one reading.
//! Run on a GPU machine: `cargo run -p offpeak-agent --example nvml_probe`.
//! Exits with status 1 and the reason where NVML cannot start (no driver, no permission).

use std::process::ExitCode;
use std::sync::Arc;

use offpeak_agent::PowerSource;
use offpeak_agent::clock::MonotonicClock;
use offpeak_agent::nvml::NvmlSource;

fn main() -> ExitCode {
    let mut nvml = match NvmlSource::new(Arc::new(MonotonicClock::new())) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("nvml_probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    match nvml.driver_version() {
        Ok(v) => println!("driver {v}"),
        Err(e) => println!("driver version unknown: {e}"),
    }
    println!("{} device(s)", nvml.devices().len());
    for (index, info) in nvml.devices().to_vec().iter().enumerate() {
        println!("device {index}: {} ({})", info.uuid, info.model);
        match info.power_limit {
            Some(l) => println!(
                "  power limit range {}–{} W, default {} W",
                l.min_watts, l.max_watts, l.default_watts
            ),
            None => println!("  power limit not settable through NVML"),
        }
        match nvml.read(index) {
            Ok(r) => {
                println!(
                    "  power {} W ({:?}), energy {} mJ ({:?})",
                    r.power_watts, r.power_provenance, r.energy_mj, r.energy_provenance
                );
                println!(
                    "  utilisation {:?} %, memory {:?} %, SM clock {:?} MHz, memory clock {:?} MHz, limit {:?} W",
                    r.utilisation_percent,
                    r.memory_utilisation_percent,
                    r.sm_clock_mhz,
                    r.memory_clock_mhz,
                    r.power_limit_watts
                );
            }
            Err(e) => println!("  read failed: {e}"),
        }
    }
    ExitCode::SUCCESS
}
