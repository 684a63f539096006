//! offpeak node agent (library).
//!
//! The agent runs on every accelerator node: it reads power from [`PowerSource`]s, fits power
//! curves from what it reads, reports samples and curves to the scheduler over gRPC
//! (`offpeak_proto::v1`), and applies the power limits the scheduler commands.
//!
//! Layout:
//! - [`source`]: the [`PowerSource`] trait, devices, readings, and [`SourceError`];
//! - [`clock`]: injected clocks (the real monotonic one, and a manual one for tests);
//! - [`sim`]: a simulated source playing a measured Zeus power-limit sweep (`data/`);
//! - [`rapl`]: CPU package and DRAM energy from the Linux powercap sysfs tree;
//! - [`nvml`]: NVIDIA GPUs through NVML, loaded at run time;
//! - [`curve`]: power curves per (device model, workload), and draw against utilisation.
//!
//! Not here yet (issue 4): the gRPC client and its buffering, GPU→pod attribution, limit
//! enforcement policy, TPU sources, and the agent binary.

pub mod clock;
pub mod curve;
pub mod nvml;
pub mod rapl;
pub mod sim;
pub mod source;

pub use source::{PowerSource, Reading, SourceError};
