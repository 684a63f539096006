//! The HTML report in a real browser: headless Chromium (Debian's `chromium`) renders the
//! example month's page, takes a screenshot that must be a real, non-blank PNG of the window's
//! size, and dumps the DOM, whose text must carry the report's totals.

mod ledger_common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ledger_common::{chromium, example_dir};
use offpeak_scheduler::ledger::record::format_units;
use offpeak_scheduler::ledger::{self, LedgerStore, SqliteLedger};
use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::report::{self, ReportQuery, parse_time_zone};
use offpeak_scheduler::scenario;
use offpeak_scheduler::sim;

/// The window: an A4-ish portrait page at a desktop width.
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 1800;
/// How long Chromium may take to start, render and exit before the test gives up.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(120);
/// A screenshot of text, tables and charts compresses far worse than an empty page: a blank
/// window of this size is a few kB of PNG, the report tens of kB.
const MIN_RATIO_TO_BLANK: usize = 4;

/// Runs Chromium headless on `url` with `args`, each time with a fresh profile, and returns
/// its standard output.
fn chromium_run(bin: &Path, url: &str, args: &[String]) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={WIDTH},{HEIGHT}"))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + CHROMIUM_LIMIT;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut o) = stdout {
            let _ = std::io::Read::read_to_string(&mut o, &mut s);
        }
        s
    });
    loop {
        if let Some(status) = child.try_wait()? {
            let out = reader.join().unwrap_or_default();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            anyhow::ensure!(status.success(), "chromium failed ({status}): {err}");
            return Ok(out);
        }
        if Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("chromium did not finish in {CHROMIUM_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Width, height and total IDAT bytes of a PNG, checking its signature and chunk layout.
fn png_facts(bytes: &[u8]) -> anyhow::Result<(u32, u32, usize)> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    anyhow::ensure!(bytes.starts_with(&SIGNATURE), "not a PNG");
    let be32 = |i: usize| -> anyhow::Result<u32> {
        let b = bytes
            .get(i..i + 4)
            .ok_or_else(|| anyhow::anyhow!("truncated PNG"))?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    anyhow::ensure!(&bytes[12..16] == b"IHDR", "the first chunk is not IHDR");
    let (w, h) = (be32(16)?, be32(20)?);
    let (mut i, mut idat, mut ended) = (8usize, 0usize, false);
    while i + 8 <= bytes.len() {
        let len = be32(i)? as usize;
        let kind = &bytes[i + 4..i + 8];
        if kind == b"IDAT" {
            idat += len;
        }
        if kind == b"IEND" {
            ended = true;
            break;
        }
        i += 12 + len; // length, type, data, CRC
    }
    anyhow::ensure!(ended, "no IEND chunk: a truncated PNG");
    Ok((w, h, idat))
}

/// The text of the HTML `dom` (tags dropped, whitespace collapsed).
fn text_of(dom: &str) -> String {
    let body = dom.split_once("<body").map_or(dom, |(_, b)| b);
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_html_report_renders_in_headless_chromium_with_its_totals() -> anyhow::Result<()> {
    let Some(bin) = chromium() else {
        return Ok(()); // skipped loudly (a failure under CI)
    };
    let sc = scenario::load(&example_dir())?;
    let replay = sim::simulate(&sc, PolicyKind::Offpeak.build().as_ref(), &mut |_, _| {})?;
    let finance = report::finance::parse(
        "currency: USD\nnamespaces:\n  research: {team: ml-research, cost_centre: CC-4100}\n\
         budgets:\n  namespaces: {research: 1.00}\n",
        Path::new("finance.yaml"),
    )?;
    let mut store = SqliteLedger::open_in_memory()?;
    ledger::write_replay(&mut store, &sc, &replay, &finance.allocation)?;
    let r = report::build(
        &store,
        &ReportQuery {
            month: "2023-03".parse()?,
            time_zone: parse_time_zone("Europe/London")?,
            namespace: None,
            budgets: finance.budgets,
        },
    )?;
    assert_eq!(r.total, store.totals()?.1);
    let tmp = tempfile::tempdir()?;
    let page = tmp.path().join("report.html");
    std::fs::write(&page, report::html::page(&r))?;
    let url = format!("file://{}", page.display());

    // The screenshot: a PNG of the window's size, far busier than a blank page.
    let shot = tmp.path().join("report.png");
    chromium_run(&bin, &url, &[format!("--screenshot={}", shot.display())])?;
    let (w, h, idat) = png_facts(&std::fs::read(&shot)?)?;
    assert_eq!(
        (w, h),
        (WIDTH, HEIGHT),
        "the screenshot has the window's size"
    );
    let blank_page = tmp.path().join("blank.html");
    std::fs::write(&blank_page, "<!DOCTYPE html><html><body></body></html>")?;
    let blank_shot = tmp.path().join("blank.png");
    chromium_run(
        &bin,
        &format!("file://{}", blank_page.display()),
        &[format!("--screenshot={}", blank_shot.display())],
    )?;
    let (_, _, blank_idat) = png_facts(&std::fs::read(&blank_shot)?)?;
    assert!(
        idat > MIN_RATIO_TO_BLANK * blank_idat,
        "the report's screenshot ({idat} bytes of image data) is barely busier than a blank \
         page's ({blank_idat})"
    );

    // The DOM as rendered: its text carries the totals as printed.
    let dom = chromium_run(&bin, &url, &["--dump-dom".to_string()])?;
    let text = text_of(&dom);
    let money = |f: ledger::Fixed| format_units(f.round_to(2), 2);
    let qty = |f: ledger::Fixed| format_units(f.round_to(3), 3);
    // The summary's total row, cell after cell as the page prints it.
    let total_row = format!(
        "Total {} {} {} {} {}",
        qty(r.total.gpu_hours),
        qty(r.total.it_kwh),
        qty(r.total.facility_kwh),
        money(r.total.cost),
        qty(r.total.carbon_kg),
    );
    assert!(
        text.contains(&total_row),
        "the rendered page lacks {total_row:?}"
    );
    let saving = money(r.counterfactual_total.cost - r.total.cost);
    assert!(
        text.contains(&format!("saving {saving} USD")),
        "the saving {saving}"
    );
    for needle in [
        "offpeak energy report: 2023-03 (Europe/London)",
        "Budgets",
        "over budget",
        "ml-research",
        "Daily energy cost",
        "Energy cost by team",
        "Average price paid against the zone's market average",
        "location-based",
    ] {
        assert!(text.contains(needle), "the rendered page lacks {needle:?}");
    }
    Ok(())
}
