//! Power-limit enforcement: applies the scheduler's commands to a [`PowerSource`] within each
//! device's allowed range, remembers which devices it moved off their default so it can put
//! them back (a restore command, the job on the device ended, the agent stops), and answers
//! every command with an acknowledgement, failures included: a limit that could not be set is
//! reported to the scheduler, never dropped.
//!
//! Commands may be delivered more than once (the scheduler re-sends what it has no
//! acknowledgement for after a reconnect). Each id is applied once: a repeat gets the first
//! answer again, so an old command re-delivered after a newer one cannot undo it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use offpeak_proto::v1::{Command, CommandAck, command};
use tracing::{info, warn};

use crate::source::{PowerSource, SetLimitFailure, SourceError};

/// Acknowledgements remembered for re-delivered commands. The scheduler re-sends at most its
/// per-agent limit of unacknowledged commands (256), so four times that always covers them.
pub const REMEMBERED_COMMANDS: usize = 1_024;

/// A device put back to its default.
#[derive(Debug)]
pub struct Restored {
    pub device_uuid: String,
    /// The default set, or why it could not be.
    pub result: Result<f64, String>,
}

/// Applies commands and tracks which devices run at a commanded limit.
#[derive(Debug, Default)]
pub struct Enforcer {
    /// Devices whose limit a command changed, with the limit in force.
    changed: BTreeMap<String, f64>,
    answered: HashMap<String, CommandAck>,
    answered_order: VecDeque<String>,
}

impl Enforcer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Devices running at a commanded limit, with that limit.
    pub fn changed(&self) -> &BTreeMap<String, f64> {
        &self.changed
    }

    /// Applies one command and returns its acknowledgement (for `agent_id`); the device the
    /// command concerned, if it was applied to one, is also returned.
    pub fn apply<S: PowerSource + ?Sized>(
        &mut self,
        source: &mut S,
        agent_id: &str,
        command: &Command,
    ) -> (CommandAck, Option<String>) {
        if let Some(ack) = self.answered.get(&command.id) {
            info!(command = %command.id, "command delivered again; acknowledged again, not re-applied");
            return (ack.clone(), None);
        }
        let (outcome, device) = self.execute(source, command);
        let ack = CommandAck {
            agent_id: agent_id.to_owned(),
            command_id: command.id.clone(),
            ok: outcome.is_ok(),
            error: outcome.as_ref().err().cloned().unwrap_or_default(),
            power_limit_watts: outcome.as_ref().map_or(0, |w| w.round() as u32),
        };
        match &outcome {
            Ok(watts) => {
                info!(command = %command.id, device = ?device, watts, "power limit applied")
            }
            Err(error) => warn!(command = %command.id, %error, "command failed; reporting it"),
        }
        self.remember(ack.clone());
        (ack, device)
    }

    fn remember(&mut self, ack: CommandAck) {
        if self.answered_order.len() >= REMEMBERED_COMMANDS
            && let Some(oldest) = self.answered_order.pop_front()
        {
            self.answered.remove(&oldest);
        }
        self.answered_order.push_back(ack.command_id.clone());
        self.answered.insert(ack.command_id.clone(), ack);
    }

    /// Runs a command; the limit in force afterwards, or why not.
    fn execute<S: PowerSource + ?Sized>(
        &mut self,
        source: &mut S,
        command: &Command,
    ) -> (Result<f64, String>, Option<String>) {
        match &command.kind {
            Some(command::Kind::SetPowerLimit(set)) => {
                let watts = f64::from(set.watts);
                let result = self.set(source, &set.device_uuid, watts);
                (result, Some(set.device_uuid.clone()))
            }
            Some(command::Kind::RestoreDefaultPowerLimit(restore)) => {
                let result = restore_default(source, &restore.device_uuid).inspect(|_| {
                    self.changed.remove(&restore.device_uuid);
                });
                (result, Some(restore.device_uuid.clone()))
            }
            None => (
                Err("the command has no kind this agent knows (is the scheduler newer?)".into()),
                None,
            ),
        }
    }

    fn set<S: PowerSource + ?Sized>(
        &mut self,
        source: &mut S,
        uuid: &str,
        watts: f64,
    ) -> Result<f64, String> {
        let device = source
            .device_index(uuid)
            .ok_or_else(|| format!("device {uuid:?} is not on this node"))?;
        // Every source checks the range too; checking here keeps a source that forgets from
        // ever being asked for a limit outside it.
        let range = source.devices().get(device).and_then(|d| d.power_limit);
        let refused = |reason| SourceError::SetPowerLimit {
            device: uuid.to_owned(),
            requested_watts: watts,
            reason,
        };
        match range {
            None => return Err(refused(SetLimitFailure::Unsupported).to_string()),
            Some(r) if !r.contains(watts) => {
                return Err(refused(SetLimitFailure::OutOfRange {
                    min_watts: r.min_watts,
                    max_watts: r.max_watts,
                })
                .to_string());
            }
            Some(_) => {}
        }
        source
            .set_power_limit(device, watts)
            .map_err(|e| e.to_string())?;
        self.changed.insert(uuid.to_owned(), watts);
        Ok(watts)
    }

    /// Puts one device back to its default, if a command had changed it (the job using it
    /// ended). `None` when there was nothing to restore.
    pub fn restore<S: PowerSource + ?Sized>(
        &mut self,
        source: &mut S,
        device_uuid: &str,
    ) -> Option<Restored> {
        self.changed.remove(device_uuid)?;
        let result = restore_default(source, device_uuid);
        log_restored(device_uuid, &result);
        Some(Restored {
            device_uuid: device_uuid.to_owned(),
            result,
        })
    }

    /// Puts every device a command changed back to its default (the agent is stopping).
    pub fn restore_all<S: PowerSource + ?Sized>(&mut self, source: &mut S) -> Vec<Restored> {
        let devices: Vec<String> = self.changed.keys().cloned().collect();
        devices
            .iter()
            .filter_map(|uuid| self.restore(source, uuid))
            .collect()
    }
}

