//! offpeak's wire contract, generated at build time from `proto/offpeak/v1/*.proto`.
//!
//! Layout: one module per protobuf package; `v1` holds messages plus the tonic clients and
//! servers for `AgentService` and `PlacementService`; [`kubelet_podresources_v1`] is the
//! kubelet's pod-resources API (package `v1` on the wire), which the agent reads for GPU → pod
//! attribution.
//! [`tpu_monitoring_runtime`] is the TPU runtime's (libtpu's) metrics service, which the agent
//! reads for TPU duty cycles and memory.

/// The `offpeak.v1` package.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("offpeak.v1");
}

/// The kubelet's pod-resources API (protobuf package `v1`), the subset the agent reads.
#[allow(missing_debug_implementations, clippy::all)]
pub mod kubelet_podresources_v1 {
    tonic::include_proto!("v1");
}

/// The TPU runtime's metrics service (protobuf package `tpu.monitoring.runtime`), the subset
/// the agent reads.
#[allow(missing_debug_implementations, clippy::all)]
pub mod tpu_monitoring_runtime {
    tonic::include_proto!("tpu.monitoring.runtime");
}
