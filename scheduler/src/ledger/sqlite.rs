//! The embedded SQLite backend of the ledger (`rusqlite`, SQLite bundled): a file, nothing to
//! install.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension as _, Row, Transaction, params};

use super::store::{Appended, Batch, LedgerStore};
use super::{Amounts, Fixed, LedgerError, LedgerRecord, MarketSlot};
use crate::units::{GramsPerKwh, PricePerMwh};

/// Schema changes, applied in order, each once; `ledger_migrations` records which were.
/// Never edit one that has shipped: add the next number. [`super::postgres`] has the same
/// numbers in its dialect.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE ledger_records (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        namespace TEXT NOT NULL,
        job TEXT NOT NULL,
        zone TEXT NOT NULL,
        start_utc TEXT NOT NULL,
        end_utc TEXT NOT NULL,
        gpus INTEGER NOT NULL,
        price_per_mwh REAL NOT NULL,
        carbon_g_per_kwh REAL NOT NULL,
        pue REAL NOT NULL,
        currency TEXT NOT NULL,
        gpu_hours_nanos INTEGER NOT NULL,
        it_kwh_nanos INTEGER NOT NULL,
        facility_kwh_nanos INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        carbon_kg_nanos INTEGER NOT NULL,
        corrects TEXT REFERENCES ledger_records(id)
    );
    CREATE INDEX ledger_records_start ON ledger_records(start_utc);
    CREATE TABLE ledger_market (
        zone TEXT NOT NULL,
        start_utc TEXT NOT NULL,
        end_utc TEXT NOT NULL,
        price_per_mwh REAL NOT NULL,
        carbon_g_per_kwh REAL NOT NULL,
        currency TEXT NOT NULL,
        PRIMARY KEY (zone, start_utc)
    );",
    ),
    (
        2,
        "CREATE TABLE ledger_counterfactual (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        namespace TEXT NOT NULL,
        job TEXT NOT NULL,
        zone TEXT NOT NULL,
        start_utc TEXT NOT NULL,
        end_utc TEXT NOT NULL,
        gpus INTEGER NOT NULL,
        price_per_mwh REAL NOT NULL,
        carbon_g_per_kwh REAL NOT NULL,
        pue REAL NOT NULL,
        currency TEXT NOT NULL,
        gpu_hours_nanos INTEGER NOT NULL,
        it_kwh_nanos INTEGER NOT NULL,
        facility_kwh_nanos INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        carbon_kg_nanos INTEGER NOT NULL,
        corrects TEXT
    );
    CREATE INDEX ledger_counterfactual_start ON ledger_counterfactual(start_utc);",
    ),
    (
        3,
        "ALTER TABLE ledger_records ADD COLUMN team TEXT NOT NULL DEFAULT 'unassigned';
    ALTER TABLE ledger_records ADD COLUMN cost_centre TEXT NOT NULL DEFAULT 'unassigned';
    ALTER TABLE ledger_records ADD COLUMN tariff_period TEXT NOT NULL DEFAULT 'spot';
    ALTER TABLE ledger_counterfactual ADD COLUMN team TEXT NOT NULL DEFAULT 'unassigned';
    ALTER TABLE ledger_counterfactual ADD COLUMN cost_centre TEXT NOT NULL DEFAULT 'unassigned';
    ALTER TABLE ledger_counterfactual ADD COLUMN tariff_period TEXT NOT NULL DEFAULT 'spot';",
    ),
];

/// How long a connection waits for another's write lock before failing: a report read while
/// `offpeak simulate` commits a large replay waits for the commit rather than erroring.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Timestamps are stored as fixed-width RFC 3339 UTC text, so text order is time order and the
/// interval queries can compare strings.
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format(TIME_FORMAT).to_string()
}

fn parse_time(id: &str, field: &'static str, s: &str) -> Result<DateTime<Utc>, LedgerError> {
    s.parse::<DateTime<Utc>>()
        .map_err(|e| LedgerError::ReadRecord {
            id: id.to_string(),
            field,
            reason: format!("{s:?} is not an RFC 3339 time: {e}"),
        })
}

/// The ledger in an SQLite file (or in memory, for tests).
#[derive(Debug)]
pub struct SqliteLedger {
    conn: Connection,
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let open_err = |source: rusqlite::Error| LedgerError::Open {
            location: path.display().to_string(),
            source: source.into(),
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        Self::with_connection(conn)
    }

    /// A throwaway in-memory ledger.
    pub fn open_in_memory() -> Result<Self, LedgerError> {
        let conn = Connection::open_in_memory().map_err(|source| LedgerError::Open {
            location: ":memory:".to_string(),
            source: source.into(),
        })?;
        Self::with_connection(conn)
    }

