//! The node registry: which agents exist, on which node and zone, with which devices, how far
//! each agent's batch sequence has got, and each device's energy meter.
//!
//! In memory only for now: a scheduler restart keeps it only when the new server is handed the
//! same [`NodeRegistry`] (what the restart test does). Persisting it belongs to the ledger.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use offpeak_proto::v1::{RegisterRequest, SampleBatch};

use super::ServiceError;
use super::metering::{DeviceMeter, Rejection};

/// A registered device.
#[derive(Debug, Clone)]
struct DeviceEntry {
    model: String,
    meter: DeviceMeter,
}

/// A registered agent: one per node.
#[derive(Debug, Clone)]
struct AgentEntry {
    node: String,
    zone: String,
    devices: BTreeMap<String, DeviceEntry>,
    /// The highest batch sequence accepted; batches at or below it are replays.
    last_sequence: u64,
}

#[derive(Debug, Default)]
struct State {
    agents: HashMap<String, AgentEntry>,
    agent_by_node: HashMap<String, String>,
    next_agent: u64,
}

/// What the registry did with one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    /// Samples metered.
    pub accepted: u64,
    /// Samples in a batch already seen (a replay after a reconnect); none of them is metered.
    pub duplicates: u64,
    /// Samples refused, each with its device and reason.
    pub rejected: Vec<(String, Rejection)>,
    /// Energy metered from this batch, millijoules.
    pub energy_mj: u64,
}

/// A registration's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub agent_id: String,
    /// The highest sequence already accepted from this agent (0: none).
    pub last_sequence: u64,
}

/// The registry, shared by the gRPC handlers (and, in tests, across a restart).
#[derive(Debug, Clone, Default)]
pub struct NodeRegistry {
    state: Arc<Mutex<State>>,
}

