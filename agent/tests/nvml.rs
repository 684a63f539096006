//! The NVML source without a GPU: initialisation must fail with a clear error, never panic.
//! Reading real devices is exercised by `examples/nvml_probe.rs` on a GPU machine.

use std::ffi::OsStr;
use std::sync::Arc;

use offpeak_agent::clock::MonotonicClock;
use offpeak_agent::nvml::NvmlSource;
use offpeak_agent::source::{PowerSource, SourceError};

#[test]
fn init_with_a_missing_library_is_a_clear_error() {
    let path = OsStr::new("/nonexistent/offpeak-test/libnvidia-ml.so");
    let result = NvmlSource::with_library_path(path, Arc::new(MonotonicClock::new()));
    match result {
        Err(
            e @ SourceError::Init {
                backend: "NVML", ..
            },
        ) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(
                    "initialising the NVML power source: NVIDIA driver library not found"
                ),
                "{msg}"
            );
        }
        other => panic!("expected an NVML init error, got {other:?}"),
    }
}

/// On this machine (no NVIDIA driver) the default library is absent; on a GPU machine the
/// source starts and every device reads. Either way, no panic.
#[test]
fn default_init_fails_cleanly_or_reads_every_device() {
    match NvmlSource::new(Arc::new(MonotonicClock::new())) {
        Err(SourceError::Init { backend, reason }) => {
            assert_eq!(backend, "NVML");
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("expected an init error, got {other:?}"),
        Ok(mut nvml) => {
            for r in nvml.read_all() {
                assert!(r.is_ok(), "{r:?}");
            }
        }
    }
}

/// The agent moves sources into its sampling task, so each must be `Send`.
#[test]
fn sources_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<NvmlSource>();
    assert_send::<offpeak_agent::rapl::RaplSource>();
    assert_send::<offpeak_agent::sim::SimulatedSource>();
}
