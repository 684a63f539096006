//! A mock Kubernetes API server (tower-test): the reconciler's client talks to it, and a spawned
//! verifier takes the requests one by one, asserting each one's method, URI and body against the
//! step's expectations and answering as the API server would. After the last expectation any
//! further request fails the test until the step is finished; finishing awaits the verifier
//! with a timeout, so a missing request fails instead of hanging.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

/// How long the verifier may take in all.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

type Check = Box<dyn FnOnce(&Value) + Send>;

/// One request the scenario expects, and the answer to it.
pub struct Expect {
    method: Method,
    uri: String,
    check: Check,
    status: StatusCode,
    reply: Reply,
}

enum Reply {
    Json(Value),
    /// Computed from the request body.
    With(Box<dyn FnOnce(&Value) -> Value + Send>),
    /// The request's own body (what a create or an apply of a full object returns, roughly).
    Echo,
}

impl Expect {
    fn new(method: Method, uri: impl Into<String>) -> Self {
        Self {
            method,
            uri: uri.into(),
            check: Box::new(|_| {}),
            status: StatusCode::OK,
            reply: Reply::Echo,
        }
    }

    pub fn get(uri: impl Into<String>) -> Self {
        Self::new(Method::GET, uri)
    }
    pub fn post(uri: impl Into<String>) -> Self {
        Self::new(Method::POST, uri)
    }
    pub fn patch(uri: impl Into<String>) -> Self {
        Self::new(Method::PATCH, uri)
    }
    pub fn delete(uri: impl Into<String>) -> Self {
        Self::new(Method::DELETE, uri)
    }

    /// Asserts on the request body (JSON; `null` when empty).
    pub fn body(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.check = Box::new(check);
        self
    }

    /// Answers with `value`.
    pub fn reply(mut self, value: Value) -> Self {
        self.reply = Reply::Json(value);
        self
    }

    /// Answers with what `answer` makes of the request body.
    pub fn reply_with(mut self, answer: impl FnOnce(&Value) -> Value + Send + 'static) -> Self {
        self.reply = Reply::With(Box::new(answer));
        self
    }

    /// Answers with an API error status.
    pub fn fail(mut self, code: u16, reason: &str) -> Self {
        self.status = StatusCode::from_u16(code).expect("status code");
        self.reply = Reply::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("mock: {reason}"), "reason": reason, "code": code,
        }));
        self
    }
}

/// The mock API server's side.
pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// A kube client whose requests go to the returned [`ApiServer`].
pub fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// A verifier at work on one reconcile's requests.
pub struct Serving {
    task: JoinHandle<(ApiServer, Vec<Value>)>,
    done: oneshot::Sender<()>,
}

impl ApiServer {
    /// Serves `expectations` in order, then fails on any further request until
    /// [`Serving::finish`].
    pub fn serve(self, expectations: Vec<Expect>) -> Serving {
        let (done, mut finished) = oneshot::channel::<()>();
        let mut handle = self.0;
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let total = expectations.len();
            for (i, expect) in expectations.into_iter().enumerate() {
                let next = tokio::select! {
                    next = handle.next_request() => next,
                    _ = &mut finished => None,
                };
                let Some((request, send)) = next else {
                    panic!(
                        "request {} of {total} never came: expected {} {}",
                        i + 1,
                        expect.method,
                        expect.uri
                    );
                };
                let (method, uri) = (request.method().clone(), request.uri().to_string());
                assert_eq!(
                    (&method, uri.as_str()),
                    (&expect.method, expect.uri.as_str()),
                    "request {} of {total}",
                    i + 1
                );
                let bytes = request.into_body().collect_bytes().await.expect("body");
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("JSON body")
                };
                (expect.check)(&body);
                let reply = match expect.reply {
                    Reply::Json(v) => v,
                    Reply::With(answer) => answer(&body),
                    Reply::Echo => body.clone(),
                };
                let response = Response::builder()
                    .status(expect.status)
                    .body(Body::from(serde_json::to_vec(&reply).expect("JSON")))
                    .expect("response");
                send.send_response(response);
                seen.push(body);
            }
            tokio::select! {
                extra = handle.next_request() => {
                    if let Some((request, _)) = extra {
                        panic!(
                            "unexpected request after the last of {total} expected: {} {}",
                            request.method(),
                            request.uri()
                        );
                    }
                }
                _ = &mut finished => {}
            }
            (ApiServer(handle), seen)
        });
        Serving { task, done }
    }
}

impl Serving {
    /// Ends the step: every expected request must have come, and no other. Returns the server
    /// for the next step and the request bodies seen.
    pub async fn finish(self) -> (ApiServer, Vec<Value>) {
        let _ = self.done.send(());
        match tokio::time::timeout(VERIFY_TIMEOUT, self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            Err(_) => panic!("the mock API server did not see the expected requests in time"),
        }
    }
}