    fn with_connection(mut conn: Connection) -> Result<Self, LedgerError> {
        // A correction must name a stored record, as PostgreSQL enforces; SQLite checks
        // foreign keys only when asked, per connection.
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|source| LedgerError::Open {
                location: conn.path().unwrap_or(":memory:").to_string(),
                source: source.into(),
            })?;
        migrate(&mut conn)?;
        Ok(SqliteLedger { conn })
    }
}

fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    let err = |version| {
        move |source: rusqlite::Error| LedgerError::Migrate {
            version,
            source: source.into(),
        }
    };
    // IMMEDIATE takes the write lock first, so two processes opening a new ledger at once
    // apply each migration once.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err(0))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS ledger_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TEXT NOT NULL
        );",
    )
    .map_err(err(0))?;
    for &(version, sql) in MIGRATIONS {
        let done = tx
            .query_row(
                "SELECT version FROM ledger_migrations WHERE version = ?1",
                [version],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(err(version))?;
        if done.is_some() {
            continue;
        }
        tx.execute_batch(sql).map_err(err(version))?;
        tx.execute(
            "INSERT INTO ledger_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, fmt_time(Utc::now())],
        )
        .map_err(err(version))?;
    }
    tx.commit().map_err(err(0))
}

const RECORD_COLUMNS: &str = "id, source, namespace, job, zone, start_utc, end_utc, gpus, \
     price_per_mwh, carbon_g_per_kwh, pue, currency, gpu_hours_nanos, it_kwh_nanos, \
     facility_kwh_nanos, cost_nanos, carbon_kg_nanos, corrects, team, cost_centre, tariff_period";

/// The columns of a record as read, before the times are parsed.
type RawRecord = (LedgerRecord, String, String);

fn read_record(r: &Row<'_>) -> rusqlite::Result<RawRecord> {
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    Ok((
        LedgerRecord {
            id: r.get(0)?,
            source: r.get(1)?,
            namespace: r.get(2)?,
            team: r.get(18)?,
            cost_centre: r.get(19)?,
            job: r.get(3)?,
            zone: r.get(4)?,
            tariff_period: r.get(20)?,
            start: epoch,
            end: epoch,
            gpus: r.get(7)?,
            price: PricePerMwh(r.get(8)?),
            carbon_intensity: GramsPerKwh(r.get(9)?),
            pue: r.get(10)?,
            currency: r.get(11)?,
            amounts: Amounts {
                gpu_hours: Fixed(r.get(12)?),
                it_kwh: Fixed(r.get(13)?),
                facility_kwh: Fixed(r.get(14)?),
                cost: Fixed(r.get(15)?),
                carbon_kg: Fixed(r.get(16)?),
            },
            corrects: r.get(17)?,
        },
        r.get(5)?,
        r.get(6)?,
    ))
}

/// The two tables of records, which share their columns.
const RECORDS: &str = "ledger_records";
const COUNTERFACTUAL: &str = "ledger_counterfactual";

fn insert_records(
    tx: &Transaction<'_>,
    table: &str,
    records: &[LedgerRecord],
) -> rusqlite::Result<usize> {
    let mut stmt = tx.prepare_cached(&format!(
        "INSERT INTO {table} ({RECORD_COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
         ?19, ?20, ?21) ON CONFLICT (id) DO NOTHING"
    ))?;
    let mut added = 0;
    for r in records {
        added += stmt.execute(params![
            r.id,
            r.source,
            r.namespace,
            r.job,
            r.zone,
            fmt_time(r.start),
            fmt_time(r.end),
            r.gpus,
            r.price.0,
            r.carbon_intensity.0,
            r.pue,
            r.currency,
            r.amounts.gpu_hours.0,
            r.amounts.it_kwh.0,
            r.amounts.facility_kwh.0,
            r.amounts.cost.0,
            r.amounts.carbon_kg.0,
            r.corrects,
            r.team,
            r.cost_centre,
            r.tariff_period,
        ])?;
    }
    Ok(added)
}

fn insert_market(tx: &Transaction<'_>, slots: &[MarketSlot]) -> rusqlite::Result<usize> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO ledger_market (zone, start_utc, end_utc, price_per_mwh, \
         carbon_g_per_kwh, currency) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (zone, start_utc) DO NOTHING",
    )?;
    let mut added = 0;
    for m in slots {
        added += stmt.execute(params![
            m.zone,
            fmt_time(m.start),
            fmt_time(m.end),
            m.price.0,
            m.carbon_intensity.0,
            m.currency,
        ])?;
    }
    Ok(added)
}

