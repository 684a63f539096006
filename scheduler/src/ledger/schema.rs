//! What the two backends share about the ledger's tables, written once so that they cannot
//! drift apart: the columns, the numbered migrations, the queries, and reading a row into a
//! record. SQLite and PostgreSQL differ here only by a [`Dialect`] (column types, placeholders,
//! text order); [`super::sqlite`] and [`super::postgres`] keep the driver calls.
//!
//! Layout: [`Dialect`]; the columns; [`migrations`]; the query builders; [`Columns`] and the
//! readers built on it ([`read_record`], [`read_market`], [`read_mark`], [`read_totals`]).

use chrono::{DateTime, SecondsFormat, Utc};

use super::live::LiveMark;
use super::store::RecordKind;
use super::{Amounts, Fixed, LedgerError, LedgerRecord, MarketSlot};
use crate::units::{GramsPerKwh, PricePerMwh};

/// How one database spells what the shared schema and queries need.
#[derive(Debug)]
pub(super) struct Dialect {
    /// Column type of a UTC instant.
    pub time: &'static str,
    /// Column type of a 64-bit integer.
    pub integer: &'static str,
    /// Column type of an `f64`.
    pub real: &'static str,
    /// What precedes a parameter's number (`?1` or `$1`).
    pub param: char,
    /// What makes a text column sort by bytes, so that both backends return rows in the same
    /// order whatever the database's locale.
    pub byte_order: &'static str,
    /// What turns a `SUM` of integer nano-units back into an exact 64-bit integer that fails
    /// on overflow rather than rounding.
    pub sum_cast: &'static str,
}

/// The columns of both record tables, in the order every query writes and reads them (the
/// last three came with migration 3).
pub(super) const RECORD_COLUMNS: [&str; 21] = [
    "id",
    "source",
    "namespace",
    "job",
    "zone",
    "start_utc",
    "end_utc",
    "gpus",
    "price_per_mwh",
    "carbon_g_per_kwh",
    "pue",
    "currency",
    "gpu_hours_nanos",
    "it_kwh_nanos",
    "facility_kwh_nanos",
    "cost_nanos",
    "carbon_kg_nanos",
    "corrects",
    "team",
    "cost_centre",
    "tariff_period",
];

/// Where the amounts start in [`RECORD_COLUMNS`] (they follow in [`Amounts`] order).
const RECORD_AMOUNTS_AT: usize = 12;

/// The amounts' columns, in [`Amounts`] order.
const AMOUNT_COLUMNS: [&str; 5] = [
    "gpu_hours_nanos",
    "it_kwh_nanos",
    "facility_kwh_nanos",
    "cost_nanos",
    "carbon_kg_nanos",
];

/// The columns of `ledger_market`, in the order every query writes and reads them.
pub(super) const MARKET_COLUMNS: [&str; 6] = [
    "zone",
    "start_utc",
    "end_utc",
    "price_per_mwh",
    "carbon_g_per_kwh",
    "currency",
];

