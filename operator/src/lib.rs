//! offpeak Kubernetes operator (library).
//!
//! Will hold the `TrainingJob` and `EnergyPolicy` custom resources and their reconcilers,
//! which turn the scheduler's plans into gang-started distributed training pods. The
//! environment a torchrun-style launcher expects is defined here already so that the
//! scheduler and the operator agree on it.

/// Environment variable names that torchrun and similar launchers read.
pub const LAUNCHER_ENV: [&str; 6] = [
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "NODE_RANK",
    "NPROC_PER_NODE",
];
