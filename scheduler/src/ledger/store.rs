//! The storage interface of the ledger, where a ledger lives, and opening it.
//!
//! Both backends keep the same schema, created by the same numbered migrations, and answer
//! the same queries the same way (all written once in [`super::schema`], rendered in each
//! one's dialect), so the reports cannot tell them apart (the test-suite runs against both).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::live::LiveMark;
use super::{Amounts, LedgerError, LedgerRecord, MarketSlot, PostgresLedger, SqliteLedger};

/// What one [`LedgerStore::append_batch`] writes, all in one transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Batch<'a> {
    /// Market slots; one already stored for the same zone and start is skipped.
    pub market: &'a [MarketSlot],
    /// Counterfactual records (what the same jobs would have cost run at full power as soon
    /// as submitted); one already stored under the same id is skipped.
    pub counterfactual: &'a [LedgerRecord],
    /// Metered records; one already stored under the same id is skipped.
    pub records: &'a [LedgerRecord],
}

/// How many rows of a [`Batch`] were new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub market: usize,
    pub counterfactual: usize,
    pub records: usize,
}

/// The two tables of priced records: kept apart so that no sum ever mixes what ran with what
/// would have run, and sharing their columns and queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// What was metered.
    Metered,
    /// What the same jobs would have cost run at full power as soon as submitted.
    Counterfactual,
}

impl RecordKind {
    pub(super) fn table(self) -> &'static str {
        match self {
            RecordKind::Metered => "ledger_records",
            RecordKind::Counterfactual => "ledger_counterfactual",
        }
    }
}

/// Append-only storage of ledger records.
///
/// Every append is one transaction: after a crash the ledger holds all of a batch or none of
/// it, and because ids are deterministic, writing the batch again adds exactly what is missing.
pub trait LedgerStore: Send + std::fmt::Debug {
    /// Appends a whole batch atomically; returns how many rows of each kind were new.
    fn append_batch(&mut self, batch: &Batch<'_>) -> Result<Appended, LedgerError>;
    /// Appends a batch of the live cycle and the marks of its metered records (the exact
    /// energy behind each, [`LiveMark`]), all in one transaction; a mark already stored for
    /// the same record is skipped.
    fn append_live(
        &mut self,
        batch: &Batch<'_>,
        marks: &[LiveMark],
    ) -> Result<Appended, LedgerError>;
    /// The marks of live records whose slot starts at or after `since`, in start order.
    fn live_marks(&self, since: DateTime<Utc>) -> Result<Vec<LiveMark>, LedgerError>;
    /// Appends records; a record whose id is already stored is skipped (idempotent replay).
    /// Returns how many were new.
    fn append(&mut self, records: &[LedgerRecord]) -> Result<usize, LedgerError> {
        let batch = Batch {
            records,
            ..Batch::default()
        };
        Ok(self.append_batch(&batch)?.records)
    }
    /// Appends counterfactual records (kept apart from the metered ones).
    fn append_counterfactual(&mut self, records: &[LedgerRecord]) -> Result<usize, LedgerError> {
        let batch = Batch {
            counterfactual: records,
            ..Batch::default()
        };
        Ok(self.append_batch(&batch)?.counterfactual)
    }
    /// Stores market slots; one already stored for the same zone and start is skipped.
    fn append_market(&mut self, slots: &[MarketSlot]) -> Result<usize, LedgerError> {
        let batch = Batch {
            market: slots,
            ..Batch::default()
        };
        Ok(self.append_batch(&batch)?.market)
    }
    /// Records of `kind` whose interval overlaps `[from, to)`, in start, then id order.
    fn records_of(
        &self,
        kind: RecordKind,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LedgerRecord>, LedgerError>;
    /// Number of records of `kind` and the exact sum of their amounts.
    fn totals_of(&self, kind: RecordKind) -> Result<(usize, Amounts), LedgerError>;
    /// Counterfactual records overlapping `[from, to)`, in start, then id order.
    fn counterfactual_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LedgerRecord>, LedgerError> {
        self.records_of(RecordKind::Counterfactual, from, to)
    }
    /// Records whose interval overlaps `[from, to)`, in start, then id order.
    fn records_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LedgerRecord>, LedgerError> {
        self.records_of(RecordKind::Metered, from, to)
    }
    /// Market slots overlapping `[from, to)`, in zone, then start order.
    fn market_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MarketSlot>, LedgerError>;
    /// Every namespace with at least one record, sorted.
    fn namespaces(&self) -> Result<Vec<String>, LedgerError>;
    /// Number of records and the exact sum of their amounts.
    fn totals(&self) -> Result<(usize, Amounts), LedgerError> {
        self.totals_of(RecordKind::Metered)
    }
    /// Number of counterfactual records and the exact sum of their amounts.
    fn counterfactual_totals(&self) -> Result<(usize, Amounts), LedgerError> {
        self.totals_of(RecordKind::Counterfactual)
    }
    /// The schema version (the highest migration applied).
    fn schema_version(&self) -> Result<i64, LedgerError>;
}

/// Where a ledger lives: an SQLite file (the default; nothing to install) or a PostgreSQL
/// database, told apart by the `postgres://` or `postgresql://` scheme.
#[derive(Clone, PartialEq, Eq)]
pub enum LedgerLocation {
    Sqlite(PathBuf),
    /// A libpq-style URL; `?options=-c%20search_path%3Dname` picks a schema.
    Postgres(String),
}

impl LedgerLocation {
    /// Opens the ledger, creating it (an SQLite file, or the tables in a PostgreSQL database)
    /// if needed, and brings its schema up to date.
    pub fn open(&self) -> Result<Box<dyn LedgerStore>, LedgerError> {
        Ok(match self {
            LedgerLocation::Sqlite(path) => Box::new(SqliteLedger::open(path)?),
            LedgerLocation::Postgres(url) => Box::new(PostgresLedger::connect(url)?),
        })
    }

    /// Whether the ledger exists: an SQLite file must, a database is assumed to (connecting
    /// tells). Readers check this so that a mistyped path does not create an empty ledger.
    pub fn exists(&self) -> bool {
        match self {
            LedgerLocation::Sqlite(path) => path.exists(),
            LedgerLocation::Postgres(_) => true,
        }
    }

    /// The SQLite file, if this is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            LedgerLocation::Sqlite(p) => Some(p),
            LedgerLocation::Postgres(_) => None,
        }
    }
}

