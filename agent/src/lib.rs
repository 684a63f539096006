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
//! - [`curve`]: power curves per (device model, workload), and draw against utilisation;
//! - [`client`]: sampling a source and streaming to the scheduler over gRPC, with a bounded
//!   buffer, reconnects with backoff and in-order replay; [`client::run`] is what the
//!   `offpeak-agent` binary (`src/main.rs`) calls.
//!
//! Not here yet (issue 4): curve reporting over the wire, power-limit commands, GPU→pod
//! attribution, TPU sources, the NVML and RAPL sources in the binary, and an on-disk buffer.

pub mod client;
pub mod clock;
pub mod curve;
pub mod nvml;
pub mod rapl;
pub mod sim;
pub mod source;

pub use source::{PowerSource, Reading, SourceError};
