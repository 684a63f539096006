//! The node registry: which agents exist, on which node and zone, with which devices (and
//! their power-limit ranges), how far each agent's batch sequence has got, and each device's
//! energy meter.
//!
//! Per pod: the energy metered while the pod used a device, in total and per metering slot
//! (the slot of the sample that closes each counter delta, by the sample's own time), so that
//! the planning cycle can price a job's energy at the signals of the slot it was used in; and
//! which pod each device serves now (the pod the device's latest sample names), so that a
//! job's power limit reaches the devices its pods use. Reading those is in `registry/pods.rs`.
//!
//! In memory, optionally backed by a [`StateStore`] (a SQLite file): agents changed since the
//! last save are written by [`NodeRegistry::persist`], which the gRPC layer calls before it
//! confirms a sample stream, so what an agent was told is metered is on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use offpeak_proto::v1::{RegisterRequest, SampleBatch};

use super::ServiceError;
use super::metering::{DeviceMeter, Rejection};
use super::store::{AgentRecord, DeviceRecord, PodEnergy, PodSlotRecord, StateStore, StoreError};

mod pods;

/// A pod: (namespace, name).
pub type PodKey = (String, String);

/// The power-limit range of a device, in whole watts (all zero: not settable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRange {
    pub min_watts: u32,
    pub max_watts: u32,
    pub default_watts: u32,
}

impl LimitRange {
    /// Whether the device's limit can be set at all.
    pub fn settable(&self) -> bool {
        self.max_watts > 0
    }
}

/// A registered device.
#[derive(Debug, Clone)]
struct DeviceEntry {
    model: String,
    range: LimitRange,
    meter: DeviceMeter,
    /// The pod the device's latest accepted sample names (not persisted: the next sample
    /// says it again).
    pod: Option<PodKey>,
}

/// A registered agent: one per node.
#[derive(Debug, Clone)]
struct AgentEntry {
    node: String,
    zone: String,
    devices: BTreeMap<String, DeviceEntry>,
    /// The highest batch sequence accepted; batches at or below it are replays.
    last_sequence: u64,
    /// Energy metered while a pod used the device, by (namespace, pod): each counter delta
    /// goes to the pod the sample that closes it names.
    pods: BTreeMap<PodKey, u64>,
    /// The same per metering slot (start, Unix seconds): pod -> slot -> millijoules.
    slots: BTreeMap<PodKey, BTreeMap<i64, u64>>,
    /// Slots changed since they were last saved.
    slots_dirty: BTreeSet<(PodKey, i64)>,
}

#[derive(Debug)]
struct State {
    agents: HashMap<String, AgentEntry>,
    agent_by_node: HashMap<String, String>,
    next_agent: u64,
    /// Agents changed since they were last saved.
    dirty: HashSet<String>,
    /// Length of a metering slot, seconds; `None`: pod energy is not kept per slot (nothing
    /// reads it, and nothing would prune it).
    meter_slot: Option<i64>,
    /// Slots starting before this (Unix seconds) are forgotten, on disk too.
    slots_pruned_before: i64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            agents: HashMap::new(),
            agent_by_node: HashMap::new(),
            next_agent: 0,
            dirty: HashSet::new(),
            meter_slot: None,
            slots_pruned_before: i64::MIN,
        }
    }
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
    /// The batch was a replay of one already metered: nothing in it counts (curves neither).
    pub replay: bool,
}

/// A registration's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub agent_id: String,
    /// The highest sequence already accepted from this agent (0: none).
    pub last_sequence: u64,
}

/// A registered device, as the command path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredDevice {
    pub agent_id: String,
    pub node: String,
    pub uuid: String,
    pub model: String,
    pub range: LimitRange,
}

/// A registered node: (agent id, node, zone, device models).
pub type NodeSummary = (String, String, String, Vec<String>);

/// Energy one pod used on one node in one metering slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSlotEnergy {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    /// The zone the node's agent registered.
    pub zone: String,
    /// Start of the metering slot, Unix seconds.
    pub slot_start: i64,
    pub energy_mj: u64,
}

/// A device and the pod it serves now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDevice {
    pub node: String,
    pub uuid: String,
    pub pod: PodKey,
}

/// The registry, shared by the gRPC handlers and the planning cycle.
#[derive(Debug, Clone, Default)]
pub struct NodeRegistry {
    state: Arc<Mutex<State>>,
    store: Option<Arc<StateStore>>,
}

