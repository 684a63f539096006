//! The PostgreSQL backend of the ledger, for production: the same tables and migrations as
//! [`super::sqlite`] in PostgreSQL's dialect (times as `TIMESTAMPTZ`, amounts as `BIGINT`
//! nano-units), through the synchronous `postgres` client. From async code, call it inside
//! `tokio::task::spawn_blocking`.
//!
//! Text is ordered with `COLLATE "C"` (byte order), as SQLite orders it, so both backends
//! return rows in the same order whatever the database's locale.

use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Transaction};

use super::store::{Appended, Batch, LedgerStore, redact_password};
use super::{Amounts, Fixed, LedgerError, LedgerRecord, MarketSlot};
use crate::units::{GramsPerKwh, PricePerMwh};

/// Schema changes, numbered as [`super::sqlite`]'s, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE ledger_records (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        namespace TEXT NOT NULL,
        job TEXT NOT NULL,
        zone TEXT NOT NULL,
        start_utc TIMESTAMPTZ NOT NULL,
        end_utc TIMESTAMPTZ NOT NULL,
        gpus BIGINT NOT NULL,
        price_per_mwh DOUBLE PRECISION NOT NULL,
        carbon_g_per_kwh DOUBLE PRECISION NOT NULL,
        pue DOUBLE PRECISION NOT NULL,
        currency TEXT NOT NULL,
        gpu_hours_nanos BIGINT NOT NULL,
        it_kwh_nanos BIGINT NOT NULL,
        facility_kwh_nanos BIGINT NOT NULL,
        cost_nanos BIGINT NOT NULL,
        carbon_kg_nanos BIGINT NOT NULL,
        corrects TEXT REFERENCES ledger_records(id)
    );
    CREATE INDEX ledger_records_start ON ledger_records(start_utc);
    CREATE TABLE ledger_market (
        zone TEXT NOT NULL,
        start_utc TIMESTAMPTZ NOT NULL,
        end_utc TIMESTAMPTZ NOT NULL,
        price_per_mwh DOUBLE PRECISION NOT NULL,
        carbon_g_per_kwh DOUBLE PRECISION NOT NULL,
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
        start_utc TIMESTAMPTZ NOT NULL,
        end_utc TIMESTAMPTZ NOT NULL,
        gpus BIGINT NOT NULL,
        price_per_mwh DOUBLE PRECISION NOT NULL,
        carbon_g_per_kwh DOUBLE PRECISION NOT NULL,
        pue DOUBLE PRECISION NOT NULL,
        currency TEXT NOT NULL,
        gpu_hours_nanos BIGINT NOT NULL,
        it_kwh_nanos BIGINT NOT NULL,
        facility_kwh_nanos BIGINT NOT NULL,
        cost_nanos BIGINT NOT NULL,
        carbon_kg_nanos BIGINT NOT NULL,
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

/// The advisory lock key migrations hold, so that two processes opening a new ledger at once
/// apply each migration once ("offpeak" in ASCII, any constant would do).
const MIGRATION_LOCK: i64 = 0x006f_6666_7065_616b;

/// Rows per multi-row `INSERT`: one statement per thousand rows keeps a replay's append to a
/// few round trips, and 1,000 × 21 parameters stays far below PostgreSQL's 65,535.
const ROWS_PER_INSERT: usize = 1000;

const RECORD_COLUMNS: &str = "id, source, namespace, job, zone, start_utc, end_utc, gpus, \
     price_per_mwh, carbon_g_per_kwh, pue, currency, gpu_hours_nanos, it_kwh_nanos, \
     facility_kwh_nanos, cost_nanos, carbon_kg_nanos, corrects, team, cost_centre, tariff_period";
const RECORD_WIDTH: usize = 21;

const RECORDS: &str = "ledger_records";
const COUNTERFACTUAL: &str = "ledger_counterfactual";

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
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ledger_migrations (
            version BIGINT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL
        );",
    )
    .map_err(err(0))?;
    for &(version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT version FROM ledger_migrations WHERE version = $1",
                &[&version],
            )
            .map_err(err(version))?;
        if done.is_some() {
            continue;
        }
        tx.batch_execute(sql).map_err(err(version))?;
        tx.execute(
            "INSERT INTO ledger_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &Utc::now()],
        )
        .map_err(err(version))?;
    }
    tx.commit().map_err(err(0))
}

