//! The registry's per-pod side for the planning cycle: pod energy per metering slot, and the
//! devices each pod uses now.

use std::collections::BTreeSet;

use super::{NodeRegistry, PodDevice, PodKey, PodSlotEnergy};

impl NodeRegistry {
    /// Keeps pod energy per metering slot of `seconds` from now on (the planning cycle's slot;
    /// the cycle also prunes old slots). Slots already metered keep their length.
    pub fn set_meter_slot(&self, seconds: u32) {
        self.lock().meter_slot = Some(i64::from(seconds.max(1)));
    }

    /// Forgets per-slot pod energy of slots starting before `before` (Unix seconds), in memory
    /// at once and on disk at the next save. Returns how many slots were dropped.
    pub fn prune_pod_slots(&self, before: i64) -> usize {
        let mut guard = self.lock();
        let state = &mut *guard;
        if before <= state.slots_pruned_before {
            return 0;
        }
        state.slots_pruned_before = before;
        let mut dropped = 0;
        for (id, a) in &mut state.agents {
            let mut touched = false;
            for m in a.slots.values_mut() {
                let keep = m.split_off(&before);
                dropped += m.len();
                touched |= !m.is_empty();
                *m = keep;
            }
            a.slots.retain(|_, m| !m.is_empty());
            a.slots_dirty.retain(|(_, s)| *s >= before);
            if touched {
                state.dirty.insert(id.clone());
            }
        }
        dropped
    }

    /// Energy the pods in `pods` used, per node and metering slot (pods not seen are left out).
    pub fn pod_slot_energy(&self, pods: &BTreeSet<PodKey>) -> Vec<PodSlotEnergy> {
        let state = self.lock();
        let mut out = Vec::new();
        for a in state.agents.values() {
            for pod in pods {
                let Some(slots) = a.slots.get(pod) else {
                    continue;
                };
                out.extend(slots.iter().map(|(&slot_start, &energy_mj)| PodSlotEnergy {
                    namespace: pod.0.clone(),
                    pod: pod.1.clone(),
                    node: a.node.clone(),
                    zone: a.zone.clone(),
                    slot_start,
                    energy_mj,
                }));
            }
        }
        out.sort_by(|x, y| {
            (&x.node, &x.namespace, &x.pod, x.slot_start).cmp(&(
                &y.node,
                &y.namespace,
                &y.pod,
                y.slot_start,
            ))
        });
        out
    }

    /// The devices serving one of `pods` now (by their latest sample), by node then UUID.
    pub fn devices_of_pods(&self, pods: &BTreeSet<PodKey>) -> Vec<PodDevice> {
        let state = self.lock();
        let mut out: Vec<PodDevice> = state
            .agents
            .values()
            .flat_map(|a| {
                a.devices.iter().filter_map(|(uuid, d)| {
                    let pod = d.pod.as_ref().filter(|p| pods.contains(*p))?;
                    Some(PodDevice {
                        node: a.node.clone(),
                        uuid: uuid.clone(),
                        pod: pod.clone(),
                    })
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.node, &a.uuid).cmp(&(&b.node, &b.uuid)));
        out
    }
}
