//! `GET /reports/{month}` over real loopback HTTP on the admin port, on every ledger backend:
//! each format is the report `offpeak report` renders, and malformed requests are `400`s that
//! say what is wrong.

mod ledger_common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use ledger_common::{Backend, TestLedger, backends, example_dir};
use offpeak_scheduler::ledger::{self, LedgerLocation};
use offpeak_scheduler::planner::PolicyKind;
use offpeak_scheduler::report::{self, ReportFormat, ReportQuery, parse_time_zone};
use offpeak_scheduler::scenario;
use offpeak_scheduler::service::Metrics;
use offpeak_scheduler::service::admin::{self, AdminState};
use offpeak_scheduler::service::reports_http::Reports;
use offpeak_scheduler::sim;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A ledger holding the example scenario's replay.
fn example_ledger(backend: &Backend) -> anyhow::Result<TestLedger> {
    let sc = scenario::load(&example_dir())?;
    let replay = sim::simulate(&sc, PolicyKind::Asap.build().as_ref(), &mut |_, _| {})?;
    let fresh = backend.fresh()?;
    let mut store = fresh.open()?;
    ledger::write_replay(store.as_mut(), &sc, &replay, &ledger::Allocation::default())?;
    Ok(fresh)
}

/// The admin port, serving reports from `location`, on 127.0.0.1:0.
async fn serve(
    location: LedgerLocation,
) -> anyhow::Result<(String, oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
    let tz = parse_time_zone("UTC")?;
    let reports =
        tokio::task::spawn_blocking(move || Reports::open(location, tz, Vec::new())).await??;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = AdminState::new(Arc::new(Metrics::new()), Arc::new(AtomicBool::new(true)))
        .with_reports(Some(reports));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stop = async {
            let _ = stopped.await;
        };
        admin::serve(listener, state, stop)
            .await
            .expect("admin server");
    });
    Ok((base, stop, task))
}

async fn get(url: &str) -> anyhow::Result<(u16, String, String)> {
    let resp = reqwest::get(url).await?;
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((status, ctype, resp.text().await?))
}

async fn check_backend(backend: &Backend) -> anyhow::Result<()> {
    let b = backend.clone();
    let fresh = tokio::task::spawn_blocking(move || example_ledger(&b)).await??;
    let (base, stop, task) = serve(fresh.location.clone()).await?;

    // Each format is exactly what `offpeak report` renders for the same query.
    let location = fresh.location.clone();
    let want = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let store = location.open()?;
        let mut out = Vec::new();
        for (tz, ns) in [
            ("UTC", None),
            ("UTC", Some("research")),
            ("Europe/London", None),
        ] {
            let r = report::build(
                store.as_ref(),
                &ReportQuery {
                    month: "2023-03".parse()?,
                    time_zone: parse_time_zone(tz)?,
                    namespace: ns.map(str::to_string),
                    budgets: Vec::new(),
                },
            )?;
            for f in ReportFormat::ALL {
                out.push(report::render(&r, f)?);
            }
        }
        Ok(out)
    })
    .await??;
    let mut i = 0;
    for params in ["", "&namespace=research", "&time_zone=Europe/London"] {
        for (name, ctype) in [
            ("csv", "text/csv"),
            ("focus", "text/csv"),
            ("html", "text/html"),
        ] {
            let url = format!("{base}/reports/2023-03?format={name}{params}");
            let (status, got_type, body) = get(&url).await?;
            assert_eq!(status, 200, "{url}: {body}");
            assert!(got_type.starts_with(ctype), "{url}: {got_type}");
            assert_eq!(body, want[i], "{}: {url}", backend.name());
            i += 1;
        }
    }
    // CSV is the default format.
    let (status, _, body) = get(&format!("{base}/reports/2023-03")).await?;
    assert_eq!((status, body.as_str()), (200, want[0].as_str()));
    assert!(want[3].contains(",research,") && !want[3].contains(",prod,"));

    // Malformed requests: 400, and the body says what is wrong.
    for (path, needles) in [
        ("/reports/2023-13", vec!["2023-13", "month 13", "YYYY-MM"]),
        ("/reports/march", vec!["\"march\"", "YYYY-MM"]),
        ("/reports/2023-3", vec!["\"2023-3\""]),
        (
            "/reports/2023-03?namespace=nope",
            vec!["unknown namespace \"nope\"", "research"],
        ),
        ("/reports/2023-03?namespace=", vec!["namespace", "empty"]),
        (
            "/reports/2023-03?format=pdf",
            vec!["unknown format \"pdf\"", "csv, focus or html"],
        ),
        (
            "/reports/2023-03?time_zone=Mars/Olympus",
            vec!["Mars/Olympus", "IANA"],
        ),
        (
            "/reports/2023-03?fromat=csv",
            vec!["unknown query parameter \"fromat\""],
        ),
    ] {
        let (status, ctype, body) = get(&format!("{base}{path}")).await?;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(ctype.starts_with("text/plain"), "{path}: {ctype}");
        for n in needles {
            assert!(body.contains(n), "{path}: {body:?} lacks {n:?}");
        }
    }
    // The probes still answer beside the reports.
    assert_eq!(get(&format!("{base}/healthz")).await?.0, 200);

    let _ = stop.send(());
    task.await?;
    // Dropping a PostgreSQL test ledger connects to drop its schema: not on a tokio worker.
    tokio::task::spawn_blocking(move || drop(fresh)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_served_over_http_and_bad_requests_say_why() -> anyhow::Result<()> {
    for b in backends() {
        check_backend(&b).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_an_empty_ledger_is_an_empty_report_not_an_error() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let location = LedgerLocation::Sqlite(tmp.path().join("new.sqlite"));
    let (base, stop, task) = serve(location).await?;
    let (status, _, body) = get(&format!("{base}/reports/2024-02?format=csv")).await?;
    assert_eq!(status, 200, "{body}");
    // Header and the total row only.
    assert_eq!(body.lines().count(), 2, "{body}");
    assert!(body.contains(",total,"));
    let _ = stop.send(());
    task.await?;
    Ok(())
}
