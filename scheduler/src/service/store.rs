//! The registry's persistence: agents, their devices, each agent's batch sequence, each
//! device's meter and the energy metered per pod (in total, and per metering slot when the
//! planning cycle keeps slots), in a SQLite file, so a restarted scheduler keeps its energy
//! totals and still recognises the batches agents replay.
//!
//! An agent is always written whole (its row and all its devices' rows; of its pod slots, those
//! changed since the last save) in one transaction,
//! so its sequence and its meters on disk always agree: whatever was metered up to sequence N
//! is on disk together with N, and batches after N are replayed by the agent (it keeps them
//! until the scheduler confirms a stream, which it does only after writing them here).
//!
//! SQLite's INTEGER is a signed 64-bit number; the u64 counters, totals and epochs are stored
//! as the i64 with the same bits, which round-trips exactly.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension as _, params};
use thiserror::Error;

use super::metering::MeterState;

/// The schema, created on first open. `devices` rows belong to their agent's row.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    agent_id      TEXT PRIMARY KEY,
    node          TEXT NOT NULL UNIQUE,
    zone          TEXT NOT NULL,
    last_sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    agent_id            TEXT NOT NULL REFERENCES agents(agent_id),
    uuid                TEXT NOT NULL,
    model               TEXT NOT NULL,
    min_limit_watts     INTEGER NOT NULL,
    max_limit_watts     INTEGER NOT NULL,
    default_limit_watts INTEGER NOT NULL,
    last_counter_mj     INTEGER,
    counter_epoch       INTEGER NOT NULL,
    metered_mj          INTEGER NOT NULL,
    PRIMARY KEY (agent_id, uuid)
);
CREATE TABLE IF NOT EXISTS pod_energy (
    agent_id   TEXT NOT NULL REFERENCES agents(agent_id),
    namespace  TEXT NOT NULL,
    pod        TEXT NOT NULL,
    metered_mj INTEGER NOT NULL,
    PRIMARY KEY (agent_id, namespace, pod)
);
CREATE TABLE IF NOT EXISTS pod_slots (
    agent_id   TEXT NOT NULL REFERENCES agents(agent_id),
    namespace  TEXT NOT NULL,
    pod        TEXT NOT NULL,
    slot_start INTEGER NOT NULL,
    metered_mj INTEGER NOT NULL,
    PRIMARY KEY (agent_id, namespace, pod, slot_start)
);
";

/// Failure of the state store; each variant is named after the operation that failed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening the scheduler state {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("loading the scheduler state: {0}")]
    Load(#[source] rusqlite::Error),
    #[error("saving the scheduler state: {0}")]
    Save(#[source] rusqlite::Error),
    /// The task saving the state panicked or was cancelled; what it had to save is kept.
    #[error("saving the scheduler state: the saving task failed: {0}")]
    SaveTask(String),
}

/// A device as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub uuid: String,
    pub model: String,
    pub min_limit_watts: u32,
    pub max_limit_watts: u32,
    pub default_limit_watts: u32,
    pub meter: MeterState,
}

/// Energy metered on an agent's devices while a pod used them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEnergy {
    pub namespace: String,
    pub pod: String,
    pub metered_mj: u64,
}

/// Energy metered on an agent's devices while a pod used them, in one metering slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSlotRecord {
    pub namespace: String,
    pub pod: String,
    /// Start of the slot, Unix seconds.
    pub slot_start: i64,
    pub metered_mj: u64,
}

/// An agent as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: String,
    pub node: String,
    pub zone: String,
    pub last_sequence: u64,
    pub devices: Vec<DeviceRecord>,
    pub pods: Vec<PodEnergy>,
    /// Slots to write (upserted; a save need not repeat slots saved before). Loading gives all.
    pub pod_slots: Vec<PodSlotRecord>,
    /// Slots starting before this (Unix seconds) are deleted when the agent is saved.
    pub pod_slots_before: i64,
}

/// The SQLite file behind a registry.
#[derive(Debug)]
pub struct StateStore {
    conn: Mutex<Connection>,
}

/// Same bits, other sign convention: SQLite has no unsigned integers.
fn to_sql(v: u64) -> i64 {
    v as i64
}

fn from_sql(v: i64) -> u64 {
    v as u64
}