impl NodeRegistry {
    /// A registry in memory only: a scheduler restart starts it empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry backed by the SQLite file at `path`, with what it holds.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::with_store(StateStore::open(path)?)
    }

    /// A registry backed by `store`, with what it holds.
    pub fn with_store(store: StateStore) -> Result<Self, StoreError> {
        let mut state = State::default();
        for a in store.load()? {
            if let Some(n) = a
                .agent_id
                .strip_prefix("agent-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                state.next_agent = state.next_agent.max(n);
            }
            let devices = a
                .devices
                .into_iter()
                .map(|d| {
                    let entry = DeviceEntry {
                        model: d.model,
                        range: LimitRange {
                            min_watts: d.min_limit_watts,
                            max_watts: d.max_limit_watts,
                            default_watts: d.default_limit_watts,
                        },
                        meter: DeviceMeter::from_state(d.meter),
                        pod: None,
                    };
                    (d.uuid, entry)
                })
                .collect();
            let pods = a
                .pods
                .into_iter()
                .map(|p| ((p.namespace, p.pod), p.metered_mj))
                .collect();
            let mut slots: BTreeMap<PodKey, BTreeMap<i64, u64>> = BTreeMap::new();
            for s in a.pod_slots {
                slots
                    .entry((s.namespace, s.pod))
                    .or_default()
                    .insert(s.slot_start, s.metered_mj);
            }
            state
                .agent_by_node
                .insert(a.node.clone(), a.agent_id.clone());
            state.agents.insert(
                a.agent_id,
                AgentEntry {
                    node: a.node,
                    zone: a.zone,
                    devices,
                    last_sequence: a.last_sequence,
                    pods,
                    slots,
                    slots_dirty: BTreeSet::new(),
                },
            );
        }
        Ok(Self {
            state: Arc::new(Mutex::new(state)),
            store: Some(Arc::new(store)),
        })
    }

    /// Whether changes are persisted.
    pub fn is_persistent(&self) -> bool {
        self.store.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below is applied whole under the lock before anything can panic, so a
        // poisoned lock still guards consistent data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes every agent changed since the last save (nothing without a store). Returns how
    /// many were written. On failure they stay marked as changed, for the next call.
    pub fn persist(&self) -> Result<usize, StoreError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let mut taken = HashSet::new();
        let mut written: Vec<AgentRecord> = Vec::new();
        let result = store.save_with(|| {
            let mut state = self.lock();
            taken = std::mem::take(&mut state.dirty);
            let pruned_before = state.slots_pruned_before;
            written = taken
                .iter()
                .filter_map(|id| state.agents.get(id).map(|a| record(id, a, pruned_before)))
                .collect();
            written.clone()
        });
        let mut state = self.lock();
        if result.is_err() {
            state.dirty.extend(taken);
            return result;
        }
        // A slot that changed again while it was being written stays marked.
        for r in written {
            if let Some(a) = state.agents.get_mut(&r.agent_id) {
                for s in r.pod_slots {
                    let key = (s.namespace, s.pod);
                    let now = a.slots.get(&key).and_then(|m| m.get(&s.slot_start));
                    if now == Some(&s.metered_mj) {
                        a.slots_dirty.remove(&(key, s.slot_start));
                    }
                }
            }
        }
        result
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
        let mut seen = HashSet::new();
        for d in &request.devices {
            if d.uuid.trim().is_empty() {
                return Err(fail("a device has an empty UUID".into()));
            }
            if !seen.insert(d.uuid.as_str()) {
                return Err(fail(format!("device {:?} is listed twice", d.uuid)));
            }
            let (min, max, default) = (
                d.min_power_limit_watts,
                d.max_power_limit_watts,
                d.default_power_limit_watts,
            );
            let none = min == 0 && max == 0 && default == 0;
            let consistent = min <= default && default <= max && max > 0;
            if !(none || consistent) {
                return Err(fail(format!(
                    "device {:?}: power-limit range {min}–{max} W with default {default} W is \
                     inconsistent (need min ≤ default ≤ max)",
                    d.uuid
                )));
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
                pods: BTreeMap::new(),
                slots: BTreeMap::new(),
                slots_dirty: BTreeSet::new(),
            });
        entry.zone = request.zone.clone();
        let mut devices = BTreeMap::new();
        for d in &request.devices {
            let old = entry.devices.get(&d.uuid);
            let meter = old.map(|e| e.meter.clone()).unwrap_or_default();
            let pod = old.and_then(|e| e.pod.clone());
            devices.insert(
                d.uuid.clone(),
                DeviceEntry {
                    model: d.model.clone(),
                    range: LimitRange {
                        min_watts: d.min_power_limit_watts,
                        max_watts: d.max_power_limit_watts,
                        default_watts: d.default_power_limit_watts,
                    },
                    meter,
                    pod,
                },
            );
        }
        entry.devices = devices;
        let last_sequence = entry.last_sequence;
        state.dirty.insert(agent_id.clone());
        Ok(Registration {
            agent_id,
            last_sequence,
        })
    }

    /// Meters one batch. A batch whose sequence is not above the agent's last accepted one is
    /// a replay and is counted, not metered; samples are checked one by one, so one bad sample
    /// does not cost its batch-mates.
    pub fn ingest(&self, batch: &SampleBatch) -> Result<BatchOutcome, ServiceError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(agent) = state.agents.get_mut(&batch.agent_id) else {
            return Err(ServiceError::Ingest {
                agent_id: batch.agent_id.clone(),
                reason: super::IngestFailure::UnknownAgent,
            });
        };
        let mut outcome = BatchOutcome::default();
        if batch.sequence <= agent.last_sequence {
            outcome.duplicates = batch.samples.len() as u64;
            outcome.replay = true;
            return Ok(outcome);
        }
        agent.last_sequence = batch.sequence;
        let meter_slot = state.meter_slot;
        let pruned_before = state.slots_pruned_before;
        for sample in &batch.samples {
            let pod = sample
                .pod
                .as_ref()
                .filter(|p| !p.pod.is_empty())
                .map(|p| (p.namespace.clone(), p.pod.clone()));
            let metered = match agent.devices.get_mut(&sample.device_uuid) {
                None => Err(Rejection::UnknownDevice(sample.device_uuid.clone())),
                Some(device) => device.meter.meter(sample).inspect(|_| {
                    device.pod.clone_from(&pod);
                }),
            };
            match metered {
                Ok(delta) => {
                    outcome.accepted += 1;
                    outcome.energy_mj += delta;
                    if let Some(pod) = pod {
                        let e = agent.pods.entry(pod.clone()).or_default();
                        *e = e.saturating_add(delta);
                        // A sample without a time (0) has no slot to be priced in; its energy
                        // still counts in the pod's total.
                        let slot = meter_slot
                            .map(|w| sample.time_unix_ms.div_euclid(1000).div_euclid(w) * w);
                        if let Some(slot) = slot
                            && delta > 0
                            && sample.time_unix_ms > 0
                            && slot >= pruned_before
                        {
                            let e = agent
                                .slots
                                .entry(pod.clone())
                                .or_default()
                                .entry(slot)
                                .or_default();
                            *e = e.saturating_add(delta);
                            agent.slots_dirty.insert((pod, slot));
                        }
                    }
                }
                Err(r) => outcome.rejected.push((sample.device_uuid.clone(), r)),
            }
        }
        if !state.dirty.contains(&batch.agent_id) {
            state.dirty.insert(batch.agent_id.clone());
        }
        Ok(outcome)
    }

    /// Whether an agent id is registered.
    pub fn knows_agent(&self, agent_id: &str) -> bool {
        self.lock().agents.contains_key(agent_id)
    }

    /// The highest batch sequence accepted from an agent.
    pub fn last_sequence(&self, agent_id: &str) -> Option<u64> {
        self.lock().agents.get(agent_id).map(|a| a.last_sequence)
    }

    /// A device of a node, as registered; `Err` names what is unknown.
    pub fn device(&self, node: &str, uuid: &str) -> Result<RegisteredDevice, UnknownDevice> {
        let state = self.lock();
        let agent_id = state
            .agent_by_node
            .get(node)
            .ok_or_else(|| UnknownDevice::Node(node.to_owned()))?;
        let agent = state
            .agents
            .get(agent_id)
            .ok_or_else(|| UnknownDevice::Node(node.to_owned()))?;
        let device = agent
            .devices
            .get(uuid)
            .ok_or_else(|| UnknownDevice::Device(uuid.to_owned()))?;
        Ok(RegisteredDevice {
            agent_id: agent_id.clone(),
            node: node.to_owned(),
            uuid: uuid.to_owned(),
            model: device.model.clone(),
            range: device.range,
        })
    }

    /// Every registered device, by node then UUID.
    pub fn devices(&self) -> Vec<RegisteredDevice> {
        let state = self.lock();
        let mut out: Vec<RegisteredDevice> = state
            .agents
            .iter()
            .flat_map(|(id, a)| {
                a.devices.iter().map(|(uuid, d)| RegisteredDevice {
                    agent_id: id.clone(),
                    node: a.node.clone(),
                    uuid: uuid.clone(),
                    model: d.model.clone(),
                    range: d.range,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.node, &a.uuid).cmp(&(&b.node, &b.uuid)));
        out
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

    /// Energy metered per pod, millijoules, keyed by (namespace, pod): per-job metering for
    /// the ledger (a job's workers are its pods).
    pub fn energy_by_pod(&self) -> BTreeMap<(String, String), u64> {
        let state = self.lock();
        let mut out: BTreeMap<(String, String), u64> = BTreeMap::new();
        for a in state.agents.values() {
            for (key, mj) in &a.pods {
                let e = out.entry(key.clone()).or_default();
                *e = e.saturating_add(*mj);
            }
        }
        out
    }

    /// The registered nodes: (agent id, node, zone, device models).
    pub fn nodes(&self) -> Vec<NodeSummary> {
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

/// What a device lookup did not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownDevice {
    #[error("node {0:?} is not registered")]
    Node(String),
    #[error("device {0:?} is not in the node's registered inventory")]
    Device(String),
}

/// An agent as it is saved: its slots changed since the last save, and the prune mark.
fn record(agent_id: &str, a: &AgentEntry, slots_pruned_before: i64) -> AgentRecord {
    AgentRecord {
        agent_id: agent_id.to_owned(),
        node: a.node.clone(),
        zone: a.zone.clone(),
        last_sequence: a.last_sequence,
        devices: a
            .devices
            .iter()
            .map(|(uuid, d)| DeviceRecord {
                uuid: uuid.clone(),
                model: d.model.clone(),
                min_limit_watts: d.range.min_watts,
                max_limit_watts: d.range.max_watts,
                default_limit_watts: d.range.default_watts,
                meter: d.meter.state(),
            })
            .collect(),
        pods: a
            .pods
            .iter()
            .map(|((namespace, pod), mj)| PodEnergy {
                namespace: namespace.clone(),
                pod: pod.clone(),
                metered_mj: *mj,
            })
            .collect(),
        pod_slots: a
            .slots_dirty
            .iter()
            .filter_map(|(key, slot)| {
                let mj = *a.slots.get(key)?.get(slot)?;
                Some(PodSlotRecord {
                    namespace: key.0.clone(),
                    pod: key.1.clone(),
                    slot_start: *slot,
                    metered_mj: mj,
                })
            })
            .collect(),
        pod_slots_before: slots_pruned_before,
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
                min_power_limit_watts: 100,
                max_power_limit_watts: 250,
                default_power_limit_watts: 250,
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

    fn pod_sample(uuid: &str, time_s: i64, energy_mj: u64, pod: Option<&str>) -> Sample {
        Sample {
            device_uuid: uuid.into(),
            time_unix_ms: time_s * 1000,
            power_watts: 100.0,
            energy_mj,
            pod: pod.map(|p| offpeak_proto::v1::PodRef {
                namespace: "ml".into(),
                pod: p.into(),
                container: "trainer".into(),
            }),
            ..Sample::default()
        }
    }

    #[test]
    fn pod_energy_is_kept_per_metering_slot_and_devices_know_their_pod()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        let pods: BTreeSet<PodKey> = [("ml".to_string(), "job-worker-0".to_string())].into();
        {
            let reg = NodeRegistry::open(&path)?;
            reg.set_meter_slot(900);
            let a = register(&reg, "n1");
            let send = |seq: u64, samples: Vec<Sample>| {
                reg.ingest(&SampleBatch {
                    agent_id: a.agent_id.clone(),
                    sequence: seq,
                    samples,
                    curves: vec![],
                })
            };
            // 1_800_000_000 is 15-minute aligned; the baseline sample meters nothing.
            send(1, vec![pod_sample("n1-gpu0", 1_800_000_000, 1_000, None)])?;
            send(
                2,
                vec![pod_sample(
                    "n1-gpu0",
                    1_800_000_600,
                    4_000,
                    Some("job-worker-0"),
                )],
            )?;
            send(
                3,
                vec![pod_sample(
                    "n1-gpu0",
                    1_800_000_960,
                    9_000,
                    Some("job-worker-0"),
                )],
            )?;
            assert_eq!(
                reg.devices_of_pods(&pods),
                vec![PodDevice {
                    node: "n1".into(),
                    uuid: "n1-gpu0".into(),
                    pod: pods.first().cloned().ok_or("pod")?,
                }]
            );
            reg.persist()?;
            // The pod left the device: it no longer serves the job.
            send(4, vec![pod_sample("n1-gpu0", 1_800_001_000, 9_500, None)])?;
            assert!(reg.devices_of_pods(&pods).is_empty());
        }
        let reg = NodeRegistry::open(&path)?;
        let slots: Vec<(i64, u64)> = reg
            .pod_slot_energy(&pods)
            .iter()
            .map(|s| (s.slot_start, s.energy_mj))
            .collect();
        assert_eq!(slots, vec![(1_800_000_000, 3_000), (1_800_000_900, 5_000)]);
        assert_eq!(reg.pod_slot_energy(&pods)[0].zone, "DE-LU");
        // Pruning drops old slots, on disk too.
        assert_eq!(reg.prune_pod_slots(1_800_000_900), 1);
        reg.persist()?;
        let reg = NodeRegistry::open(&path)?;
        assert_eq!(reg.pod_slot_energy(&pods).len(), 1);
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

    #[test]
    fn inconsistent_limit_ranges_are_refused() {
        let reg = NodeRegistry::new();
        let request = |min, max, default| RegisterRequest {
            node: "n".into(),
            zone: "z".into(),
            devices: vec![Device {
                uuid: "GPU-0".into(),
                model: "m".into(),
                min_power_limit_watts: min,
                max_power_limit_watts: max,
                default_power_limit_watts: default,
            }],
        };
        assert!(reg.register(&request(100, 250, 300)).is_err());
        assert!(reg.register(&request(300, 250, 250)).is_err());
        assert!(reg.register(&request(100, 250, 250)).is_ok());
        // No limit control at all is fine.
        assert!(reg.register(&request(0, 0, 0)).is_ok());
        assert_eq!(
            reg.device("n", "GPU-0").map(|d| d.range.settable()),
            Ok(false)
        );
        assert_eq!(
            reg.device("n", "GPU-9"),
            Err(UnknownDevice::Device("GPU-9".into()))
        );
        assert_eq!(
            reg.device("m", "GPU-0"),
            Err(UnknownDevice::Node("m".into()))
        );
    }

    #[test]
    fn a_persistent_registry_reopens_with_meters_sequences_and_ids()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        let (a, b) = {
            let reg = NodeRegistry::open(&path)?;
            let a = register(&reg, "n1");
            let b = register(&reg, "n2");
            reg.ingest(&batch(&a.agent_id, 1, "n1-gpu0", 10))?;
            reg.ingest(&batch(&a.agent_id, 2, "n1-gpu0", 70))?;
            assert_eq!(reg.persist()?, 2);
            // Nothing changed since: nothing to write.
            assert_eq!(reg.persist()?, 0);
            // Metered but never persisted: lost with the process, replayed by the agent.
            reg.ingest(&batch(&a.agent_id, 3, "n1-gpu0", 90))?;
            (a, b)
        };
        let reg = NodeRegistry::open(&path)?;
        assert_eq!(
            register(&reg, "n1"),
            Registration {
                agent_id: a.agent_id.clone(),
                last_sequence: 2,
            }
        );
        let dup = reg.ingest(&batch(&a.agent_id, 2, "n1-gpu0", 70))?;
        assert!(dup.replay);
        reg.ingest(&batch(&a.agent_id, 3, "n1-gpu0", 90))?;
        assert_eq!(
            reg.energy_by_device()
                .get(&("n1".to_string(), "n1-gpu0".to_string())),
            Some(&80)
        );
        assert_eq!(reg.device("n1", "n1-gpu0")?.range.max_watts, 250);
        // A new node after the restart does not reuse an id.
        let c = register(&reg, "n3");
        assert!(c.agent_id != a.agent_id && c.agent_id != b.agent_id);
        Ok(())
    }
}
