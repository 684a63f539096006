//! offpeak Kubernetes operator (library).
//!
//! Turns `TrainingJob` objects into the scheduler's plans and the plans into gang-started
//! distributed training pods.
//!
//! Layout:
//! - [`crd`]: the `TrainingJob` and `EnergyPolicy` custom resources and their CRD YAML;
//! - [`policy`]: which EnergyPolicies apply to a job and how caps combine (the stricter wins);
//! - [`submission`]: a TrainingJob as the scheduler's `JobSpec`, with the checks the schema
//!   cannot make;
//! - [`plans`]: the plan cache and the `WatchPlans` task that fills it;
//! - [`workload`]: the headless Service and the gated, pinned worker pods;
//! - [`decide`]: the reconciler's decision as a pure function of job, plan, pods and time;
//! - [`status_update`]: conditions, the plan as shown in the status, Events on phase changes;
//! - [`reconcile`]: the reconciler (finalizer, submission, steps, reports, status);
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`;
//! - [`run`]: [`run::run`], wiring client, caches, plan watch, controller and admin port.

pub mod admin;
pub mod crd;
pub mod decide;
pub mod plans;
pub mod policy;
pub mod reconcile;
pub mod run;
pub mod status_update;
pub mod submission;
pub mod workload;

/// Environment variable names that torchrun and similar launchers read.
pub const LAUNCHER_ENV: [&str; 6] = [
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "NODE_RANK",
    "NPROC_PER_NODE",
];