/// Schema changes, applied in order, each once; `ledger_migrations` records which were.
///
/// Never change what a shipped migration renders (nor [`record_table`], which renders two of
/// them): a ledger that applied it would not apply it again. Add the next number instead.
pub(super) fn migrations(d: &Dialect) -> [(i64, String); 4] {
    let Dialect {
        time,
        real,
        integer,
        ..
    } = d;
    [
        (
            1,
            format!(
                "{}
    CREATE TABLE ledger_market (
        zone TEXT NOT NULL,
        start_utc {time} NOT NULL,
        end_utc {time} NOT NULL,
        price_per_mwh {real} NOT NULL,
        carbon_g_per_kwh {real} NOT NULL,
        currency TEXT NOT NULL,
        PRIMARY KEY (zone, start_utc)
    );",
                record_table(d, "ledger_records", " REFERENCES ledger_records(id)")
            ),
        ),
        (2, record_table(d, "ledger_counterfactual", "")),
        (
            3,
            "ALTER TABLE ledger_records ADD COLUMN team TEXT NOT NULL DEFAULT 'unassigned';
    ALTER TABLE ledger_records ADD COLUMN cost_centre TEXT NOT NULL DEFAULT 'unassigned';
    ALTER TABLE ledger_records ADD COLUMN tariff_period TEXT NOT NULL DEFAULT 'spot';
    ALTER TABLE ledger_counterfactual ADD COLUMN team TEXT NOT NULL DEFAULT 'unassigned';
    ALTER TABLE ledger_counterfactual ADD COLUMN cost_centre TEXT NOT NULL DEFAULT 'unassigned';
    ALTER TABLE ledger_counterfactual ADD COLUMN tariff_period TEXT NOT NULL DEFAULT 'spot';"
                .to_string(),
        ),
        (
            4,
            format!(
                "CREATE TABLE ledger_live_marks (
        record_id TEXT PRIMARY KEY REFERENCES ledger_records(id),
        original_id TEXT NOT NULL REFERENCES ledger_records(id),
        job TEXT NOT NULL,
        start_utc {time} NOT NULL,
        slot_energy_mj {integer} NOT NULL
    );
    CREATE INDEX ledger_live_marks_start ON ledger_live_marks(start_utc);"
            ),
        ),
    ]
}

/// A table of records as migrations 1 and 2 created it (indexed by start, which every
/// interval query filters on); `corrects` is what follows that column's type.
fn record_table(d: &Dialect, table: &str, corrects: &str) -> String {
    let Dialect {
        time,
        integer,
        real,
        ..
    } = d;
    format!(
        "CREATE TABLE {table} (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        namespace TEXT NOT NULL,
        job TEXT NOT NULL,
        zone TEXT NOT NULL,
        start_utc {time} NOT NULL,
        end_utc {time} NOT NULL,
        gpus {integer} NOT NULL,
        price_per_mwh {real} NOT NULL,
        carbon_g_per_kwh {real} NOT NULL,
        pue {real} NOT NULL,
        currency TEXT NOT NULL,
        gpu_hours_nanos {integer} NOT NULL,
        it_kwh_nanos {integer} NOT NULL,
        facility_kwh_nanos {integer} NOT NULL,
        cost_nanos {integer} NOT NULL,
        carbon_kg_nanos {integer} NOT NULL,
        corrects TEXT{corrects}
    );
    CREATE INDEX {table}_start ON {table}(start_utc);"
    )
}

/// Creates the table of applied migrations, before any migration runs.
pub(super) fn create_migrations_table(d: &Dialect) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS ledger_migrations (
            version {} PRIMARY KEY,
            applied_at {} NOT NULL
        );",
        d.integer, d.time
    )
}

/// Whether migration `$1` was applied: a row, or none.
pub(super) fn select_migration(d: &Dialect) -> String {
    format!(
        "SELECT version FROM ledger_migrations WHERE version = {}1",
        d.param
    )
}

/// Records migration `$1` as applied at `$2`.
pub(super) fn insert_migration(d: &Dialect) -> String {
    let p = d.param;
    format!("INSERT INTO ledger_migrations (version, applied_at) VALUES ({p}1, {p}2)")
}

/// The schema version: the highest migration applied (NULL before any).
pub(super) const SELECT_SCHEMA_VERSION: &str = "SELECT MAX(version) FROM ledger_migrations";

/// `(?1, ..., ?w), (?w+1, ...)`: the placeholders of `rows` rows of `width` columns.
pub(super) fn placeholders(d: &Dialect, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=width)
                .map(|c| format!("{}{}", d.param, r * width + c))
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts the rows of `values` ([`placeholders`]) into a table of records, skipping an id
/// already stored (idempotent replay).
pub(super) fn insert_records(kind: RecordKind, values: &str) -> String {
    format!(
        "INSERT INTO {} ({}) VALUES {values} ON CONFLICT (id) DO NOTHING",
        kind.table(),
        RECORD_COLUMNS.join(", ")
    )
}