/// `($1, ..., $w), ($w+1, ...)`: the placeholders of `rows` rows of `width` columns.
fn placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column values of one record, in [`RECORD_COLUMNS`] order.
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
    table: &str,
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
        let sql = format!(
            "INSERT INTO {table} ({RECORD_COLUMNS}) VALUES {} ON CONFLICT (id) DO NOTHING",
            placeholders(chunk.len(), RECORD_WIDTH)
        );
        added += tx.execute(sql.as_str(), &params)?;
    }
    Ok(usize::try_from(added).unwrap_or(usize::MAX))
}

fn insert_market(tx: &mut Transaction<'_>, slots: &[MarketSlot]) -> Result<usize, postgres::Error> {
    const WIDTH: usize = 6;
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
        let sql = format!(
            "INSERT INTO ledger_market (zone, start_utc, end_utc, price_per_mwh, \
             carbon_g_per_kwh, currency) VALUES {} ON CONFLICT (zone, start_utc) DO NOTHING",
            placeholders(chunk.len(), WIDTH)
        );
        added += tx.execute(sql.as_str(), &params)?;
    }
    Ok(usize::try_from(added).unwrap_or(usize::MAX))
}

fn read_record(row: &Row) -> Result<LedgerRecord, LedgerError> {
    let id: String = row.try_get(0).map_err(query_err)?;
    let gpus: i64 = row.try_get(7).map_err(query_err)?;
    let gpus = u32::try_from(gpus).map_err(|_| LedgerError::ReadRecord {
        id: id.clone(),
        field: "gpus",
        reason: format!("{gpus} is not a GPU count"),
    })?;
    let get_f = |i: usize| row.try_get::<_, f64>(i).map_err(query_err);
    let get_n = |i: usize| row.try_get::<_, i64>(i).map(Fixed).map_err(query_err);
    let get_s = |i: usize| row.try_get::<_, String>(i).map_err(query_err);
    Ok(LedgerRecord {
        source: get_s(1)?,
        namespace: get_s(2)?,
        team: get_s(18)?,
        cost_centre: get_s(19)?,
        job: get_s(3)?,
        zone: get_s(4)?,
        tariff_period: get_s(20)?,
        start: row.try_get(5).map_err(query_err)?,
        end: row.try_get(6).map_err(query_err)?,
        gpus,
        price: PricePerMwh(get_f(8)?),
        carbon_intensity: GramsPerKwh(get_f(9)?),
        pue: get_f(10)?,
        currency: get_s(11)?,
        amounts: Amounts {
            gpu_hours: get_n(12)?,
            it_kwh: get_n(13)?,
            facility_kwh: get_n(14)?,
            cost: get_n(15)?,
            carbon_kg: get_n(16)?,
        },
        corrects: row.try_get(17).map_err(query_err)?,
        id,
    })
}

fn query_err(source: postgres::Error) -> LedgerError {
    LedgerError::Query {
        source: source.into(),
    }
}

