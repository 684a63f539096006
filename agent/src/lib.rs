//! offpeak node agent (library).
//!
//! The agent runs on every accelerator node: it reads power from a [`PowerSource`], reports
//! samples and fitted power curves to the scheduler over gRPC (`offpeak_proto::v1`), and applies
//! the power limits the scheduler commands. This crate currently holds the source abstraction
//! that the NVML, RAPL and simulated sources implement.

use thiserror::Error;

/// One reading of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device_uuid: String,
    pub power_watts: f64,
    /// Cumulative hardware energy counter in millijoules.
    pub energy_mj: u64,
}

/// Failure of a power source.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("reading device {device}: {reason}")]
    Read { device: String, reason: String },
}

/// Something that can read the power of the devices on this node.
pub trait PowerSource {
    /// Reads every device once.
    fn read(&mut self) -> Result<Vec<Reading>, SourceError>;
}