impl StateStore {
    /// Opens (or creates) the state file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(fail)?;
        // WAL lets readers (backups, `sqlite3`) in while the scheduler writes; FULL makes each
        // commit durable before the stream it covers is confirmed to the agent.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        Self::init(conn).map_err(fail)
    }

    /// A private in-memory database, for tests of the store itself.
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn).map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })
    }

    fn init(conn: Connection) -> Result<Self, rusqlite::Error> {
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves no transaction open (rusqlite rolls back
        // on drop), so the connection is still usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every agent with its devices.
    pub fn load(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = self.lock();
        let mut agents = conn
            .prepare("SELECT agent_id, node, zone, last_sequence FROM agents ORDER BY agent_id")
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok(AgentRecord {
                        agent_id: r.get(0)?,
                        node: r.get(1)?,
                        zone: r.get(2)?,
                        last_sequence: from_sql(r.get(3)?),
                        devices: Vec::new(),
                        pods: Vec::new(),
                        pod_slots: Vec::new(),
                        pod_slots_before: i64::MIN,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(StoreError::Load)?;
        let mut st = conn
            .prepare(
                "SELECT uuid, model, min_limit_watts, max_limit_watts, default_limit_watts, \
                 last_counter_mj, counter_epoch, metered_mj FROM devices WHERE agent_id = ?1 \
                 ORDER BY uuid",
            )
            .map_err(StoreError::Load)?;
        let mut pods = conn
            .prepare(
                "SELECT namespace, pod, metered_mj FROM pod_energy WHERE agent_id = ?1 \
                 ORDER BY namespace, pod",
            )
            .map_err(StoreError::Load)?;
        let mut slots = conn
            .prepare(
                "SELECT namespace, pod, slot_start, metered_mj FROM pod_slots \
                 WHERE agent_id = ?1 ORDER BY namespace, pod, slot_start",
            )
            .map_err(StoreError::Load)?;
        for agent in &mut agents {
            agent.devices = st
                .query_map([&agent.agent_id], |r| {
                    Ok(DeviceRecord {
                        uuid: r.get(0)?,
                        model: r.get(1)?,
                        min_limit_watts: r.get(2)?,
                        max_limit_watts: r.get(3)?,
                        default_limit_watts: r.get(4)?,
                        meter: MeterState {
                            last_counter_mj: r.get::<_, Option<i64>>(5)?.map(from_sql),
                            epoch: from_sql(r.get(6)?),
                            metered_mj: from_sql(r.get(7)?),
                        },
                    })
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(StoreError::Load)?;
            agent.pods = pods
                .query_map([&agent.agent_id], |r| {
                    Ok(PodEnergy {
                        namespace: r.get(0)?,
                        pod: r.get(1)?,
                        metered_mj: from_sql(r.get(2)?),
                    })
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(StoreError::Load)?;
            agent.pod_slots = slots
                .query_map([&agent.agent_id], |r| {
                    Ok(PodSlotRecord {
                        namespace: r.get(0)?,
                        pod: r.get(1)?,
                        slot_start: r.get(2)?,
                        metered_mj: from_sql(r.get(3)?),
                    })
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(StoreError::Load)?;
        }
        Ok(agents)
    }

    /// Writes agents whole, in one transaction. `snapshot` is taken while the store is
    /// locked, so concurrent saves write their snapshots in the order they were taken and an
    /// older state can never overwrite a newer one.
    pub fn save_with(
        &self,
        snapshot: impl FnOnce() -> Vec<AgentRecord>,
    ) -> Result<usize, StoreError> {
        let mut conn = self.lock();
        let agents = snapshot();
        if agents.is_empty() {
            return Ok(0);
        }
        let tx = conn.transaction().map_err(StoreError::Save)?;
        for a in &agents {
            write_agent(&tx, a).map_err(StoreError::Save)?;
        }
        tx.commit().map_err(StoreError::Save)?;
        Ok(agents.len())
    }

    /// The stored last sequence of an agent (for tests and diagnostics).
    pub fn last_sequence(&self, agent_id: &str) -> Result<Option<u64>, StoreError> {
        self.lock()
            .query_row(
                "SELECT last_sequence FROM agents WHERE agent_id = ?1",
                [agent_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map(from_sql))
            .map_err(StoreError::Load)
    }
}

fn write_agent(tx: &rusqlite::Transaction<'_>, a: &AgentRecord) -> Result<(), rusqlite::Error> {
    tx.execute(
        "INSERT INTO agents (agent_id, node, zone, last_sequence) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (agent_id) DO UPDATE SET node = ?2, zone = ?3, last_sequence = ?4",
        params![a.agent_id, a.node, a.zone, to_sql(a.last_sequence)],
    )?;
    // Devices no longer registered are forgotten, as in memory.
    tx.execute("DELETE FROM devices WHERE agent_id = ?1", [&a.agent_id])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO devices (agent_id, uuid, model, min_limit_watts, max_limit_watts, \
         default_limit_watts, last_counter_mj, counter_epoch, metered_mj) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for d in &a.devices {
        insert.execute(params![
            a.agent_id,
            d.uuid,
            d.model,
            d.min_limit_watts,
            d.max_limit_watts,
            d.default_limit_watts,
            d.meter.last_counter_mj.map(to_sql),
            to_sql(d.meter.epoch),
            to_sql(d.meter.metered_mj),
        ])?;
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO pod_energy (agent_id, namespace, pod, metered_mj) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (agent_id, namespace, pod) DO UPDATE SET metered_mj = ?4",
    )?;
    for p in &a.pods {
        upsert.execute(params![
            a.agent_id,
            p.namespace,
            p.pod,
            to_sql(p.metered_mj)
        ])?;
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO pod_slots (agent_id, namespace, pod, slot_start, metered_mj) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (agent_id, namespace, pod, slot_start) DO UPDATE SET metered_mj = ?5",
    )?;
    for s in &a.pod_slots {
        upsert.execute(params![
            a.agent_id,
            s.namespace,
            s.pod,
            s.slot_start,
            to_sql(s.metered_mj)
        ])?;
    }
    if a.pod_slots_before > i64::MIN {
        tx.execute(
            "DELETE FROM pod_slots WHERE agent_id = ?1 AND slot_start < ?2",
            params![a.agent_id, a.pod_slots_before],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, seq: u64, metered: u64) -> AgentRecord {
        AgentRecord {
            agent_id: id.into(),
            node: format!("node-{id}"),
            zone: "GB".into(),
            last_sequence: seq,
            devices: vec![DeviceRecord {
                uuid: "GPU-0".into(),
                model: "V100".into(),
                min_limit_watts: 100,
                max_limit_watts: 250,
                default_limit_watts: 250,
                meter: MeterState {
                    last_counter_mj: Some(u64::MAX - 1),
                    epoch: u64::MAX,
                    metered_mj: metered,
                },
            }],
            pods: vec![PodEnergy {
                namespace: "ml".into(),
                pod: "train-0".into(),
                metered_mj: metered / 2,
            }],
            pod_slots: vec![PodSlotRecord {
                namespace: "ml".into(),
                pod: "train-0".into(),
                slot_start: 1_700_000_100,
                metered_mj: metered / 3,
            }],
            pod_slots_before: i64::MIN,
        }
    }

    #[test]
    fn agents_round_trip_exactly_including_the_top_bit() -> Result<(), StoreError> {
        let store = StateStore::in_memory()?;
        store.save_with(|| vec![agent("a1", 5, 1_000), agent("a2", u64::MAX, 7)])?;
        store.save_with(|| vec![agent("a1", 9, 2_000)])?;
        let loaded = store.load()?;
        assert_eq!(
            loaded,
            vec![agent("a1", 9, 2_000), agent("a2", u64::MAX, 7)]
        );
        assert_eq!(store.last_sequence("a1")?, Some(9));
        assert_eq!(store.last_sequence("a9")?, None);
        assert_eq!(store.save_with(Vec::new)?, 0);
        Ok(())
    }

    #[test]
    fn pod_slots_are_upserted_and_pruned_on_save() -> Result<(), StoreError> {
        let store = StateStore::in_memory()?;
        let mut a = agent("a1", 1, 90);
        let slot = |start: i64, mj: u64| PodSlotRecord {
            namespace: "ml".into(),
            pod: "train-0".into(),
            slot_start: start,
            metered_mj: mj,
        };
        a.pod_slots = vec![slot(900, 5), slot(1800, 6)];
        store.save_with(|| vec![a.clone()])?;
        // A later save writes only what changed, and drops slots before the mark.
        a.pod_slots = vec![slot(2700, 7)];
        a.pod_slots_before = 1800;
        store.save_with(|| vec![a.clone()])?;
        let loaded = store.load()?;
        assert_eq!(loaded[0].pod_slots, vec![slot(1800, 6), slot(2700, 7)]);
        Ok(())
    }

    #[test]
    fn a_file_survives_reopening() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.db");
        StateStore::open(&path)?.save_with(|| vec![agent("a1", 3, 42)])?;
        let loaded = StateStore::open(&path)?.load()?;
        assert_eq!(loaded, vec![agent("a1", 3, 42)]);
        Ok(())
    }

    #[test]
    fn an_unopenable_path_is_a_clear_error() {
        let e = StateStore::open(Path::new("/nonexistent-dir/offpeak/state.db"));
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("opening the scheduler state /nonexistent-dir/offpeak/state.db"),
            "{msg}"
        );
    }
}