impl NodeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below is applied whole under the lock before anything can panic, so a
        // poisoned lock still guards consistent data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a node's agent, or re-registers it: the same node gets the same agent id back,
    /// its devices' meters and its sequence are kept, new devices are added and devices no
    /// longer listed are forgotten.
    pub fn register(&self, request: &RegisterRequest) -> Result<Registration, ServiceError> {
        let fail = |reason: String| ServiceError::Register {
            node: request.node.clone(),
            reason,
        };
        if request.node.trim().is_empty() {
            return Err(fail("the node name is empty".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &request.devices {
            if d.uuid.trim().is_empty() {
                return Err(fail("a device has an empty UUID".into()));
            }
            if !seen.insert(d.uuid.as_str()) {
                return Err(fail(format!("device {:?} is listed twice", d.uuid)));
            }
        }
        let mut state = self.lock();
        let agent_id = match state.agent_by_node.get(&request.node) {
            Some(id) => id.clone(),
            None => {
                state.next_agent += 1;
                let id = format!("agent-{}", state.next_agent);
                state.agent_by_node.insert(request.node.clone(), id.clone());
                id
            }
        };
        let entry = state
            .agents
            .entry(agent_id.clone())
            .or_insert_with(|| AgentEntry {
                node: request.node.clone(),
                zone: request.zone.clone(),
                devices: BTreeMap::new(),
                last_sequence: 0,
            });
        entry.zone = request.zone.clone();
        let mut devices = BTreeMap::new();
        for d in &request.devices {
            let meter = entry
                .devices
                .get(&d.uuid)
                .map(|e| e.meter.clone())
                .unwrap_or_default();
            devices.insert(
                d.uuid.clone(),
                DeviceEntry {
                    model: d.model.clone(),
                    meter,
                },
            );
        }
        entry.devices = devices;
        Ok(Registration {
            agent_id,
            last_sequence: entry.last_sequence,
        })
    }

    /// Meters one batch. A batch whose sequence is not above the agent's last accepted one is
    /// a replay and is counted, not metered; samples are checked one by one, so one bad sample
    /// does not cost its batch-mates.
    pub fn ingest(&self, batch: &SampleBatch) -> Result<BatchOutcome, ServiceError> {
        let mut state = self.lock();
        let Some(agent) = state.agents.get_mut(&batch.agent_id) else {
            return Err(ServiceError::Ingest {
                agent_id: batch.agent_id.clone(),
                reason: super::IngestFailure::UnknownAgent,
            });
        };
        let mut outcome = BatchOutcome::default();
        if batch.sequence <= agent.last_sequence {
            outcome.duplicates = batch.samples.len() as u64;
            return Ok(outcome);
        }
        agent.last_sequence = batch.sequence;
        for sample in &batch.samples {
            let metered = match agent.devices.get_mut(&sample.device_uuid) {
                None => Err(Rejection::UnknownDevice(sample.device_uuid.clone())),
                Some(device) => device.meter.meter(sample),
            };
            match metered {
                Ok(delta) => {
                    outcome.accepted += 1;
                    outcome.energy_mj += delta;
                }
                Err(r) => outcome.rejected.push((sample.device_uuid.clone(), r)),
            }
        }
        Ok(outcome)
    }

    /// Energy metered per device, millijoules, keyed by (node, device UUID).
    pub fn energy_by_device(&self) -> BTreeMap<(String, String), u64> {
        let state = self.lock();
        state
            .agents
            .values()
            .flat_map(|a| {
                a.devices
                    .iter()
                    .map(|(uuid, d)| ((a.node.clone(), uuid.clone()), d.meter.metered_mj()))
            })
            .collect()
    }

    /// The registered nodes: (agent id, node, zone, device models).
    pub fn nodes(&self) -> Vec<(String, String, String, Vec<String>)> {
        let state = self.lock();
        let mut nodes: Vec<_> = state
            .agents
            .iter()
            .map(|(id, a)| {
                (
                    id.clone(),
                    a.node.clone(),
                    a.zone.clone(),
                    a.devices.values().map(|d| d.model.clone()).collect(),
                )
            })
            .collect();
        nodes.sort();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use offpeak_proto::v1::{Device, Sample};

    use super::*;

    fn register(reg: &NodeRegistry, node: &str) -> Registration {
        let request = RegisterRequest {
            node: node.into(),
            zone: "DE-LU".into(),
            devices: vec![Device {
                uuid: format!("{node}-gpu0"),
                model: "V100".into(),
                ..Device::default()
            }],
        };
        match reg.register(&request) {
            Ok(r) => r,
            Err(e) => panic!("register: {e}"),
        }
    }

    fn batch(agent_id: &str, sequence: u64, uuid: &str, energy_mj: u64) -> SampleBatch {
        SampleBatch {
            agent_id: agent_id.into(),
            sequence,
            samples: vec![Sample {
                device_uuid: uuid.into(),
                power_watts: 100.0,
                energy_mj,
                ..Sample::default()
            }],
            curves: vec![],
        }
    }

    #[test]
    fn re_registering_a_node_keeps_its_id_sequence_and_meters() -> Result<(), ServiceError> {
        let reg = NodeRegistry::new();
        let a = register(&reg, "n1");
        let b = register(&reg, "n2");
        assert_ne!(a.agent_id, b.agent_id);
        reg.ingest(&batch(&a.agent_id, 1, "n1-gpu0", 10))?;
        reg.ingest(&batch(&a.agent_id, 2, "n1-gpu0", 30))?;
        let again = register(&reg, "n1");
        assert_eq!(again.agent_id, a.agent_id);
        assert_eq!(again.last_sequence, 2);
        let dup = reg.ingest(&batch(&a.agent_id, 2, "n1-gpu0", 30))?;
        assert_eq!(dup.duplicates, 1);
        reg.ingest(&batch(&a.agent_id, 3, "n1-gpu0", 35))?;
        assert_eq!(
            reg.energy_by_device()
                .get(&("n1".to_string(), "n1-gpu0".to_string())),
            Some(&25)
        );
        Ok(())
    }

    #[test]
    fn unknown_agents_and_bad_registrations_are_errors() {
        let reg = NodeRegistry::new();
        assert!(matches!(
            reg.ingest(&batch("agent-9", 1, "x", 1)),
            Err(ServiceError::Ingest { .. })
        ));
        let empty = RegisterRequest::default();
        assert!(matches!(
            reg.register(&empty),
            Err(ServiceError::Register { .. })
        ));
    }
}
