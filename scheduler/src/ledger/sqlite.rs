//! The embedded SQLite backend of the ledger (`rusqlite`, SQLite bundled): a file, nothing to
//! install.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension as _, Row, Transaction, params};

use super::live::LiveMark;
use super::schema::{self, Columns, Dialect, MARK_COLUMNS, MARKET_COLUMNS, RECORD_COLUMNS};
use super::store::{Appended, Batch, LedgerStore, RecordKind};
use super::{Amounts, LedgerError, LedgerRecord, MarketSlot};

/// SQLite's spelling of the shared schema and queries ([`schema`]).
const DIALECT: Dialect = Dialect {
    // Fixed-width RFC 3339 UTC text ([`TIME_FORMAT`]), so that text order is time order and
    // the interval queries can compare strings.
    time: "TEXT",
    integer: "INTEGER",
    real: "REAL",
    param: '?',
    // SQLite compares text by bytes unless told otherwise.
    byte_order: "",
    // SQLite's SUM over integers is exact (it fails on overflow rather than rounding).
    sum_cast: "",
};

/// How long a connection waits for another's write lock before failing: a report read while
/// `offpeak simulate` commits a large replay waits for the commit rather than erroring.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How instants are stored (see [`DIALECT`]).
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format(TIME_FORMAT).to_string()
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
    tx.execute_batch(&schema::create_migrations_table(&DIALECT))
        .map_err(err(0))?;
    for (version, sql) in schema::migrations(&DIALECT) {
        let done = tx
            .query_row(&schema::select_migration(&DIALECT), [version], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(err(version))?;
        if done.is_some() {
            continue;
        }
        tx.execute_batch(&sql).map_err(err(version))?;
        tx.execute(
            &schema::insert_migration(&DIALECT),
            params![version, fmt_time(Utc::now())],
        )
        .map_err(err(version))?;
    }
    tx.commit().map_err(err(0))
}

/// Reads SQLite's columns for the shared readers; instants are [`TIME_FORMAT`] text.
impl Columns for Row<'_> {
    fn text(&self, i: usize) -> Result<String, LedgerError> {
        self.get(i).map_err(query_err)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, LedgerError> {
        self.get(i).map_err(query_err)
    }
    fn int(&self, i: usize) -> Result<i64, LedgerError> {
        self.get(i).map_err(query_err)
    }
    fn real(&self, i: usize) -> Result<f64, LedgerError> {
        self.get(i).map_err(query_err)
    }
    fn time(
        &self,
        i: usize,
        field: &'static str,
        row_id: impl FnOnce() -> String,
    ) -> Result<DateTime<Utc>, LedgerError> {
        let s = self.text(i)?;
        s.parse::<DateTime<Utc>>()
            .map_err(|e| LedgerError::ReadRecord {
                id: row_id(),
                field,
                reason: format!("{s:?} is not an RFC 3339 time: {e}"),
            })
    }
}

fn query_err(source: rusqlite::Error) -> LedgerError {
    LedgerError::Query {
        source: source.into(),
    }
}

fn insert_records(
    tx: &Transaction<'_>,
    kind: RecordKind,
    records: &[LedgerRecord],
) -> rusqlite::Result<usize> {
    let values = schema::placeholders(&DIALECT, 1, RECORD_COLUMNS.len());
    let mut stmt = tx.prepare_cached(&schema::insert_records(kind, &values))?;
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
    let values = schema::placeholders(&DIALECT, 1, MARKET_COLUMNS.len());
    let mut stmt = tx.prepare_cached(&schema::insert_market(&values))?;
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

fn insert_marks(tx: &Transaction<'_>, marks: &[LiveMark]) -> Result<usize, LedgerError> {
    let err = |source: rusqlite::Error| LedgerError::Append {
        source: source.into(),
    };
    let values = schema::placeholders(&DIALECT, 1, MARK_COLUMNS.len());
    let mut stmt = tx
        .prepare_cached(&schema::insert_marks(&values))
        .map_err(err)?;
    let mut added = 0;
    for m in marks {
        let mj = schema::mark_mj(m)?;
        added += stmt
            .execute(params![m.record, m.original, m.job, fmt_time(m.start), mj])
            .map_err(err)?;
    }
    Ok(added)
}

impl SqliteLedger {
    /// Appends a batch and marks in one transaction.
    fn append(&mut self, batch: &Batch<'_>, marks: &[LiveMark]) -> Result<Appended, LedgerError> {
        let err = |source: rusqlite::Error| LedgerError::Append {
            source: source.into(),
        };
        let tx = self.conn.transaction().map_err(err)?;
        let appended = Appended {
            market: insert_market(&tx, batch.market).map_err(err)?,
            counterfactual: insert_records(&tx, RecordKind::Counterfactual, batch.counterfactual)
                .map_err(err)?,
            records: insert_records(&tx, RecordKind::Metered, batch.records).map_err(err)?,
        };
        insert_marks(&tx, marks)?;
        tx.commit().map_err(err)?;
        Ok(appended)
    }

    /// Every row `sql` returns for `params`, each read with `read`.
    fn query<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl Fn(&Row<'_>) -> Result<T, LedgerError>,
    ) -> Result<Vec<T>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(query_err)?;
        let mut rows = stmt.query(params).map_err(query_err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(query_err)? {
            out.push(read(row)?);
        }
        Ok(out)
    }

    /// The rows of `sql` over `[from, to)`, each read with `read`.
    fn query_between<T>(
        &self,
        sql: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        read: impl Fn(&Row<'_>) -> Result<T, LedgerError>,
    ) -> Result<Vec<T>, LedgerError> {
        self.query(sql, params![fmt_time(from), fmt_time(to)], read)
    }
}

impl LedgerStore for SqliteLedger {
    fn append_batch(&mut self, batch: &Batch<'_>) -> Result<Appended, LedgerError> {
        self.append(batch, &[])
    }

    fn append_live(
        &mut self,
        batch: &Batch<'_>,
        marks: &[LiveMark],
    ) -> Result<Appended, LedgerError> {
        self.append(batch, marks)
    }

    fn live_marks(&self, since: DateTime<Utc>) -> Result<Vec<LiveMark>, LedgerError> {
        let sql = schema::select_marks(&DIALECT);
        self.query(&sql, params![fmt_time(since)], |r| schema::read_mark(r))
    }

    fn records_of(
        &self,
        kind: RecordKind,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LedgerRecord>, LedgerError> {
        let sql = schema::select_records(&DIALECT, kind);
        self.query_between(&sql, from, to, |r| schema::read_record(r))
    }

    fn totals_of(&self, kind: RecordKind) -> Result<(usize, Amounts), LedgerError> {
        let sql = schema::select_totals(&DIALECT, kind);
        let rows = self.query(&sql, [], |r| schema::read_totals(r))?;
        // An aggregate without GROUP BY returns exactly one row.
        rows.into_iter()
            .next()
            .ok_or_else(|| query_err(rusqlite::Error::QueryReturnedNoRows))
    }

    fn market_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MarketSlot>, LedgerError> {
        let sql = schema::select_market(&DIALECT);
        self.query_between(&sql, from, to, |r| schema::read_market(r))
    }

    fn namespaces(&self) -> Result<Vec<String>, LedgerError> {
        self.query(&schema::select_namespaces(&DIALECT), [], |r| r.text(0))
    }

    fn schema_version(&self) -> Result<i64, LedgerError> {
        self.conn
            .query_row(schema::SELECT_SCHEMA_VERSION, [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|v| v.unwrap_or(0))
            .map_err(query_err)
    }
}
