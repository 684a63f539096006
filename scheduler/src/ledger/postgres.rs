//! The PostgreSQL backend of the ledger, for production: the shared tables, migrations and
//! queries of [`super::schema`] in PostgreSQL's dialect (times as `TIMESTAMPTZ`, amounts as
//! `BIGINT` nano-units, text in byte order), through the synchronous `postgres` client. From
//! async code, call it inside `tokio::task::spawn_blocking`.

use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Transaction};

use super::live::LiveMark;
use super::schema::{self, Columns, Dialect, MARK_COLUMNS, MARKET_COLUMNS, RECORD_COLUMNS};
use super::store::{Appended, Batch, LedgerStore, RecordKind, redact_password};
use super::{Amounts, LedgerError, LedgerRecord, MarketSlot};

/// PostgreSQL's spelling of the shared schema and queries ([`schema`]).
const DIALECT: Dialect = Dialect {
    time: "TIMESTAMPTZ",
    integer: "BIGINT",
    real: "DOUBLE PRECISION",
    param: '$',
    // Byte order, as SQLite sorts, whatever the database's locale.
    byte_order: " COLLATE \"C\"",
    // SUM(BIGINT) is an exact NUMERIC; the cast back fails on overflow rather than rounding.
    sum_cast: "::BIGINT",
};

/// The advisory lock key migrations hold, so that two processes opening a new ledger at once
/// apply each migration once ("offpeak" in ASCII, any constant would do).
const MIGRATION_LOCK: i64 = 0x006f_6666_7065_616b;

/// Rows per multi-row `INSERT`: one statement per thousand rows keeps a replay's append to a
/// few round trips, and 1,000 × 21 parameters stays far below PostgreSQL's 65,535.
const ROWS_PER_INSERT: usize = 1000;

const RECORD_WIDTH: usize = RECORD_COLUMNS.len();

/// The ledger in a PostgreSQL database.
pub struct PostgresLedger {
    // The trait reads through `&self`; the client needs `&mut` for every query.
    client: Mutex<Client>,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger").finish_non_exhaustive()
    }
}

impl PostgresLedger {
    /// Connects to `url` (`postgres://user:password@host:port/database`) and brings the
    /// schema up to date.
    pub fn connect(url: &str) -> Result<Self, LedgerError> {
        let mut client = Client::connect(url, NoTls).map_err(|source| LedgerError::Open {
            location: redact_password(url),
            source: source.into(),
        })?;
        migrate(&mut client)?;
        Ok(PostgresLedger {
            client: Mutex::new(client),
        })
    }

    fn client(&self) -> MutexGuard<'_, Client> {
        // A panic elsewhere while holding the lock leaves the connection usable: every
        // statement is its own transaction or rolls back when dropped.
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the connection is gone (the server restarted, the network dropped): the
    /// ledger must then be opened again.
    pub fn is_closed(&self) -> bool {
        self.client().is_closed()
    }
}

fn migrate(client: &mut Client) -> Result<(), LedgerError> {
    let err = |version| {
        move |source: postgres::Error| LedgerError::Migrate {
            version,
            source: source.into(),
        }
    };
    let mut tx = client.transaction().map_err(err(0))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(err(0))?;
    tx.batch_execute(schema::create_migrations_table(&DIALECT).as_str())
        .map_err(err(0))?;
    for (version, sql) in schema::migrations(&DIALECT) {
        let done = tx
            .query_opt(schema::select_migration(&DIALECT).as_str(), &[&version])
            .map_err(err(version))?;
        if done.is_some() {
            continue;
        }
        tx.batch_execute(&sql).map_err(err(version))?;
        tx.execute(
            schema::insert_migration(&DIALECT).as_str(),
            &[&version, &Utc::now()],
        )
        .map_err(err(version))?;
    }
    tx.commit().map_err(err(0))
}

/// The column values of one record, in [`RECORD_COLUMNS`] order (PostgreSQL has no
/// unsigned integers: `gpus` goes as a `BIGINT`).
struct RecordRow<'a> {
    r: &'a LedgerRecord,
    gpus: i64,
}

impl RecordRow<'_> {
    fn params(&self) -> [&(dyn ToSql + Sync); RECORD_WIDTH] {
        let r = self.r;
        [
            &r.id,
            &r.source,
            &r.namespace,
            &r.job,
            &r.zone,
            &r.start,
            &r.end,
            &self.gpus,
            &r.price.0,
            &r.carbon_intensity.0,
            &r.pue,
            &r.currency,
            &r.amounts.gpu_hours.0,
            &r.amounts.it_kwh.0,
            &r.amounts.facility_kwh.0,
            &r.amounts.cost.0,
            &r.amounts.carbon_kg.0,
            &r.corrects,
            &r.team,
            &r.cost_centre,
            &r.tariff_period,
        ]
    }
}

