//! Committed runs and plan revisions on SQLite, so that a restarted scheduler never moves a
//! run that started and never hands out a revision it already used; the energy metered on each
//! job's pods per zone and slot, priced (what the plans' metered figures and the namespaces'
//! month-to-date costs are made of); and where a job restarted from scratch (a non-preemptible
//! job held by its user after it started). A file when the service is given one, in memory
//! otherwise (then a restart forgets, as with no store at all).
//!
//! The schema is created by numbered migrations recorded in `PRAGMA user_version`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension as _, params};

use super::PlacementError;
use crate::units::{Hours, Watts};

/// A run that started: fixed whole, whatever is learnt later.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedRun {
    pub key: String,
    pub uid: String,
    /// 0 for the job's first run.
    pub seq: u32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub zone: String,
    /// (node, GPUs on it).
    pub nodes: Vec<(String, u32)>,
    pub power_limit: Watts,
    /// Work the run does (at its power limit's throughput), hours.
    pub work_done: Hours,
}

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE placement_runs (
    job_key TEXT NOT NULL,
    uid TEXT NOT NULL,
    seq INTEGER NOT NULL,
    start_unix_s INTEGER NOT NULL,
    end_unix_s INTEGER NOT NULL,
    zone TEXT NOT NULL,
    nodes_json TEXT NOT NULL,
    power_limit_watts REAL NOT NULL,
    work_done_hours REAL NOT NULL,
    PRIMARY KEY (job_key, uid, seq)
);
CREATE TABLE placement_revisions (
    job_key TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
);
",
    "
CREATE TABLE placement_metered (
    job_key TEXT NOT NULL,
    uid TEXT NOT NULL,
    zone TEXT NOT NULL,
    slot_start_unix_s INTEGER NOT NULL,
    energy_mj INTEGER NOT NULL,
    cost REAL NOT NULL,
    carbon_kg REAL NOT NULL,
    priced INTEGER NOT NULL,
    PRIMARY KEY (job_key, uid, zone, slot_start_unix_s)
);
CREATE TABLE placement_restarts (
    job_key TEXT NOT NULL,
    uid TEXT NOT NULL,
    first_run INTEGER NOT NULL,
    PRIMARY KEY (job_key, uid)
);
",
];

/// Energy metered on a job's pods in one zone and slot, priced.
#[derive(Debug, Clone, PartialEq)]
pub struct MeteredSlot {
    pub key: String,
    pub uid: String,
    pub zone: String,
    /// Start of the slot.
    pub slot_start: DateTime<Utc>,
    /// IT energy, millijoules (exact: a sum of counter deltas).
    pub energy_mj: u64,
    /// At the slot's price in the zone, PUE applied (0 while not priced).
    pub cost: f64,
    /// At the slot's carbon intensity in the zone, PUE applied, kg (0 while not priced).
    pub carbon_kg: f64,
    /// Whether the zone's signals for the slot were known when it was priced.
    pub priced: bool,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: Option<PathBuf>,
}

