//! What the ledger and report tests share: the backends every test runs against, fresh
//! isolated ledgers on each, and the external programs some tests need (PostgreSQL,
//! Chromium), which are skipped loudly when absent, or fail the test when `CI=true`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use offpeak_scheduler::ledger::{LedgerLocation, LedgerStore};

/// The environment variable naming the test PostgreSQL (`scripts/ensure-postgres.sh`).
pub const POSTGRES_URL_VAR: &str = "OFFPEAK_TEST_POSTGRES_URL";
/// The environment variable naming the Chromium binary (`scripts/ensure-chromium.sh`).
pub const CHROMIUM_VAR: &str = "OFFPEAK_TEST_CHROMIUM";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A test that cannot run here: fails under CI, says so loudly otherwise.
pub fn skip_or_fail(what: &str, why: &str, fix: &str) {
    let msg = format!("{what}: {why}. {fix}");
    if in_ci() {
        panic!("{msg} (CI=true: not skipping)");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!`, and a skip
    // must be seen.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\n*** SKIPPED {msg} ***\n\n").as_bytes(),
    );
}

/// A ledger backend under test.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres { url: String },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// A fresh, empty ledger of this backend: a file in a temporary folder of its own, or a
    /// schema of its own in the test database (both gone with the returned guard).
    pub fn fresh(&self) -> anyhow::Result<TestLedger> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::tempdir()?;
        match self {
            Backend::Sqlite => Ok(TestLedger {
                location: LedgerLocation::Sqlite(dir.path().join("ledger.sqlite")),
                drop_schema: None,
                _dir: dir,
            }),
            Backend::Postgres { url } => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .subsec_nanos();
                let schema = format!("t_{}_{n}_{nanos}", std::process::id());
                let mut client = postgres::Client::connect(url, postgres::NoTls)?;
                client.batch_execute(&format!("CREATE SCHEMA {schema}"))?;
                let sep = if url.contains('?') { '&' } else { '?' };
                Ok(TestLedger {
                    location: LedgerLocation::Postgres(format!(
                        "{url}{sep}options=-c%20search_path%3D{schema}"
                    )),
                    drop_schema: Some((url.clone(), schema)),
                    _dir: dir,
                })
            }
        }
    }
}

/// A ledger for one test; a PostgreSQL schema is dropped, and an SQLite file deleted, when it
/// goes.
#[derive(Debug)]
pub struct TestLedger {
    pub location: LedgerLocation,
    drop_schema: Option<(String, String)>,
    /// Holds the SQLite file; removed after `drop` has dropped the schema.
    _dir: tempfile::TempDir,
}

impl TestLedger {
    pub fn open(&self) -> anyhow::Result<Box<dyn LedgerStore>> {
        Ok(self.location.open()?)
    }
}

impl Drop for TestLedger {
    fn drop(&mut self) {
        if let Some((url, schema)) = &self.drop_schema {
            // Best effort: a leftover schema in a throwaway database harms nothing.
            if let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
    }
}

/// SQLite always; PostgreSQL when `OFFPEAK_TEST_POSTGRES_URL` names one (skipped loudly
/// otherwise, and a failure under `CI=true`).
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => out.push(Backend::Postgres { url }),
        _ => skip_or_fail(
            "the PostgreSQL half of this ledger test",
            &format!("{POSTGRES_URL_VAR} is not set"),
            &format!(
                "Run `export {POSTGRES_URL_VAR}=$(bash scripts/ensure-postgres.sh)` (or \
                 scripts/test.sh, which does) to test the PostgreSQL backend too"
            ),
        ),
    }
    out
}

/// Runs `check` on every backend of [`backends`] in turn, each on ledgers of its own.
pub fn on_every_backend(
    mut check: impl FnMut(&Backend) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for b in backends() {
        check(&b).map_err(|e| e.context(format!("on {}", b.name())))?;
    }
    Ok(())
}

/// The Chromium binary, if there is one (skipped loudly otherwise, a failure under CI).
pub fn chromium() -> Option<PathBuf> {
    let candidates = std::env::var(CHROMIUM_VAR)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/bin/chromium")]);
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    skip_or_fail(
        "the headless Chromium screenshot test",
        &format!("no Chromium at ${CHROMIUM_VAR} or /usr/bin/chromium"),
        "Run `bash scripts/ensure-chromium.sh` (or scripts/test.sh, which does) to install it",
    );
    None
}

pub fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/de-gb-2023-03")
}

/// A printed decimal as an integer count of `10^-digits` units ("-1.05", 2 -> -105).
pub fn units(s: &str, digits: u32) -> i64 {
    let s = s.trim();
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert_eq!(frac.len(), digits as usize, "{s} has {digits} decimals");
    let v: i64 = format!("{int}{frac}").parse().expect("a number");
    if neg { -v } else { v }
}
