//! The RAPL source against a fake powercap tree in a temporary directory: the same files and
//! formats as `/sys/class/powercap`, as plain directories instead of sysfs symlinks.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use offpeak_agent::clock::ManualClock;
use offpeak_agent::rapl::RaplSource;
use offpeak_agent::source::{
    DeviceKind, PowerSource, Provenance, ReadFailure, SetLimitFailure, SourceError,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A real package's `max_energy_range_uj` (about 262 kJ).
const MAX_RANGE_UJ: u64 = 262_143_328_850;

fn zone(root: &Path, dir: &str, name: &str, energy_uj: u64) -> std::io::Result<()> {
    let d = root.join(dir);
    fs::create_dir_all(&d)?;
    fs::write(d.join("name"), format!("{name}\n"))?;
    fs::write(d.join("energy_uj"), format!("{energy_uj}\n"))?;
    fs::write(d.join("max_energy_range_uj"), format!("{MAX_RANGE_UJ}\n"))?;
    Ok(())
}

fn set_energy(root: &Path, dir: &str, energy_uj: u64) -> std::io::Result<()> {
    fs::write(root.join(dir).join("energy_uj"), format!("{energy_uj}\n"))
}

/// Two packages with core and dram sub-zones, and a psys zone.
fn two_socket_tree(root: &Path) -> std::io::Result<()> {
    zone(root, "intel-rapl:0", "package-0", 1_000_000)?;
    zone(root, "intel-rapl:0:0", "core", 500_000)?;
    zone(root, "intel-rapl:0:1", "dram", 2_000_000)?;
    zone(root, "intel-rapl:1", "package-1", 3_000_000)?;
    zone(root, "intel-rapl:1:0", "dram", 0)?;
    zone(root, "intel-rapl:2", "psys", 0)?;
    // Not zones: the control type entry and the MMIO interface.
    fs::create_dir_all(root.join("intel-rapl"))?;
    zone(root, "intel-rapl-mmio:0", "package-0", 0)?;
    Ok(())
}

fn source(root: &Path) -> Result<(ManualClock, RaplSource), SourceError> {
    let clock = ManualClock::new();
    let rapl = RaplSource::new(root, Arc::new(clock.clone()))?;
    Ok((clock, rapl))
}

#[test]
fn finds_packages_dram_and_psys_but_not_core() -> TestResult {
    let dir = tempfile::tempdir()?;
    two_socket_tree(dir.path())?;
    let (_, rapl) = source(dir.path())?;
    let found: Vec<(&str, &str, DeviceKind)> = rapl
        .devices()
        .iter()
        .map(|d| (d.uuid.as_str(), d.model.as_str(), d.kind))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                "rapl:intel-rapl:0",
                "RAPL package-0",
                DeviceKind::CpuPackage
            ),
            ("rapl:intel-rapl:0:1", "RAPL dram", DeviceKind::Dram),
            (
                "rapl:intel-rapl:1",
                "RAPL package-1",
                DeviceKind::CpuPackage
            ),
            ("rapl:intel-rapl:1:0", "RAPL dram", DeviceKind::Dram),
            ("rapl:intel-rapl:2", "RAPL psys", DeviceKind::Platform),
        ]
    );
    assert!(rapl.devices().iter().all(|d| d.power_limit.is_none()));
    Ok(())
}

#[test]
fn energy_and_power_come_from_counter_deltas() -> TestResult {
    let dir = tempfile::tempdir()?;
    two_socket_tree(dir.path())?;
    let (clock, mut rapl) = source(dir.path())?;
    // 2 s at 65 W on package-0: +130 J.
    clock.advance(Duration::from_secs(2));
    set_energy(dir.path(), "intel-rapl:0", 1_000_000 + 130_000_000)?;
    let r = rapl.read(0)?;
    assert_eq!(r.energy_mj, 130_000);
    assert_eq!(r.power_watts, 65.0);
    assert_eq!(r.power_provenance, Provenance::Measured);
    assert_eq!(r.energy_provenance, Provenance::Measured);
    assert_eq!(r.at, Duration::from_secs(2));
    assert_eq!(r.utilisation_percent, None);
    // Another 0.5 s at 20 W: +10 J.
    clock.advance(Duration::from_millis(500));
    set_energy(dir.path(), "intel-rapl:0", 1_000_000 + 140_000_000)?;
    let r = rapl.read(0)?;
    assert_eq!(r.energy_mj, 140_000);
    assert_eq!(r.power_watts, 20.0);
    // No time passed: the same power, the same energy.
    let again = rapl.read(0)?;
    assert_eq!((again.power_watts, again.energy_mj), (20.0, 140_000));
    Ok(())
}

