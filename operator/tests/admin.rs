//! The admin port over real HTTP on loopback: /healthz answers, /readyz follows the ready flag,
//! /metrics is a Prometheus exposition with the operator's counters, and the server stops on
//! its shutdown signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use offpeak_operator::admin::{self, AdminState, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (code, response)
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = Arc::new(Metrics::new());
    metrics.reconciled("ok");
    metrics.reconciled("submit_job");
    metrics.pod_change("created");
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin::serve(
        listener,
        AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
        async {
            let _ = stopped.await;
        },
    ));

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(
        get(addr, "/readyz").await.0,
        503,
        "not ready before the plan stream"
    );
    ready.store(true, Ordering::SeqCst);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let (code, text) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        text.contains(r#"offpeak_operator_reconciles_total{kind="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"offpeak_operator_reconciles_total{kind="submit_job"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"offpeak_operator_pod_changes_total{kind="created"} 1"#),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert_eq!(get(addr, "/nothing").await.0, 404);

    let _ = stop.send(());
    server.await.expect("task").expect("served");
}