fn log_restored(device_uuid: &str, result: &Result<f64, String>) {
    match result {
        Ok(watts) => info!(device = %device_uuid, watts, "default power limit restored"),
        Err(e) => {
            warn!(device = %device_uuid, error = %e, "restoring the default power limit failed")
        }
    }
}

/// Sets a device back to its default limit; returns that default.
fn restore_default<S: PowerSource + ?Sized>(source: &mut S, uuid: &str) -> Result<f64, String> {
    let device = source
        .device_index(uuid)
        .ok_or_else(|| format!("device {uuid:?} is not on this node"))?;
    let range = source
        .devices()
        .get(device)
        .and_then(|d| d.power_limit)
        .ok_or_else(|| format!("device {uuid:?} has no settable power limit, so no default"))?;
    source
        .set_power_limit(device, range.default_watts)
        .map_err(|e| e.to_string())?;
    Ok(range.default_watts)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use offpeak_proto::v1::{RestoreDefaultPowerLimit, SetPowerLimit};

    use super::*;
    use crate::clock::ManualClock;
    use crate::rapl::RaplSource;
    use crate::sim::{PowerProfile, SimConfig, SimulatedSource};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const GPU0: &str = "GPU-sim-0000000000000000-0";

    fn sim(count: usize) -> Result<SimulatedSource, SourceError> {
        SimulatedSource::new(
            Arc::new(ManualClock::new()),
            SimConfig::flat(),
            PowerProfile::bundled_v100_resnet50()?,
            count,
        )
    }

    fn set(id: &str, uuid: &str, watts: u32) -> Command {
        Command {
            id: id.into(),
            kind: Some(command::Kind::SetPowerLimit(SetPowerLimit {
                device_uuid: uuid.into(),
                watts,
            })),
        }
    }

    fn limit(source: &mut SimulatedSource, device: usize) -> Result<Option<f64>, SourceError> {
        Ok(source.read(device)?.power_limit_watts)
    }

    #[test]
    fn applies_in_range_acks_failures_and_restores_on_stop() -> TestResult {
        let mut source = sim(2)?;
        let mut e = Enforcer::new();
        let (ack, device) = e.apply(&mut source, "agent-1", &set("c1", GPU0, 150));
        assert!(ack.ok, "{ack:?}");
        assert_eq!(
            (ack.agent_id.as_str(), ack.power_limit_watts),
            ("agent-1", 150)
        );
        assert_eq!(device.as_deref(), Some(GPU0));
        assert_eq!(limit(&mut source, 0)?, Some(150.0));

        let (ack, _) = e.apply(&mut source, "agent-1", &set("c2", GPU0, 400));
        assert!(!ack.ok);
        assert!(
            ack.error.contains("outside the allowed range 100–250 W"),
            "{}",
            ack.error
        );
        assert_eq!(limit(&mut source, 0)?, Some(150.0));
        let (ack, _) = e.apply(&mut source, "agent-1", &set("c3", "GPU-nope", 150));
        assert!(!ack.ok && ack.error.contains("not on this node"), "{ack:?}");
        let (ack, _) = e.apply(
            &mut source,
            "agent-1",
            &Command {
                id: "c4".into(),
                kind: None,
            },
        );
        assert!(!ack.ok);

        let restored = e.restore_all(&mut source);
        assert_eq!(restored.len(), 1);
        assert_eq!(restored[0].result.as_ref().ok(), Some(&250.0));
        assert_eq!(limit(&mut source, 0)?, Some(250.0));
        assert!(e.changed().is_empty());
        // Nothing left to restore.
        assert!(e.restore_all(&mut source).is_empty());
        Ok(())
    }

    #[test]
    fn a_redelivered_command_is_acknowledged_again_not_reapplied() -> TestResult {
        let mut source = sim(1)?;
        let mut e = Enforcer::new();
        let (first, _) = e.apply(&mut source, "a", &set("c1", GPU0, 150));
        e.apply(&mut source, "a", &set("c2", GPU0, 200));
        let (again, device) = e.apply(&mut source, "a", &set("c1", GPU0, 150));
        assert_eq!(again, first);
        assert_eq!(device, None);
        assert_eq!(limit(&mut source, 0)?, Some(200.0));
        Ok(())
    }

    #[test]
    fn restore_command_and_job_end_put_the_default_back() -> TestResult {
        let mut source = sim(2)?;
        let mut e = Enforcer::new();
        e.apply(&mut source, "a", &set("c1", GPU0, 100));
        let restore = Command {
            id: "c2".into(),
            kind: Some(command::Kind::RestoreDefaultPowerLimit(
                RestoreDefaultPowerLimit {
                    device_uuid: GPU0.into(),
                },
            )),
        };
        let (ack, _) = e.apply(&mut source, "a", &restore);
        assert!(ack.ok && ack.power_limit_watts == 250, "{ack:?}");
        assert!(e.changed().is_empty());
        e.apply(&mut source, "a", &set("c3", GPU0, 125));
        assert!(
            e.restore(&mut source, "GPU-sim-0000000000000000-1")
                .is_none()
        );
        let r = e.restore(&mut source, GPU0).ok_or("nothing restored")?;
        assert_eq!(r.result.ok(), Some(250.0));
        assert_eq!(limit(&mut source, 0)?, Some(250.0));
        Ok(())
    }

    #[test]
    fn a_source_that_cannot_set_limits_reports_failure() -> TestResult {
        let dir = tempfile::tempdir()?;
        let zone = dir.path().join("intel-rapl:0");
        std::fs::create_dir_all(&zone)?;
        std::fs::write(zone.join("name"), "package-0\n")?;
        std::fs::write(zone.join("energy_uj"), "1000\n")?;
        std::fs::write(zone.join("max_energy_range_uj"), "262143328850\n")?;
        let mut rapl = RaplSource::new(dir.path(), Arc::new(ManualClock::new()))?;
        let mut e = Enforcer::new();
        let (ack, _) = e.apply(&mut rapl, "a", &set("c1", "rapl:intel-rapl:0", 100));
        assert!(!ack.ok);
        assert!(
            ack.error.contains("this source cannot set the power limit"),
            "{}",
            ack.error
        );
        assert!(e.changed().is_empty());
        Ok(())
    }
}