/// Inserts the rows of `values` ([`placeholders`]) into `ledger_market`, skipping a zone and
/// start already stored.
pub(super) fn insert_market(values: &str) -> String {
    format!(
        "INSERT INTO ledger_market ({}) VALUES {values} ON CONFLICT (zone, start_utc) DO NOTHING",
        MARKET_COLUMNS.join(", ")
    )
}

/// The columns of `ledger_live_marks` (migration 4), in the order every query writes and reads
/// them.
pub(super) const MARK_COLUMNS: [&str; 5] = [
    "record_id",
    "original_id",
    "job",
    "start_utc",
    "slot_energy_mj",
];

/// Inserts the rows of `values` ([`placeholders`]) into `ledger_live_marks`, skipping a record
/// already marked.
pub(super) fn insert_marks(values: &str) -> String {
    format!(
        "INSERT INTO ledger_live_marks ({}) VALUES {values} ON CONFLICT (record_id) DO NOTHING",
        MARK_COLUMNS.join(", ")
    )
}

/// A mark's millijoules as the `BIGINT` column holds them; beyond `i64` (2.5e9 kWh in one
/// slot) is not a reading.
pub(super) fn mark_mj(m: &LiveMark) -> Result<i64, LedgerError> {
    i64::try_from(m.slot_energy_mj).map_err(|_| LedgerError::AppendMark {
        record: m.record.clone(),
        reason: format!("{} mJ is out of range", m.slot_energy_mj),
    })
}

/// The marks of slots starting at or after `$1`, in start, then record order.
pub(super) fn select_marks(d: &Dialect) -> String {
    format!(
        "SELECT {} FROM ledger_live_marks WHERE start_utc >= {}1 ORDER BY start_utc, record_id{}",
        MARK_COLUMNS.join(", "),
        d.param,
        d.byte_order
    )
}

/// The records of `kind` overlapping `[$1, $2)`, in start, then id order.
pub(super) fn select_records(d: &Dialect, kind: RecordKind) -> String {
    let p = d.param;
    format!(
        "SELECT {} FROM {} WHERE start_utc < {p}2 AND end_utc > {p}1 \
         ORDER BY start_utc, id{}",
        RECORD_COLUMNS.join(", "),
        kind.table(),
        d.byte_order
    )
}

/// The market slots overlapping `[$1, $2)`, in zone, then start order.
pub(super) fn select_market(d: &Dialect) -> String {
    let p = d.param;
    format!(
        "SELECT {} FROM ledger_market WHERE start_utc < {p}2 AND end_utc > {p}1 \
         ORDER BY zone{}, start_utc",
        MARKET_COLUMNS.join(", "),
        d.byte_order
    )
}

/// Every namespace with at least one metered record, sorted.
pub(super) fn select_namespaces(d: &Dialect) -> String {
    format!(
        "SELECT DISTINCT namespace{} AS ns FROM {} ORDER BY ns",
        d.byte_order,
        RecordKind::Metered.table()
    )
}

/// One row ([`read_totals`]): the number of records of `kind` and the exact sums of their
/// amounts (zero where there are none).
pub(super) fn select_totals(d: &Dialect, kind: RecordKind) -> String {
    let sums: Vec<String> = AMOUNT_COLUMNS
        .iter()
        .map(|c| format!("COALESCE(SUM({c}), 0){}", d.sum_cast))
        .collect();
    format!("SELECT COUNT(*), {} FROM {}", sums.join(", "), kind.table())
}

/// One row of a query, column by column, through a backend's driver; a column that does not
/// read is a [`LedgerError::Query`].
pub(super) trait Columns {
    fn text(&self, i: usize) -> Result<String, LedgerError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, LedgerError>;
    fn int(&self, i: usize) -> Result<i64, LedgerError>;
    fn real(&self, i: usize) -> Result<f64, LedgerError>;
    /// A UTC instant; where the stored value is not one, a [`LedgerError::ReadRecord`] of
    /// `field` of the row `row_id` names.
    fn time(
        &self,
        i: usize,
        field: &'static str,
        row_id: impl FnOnce() -> String,
    ) -> Result<DateTime<Utc>, LedgerError>;
}

