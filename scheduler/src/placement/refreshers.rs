//! The signal refreshers behind the live cycle: one [`Refresher`] task per zone keeps the
//! zone's provider chains fresh on each provider's publication schedule (with jittered backoff
//! and `Retry-After`), and the cycle reads each zone's latest [`ZoneSnapshot`] from its watch
//! channel instead of asking the providers itself.
//!
//! - [`Refreshers::build`]: the zones' refreshers over a signals configuration, on the
//!   placement's clock and slot grid, not yet running;
//! - [`Refreshers::spawn`]: one task per zone (a `signal_refresh` span naming the zone) until
//!   the stop flag is raised, returning the [`RefreshedFeed`] the placement reads;
//! - [`ClockBridge`]: the placement's [`Clock`] as the refresher's, so that both move together
//!   (a test's `ManualClock` wakes the refreshers when it passes their next refresh).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::Instrument as _;

use super::{Clock, Settings};
use crate::signals::chain::ZoneChain;
use crate::signals::config::SignalsConfig;
use crate::signals::refresh::{self, RefreshSettings, Refresher, SignalMetrics, ZoneSnapshot};
use crate::signals::{DEFAULT_TIMEOUT, HttpFetcher, SignalError};

/// The placement's clock, read and waited on by the refreshers.
#[derive(Debug, Clone)]
pub struct ClockBridge(pub Arc<dyn Clock>);

impl refresh::Clock for ClockBridge {
    fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> refresh::Wait<'_> {
        self.0.sleep_until(at)
    }
}

/// What the refreshers of a placement fetch: its slot grid, from its history (the seasonal
/// estimate's input) to its longest horizon past the next boundary, so that any cycle's grid
/// is covered by the latest snapshot.
pub fn refresh_settings(settings: &Settings) -> RefreshSettings {
    let mut r = RefreshSettings::new(settings.slot_minutes);
    r.history = settings.history;
    r.horizon = settings.max_horizon + settings.slot();
    r
}

/// One zone's latest snapshot, as its refresher publishes it.
#[derive(Debug, Clone)]
pub struct ZoneWatch {
    pub zone: String,
    pub snapshots: watch::Receiver<Arc<ZoneSnapshot>>,
}

/// The zones' refreshers, built and not yet running.
#[derive(Debug)]
pub struct Refreshers {
    zones: Vec<Refresher>,
}

/// The running refreshers' snapshots: what [`super::SignalFeed::Refreshed`] holds.
#[derive(Debug, Clone, Default)]
pub struct RefreshedFeed {
    pub zones: Vec<ZoneWatch>,
}

impl Refreshers {
    /// A refresher per zone of `cfg`, on the placement's `settings` grid and `clock`; fails
    /// only when no HTTP client can be made.
    pub fn build(
        cfg: &SignalsConfig,
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SignalError> {
        Ok(Self::build_with(
            cfg,
            settings,
            clock,
            &HttpFetcher::new(DEFAULT_TIMEOUT)?,
        ))
    }

    /// As [`Refreshers::build`], on `fetcher` (a client that ignores the environment's proxy
    /// for providers on this machine).
    pub fn build_with(
        cfg: &SignalsConfig,
        settings: &Settings,
        clock: Arc<dyn Clock>,
        fetcher: &HttpFetcher,
    ) -> Self {
        let bridge: Arc<dyn refresh::Clock> = Arc::new(ClockBridge(clock));
        let refresh = refresh_settings(settings);
        let zones = cfg
            .zones
            .iter()
            .map(|z| Refresher::new(ZoneChain::new(z, fetcher), Arc::clone(&bridge), refresh))
            .collect();
        Self { zones }
    }

    /// Records every refresh in `metrics` (registered on the service's registry).
    pub fn with_metrics(mut self, metrics: &SignalMetrics) -> Self {
        self.zones = self
            .zones
            .into_iter()
            .map(|r| r.with_metrics(metrics.clone()))
            .collect();
        self
    }

    /// Runs the requests on `io` (see [`Refresher::with_io`]).
    pub fn with_io(mut self, io: &tokio::runtime::Handle) -> Self {
        self.zones = self
            .zones
            .into_iter()
            .map(|r| r.with_io(io.clone()))
            .collect();
        self
    }

    /// The zones' snapshots, subscribed before anything runs.
    pub fn feed(&self) -> RefreshedFeed {
        RefreshedFeed {
            zones: self
                .zones
                .iter()
                .map(|r| ZoneWatch {
                    zone: r.status().zone,
                    snapshots: r.subscribe(),
                })
                .collect(),
        }
    }

    /// Spawns one task per zone on the current runtime, each refreshing until `stop` is
    /// raised (or its sender dropped), and returns their snapshots. A task in the middle of a
    /// request finishes it first: the requests have their own timeouts.
    pub fn spawn(self, stop: &watch::Receiver<bool>) -> RefreshedFeed {
        let feed = self.feed();
        for r in self.zones {
            let span = tracing::info_span!("signal_refresh", zone = %r.status().zone);
            let mut stop = stop.clone();
            tokio::spawn(
                r.run(async move {
                    // A dropped sender means the same as a raised flag.
                    let _ = stop.wait_for(|s| *s).await;
                })
                .instrument(span),
            );
        }
        feed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::ManualClock;
    use crate::signals::refresh::Clock as _;

    #[tokio::test]
    async fn the_bridge_reads_and_waits_on_the_placement_clock() {
        let t0: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().expect("time");
        let clock = ManualClock::new(t0);
        let bridge = ClockBridge(Arc::new(clock.clone()));
        assert_eq!(bridge.now(), t0);
        let woken = tokio::spawn(async move {
            bridge.sleep_until(t0 + chrono::Duration::minutes(5)).await;
            bridge.now()
        });
        tokio::task::yield_now().await;
        assert!(!woken.is_finished());
        clock.advance(chrono::Duration::minutes(6));
        assert_eq!(
            woken.await.expect("sleeper"),
            t0 + chrono::Duration::minutes(6)
        );
    }

    #[test]
    fn the_refreshers_cover_the_history_and_the_longest_horizon() {
        let s = Settings::default();
        let r = refresh_settings(&s);
        assert_eq!(r.slot_minutes, s.slot_minutes);
        assert_eq!(r.history, s.history);
        assert_eq!(r.horizon, s.max_horizon + s.slot());
    }
}