fn insert_records(
    tx: &mut Transaction<'_>,
    kind: RecordKind,
    records: &[LedgerRecord],
) -> Result<usize, postgres::Error> {
    let mut added = 0;
    for chunk in records.chunks(ROWS_PER_INSERT) {
        let rows: Vec<RecordRow<'_>> = chunk
            .iter()
            .map(|r| RecordRow {
                r,
                gpus: i64::from(r.gpus),
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = rows.iter().flat_map(|r| r.params()).collect();
        let values = schema::placeholders(&DIALECT, chunk.len(), RECORD_WIDTH);
        let sql = schema::insert_records(kind, &values);
        added += tx.execute(sql.as_str(), &params)?;
    }
    Ok(usize::try_from(added).unwrap_or(usize::MAX))
}

fn insert_market(tx: &mut Transaction<'_>, slots: &[MarketSlot]) -> Result<usize, postgres::Error> {
    const WIDTH: usize = MARKET_COLUMNS.len();
    let mut added = 0;
    for chunk in slots.chunks(ROWS_PER_INSERT) {
        let params: Vec<&(dyn ToSql + Sync)> = chunk
            .iter()
            .flat_map(|m| -> [&(dyn ToSql + Sync); WIDTH] {
                [
                    &m.zone,
                    &m.start,
                    &m.end,
                    &m.price.0,
                    &m.carbon_intensity.0,
                    &m.currency,
                ]
            })
            .collect();
        let sql = schema::insert_market(&schema::placeholders(&DIALECT, chunk.len(), WIDTH));
        added += tx.execute(sql.as_str(), &params)?;
    }
    Ok(usize::try_from(added).unwrap_or(usize::MAX))
}

fn insert_marks(tx: &mut Transaction<'_>, marks: &[LiveMark]) -> Result<usize, LedgerError> {
    const WIDTH: usize = MARK_COLUMNS.len();
    let append = |source: postgres::Error| LedgerError::Append {
        source: source.into(),
    };
    let mut added = 0;
    for chunk in marks.chunks(ROWS_PER_INSERT) {
        let mj: Vec<i64> = chunk
            .iter()
            .map(schema::mark_mj)
            .collect::<Result<_, _>>()?;
        let params: Vec<&(dyn ToSql + Sync)> = chunk
            .iter()
            .zip(&mj)
            .flat_map(|(m, mj)| -> [&(dyn ToSql + Sync); WIDTH] {
                [&m.record, &m.original, &m.job, &m.start, mj]
            })
            .collect();
        let sql = schema::insert_marks(&schema::placeholders(&DIALECT, chunk.len(), WIDTH));
        added += tx.execute(sql.as_str(), &params).map_err(append)?;
    }
    Ok(usize::try_from(added).unwrap_or(usize::MAX))
}

/// Reads PostgreSQL's columns for the shared readers; instants are native `TIMESTAMPTZ`.
impl Columns for Row {
    fn text(&self, i: usize) -> Result<String, LedgerError> {
        self.try_get(i).map_err(query_err)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, LedgerError> {
        self.try_get(i).map_err(query_err)
    }
    fn int(&self, i: usize) -> Result<i64, LedgerError> {
        self.try_get(i).map_err(query_err)
    }
    fn real(&self, i: usize) -> Result<f64, LedgerError> {
        self.try_get(i).map_err(query_err)
    }
    fn time(
        &self,
        i: usize,
        _field: &'static str,
        _row_id: impl FnOnce() -> String,
    ) -> Result<DateTime<Utc>, LedgerError> {
        // The column type guarantees an instant.
        self.try_get(i).map_err(query_err)
    }
}

fn query_err(source: postgres::Error) -> LedgerError {
    LedgerError::Query {
        source: source.into(),
    }
}

impl PostgresLedger {
    /// Every row `sql` returns for `params`, each read with `read`.
    fn query<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        read: impl Fn(&Row) -> Result<T, LedgerError>,
    ) -> Result<Vec<T>, LedgerError> {
        let rows = self.client().query(sql, params).map_err(query_err)?;
        rows.iter().map(read).collect()
    }
}

impl PostgresLedger {
    /// Appends a batch and marks in one transaction.
    fn append(&mut self, batch: &Batch<'_>, marks: &[LiveMark]) -> Result<Appended, LedgerError> {
        let err = |source: postgres::Error| LedgerError::Append {
            source: source.into(),
        };
        let mut client = self.client();
        let mut tx = client.transaction().map_err(err)?;
        let appended = Appended {
            market: insert_market(&mut tx, batch.market).map_err(err)?,
            counterfactual: insert_records(
                &mut tx,
                RecordKind::Counterfactual,
                batch.counterfactual,
            )
            .map_err(err)?,
            records: insert_records(&mut tx, RecordKind::Metered, batch.records).map_err(err)?,
        };
        insert_marks(&mut tx, marks)?;
        tx.commit().map_err(err)?;
        Ok(appended)
    }
}

impl LedgerStore for PostgresLedger {
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
        self.query(&sql, &[&since], schema::read_mark)
    }

    fn records_of(
        &self,
        kind: RecordKind,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LedgerRecord>, LedgerError> {
        let sql = schema::select_records(&DIALECT, kind);
        self.query(&sql, &[&from, &to], schema::read_record)
    }

    fn totals_of(&self, kind: RecordKind) -> Result<(usize, Amounts), LedgerError> {
        let sql = schema::select_totals(&DIALECT, kind);
        let row = self
            .client()
            .query_one(sql.as_str(), &[])
            .map_err(query_err)?;
        schema::read_totals(&row)
    }

    fn market_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MarketSlot>, LedgerError> {
        let sql = schema::select_market(&DIALECT);
        self.query(&sql, &[&from, &to], schema::read_market)
    }

    fn namespaces(&self) -> Result<Vec<String>, LedgerError> {
        self.query(&schema::select_namespaces(&DIALECT), &[], |r| r.text(0))
    }

    fn schema_version(&self) -> Result<i64, LedgerError> {
        let row = self
            .client()
            .query_one(schema::SELECT_SCHEMA_VERSION, &[])
            .map_err(query_err)?;
        Ok(row
            .try_get::<_, Option<i64>>(0)
            .map_err(query_err)?
            .unwrap_or(0))
    }
}
