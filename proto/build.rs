//! Compiles `offpeak/v1/*.proto` (and the kubelet pod-resources subset the agent reads) with
//! the pure-Rust `protox` compiler, so a fresh clone builds without `protoc` installed.
//! The TPU runtime's metrics service subset (`tpu/monitoring/runtime/`) is compiled alongside.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "offpeak/v1/agent.proto",
        "offpeak/v1/placement.proto",
        "kubelet/podresources/v1/podresources.proto",
        "tpu/monitoring/runtime/runtime_metrics.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
