//! offpeak scheduler: decides when, where and at what power limit each training job runs.
//!
//! Layout:
//! - [`units`]: quantities with the unit in the type, and the slot grid;
//! - [`scenario`]: simulation scenarios (YAML + CSV) loaded into validated domain types;
//! - [`planner`]: the pure planning core and its policies (`offpeak`, `asap`, `threshold`);
//! - [`signals`]: price and carbon providers, normalised to UTC series on the slot grid;
//! - [`sim`]: the event-driven replay that feeds a policy only what it could know;
//! - [`schedule`]: the schedule file and its pricing (the checker's formulas);
//! - [`summary`]: the figures `offpeak simulate` prints;
//! - [`ledger`]: the append-only energy ledger (metered energy per job per slot, priced), on
//!   SQLite or PostgreSQL;
//! - [`report`]: monthly reports from the ledger (CSV, FOCUS-shaped CSV, HTML) in a reporting
//!   time zone;
//! - [`validate`]: checks a schedule against every rule of the spec;
//! - [`placement`]: the live planning cycle behind the gRPC placement API (jobs from the
//!   operator, the same planner as the simulator, committed runs persisted);
//! - [`service`]: `offpeak serve`: the gRPC service agents stream samples to (registry,
//!   energy metering from counter deltas, replay de-duplication) and the admin HTTP port;
//! - [`jobs`]: `offpeak jobs`, a command-line client of the placement API;
//! - [`cli`]: the `offpeak` command line (the binary only parses and calls into it).

pub mod cli;
pub mod jobs;
pub mod ledger;
pub mod placement;
pub mod planner;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod service;
pub mod signals;
pub mod sim;
pub mod summary;
pub mod units;
pub mod validate;