impl SqliteLedger {
    fn read_between(
        &self,
        table: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LedgerRecord>, LedgerError> {
        let err = |source: rusqlite::Error| LedgerError::Query {
            source: source.into(),
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM {table} \
                 WHERE start_utc < ?2 AND end_utc > ?1 ORDER BY start_utc, id"
            ))
            .map_err(err)?;
        let raw = stmt
            .query_map(params![fmt_time(from), fmt_time(to)], read_record)
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        raw.into_iter()
            .map(|(mut rec, start, end)| {
                rec.start = parse_time(&rec.id, "start_utc", &start)?;
                rec.end = parse_time(&rec.id, "end_utc", &end)?;
                Ok(rec)
            })
            .collect()
    }

    fn sum(&self, table: &str) -> Result<(usize, Amounts), LedgerError> {
        // SQLite's SUM over integers is exact (it fails on overflow rather than rounding).
        self.conn
            .query_row(
                &format!(
                    "SELECT COUNT(*), COALESCE(SUM(gpu_hours_nanos), 0), \
                     COALESCE(SUM(it_kwh_nanos), 0), COALESCE(SUM(facility_kwh_nanos), 0), \
                     COALESCE(SUM(cost_nanos), 0), COALESCE(SUM(carbon_kg_nanos), 0) \
                     FROM {table}"
                ),
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        Amounts {
                            gpu_hours: Fixed(r.get(1)?),
                            it_kwh: Fixed(r.get(2)?),
                            facility_kwh: Fixed(r.get(3)?),
                            cost: Fixed(r.get(4)?),
                            carbon_kg: Fixed(r.get(5)?),
                        },
                    ))
                },
            )
            .map(|(n, a)| (usize::try_from(n).unwrap_or(0), a))
            .map_err(|source| LedgerError::Query {
                source: source.into(),
            })
    }
}

impl LedgerStore for SqliteLedger {
    fn append_batch(&mut self, batch: &Batch<'_>) -> Result<Appended, LedgerError> {
        let err = |source: rusqlite::Error| LedgerError::Append {
            source: source.into(),
        };
        let tx = self.conn.transaction().map_err(err)?;
        let appended = Appended {
            market: insert_market(&tx, batch.market).map_err(err)?,
            counterfactual: insert_records(&tx, COUNTERFACTUAL, batch.counterfactual)
                .map_err(err)?,
            records: insert_records(&tx, RECORDS, batch.records).map_err(err)?,
        };
        tx.commit().map_err(err)?;
        Ok(appended)
    }

    fn counterfactual_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LedgerRecord>, LedgerError> {
        self.read_between(COUNTERFACTUAL, from, to)
    }

    fn records_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LedgerRecord>, LedgerError> {
        self.read_between(RECORDS, from, to)
    }

    fn market_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MarketSlot>, LedgerError> {
        let err = |source: rusqlite::Error| LedgerError::Query {
            source: source.into(),
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT zone, start_utc, end_utc, price_per_mwh, carbon_g_per_kwh, currency \
                 FROM ledger_market WHERE start_utc < ?2 AND end_utc > ?1 \
                 ORDER BY zone, start_utc",
            )
            .map_err(err)?;
        let raw = stmt
            .query_map(params![fmt_time(from), fmt_time(to)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, f64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        raw.into_iter()
            .map(|(zone, start, end, price, carbon, currency)| {
                let id = format!("market {zone} {start}");
                Ok(MarketSlot {
                    start: parse_time(&id, "start_utc", &start)?,
                    end: parse_time(&id, "end_utc", &end)?,
                    zone,
                    price: PricePerMwh(price),
                    carbon_intensity: GramsPerKwh(carbon),
                    currency,
                })
            })
            .collect()
    }

    fn namespaces(&self) -> Result<Vec<String>, LedgerError> {
        let err = |source: rusqlite::Error| LedgerError::Query {
            source: source.into(),
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT namespace FROM ledger_records ORDER BY namespace")
            .map_err(err)?;
        stmt.query_map([], |r| r.get::<_, String>(0))
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)
    }

    fn totals(&self) -> Result<(usize, Amounts), LedgerError> {
        self.sum(RECORDS)
    }

    fn counterfactual_totals(&self) -> Result<(usize, Amounts), LedgerError> {
        self.sum(COUNTERFACTUAL)
    }

    fn schema_version(&self) -> Result<i64, LedgerError> {
        self.conn
            .query_row("SELECT MAX(version) FROM ledger_migrations", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|v| v.unwrap_or(0))
            .map_err(|source| LedgerError::Query {
                source: source.into(),
            })
    }
}