impl PostgresLedger {
    fn read_between(
        &self,
        table: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LedgerRecord>, LedgerError> {
        let rows = self
            .client()
            .query(
                format!(
                    "SELECT {RECORD_COLUMNS} FROM {table} WHERE start_utc < $2 AND end_utc > $1 \
                     ORDER BY start_utc, id COLLATE \"C\""
                )
                .as_str(),
                &[&from, &to],
            )
            .map_err(query_err)?;
        rows.iter().map(read_record).collect()
    }

    fn sum(&self, table: &str) -> Result<(usize, Amounts), LedgerError> {
        // SUM(BIGINT) is an exact NUMERIC; the cast back fails on overflow rather than
        // rounding.
        let row = self
            .client()
            .query_one(
                format!(
                    "SELECT COUNT(*), COALESCE(SUM(gpu_hours_nanos), 0)::BIGINT, \
                     COALESCE(SUM(it_kwh_nanos), 0)::BIGINT, \
                     COALESCE(SUM(facility_kwh_nanos), 0)::BIGINT, \
                     COALESCE(SUM(cost_nanos), 0)::BIGINT, \
                     COALESCE(SUM(carbon_kg_nanos), 0)::BIGINT FROM {table}"
                )
                .as_str(),
                &[],
            )
            .map_err(query_err)?;
        let n = |i: usize| row.try_get::<_, i64>(i).map_err(query_err);
        Ok((
            usize::try_from(n(0)?).unwrap_or(0),
            Amounts {
                gpu_hours: Fixed(n(1)?),
                it_kwh: Fixed(n(2)?),
                facility_kwh: Fixed(n(3)?),
                cost: Fixed(n(4)?),
                carbon_kg: Fixed(n(5)?),
            },
        ))
    }
}

impl LedgerStore for PostgresLedger {
    fn append_batch(&mut self, batch: &Batch<'_>) -> Result<Appended, LedgerError> {
        let err = |source: postgres::Error| LedgerError::Append {
            source: source.into(),
        };
        let mut client = self.client();
        let mut tx = client.transaction().map_err(err)?;
        let appended = Appended {
            market: insert_market(&mut tx, batch.market).map_err(err)?,
            counterfactual: insert_records(&mut tx, COUNTERFACTUAL, batch.counterfactual)
                .map_err(err)?,
            records: insert_records(&mut tx, RECORDS, batch.records).map_err(err)?,
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
        let rows = self
            .client()
            .query(
                "SELECT zone, start_utc, end_utc, price_per_mwh, carbon_g_per_kwh, currency \
                 FROM ledger_market WHERE start_utc < $2 AND end_utc > $1 \
                 ORDER BY zone COLLATE \"C\", start_utc",
                &[&from, &to],
            )
            .map_err(query_err)?;
        rows.iter()
            .map(|r| {
                Ok(MarketSlot {
                    zone: r.try_get(0).map_err(query_err)?,
                    start: r.try_get(1).map_err(query_err)?,
                    end: r.try_get(2).map_err(query_err)?,
                    price: PricePerMwh(r.try_get(3).map_err(query_err)?),
                    carbon_intensity: GramsPerKwh(r.try_get(4).map_err(query_err)?),
                    currency: r.try_get(5).map_err(query_err)?,
                })
            })
            .collect()
    }

    fn namespaces(&self) -> Result<Vec<String>, LedgerError> {
        let rows = self
            .client()
            .query(
                "SELECT DISTINCT namespace COLLATE \"C\" AS ns FROM ledger_records ORDER BY ns",
                &[],
            )
            .map_err(query_err)?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(query_err))
            .collect()
    }

    fn totals(&self) -> Result<(usize, Amounts), LedgerError> {
        self.sum(RECORDS)
    }

    fn counterfactual_totals(&self) -> Result<(usize, Amounts), LedgerError> {
        self.sum(COUNTERFACTUAL)
    }

    fn schema_version(&self) -> Result<i64, LedgerError> {
        let row = self
            .client()
            .query_one("SELECT MAX(version) FROM ledger_migrations", &[])
            .map_err(query_err)?;
        Ok(row
            .try_get::<_, Option<i64>>(0)
            .map_err(query_err)?
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_column_of_every_row() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 1), "($1)");
    }

    #[test]
    fn migrations_are_numbered_like_sqlites() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    }
}