impl Store {
    /// Opens (creating if needed) the store at `path`, or an in-memory one.
    pub fn open(path: Option<&Path>) -> Result<Self, PlacementError> {
        let shown = || path.map_or_else(|| ":memory:".to_owned(), |p| p.display().to_string());
        let open_err = |source| PlacementError::OpenStore {
            path: shown(),
            source,
        };
        let conn = match path {
            Some(p) => Connection::open(p),
            None => Connection::open_in_memory(),
        }
        .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            let v = i as i64 + 1;
            conn.execute_batch(&format!("BEGIN; {sql} PRAGMA user_version = {v}; COMMIT;"))
                .map_err(open_err)?;
        }
        Ok(Self {
            conn,
            path: path.map(Path::to_owned),
        })
    }

    /// Where the store is (`None`: in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Every committed run, by job, uid and sequence.
    pub fn runs(&self) -> Result<Vec<CommittedRun>, PlacementError> {
        let read = PlacementError::ReadStore;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT job_key, uid, seq, start_unix_s, end_unix_s, zone, nodes_json, \
                 power_limit_watts, work_done_hours FROM placement_runs \
                 ORDER BY job_key, uid, seq",
            )
            .map_err(read)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, f64>(7)?,
                    r.get::<_, f64>(8)?,
                ))
            })
            .map_err(read)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, uid, seq, start, end, zone, nodes, watts, work) = row.map_err(read)?;
            let corrupt = |what: &str| PlacementError::CorruptStore {
                key: key.clone(),
                reason: what.to_owned(),
            };
            let nodes: Vec<(String, u32)> =
                serde_json::from_str(&nodes).map_err(|e| corrupt(&format!("nodes: {e}")))?;
            let instant = |s: i64| {
                DateTime::<Utc>::from_timestamp(s, 0).ok_or_else(|| corrupt("time out of range"))
            };
            out.push(CommittedRun {
                start: instant(start)?,
                end: instant(end)?,
                key,
                uid,
                seq,
                zone,
                nodes,
                power_limit: Watts(watts),
                work_done: Hours(work),
            });
        }
        Ok(out)
    }

    /// Records runs (new ones, or a run cut short) and revisions, all or nothing.
    pub fn write(
        &mut self,
        runs: &[CommittedRun],
        revisions: &[(String, u64)],
    ) -> Result<(), PlacementError> {
        if runs.is_empty() && revisions.is_empty() {
            return Ok(());
        }
        let write = PlacementError::WriteStore;
        let tx = self.conn.transaction().map_err(write)?;
        for r in runs {
            let nodes =
                serde_json::to_string(&r.nodes).map_err(|e| PlacementError::CorruptStore {
                    key: r.key.clone(),
                    reason: format!("nodes: {e}"),
                })?;
            tx.execute(
                "INSERT INTO placement_runs (job_key, uid, seq, start_unix_s, end_unix_s, zone, \
                 nodes_json, power_limit_watts, work_done_hours) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT (job_key, uid, seq) DO UPDATE SET \
                 end_unix_s = excluded.end_unix_s, work_done_hours = excluded.work_done_hours",
                params![
                    r.key,
                    r.uid,
                    r.seq,
                    r.start.timestamp(),
                    r.end.timestamp(),
                    r.zone,
                    nodes,
                    r.power_limit.0,
                    r.work_done.0
                ],
            )
            .map_err(write)?;
        }
        for (key, rev) in revisions {
            tx.execute(
                "INSERT INTO placement_revisions (job_key, revision) VALUES (?1, ?2) \
                 ON CONFLICT (job_key) DO UPDATE SET revision = max(revision, excluded.revision)",
                params![key, *rev as i64],
            )
            .map_err(write)?;
        }
        tx.commit().map_err(write)
    }

    /// Records metered slots (new, or grown), all or nothing.
    pub fn write_metered(&mut self, slots: &[MeteredSlot]) -> Result<(), PlacementError> {
        if slots.is_empty() {
            return Ok(());
        }
        let write = PlacementError::WriteStore;
        let tx = self.conn.transaction().map_err(write)?;
        for m in slots {
            tx.execute(
                "INSERT INTO placement_metered (job_key, uid, zone, slot_start_unix_s, energy_mj, \
                 cost, carbon_kg, priced) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (job_key, uid, zone, slot_start_unix_s) DO UPDATE SET \
                 energy_mj = excluded.energy_mj, cost = excluded.cost, \
                 carbon_kg = excluded.carbon_kg, priced = excluded.priced",
                params![
                    m.key,
                    m.uid,
                    m.zone,
                    m.slot_start.timestamp(),
                    // SQLite integers are signed; 2^63 mJ is 2.5 TWh, far beyond a job.
                    i64::try_from(m.energy_mj).unwrap_or(i64::MAX),
                    m.cost,
                    m.carbon_kg,
                    m.priced
                ],
            )
            .map_err(write)?;
        }
        tx.commit().map_err(write)
    }

    /// Every metered slot, by job, uid, zone and slot.
    pub fn metered(&self) -> Result<Vec<MeteredSlot>, PlacementError> {
        let read = PlacementError::ReadStore;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT job_key, uid, zone, slot_start_unix_s, energy_mj, cost, carbon_kg, \
                 priced FROM placement_metered ORDER BY job_key, uid, zone, slot_start_unix_s",
            )
            .map_err(read)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, f64>(5)?,
                    r.get::<_, f64>(6)?,
                    r.get::<_, bool>(7)?,
                ))
            })
            .map_err(read)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, uid, zone, start, mj, cost, carbon_kg, priced) = row.map_err(read)?;
            let corrupt = |reason: &str| PlacementError::CorruptStore {
                key: key.clone(),
                reason: reason.to_owned(),
            };
            let slot_start = DateTime::<Utc>::from_timestamp(start, 0)
                .ok_or_else(|| corrupt("metered slot time out of range"))?;
            let energy_mj = u64::try_from(mj).map_err(|_| corrupt("negative metered energy"))?;
            out.push(MeteredSlot {
                key,
                uid,
                zone,
                slot_start,
                energy_mj,
                cost,
                carbon_kg,
                priced,
            });
        }
        Ok(out)
    }

    /// Records that job `key`/`uid` starts over from its run `first_run` (the runs before it
    /// did work that was lost).
    pub fn write_restart(
        &mut self,
        key: &str,
        uid: &str,
        first_run: usize,
    ) -> Result<(), PlacementError> {
        self.conn
            .execute(
                "INSERT INTO placement_restarts (job_key, uid, first_run) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (job_key, uid) DO UPDATE SET first_run = excluded.first_run",
                params![key, uid, first_run as i64],
            )
            .map(|_| ())
            .map_err(PlacementError::WriteStore)
    }

    /// Where each job restarted: (key, uid) -> first run that counts.
    pub fn restarts(&self) -> Result<Vec<(String, String, usize)>, PlacementError> {
        let read = PlacementError::ReadStore;
        let mut stmt = self
            .conn
            .prepare("SELECT job_key, uid, first_run FROM placement_restarts")
            .map_err(read)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?.max(0) as usize,
                ))
            })
            .map_err(read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(read)
    }

    /// The last revision handed out for `key` (0: none).
    pub fn revision(&self, key: &str) -> Result<u64, PlacementError> {
        let rev: Option<i64> = self
            .conn
            .query_row(
                "SELECT revision FROM placement_revisions WHERE job_key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
            .map_err(PlacementError::ReadStore)?;
        Ok(rev.unwrap_or(0).max(0) as u64)
    }

    /// Forgets runs that ended before `before` (called at start-up, so that the store does
    /// not grow without end); returns how many. Revisions are kept: one row per job name.
    pub fn prune(&mut self, before: DateTime<Utc>) -> Result<usize, PlacementError> {
        let write = PlacementError::WriteStore;
        let runs = self
            .conn
            .execute(
                "DELETE FROM placement_runs WHERE end_unix_s < ?1",
                [before.timestamp()],
            )
            .map_err(write)?;
        // Metered energy of old slots: no month-to-date reaches back that far.
        self.conn
            .execute(
                "DELETE FROM placement_metered WHERE slot_start_unix_s < ?1",
                [before.timestamp()],
            )
            .map_err(write)?;
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seq: u32, end: &str) -> CommittedRun {
        CommittedRun {
            key: "ml/a".into(),
            uid: "u1".into(),
            seq,
            start: "2024-01-01T00:00:00Z".parse().expect("time"),
            end: end.parse().expect("time"),
            zone: "A".into(),
            nodes: vec![("n1".into(), 8), ("n2".into(), 4)],
            power_limit: Watts(150.0),
            work_done: Hours(1.5),
        }
    }

    #[test]
    fn runs_and_revisions_survive_reopening_and_updates_keep_the_start()
    -> Result<(), PlacementError> {
        let dir = tempfile::tempdir().map_err(|e| PlacementError::CorruptStore {
            key: String::new(),
            reason: e.to_string(),
        })?;
        let path = dir.path().join("placement.sqlite");
        {
            let mut s = Store::open(Some(&path))?;
            s.write(&[run(0, "2024-01-01T02:00:00Z")], &[("ml/a".into(), 3)])?;
            let mut cut = run(0, "2024-01-01T01:00:00Z");
            cut.work_done = Hours(0.75);
            cut.start = "2023-12-31T00:00:00Z".parse().expect("time");
            s.write(&[cut], &[("ml/a".into(), 2)])?;
        }
        let mut s = Store::open(Some(&path))?;
        let runs = s.runs()?;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].start, run(0, "2024-01-01T01:00:00Z").start);
        assert_eq!(runs[0].end.to_rfc3339(), "2024-01-01T01:00:00+00:00");
        assert_eq!(runs[0].work_done, Hours(0.75));
        assert_eq!(runs[0].nodes, run(0, "2024-01-01T01:00:00Z").nodes);
        assert_eq!(s.revision("ml/a")?, 3);
        assert_eq!(s.revision("ml/b")?, 0);
        assert_eq!(s.prune("2024-01-02T00:00:00Z".parse().expect("time"))?, 1);
        assert!(s.runs()?.is_empty());
        Ok(())
    }

    #[test]
    fn metered_slots_and_restarts_survive_reopening() -> Result<(), PlacementError> {
        let dir = tempfile::tempdir().map_err(|e| PlacementError::CorruptStore {
            key: String::new(),
            reason: e.to_string(),
        })?;
        let path = dir.path().join("placement.sqlite");
        let slot = |start: &str, mj: u64| MeteredSlot {
            key: "ml/a".into(),
            uid: "u1".into(),
            zone: "A".into(),
            slot_start: start.parse().expect("time"),
            energy_mj: mj,
            cost: mj as f64 * 1e-6,
            carbon_kg: mj as f64 * 1e-7,
            priced: true,
        };
        {
            let mut s = Store::open(Some(&path))?;
            s.write_metered(&[
                slot("2024-01-01T00:00:00Z", 5),
                slot("2024-01-03T00:00:00Z", 9),
            ])?;
            // A slot that grew is written again.
            s.write_metered(&[slot("2024-01-01T00:00:00Z", 7)])?;
            s.write_restart("ml/a", "u1", 2)?;
        }
        let mut s = Store::open(Some(&path))?;
        assert_eq!(
            s.metered()?,
            vec![
                slot("2024-01-01T00:00:00Z", 7),
                slot("2024-01-03T00:00:00Z", 9)
            ]
        );
        assert_eq!(s.restarts()?, vec![("ml/a".into(), "u1".into(), 2)]);
        s.prune("2024-01-02T00:00:00Z".parse().expect("time"))?;
        assert_eq!(s.metered()?, vec![slot("2024-01-03T00:00:00Z", 9)]);
        Ok(())
    }
}