#[test]
fn wrap_around_is_unwrapped() -> TestResult {
    let dir = tempfile::tempdir()?;
    zone(
        dir.path(),
        "intel-rapl:0",
        "package-0",
        MAX_RANGE_UJ - 50_000_000,
    )?;
    let (clock, mut rapl) = source(dir.path())?;
    // 1 s at 200 W crosses the maximum: 50 J up to it, 150 J after zero.
    clock.advance(Duration::from_secs(1));
    set_energy(dir.path(), "intel-rapl:0", 150_000_000)?;
    let r = rapl.read(0)?;
    assert_eq!(r.energy_mj, 200_000);
    assert_eq!(r.power_watts, 200.0);
    // And it keeps counting from there.
    clock.advance(Duration::from_secs(1));
    set_energy(dir.path(), "intel-rapl:0", 250_000_000)?;
    assert_eq!(rapl.read(0)?.energy_mj, 300_000);
    Ok(())
}

#[test]
fn counter_going_backwards_without_wrap_is_an_error_and_recovers() -> TestResult {
    let dir = tempfile::tempdir()?;
    zone(dir.path(), "intel-rapl:0", "package-0", 5_000_000_000)?;
    let (clock, mut rapl) = source(dir.path())?;
    clock.advance(Duration::from_secs(1));
    set_energy(dir.path(), "intel-rapl:0", 4_000_000_000)?;
    let e = rapl.read(0);
    assert!(
        matches!(
            &e,
            Err(SourceError::Read {
                reason: ReadFailure::CounterWentBackwards {
                    previous_uj: 5_000_000_000,
                    current_uj: 4_000_000_000,
                    ..
                },
                ..
            })
        ),
        "{e:?}"
    );
    let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("went backwards"), "{msg}");
    // The next interval counts normally from the new value; the faulty one added nothing.
    clock.advance(Duration::from_secs(1));
    set_energy(dir.path(), "intel-rapl:0", 4_000_000_000 + 30_000_000)?;
    let r = rapl.read(0)?;
    assert_eq!((r.energy_mj, r.power_watts), (30_000, 30.0));
    Ok(())
}

#[test]
fn missing_energy_file_is_a_read_error_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    two_socket_tree(dir.path())?;
    let (clock, mut rapl) = source(dir.path())?;
    fs::remove_file(dir.path().join("intel-rapl:1").join("energy_uj"))?;
    clock.advance(Duration::from_secs(1));
    let results = rapl.read_all();
    assert_eq!(results.len(), 5);
    // Only package-1 (device 2) fails; the others still read.
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i == 2, "device {i}: {r:?}");
    }
    let msg = results[2]
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.starts_with("reading device rapl:intel-rapl:1: ") && msg.contains("energy_uj"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn missing_or_garbage_files_at_start_are_init_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    zone(dir.path(), "intel-rapl:0", "package-0", 0)?;
    fs::remove_file(dir.path().join("intel-rapl:0").join("max_energy_range_uj"))?;
    let e = source(dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("initialising the RAPL power source") && e.contains("max_energy_range_uj"),
        "{e}"
    );

    let dir = tempfile::tempdir()?;
    zone(dir.path(), "intel-rapl:0", "package-0", 0)?;
    fs::write(dir.path().join("intel-rapl:0").join("energy_uj"), "12ab\n")?;
    let e = source(dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("\"12ab\""), "{e}");

    let empty = tempfile::tempdir()?;
    assert!(matches!(
        source(empty.path()),
        Err(SourceError::Init {
            backend: "RAPL",
            ..
        })
    ));
    assert!(source(&empty.path().join("absent")).is_err());
    Ok(())
}

#[test]
fn garbage_counter_content_is_a_read_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    zone(dir.path(), "intel-rapl:0", "package-0", 1_000)?;
    let (clock, mut rapl) = source(dir.path())?;
    clock.advance(Duration::from_secs(1));
    for garbage in ["", "-5", "1.5e6", "lots", "18446744073709551616"] {
        fs::write(dir.path().join("intel-rapl:0").join("energy_uj"), garbage)?;
        let e = rapl.read(0);
        assert!(
            matches!(&e, Err(SourceError::Read { reason: ReadFailure::Garbage { content, .. }, .. }) if content == garbage),
            "{garbage:?}: {e:?}"
        );
    }
    // Garbage did not disturb the baseline.
    set_energy(dir.path(), "intel-rapl:0", 1_000 + 7_000_000)?;
    assert_eq!(rapl.read(0)?.energy_mj, 7_000);
    Ok(())
}

#[test]
fn power_limits_are_not_set_through_rapl() -> TestResult {
    let dir = tempfile::tempdir()?;
    two_socket_tree(dir.path())?;
    let (_, mut rapl) = source(dir.path())?;
    assert!(matches!(
        rapl.set_power_limit(0, 100.0),
        Err(SourceError::SetPowerLimit {
            reason: SetLimitFailure::Unsupported,
            ..
        })
    ));
    assert!(matches!(
        rapl.read(99),
        Err(SourceError::Read {
            reason: ReadFailure::UnknownDevice(99),
            ..
        })
    ));
    Ok(())
}
