//! A tiny HTTP/1.1 server on 127.0.0.1:0 for provider tests: one answer per connection, chosen
//! by path prefix; answers can be changed between requests, and every request head is kept.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server answers on a route.
#[derive(Clone)]
pub enum Reply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// This status and body, with a `Retry-After` header when given.
    Status(u16, &'static str, Option<&'static str>),
    /// 200 announcing the whole body's length but sending only half of it, then closing.
    Truncated(Vec<u8>),
    /// Reads the request and never answers.
    Silent,
}

type Routes = Arc<Mutex<Vec<(&'static str, Reply)>>>;

pub struct Server {
    pub base: String,
    routes: Routes,
    requests: Arc<Mutex<Vec<String>>>,
}

/// Longest request head the server reads; the clients here send a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;
/// Long enough that any client timeout in these tests fires first.
const SILENT_FOR: Duration = Duration::from_secs(30);

/// Starts a server answering `routes`.
pub async fn serve(routes: Vec<(&'static str, Reply)>) -> Server {
    serve_with(|_| routes).await
}

/// Like [`serve`], for answers that must name the server's own address (pagination links).
pub async fn serve_with(routes: impl FnOnce(&str) -> Vec<(&'static str, Reply)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let routes: Routes = Arc::new(Mutex::new(routes(&base)));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (r, seen) = (Arc::clone(&routes), Arc::clone(&requests));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (routes, seen) = (Arc::clone(&r), Arc::clone(&seen));
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                seen.lock().expect("requests lock").push(head);
                let reply = routes
                    .lock()
                    .expect("routes lock")
                    .iter()
                    .find(|(prefix, _)| path.starts_with(prefix))
                    .map(|(_, r)| r.clone())
                    .unwrap_or(Reply::Status(404, "no such route", None));
                let out = match reply {
                    Reply::Body(b) => response(200, "OK", &[], &b, b.len()),
                    Reply::Status(code, body, retry) => {
                        let extra: Vec<_> = retry.map(|r| ("Retry-After", r)).into_iter().collect();
                        response(code, "Error", &extra, body.as_bytes(), body.len())
                    }
                    Reply::Truncated(b) => response(200, "OK", &[], &b[..b.len() / 2], b.len()),
                    Reply::Silent => {
                        tokio::time::sleep(SILENT_FOR).await;
                        return;
                    }
                };
                let _ = sock.write_all(&out).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Server {
        base,
        routes,
        requests,
    }
}

fn response(
    code: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    content_length: usize,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

impl Server {
    /// Every request head received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// Answers every route with `reply` from now on.
    pub fn answer_all(&self, reply: Reply) {
        for (_, r) in self.routes.lock().expect("routes lock").iter_mut() {
            *r = reply.clone();
        }
    }
}

/// A recorded provider answer (or hand-written fixture) under `tests/fixtures/signals/`.
pub fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/signals")
        .join(rel)
}

/// The bytes of a fixture.
pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).expect("fixture readable")
}

/// A JSON fixture, parsed independently of the adapters.
pub fn raw_json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&read(rel)).expect("fixture is JSON")
}

/// The number `field` of every item of the array `array` in a parsed JSON answer: the values
/// a test checks an adapter's series against.
pub fn numbers(raw: &serde_json::Value, array: &str, field: &str) -> Vec<f64> {
    raw[array]
        .as_array()
        .unwrap_or_else(|| panic!("`{array}` is not an array"))
        .iter()
        .map(|x| {
            x[field]
                .as_f64()
                .unwrap_or_else(|| panic!("`{array}[].{field}` is not a number"))
        })
        .collect()
}

/// The window from `from` to `to` (RFC 3339).
pub fn window(from: &str, to: &str) -> offpeak_scheduler::signals::Window {
    offpeak_scheduler::signals::Window {
        from: utc(from),
        to: utc(to),
    }
}

/// An RFC 3339 instant in UTC.
pub fn utc(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&chrono::Utc)
}

/// A client that ignores any proxy in the environment, since the servers are on loopback.
pub fn fetcher() -> offpeak_scheduler::signals::HttpFetcher {
    offpeak_scheduler::signals::HttpFetcher::direct(Duration::from_secs(10)).expect("client")
}
