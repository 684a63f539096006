//! The planner: a pure, deterministic function from a [`Snapshot`] of what is known at one
//! instant to a [`Plan`] of what to start now (and what is intended later).
//!
//! - [`snapshot`]: the input (clock, known signals, capacity in use, queued jobs) and output types;
//! - [`context`]: what every policy derives from a snapshot: signal estimates past the
//!   lookahead ([`forecast`]), objective per kWh, pools of nodes and their fluid capacity;
//! - [`nodes`]: concrete node assignment on the fewest nodes (best fit);
//! - [`offpeak`]: the optimising policy (time, zone and power limit);
//! - [`asap`] and [`threshold`]: the reference policies;
//! - [`reasons`]: why a job cannot be placed, in words a user understands;
//! - [`progress`]: a job's work owed and done between plans, and the checks a started run must
//!   pass (shared by the simulator and the live cycle).
//!
//! Nothing here does I/O or reads a clock: the snapshot carries `now`, and it only holds the
//! signals known at `now`, so a policy cannot peek at the future even by mistake.

pub mod asap;
pub mod context;
pub mod forecast;
pub mod nodes;
pub mod offpeak;
pub mod progress;
pub mod reasons;
pub mod snapshot;
pub mod threshold;

pub use snapshot::{Active, Intent, Pending, Plan, Rejection, Snapshot, Start, ZoneView};

use std::fmt;
use std::str::FromStr;

/// A scheduling policy: given what is known now, decide what starts now.
pub trait Policy: Send + Sync + fmt::Debug {
    /// Short name, as written into the schedule's `policy` field.
    fn name(&self) -> &'static str;
    /// Decides the runs that start at `snapshot.now`. Must be deterministic.
    fn plan(&self, snapshot: &Snapshot<'_>) -> Plan;
}

/// The policies `offpeak simulate --policy` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    #[default]
    Offpeak,
    Asap,
    Threshold,
}

impl PolicyKind {
    /// Builds the policy with its default parameters.
    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::Offpeak => Box::new(offpeak::Offpeak),
            PolicyKind::Asap => Box::new(asap::Asap),
            PolicyKind::Threshold => Box::new(threshold::Threshold::default()),
        }
    }
}

impl FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "offpeak" => Ok(Self::Offpeak),
            "asap" => Ok(Self::Asap),
            "threshold" => Ok(Self::Threshold),
            other => Err(format!(
                "unknown policy `{other}` (choose offpeak, asap or threshold)"
            )),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Offpeak => "offpeak",
            Self::Asap => "asap",
            Self::Threshold => "threshold",
        })
    }
}
