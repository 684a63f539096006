//! Power limits follow the pods: while a job's run is in progress, every device one of its
//! worker pods uses (as the node agents' samples attribute devices to pods) is commanded to the
//! run's power limit through the [`CommandCenter`], once per device and run. Nothing is sent
//! back afterwards: the agent puts a device back to its default when the pod using it goes
//! away (or when the agent stops).
//!
//! A command refused before sending (the limit is outside the device's range, the device
//! cannot be limited) or failed on the agent is logged and counted (by the command center) and
//! named in the job's plan reason while the run lasts; it is not retried for that run.

use std::collections::{BTreeMap, HashMap};

use tracing::{info, warn};

use super::metering::worker_pods;
use crate::service::commands::{CommandCenter, CommandId, CommandState};
use crate::service::registry::NodeRegistry;

/// A run in progress, as far as its power limit goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRun {
    pub key: String,
    pub uid: String,
    pub seq: u32,
    pub workers: u32,
    /// The run's power limit per accelerator, whole watts.
    pub watts: u32,
}

/// What was sent to one device for one run.
#[derive(Debug)]
struct Issued {
    run: (String, String, u32),
    watts: u32,
    command: Option<CommandId>,
    failure: Option<String>,
}

/// The power-limit side of the cycle.
#[derive(Debug)]
pub struct Enforcer {
    commands: CommandCenter,
    registry: NodeRegistry,
    /// By (node, device UUID).
    issued: HashMap<(String, String), Issued>,
}

/// Failures per job key: one line per device.
pub type Failures = BTreeMap<String, Vec<String>>;

impl Enforcer {
    pub fn new(commands: CommandCenter, registry: NodeRegistry) -> Self {
        Self {
            commands,
            registry,
            issued: HashMap::new(),
        }
    }

    /// Commands the devices of `runs`' pods not yet commanded for their run; returns the
    /// failures of the runs in progress, by job.
    pub fn enforce(&mut self, runs: &[ActiveRun]) -> Failures {
        let live: Vec<(String, String, u32)> = runs
            .iter()
            .map(|r| (r.key.clone(), r.uid.clone(), r.seq))
            .collect();
        // A device whose run ended is free for the next one; its agent restored it.
        self.issued.retain(|_, i| live.contains(&i.run));
        for r in runs {
            let run = (r.key.clone(), r.uid.clone(), r.seq);
            let pods = worker_pods(&r.key, r.workers);
            for d in self.registry.devices_of_pods(&pods) {
                let device = (d.node.clone(), d.uuid.clone());
                if self.issued.get(&device).is_some_and(|i| i.run == run) {
                    continue;
                }
                let issued = match self.commands.set_power_limit(&d.node, &d.uuid, r.watts) {
                    Ok(id) => {
                        info!(job = %r.key, node = %d.node, device = %d.uuid, watts = r.watts, command = %id, "power limit sent for the job's pod");
                        Issued {
                            run: run.clone(),
                            watts: r.watts,
                            command: Some(id),
                            failure: None,
                        }
                    }
                    // Refused and counted by the command center; named in the plan.
                    Err(e) => Issued {
                        run: run.clone(),
                        watts: r.watts,
                        command: None,
                        failure: Some(refusal(&e)),
                    },
                };
                self.issued.insert(device, issued);
            }
        }
        let mut failures = Failures::new();
        let mut devices: Vec<_> = self.issued.iter_mut().collect();
        devices.sort_by(|a, b| a.0.cmp(b.0));
        for ((node, uuid), i) in devices {
            if i.failure.is_none()
                && let Some(id) = &i.command
                && let Some(CommandState::Failed { error }) = self.commands.state(id)
            {
                warn!(job = %i.run.0, node = %node, device = %uuid, watts = i.watts, %error, "the agent could not apply the job's power limit");
                i.failure = Some(error);
            }
            if let Some(f) = &i.failure {
                failures
                    .entry(i.run.0.clone())
                    .or_default()
                    .push(format!("{node}/{uuid}: {f}"));
            }
        }
        failures
    }
}

/// A refusal's reason, without the operation (the plan says which limit).
fn refusal(e: &crate::service::commands::CommandError) -> String {
    match e {
        crate::service::commands::CommandError::SetPowerLimit { reason, .. } => reason.to_string(),
        other => other.to_string(),
    }
}

/// Most devices named one by one in a plan's reason.
const NAMED_FAILURES: usize = 3;

/// The reason's note on failed power limits: `; power limit 150 W not applied on n1/GPU-0:
/// <error>, ...`.
pub fn note(watts: Option<u32>, failures: &[String]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let limit = watts.map_or_else(String::new, |w| format!(" {w} W"));
    let named: Vec<&str> = failures
        .iter()
        .take(NAMED_FAILURES)
        .map(String::as_str)
        .collect();
    let more = failures.len().saturating_sub(NAMED_FAILURES);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "; power limit{limit} not applied on {}{tail}",
        named.join(", ")
    )
}
