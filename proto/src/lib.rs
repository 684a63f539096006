//! offpeak's wire contract, generated at build time from `proto/offpeak/v1/*.proto`.
//!
//! Layout: one module per protobuf package; `v1` holds messages plus the tonic client and
//! server for `AgentService`.

/// The `offpeak.v1` package.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("offpeak.v1");
}