/// A row of [`RECORD_COLUMNS`].
pub(super) fn read_record(row: &impl Columns) -> Result<LedgerRecord, LedgerError> {
    let id = row.text(0)?;
    let gpus = row.int(7)?;
    let gpus = u32::try_from(gpus).map_err(|_| LedgerError::ReadRecord {
        id: id.clone(),
        field: "gpus",
        reason: format!("{gpus} is not a GPU count"),
    })?;
    Ok(LedgerRecord {
        source: row.text(1)?,
        namespace: row.text(2)?,
        team: row.text(18)?,
        cost_centre: row.text(19)?,
        job: row.text(3)?,
        zone: row.text(4)?,
        tariff_period: row.text(20)?,
        start: row.time(5, "start_utc", || id.clone())?,
        end: row.time(6, "end_utc", || id.clone())?,
        gpus,
        price: PricePerMwh(row.real(8)?),
        carbon_intensity: GramsPerKwh(row.real(9)?),
        pue: row.real(10)?,
        currency: row.text(11)?,
        amounts: read_amounts(row, RECORD_AMOUNTS_AT)?,
        corrects: row.opt_text(17)?,
        id,
    })
}

/// A row of [`MARKET_COLUMNS`].
pub(super) fn read_market(row: &impl Columns) -> Result<MarketSlot, LedgerError> {
    let zone = row.text(0)?;
    let start = row.time(1, "start_utc", || format!("market {zone}"))?;
    let end = row.time(2, "end_utc", || {
        format!(
            "market {zone} {}",
            start.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    })?;
    Ok(MarketSlot {
        start,
        end,
        price: PricePerMwh(row.real(3)?),
        carbon_intensity: GramsPerKwh(row.real(4)?),
        currency: row.text(5)?,
        zone,
    })
}

/// A row of [`MARK_COLUMNS`].
pub(super) fn read_mark(row: &impl Columns) -> Result<LiveMark, LedgerError> {
    let record = row.text(0)?;
    let mj = row.int(4)?;
    let slot_energy_mj = u64::try_from(mj).map_err(|_| LedgerError::ReadRecord {
        id: record.clone(),
        field: "slot_energy_mj",
        reason: format!("{mj} is not an amount of energy"),
    })?;
    Ok(LiveMark {
        original: row.text(1)?,
        job: row.text(2)?,
        start: row.time(3, "start_utc", || record.clone())?,
        slot_energy_mj,
        record,
    })
}

/// The row of [`select_totals`].
pub(super) fn read_totals(row: &impl Columns) -> Result<(usize, Amounts), LedgerError> {
    let n = usize::try_from(row.int(0)?).unwrap_or(0);
    Ok((n, read_amounts(row, 1)?))
}

/// Five nano-unit columns from `first` on, in [`Amounts`] order.
fn read_amounts(row: &impl Columns, first: usize) -> Result<Amounts, LedgerError> {
    let n = |k: usize| row.int(first + k).map(Fixed);
    Ok(Amounts {
        gpu_hours: n(0)?,
        it_kwh: n(1)?,
        facility_kwh: n(2)?,
        cost: n(3)?,
        carbon_kg: n(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOLLAR: Dialect = Dialect {
        time: "T",
        integer: "I",
        real: "R",
        param: '$',
        byte_order: "",
        sum_cast: "",
    };

    #[test]
    fn placeholders_number_every_column_of_every_row() {
        assert_eq!(placeholders(&DOLLAR, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(&DOLLAR, 1, 1), "($1)");
    }

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        let versions: Vec<i64> = migrations(&DOLLAR).iter().map(|m| m.0).collect();
        assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    }

    #[test]
    fn records_carry_their_amounts_where_the_readers_look() {
        assert_eq!(
            RECORD_COLUMNS[RECORD_AMOUNTS_AT..RECORD_AMOUNTS_AT + AMOUNT_COLUMNS.len()],
            AMOUNT_COLUMNS
        );
    }
}
