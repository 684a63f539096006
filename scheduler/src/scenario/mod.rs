//! A simulation scenario (cluster, signals, jobs), exactly as `spec/scenario.md` defines it.
//!
//! - [`model`]: the validated domain form the simulator and planner use;
//! - [`load`](mod@load): reading `scenario.yaml`, `signals/*.csv` and `jobs.csv`, with errors that name
//!   the file, line and field;
//! - [`error`]: the error type;
//! - [`embedded`]: the example scenario built into the binary;
//! - [`sources`]: zone signals from tariffs, recorded provider answers and signals chains
//!   (opt-in, instead of the zone's CSV).

pub mod embedded;
pub mod error;
pub mod load;
pub mod model;
pub mod sources;

pub use error::ScenarioError;
pub use load::{SignalRows, load, read_signal_rows};
pub use model::{Job, Node, Profile, ProfilePoint, Scenario, Zone};
