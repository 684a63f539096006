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
//! - [`tpu`]: TPU chips read through the TPU runtime's metrics service (gRPC), power
//!   estimated from their duty cycle with a per-generation profile (marked estimated);
//! - [`curve`]: power curves per (device model, workload), built from readings, and draw
//!   against utilisation;
//! - [`sampler`]: a source's readings into wire samples (with the pod using each device) and
//!   curves;
//! - [`podresources`]: GPU → pod attribution from the kubelet's pod-resources API;
//! - [`buffer`]: the bounded buffer of unconfirmed batches, in memory or on disk;
//! - [`client`]: the uplink streaming batches to the scheduler, with reconnects, backoff and
//!   in-order replay;
//! - [`commands`]: the command link bringing power-limit commands down and acknowledgements
//!   back;
//! - [`enforce`]: applying power limits within each device's range and restoring defaults;
//! - [`runtime`]: the [`runtime::Agent`] tying these together, and [`runtime::run`], what the
//!   `offpeak-agent` binary (`src/main.rs`) calls.

pub mod buffer;
pub mod client;
pub mod clock;
pub mod commands;
pub mod curve;
pub mod enforce;
pub mod nvml;
pub mod podresources;
pub mod rapl;
pub mod runtime;
pub mod sampler;
pub mod sim;
pub mod source;
pub mod tpu;

pub use source::{PowerSource, Reading, SourceError};
