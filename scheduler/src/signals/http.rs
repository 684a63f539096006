//! The one HTTP path every provider goes through: a `reqwest` client with a timeout, status
//! checks that keep a short piece of the error body, and errors that never show a query string
//! or an API key.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::SignalError;

/// How long a whole request (connect, send, read the body) may take by default. Provider
/// answers are a few hundred kB at most; a minute means the provider is in trouble, and the
/// caller is better served by falling back to its last good forecast.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest answer read by default. A year of quarter-hours in the most verbose format
/// here (ENTSO-E XML) is about 5 MB; anything far beyond is not a signal.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How much of an error body is kept in the message: enough for the provider's own reason
/// ("Too many requests"), not a whole HTML error page.
const BODY_EXCERPT_CHARS: usize = 200;
/// How much of a JSON error's own message is kept: providers explain access errors in a
/// sentence or two (WattTime's "Invalid scope..." is about 270 characters), worth keeping whole.
const JSON_MESSAGE_CHARS: usize = 400;
/// The fields JSON error bodies put their explanation in, in the order they are joined.
const JSON_MESSAGE_FIELDS: [&str; 4] = ["error", "message", "detail", "title"];

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    /// The server answered with a non-success status.
    #[error("HTTP {status}{}: {body_excerpt}", retry_after.as_ref().map(|r| format!(" (retry after {r})")).unwrap_or_default())]
    Status {
        status: u16,
        /// The `Retry-After` header, as sent (seconds or a date), when the server gave one.
        retry_after: Option<String>,
        body_excerpt: String,
    },
    /// No complete answer within the timeout.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The answer was longer than the fetcher accepts.
    #[error("the answer is longer than {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
    /// The connection failed, or the body ended before its announced length.
    #[error("{0}")]
    Transport(String),
}

/// A provider's API key. Its `Debug` is redacted so that it cannot reach a log by accident.
#[derive(Clone)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// A key given directly (for example from a Kubernetes Secret already read).
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key from an environment variable.
    pub fn from_env(provider: &'static str, var: &str) -> Result<Self, SignalError> {
        match std::env::var(var) {
            Ok(v) => Self::checked(provider, v.trim(), &format!("environment variable {var}")),
            Err(e) => Err(SignalError::ReadingApiKey {
                provider,
                reason: format!("environment variable {var}: {e}"),
            }),
        }
    }

    /// The key from a file (a mounted Secret), surrounding whitespace ignored.
    pub fn from_file(provider: &'static str, path: &Path) -> Result<Self, SignalError> {
        let text = std::fs::read_to_string(path).map_err(|e| SignalError::ReadingApiKey {
            provider,
            reason: format!("{}: {e}", path.display()),
        })?;
        Self::checked(provider, text.trim(), &path.display().to_string())
    }

    fn checked(provider: &'static str, key: &str, from: &str) -> Result<Self, SignalError> {
        if key.is_empty() {
            return Err(SignalError::ReadingApiKey {
                provider,
                reason: format!("{from} is empty"),
            });
        }
        Ok(Self(key.to_owned()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// A shared HTTP client (connection pool, TLS through rustls) with a per-request timeout.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    timeout: Duration,
    max_body_bytes: usize,
}

impl HttpFetcher {
    /// A client whose requests each give up after `timeout`, through the proxy the
    /// environment names (`HTTPS_PROXY`, `NO_PROXY`), as clusters behind one need.
    pub fn new(timeout: Duration) -> Result<Self, SignalError> {
        Self::build(reqwest::Client::builder(), timeout)
    }

    /// Like [`HttpFetcher::new`] but never through a proxy: for endpoints on this machine or
    /// inside the cluster, which a proxy from the environment could not reach.
    pub fn direct(timeout: Duration) -> Result<Self, SignalError> {
        Self::build(reqwest::Client::builder().no_proxy(), timeout)
    }

    fn build(builder: reqwest::ClientBuilder, timeout: Duration) -> Result<Self, SignalError> {
        let client = builder
            .timeout(timeout)
            .user_agent(concat!("offpeak/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SignalError::BuildingClient(e.to_string()))?;
        Ok(Self {
            client,
            timeout,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        })
    }

    /// Refuses answers longer than `bytes` (default [`DEFAULT_MAX_BODY_BYTES`]).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// GETs `url` with the given headers and returns the body of a successful answer.
    pub(crate) async fn get(
        &self,
        provider: &'static str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>, SignalError> {
        let mut req = self.client.get(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(provider, url, req).await
    }

    /// GETs `url` with HTTP basic authentication (a login endpoint).
    pub(crate) async fn get_basic_auth(
        &self,
        provider: &'static str,
        url: &str,
        user: &ApiKey,
        password: &ApiKey,
    ) -> Result<Vec<u8>, SignalError> {
        let req = self
            .client
            .get(url)
            .basic_auth(user.expose(), Some(password.expose()));
        self.send(provider, url, req).await
    }

    async fn send(
        &self,
        provider: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, SignalError> {
        let failed = |failure| SignalError::Fetching {
            provider,
            endpoint: endpoint(url),
            failure,
        };
        let mut resp = req.send().await.map_err(|e| failed(self.transport(e)))?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // The body only explains the status; failing to read it must not hide the status.
            let body = resp.text().await.unwrap_or_default();
            return Err(failed(FetchFailure::Status {
                status: status.as_u16(),
                retry_after,
                body_excerpt: excerpt(&body),
            }));
        }
        // Read chunk by chunk so that a runaway answer stops at the cap, not at the memory limit.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| failed(self.transport(e)))? {
            if body.len() + chunk.len() > self.max_body_bytes {
                return Err(failed(FetchFailure::TooLarge {
                    limit_bytes: self.max_body_bytes,
                }));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport(&self, e: reqwest::Error) -> FetchFailure {
        if e.is_timeout() {
            return FetchFailure::Timeout(self.timeout);
        }
        // reqwest's message names the URL, query string included; drop it and keep the chain
        // of causes, which says what actually happened ("connection refused", "unexpected EOF").
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg.push_str(": ");
            msg.push_str(&c.to_string());
            cause = c.source();
        }
        FetchFailure::Transport(msg)
    }
}

/// What an error body says: the provider's own message when the body is a JSON object with one
/// (`{"error": ..., "message": ...}`), else the start of the body.
fn excerpt(body: &str) -> String {
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(body) {
        let parts: Vec<&str> = JSON_MESSAGE_FIELDS
            .iter()
            .filter_map(|f| o.get(*f).and_then(serde_json::Value::as_str))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join(": ").chars().take(JSON_MESSAGE_CHARS).collect();
        }
    }
    body.trim().chars().take(BODY_EXCERPT_CHARS).collect()
}

/// `url` without its query string or fragment, for messages.
fn endpoint(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_owned()
}
