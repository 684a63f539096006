//! The monthly report over HTTP, on the admin port:
//! `GET /reports/{YYYY-MM}?format=csv|focus|html&namespace=NS&time_zone=IANA`, read from the
//! configured ledger. A malformed month, an unknown namespace, format, time zone or query
//! parameter is a `400` whose body says what is wrong; a ledger that cannot be read is a `500`.
//!
//! The ledger client is synchronous (SQLite, or the `postgres` crate), so each request builds
//! its report inside `spawn_blocking`, on one connection kept between requests and opened
//! again after a failure (a restarted database).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono_tz::Tz;

use crate::ledger::{LedgerError, LedgerLocation, LedgerStore};
use crate::report::{self, Budget, Month, ReportError, ReportFormat, ReportQuery, finance};

/// `offpeak serve`'s report settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportsArgs {
    /// The ledger `GET /reports/{month}` reads: an SQLite file or a `postgres://` URL. Without
    /// one, the endpoint is not served. With `--placement-config`, the planning cycle appends
    /// the jobs' metered energy to it.
    #[arg(long = "ledger", env = "OFFPEAK_LEDGER")]
    pub ledger: Option<LedgerLocation>,
    /// IANA reporting time zone: months and days start at its local midnight (a request's
    /// `time_zone` parameter overrides it).
    #[arg(
        long = "report-time-zone",
        env = "OFFPEAK_REPORT_TIME_ZONE",
        default_value = "UTC",
        value_parser = parse_tz
    )]
    pub time_zone: Tz,
    /// Finance file (YAML) whose monthly budgets the reports show against actuals.
    #[arg(long = "finance", env = "OFFPEAK_FINANCE", value_parser = load_finance)]
    pub finance: Option<report::Finance>,
}

fn parse_tz(s: &str) -> Result<Tz, ReportError> {
    report::parse_time_zone(s)
}

/// Loads the finance file at start-up; clap shows only an error's own message, so the
/// message carries its causes ("No such file or directory").
fn load_finance(s: &str) -> Result<report::Finance, String> {
    finance::load(Path::new(s)).map_err(|e| chain(&e))
}

/// What the report routes read: the ledger and the reporting defaults.
#[derive(Clone)]
pub struct Reports {
    inner: Arc<Inner>,
}

struct Inner {
    location: LedgerLocation,
    time_zone: Tz,
    budgets: Vec<Budget>,
    /// Opened at start-up; emptied after a ledger error so the next request reconnects.
    store: Mutex<Option<Box<dyn LedgerStore>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The `postgres` client runs a runtime of its own to close its connection, which
        // panics inside a tokio worker: the last handle usually goes when the server stops,
        // on one. Close it on a plain thread instead.
        let store = self
            .store
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(store) = store
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::Builder::new()
                .name("ledger-close".into())
                .spawn(move || drop(store));
        }
    }
}

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reports")
            .field("ledger", &self.inner.location)
            .field("time_zone", &self.inner.time_zone)
            .finish_non_exhaustive()
    }
}

impl Reports {
    /// Opens the ledger at `location` now, so that a wrong path or an unreachable database
    /// stops the service at start-up rather than at the first report. An SQLite file that
    /// does not exist yet is created (the service is the ledger's writer).
    pub fn open(
        location: LedgerLocation,
        time_zone: Tz,
        budgets: Vec<Budget>,
    ) -> Result<Self, LedgerError> {
        let store = location.open()?;
        Ok(Reports {
            inner: Arc::new(Inner {
                location,
                time_zone,
                budgets,
                store: Mutex::new(Some(store)),
            }),
        })
    }

    /// The reports `args` configure, if they name a ledger.
    pub fn from_args(args: &ReportsArgs) -> Result<Option<Self>, LedgerError> {
        let Some(location) = &args.ledger else {
            return Ok(None);
        };
        let budgets = args
            .finance
            .as_ref()
            .map(|f| f.budgets.clone())
            .unwrap_or_default();
        Self::open(location.clone(), args.time_zone, budgets).map(Some)
    }

    /// The ledger the reports read (which the live cycle appends to).
    pub fn location(&self) -> &LedgerLocation {
        &self.inner.location
    }

    /// The `/reports/{month}` route.
    pub fn router(self) -> Router {
        Router::new()
            .route("/reports/{month}", get(get_report))
            .with_state(self)
    }

    /// Builds and renders one report on this thread (call from `spawn_blocking`).
    fn render(&self, query: &ReportQuery, format: ReportFormat) -> Result<String, ReportError> {
        let mut slot = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        let store = match slot.as_mut() {
            Some(store) => store,
            None => slot.insert(self.inner.location.open()?),
        };
        let result = report::build(store.as_ref(), query);
        if let Err(ReportError::ReadLedger(_)) = &result {
            // The connection may be gone (a restarted database): open it afresh next time.
            *slot = None;
        }
        report::render(&result?, format)
    }
}

impl super::admin::AdminState {
    /// Serves `/reports/{month}` from `reports` beside the probes and metrics.
    pub fn with_reports(mut self, reports: Option<Reports>) -> Self {
        self.reports = reports;
        self
    }
}

/// A request the endpoint refuses, with the reason it gives.
fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// The query parameters the endpoint understands.
const PARAMS: [&str; 3] = ["format", "namespace", "time_zone"];

/// The validated request, or why it is refused (the body of a `400`).
fn parse_request(
    reports: &Reports,
    month: &str,
    params: &BTreeMap<String, String>,
) -> Result<(ReportQuery, ReportFormat), String> {
    if let Some(unknown) = params.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(format!(
            "unknown query parameter {unknown:?} (expected {})",
            PARAMS.join(", ")
        ));
    }
    let month: Month = month.parse().map_err(|e: ReportError| e.to_string())?;
    let format = match params.get("format").map(String::as_str) {
        None => ReportFormat::Csv,
        Some(name) => ReportFormat::from_name(name)
            .ok_or_else(|| format!("unknown format {name:?} (expected csv, focus or html)"))?,
    };
    let time_zone = match params.get("time_zone") {
        None => reports.inner.time_zone,
        Some(tz) => report::parse_time_zone(tz).map_err(|e| e.to_string())?,
    };
    let namespace = match params.get("namespace").map(|n| n.trim()) {
        Some("") => return Err("the namespace parameter is empty".into()),
        other => other.map(str::to_string),
    };
    let query = ReportQuery {
        month,
        time_zone,
        namespace,
        budgets: reports.inner.budgets.clone(),
    };
    Ok((query, format))
}

/// The whole chain of an error, for a response body.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[tracing::instrument(skip(reports, params))]
async fn get_report(
    State(reports): State<Reports>,
    UrlPath(month): UrlPath<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let (query, format) = match parse_request(&reports, &month, &params) {
        Ok(q) => q,
        Err(reason) => return bad_request(reason),
    };
    let job = tokio::task::spawn_blocking(move || reports.render(&query, format)).await;
    match job {
        Ok(Ok(body)) => {
            let disposition = format!(
                "inline; filename=\"offpeak-report-{month}{}\"",
                format.file_suffix()
            );
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, format.content_type().to_string()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                body,
            )
                .into_response()
        }
        Ok(Err(
            e @ (ReportError::ParseMonth { .. }
            | ReportError::ParseTimeZone { .. }
            | ReportError::UnknownNamespace { .. }),
        )) => bad_request(e.to_string()),
        Ok(Err(e)) => {
            tracing::error!(error = %chain(&e), "building a report");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}\n", chain(&e)),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the report: {e}\n"),
        )
            .into_response(),
    }
}
