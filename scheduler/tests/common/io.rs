//! A real-time runtime beside a test's paused one: loopback servers and HTTP requests run on it,
//! so that paused test time (which jumps to the next timer whenever the test's runtime is
//! idle) cannot fire a request's timeout while a server is still answering.

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};

/// A one-thread multi-thread runtime, shut down in the background when dropped (a runtime may
/// not be dropped from inside an async test otherwise).
pub struct IoRuntime(Option<Runtime>);

impl IoRuntime {
    pub fn new() -> Self {
        let rt = Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("io runtime");
        Self(Some(rt))
    }

    pub fn handle(&self) -> Handle {
        self.0.as_ref().expect("running").handle().clone()
    }

    /// Runs `f` on this runtime and waits for it from the caller's.
    pub async fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().spawn(f).await.expect("io task")
    }
}

impl Default for IoRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