/// Shown without the password, so locations can be logged and put in error messages.
impl fmt::Display for LedgerLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerLocation::Sqlite(p) => write!(f, "{}", p.display()),
            LedgerLocation::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

impl fmt::Debug for LedgerLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LedgerLocation({self})")
    }
}

impl FromStr for LedgerLocation {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if is_postgres_url(s) {
            LedgerLocation::Postgres(s.to_string())
        } else {
            LedgerLocation::Sqlite(PathBuf::from(s))
        })
    }
}

impl From<&Path> for LedgerLocation {
    fn from(p: &Path) -> Self {
        LedgerLocation::Sqlite(p.to_path_buf())
    }
}

impl From<PathBuf> for LedgerLocation {
    fn from(p: PathBuf) -> Self {
        LedgerLocation::Sqlite(p)
    }
}

/// Whether `s` names a PostgreSQL database rather than a file.
pub fn is_postgres_url(s: &str) -> bool {
    let lower = s.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// `scheme://user:secret@host/db` -> `scheme://user:***@host/db`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_told_apart_by_scheme_and_shown_without_passwords() {
        let pg: LedgerLocation = "postgres://offpeak:s3cret@127.0.0.1:5433/ledger?sslmode=disable"
            .parse()
            .expect("infallible");
        assert!(matches!(pg, LedgerLocation::Postgres(_)));
        assert_eq!(
            pg.to_string(),
            "postgres://offpeak:***@127.0.0.1:5433/ledger?sslmode=disable"
        );
        assert!(!format!("{pg:?}").contains("s3cret"));
        let upper: LedgerLocation = "PostgreSQL://h/db".parse().expect("infallible");
        assert!(matches!(upper, LedgerLocation::Postgres(_)));
        assert_eq!(upper.to_string(), "PostgreSQL://h/db");
        let file: LedgerLocation = "/var/lib/offpeak/ledger.sqlite"
            .parse()
            .expect("infallible");
        assert_eq!(
            file.path(),
            Some(Path::new("/var/lib/offpeak/ledger.sqlite"))
        );
        // A relative file whose name merely contains the word stays a file.
        let odd: LedgerLocation = "postgres.sqlite".parse().expect("infallible");
        assert!(matches!(odd, LedgerLocation::Sqlite(_)));
    }
}
