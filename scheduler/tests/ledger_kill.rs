//! Crash safety of the ledger, with the real `offpeak` binary on every backend: a process
//! killed with SIGKILL while it writes a large replay leaves all of it or none of it, and
//! running again afterwards gives exactly the totals of an uninterrupted run: nothing lost,
//! nothing doubled.

mod ledger_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ledger_common::{Backend, TestLedger, example_dir, on_every_backend};
use offpeak_scheduler::ledger::{Amounts, LedgerLocation};

/// How long a run may take before the test gives up on it (a debug build replaying and
/// writing the example scenario takes a few seconds).
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// A write long enough to be caught in the middle: records and counterfactual records of the
/// example scenario's replay (about 4,500 of each).
const MIN_ROWS: usize = 8_000;
/// How often the test looks for a write in progress.
const POLL: Duration = Duration::from_micros(500);

/// What a ledger holds: record and counterfactual counts and exact sums.
type Snapshot = ((usize, Amounts), (usize, Amounts));

fn snapshot(location: &LedgerLocation) -> anyhow::Result<Snapshot> {
    let store = location.open()?;
    Ok((store.totals()?, store.counterfactual_totals()?))
}

/// Starts `offpeak simulate` writing the example scenario's replay into `location`.
fn start(location: &LedgerLocation, out: &Path) -> anyhow::Result<Child> {
    let ledger = match location {
        LedgerLocation::Sqlite(p) => p.display().to_string(),
        LedgerLocation::Postgres(url) => url.clone(),
    };
    Ok(Command::new(env!("CARGO_BIN_EXE_offpeak"))
        .arg("simulate")
        .arg(example_dir())
        // `asap` replays fastest; the write is what is under test.
        .args([
            "--policy",
            "asap",
            "--no-baseline",
            "--no-progress",
            "--no-report",
            "--json",
        ])
        .arg("--out")
        .arg(out)
        .arg("--ledger")
        .arg(ledger)
        .env_remove("OFFPEAK_FINANCE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?)
}

fn finish(mut child: Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            anyhow::ensure!(status.success(), "offpeak simulate failed: {err}");
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "offpeak simulate hung");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `child` is inside its ledger write now.
trait WriteProbe {
    fn writing(&mut self) -> anyhow::Result<bool>;
}

/// SQLite keeps a rollback journal beside the file only while a write transaction is open.
struct JournalProbe(std::path::PathBuf);

impl WriteProbe for JournalProbe {
    fn writing(&mut self) -> anyhow::Result<bool> {
        Ok(self.0.exists())
    }
}

/// PostgreSQL gives a backend a transaction id at its first write, until it ends.
struct XidProbe {
    client: postgres::Client,
    application: String,
}

impl WriteProbe for XidProbe {
    fn writing(&mut self) -> anyhow::Result<bool> {
        let row = self.client.query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND backend_xid IS NOT NULL",
            &[&self.application],
        )?;
        Ok(row.get::<_, i64>(0) > 0)
    }
}

/// Runs `offpeak simulate`, waits until its write is in progress, waits `delay` more, and
/// kills it. Returns whether the kill landed while the write was still open (`false`: the
/// process had already finished).
fn kill_mid_write(
    location: &LedgerLocation,
    out: &Path,
    probe: &mut dyn WriteProbe,
    delay: Duration,
) -> anyhow::Result<bool> {
    let mut child = start(location, out)?;
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        if probe.writing()? {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the write never started");
        std::thread::sleep(POLL);
    }
    std::thread::sleep(delay);
    let still_writing = probe.writing()? && child.try_wait()?.is_none();
    child.kill()?; // SIGKILL on Unix: no destructor, no rollback by the process itself.
    child.wait()?;
    Ok(still_writing)
}

/// Runs `offpeak simulate` to the end; returns how long its write was seen in progress.
fn timed_write(
    location: &LedgerLocation,
    out: &Path,
    probe: &mut dyn WriteProbe,
) -> anyhow::Result<Duration> {
    let mut child = start(location, out)?;
    let (mut first, mut last) = (None, None);
    let deadline = Instant::now() + RUN_LIMIT;
    while child.try_wait()?.is_none() {
        if probe.writing()? {
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
        }
        anyhow::ensure!(Instant::now() < deadline, "offpeak simulate hung");
        std::thread::sleep(POLL);
    }
    finish(child)?;
    match (first, last) {
        (Some(a), Some(b)) => Ok(b - a),
        _ => anyhow::bail!("the write was never seen in progress"),
    }
}

/// A ledger location for the binary, with a probe that sees its writes.
fn probe_for(
    backend: &Backend,
    ledger: &TestLedger,
    n: usize,
) -> anyhow::Result<(LedgerLocation, Box<dyn WriteProbe>)> {
    match (&ledger.location, backend) {
        (LedgerLocation::Sqlite(path), _) => {
            let mut journal = path.as_os_str().to_owned();
            journal.push("-journal");
            Ok((
                ledger.location.clone(),
                Box::new(JournalProbe(journal.into())),
            ))
        }
        (LedgerLocation::Postgres(url), Backend::Postgres { url: admin }) => {
            let application = format!("offpeak-kill-test-{}-{n}", std::process::id());
            let location =
                LedgerLocation::Postgres(format!("{url}&application_name={application}"));
            let client = postgres::Client::connect(admin, postgres::NoTls)?;
            Ok((
                location,
                Box::new(XidProbe {
                    client,
                    application,
                }),
            ))
        }
        _ => anyhow::bail!("a PostgreSQL ledger on an SQLite backend"),
    }
}

fn kill_and_resume(backend: &Backend) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("schedule.json");

    // The reference: one uninterrupted run, timing its write.
    let reference = backend.fresh()?;
    reference.open()?;
    let (ref_location, mut ref_probe) = probe_for(backend, &reference, 1)?;
    let write_time = timed_write(&ref_location, &out, ref_probe.as_mut())?;
    let want = snapshot(&reference.location)?;
    let rows = want.0.0 + want.1.0;
    assert!(rows > MIN_ROWS, "a big ledger: {rows} records");

    let ledger = backend.fresh()?;
    // Create the schema first, so the probe sees the replay's write and not the migrations.
    ledger.open()?;
    let (location, mut probe) = probe_for(backend, &ledger, 0)?;
    let mut landed = 0;
    // Killed as the write starts, then a quarter, half and nine tenths of the way in.
    for fraction in [0.0, 0.25, 0.5, 0.9] {
        let delay = write_time.mul_f64(fraction);
        let mid = kill_mid_write(&location, &out, probe.as_mut(), delay)?;
        let delay_ms = delay.as_millis();
        let now = snapshot(&ledger.location)?;
        eprintln!(
            "{}: killed {delay_ms} ms into a {} ms write: mid-write {mid}",
            backend.name(),
            write_time.as_millis()
        );
        if mid {
            landed += 1;
            assert_eq!(
                now.0.0,
                0,
                "{}: a killed write left {} records",
                backend.name(),
                now.0.0
            );
            assert_eq!(now.1.0, 0, "and counterfactual records");
        } else {
            assert_eq!(now, want, "a finished write is whole");
        }
    }
    assert!(
        landed >= 2,
        "{}: only {landed} kills landed mid-write",
        backend.name()
    );
    // Running again completes the ledger: exactly the uninterrupted totals.
    finish(start(&location, &out)?)?;
    assert_eq!(
        snapshot(&ledger.location)?,
        want,
        "{}: after resuming",
        backend.name()
    );

    // A run killed while it re-writes a complete ledger doubles nothing.
    kill_mid_write(&location, &out, probe.as_mut(), Duration::from_millis(5))?;
    assert_eq!(
        snapshot(&ledger.location)?,
        want,
        "{}: after a killed re-run",
        backend.name()
    );
    finish(start(&location, &out)?)?;
    assert_eq!(
        snapshot(&ledger.location)?,
        want,
        "{}: after a full re-run",
        backend.name()
    );
    Ok(())
}

#[test]
fn a_writer_killed_mid_write_loses_and_doubles_nothing() -> anyhow::Result<()> {
    on_every_backend(kill_and_resume)
}
