//! The injected clock of the live cycle: what time it is, and a way to wait for an instant.
//! Production uses [`SystemClock`]; tests use [`ManualClock`] and move it by hand, so nothing
//! in them waits on wall time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::watch;

/// A future the clock resolves.
pub type Wait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// UTC time, injected.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once [`Clock::now`] has reached `at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> Wait<'_>;
}

/// The longest single nap of [`SystemClock::sleep_until`]: the wall clock can be stepped (NTP,
/// a suspended VM), so it is read again at least this often rather than trusted for hours.
const MAX_NAP: std::time::Duration = std::time::Duration::from_secs(30);

/// The system's UTC clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Wait<'_> {
        Box::pin(async move {
            loop {
                let left = at - Utc::now();
                let Ok(left) = left.to_std() else {
                    return;
                };
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(MAX_NAP)).await;
            }
        })
    }
}

/// A clock that moves only when told to. Clones share one time, so a test keeps one and hands
/// another to the scheduler.
#[derive(Debug, Clone)]
pub struct ManualClock {
    time: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self {
            time: Arc::new(watch::Sender::new(at)),
        }
    }

    /// Sets the time (backwards too, so that tests can provoke it) and wakes the sleepers.
    pub fn set(&self, at: DateTime<Utc>) {
        self.time.send_replace(at);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.time.send_modify(|t| *t += by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.time.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Wait<'_> {
        let mut rx = self.time.subscribe();
        Box::pin(async move {
            // The sender lives as long as `self`; an error cannot happen while we borrow it.
            let _ = rx.wait_for(|t| *t >= at).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_moved_past_their_instant() {
        let t0: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().expect("time");
        let clock = ManualClock::new(t0);
        let handle = clock.clone();
        let sleeper = tokio::spawn(async move {
            clock.sleep_until(t0 + Duration::minutes(15)).await;
            clock.now()
        });
        handle.advance(Duration::minutes(10));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        handle.advance(Duration::minutes(10));
        assert_eq!(sleeper.await.expect("sleeper"), t0 + Duration::minutes(20));
    }
}
