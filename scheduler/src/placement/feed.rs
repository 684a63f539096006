//! The live cycle's signals: each zone's price and carbon intensity as known at `now`, on the
//! cycle's slot grid, from the configured provider chains ([`SignalFeed::Chains`], kept fresh
//! by one [`Refresher`](crate::signals::refresh::Refresher) task per zone, see
//! [`super::refreshers`]) or from files of rows in the scenario CSV format
//! ([`SignalFeed::Table`]).
//!
//! The cycle never asks a provider itself: it reads each zone's latest snapshot, which its
//! refresher replaces on the provider's publication schedule and after each retry, and is
//! woken when one changes ([`LiveFeed::changed`]).
//!
//! Only what is known reaches the planner: published or provider-forecast values, up to where
//! they end. Past that the planner makes its own seasonal estimate, exactly as in a replay, so
//! the chains' own seasonal fill is cut off here. Gaps inside the known data are filled with the
//! value before them (and the zone is marked degraded), since the planner needs one value per
//! slot.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::watch;

use super::refreshers::{RefreshedFeed, Refreshers, ZoneWatch};
use super::{Clock, Settings};
use crate::planner::forecast;
use crate::scenario::SignalRows;
use crate::signals::chain::{Merged, Origin};
use crate::signals::config::SignalsConfig;
use crate::signals::refresh::ZoneSnapshot;
use crate::signals::{SignalError, SignalUnit};
use crate::units::{GramsPerKwh, PricePerMwh, Slot, SlotGrid};

const MINUTES_PER_DAY: u32 = 24 * 60;

/// Where the live cycle's signals come from.
#[derive(Debug, Clone)]
pub enum SignalFeed {
    /// The zones' provider chains (`offpeak signals`' configuration). The placement starts
    /// their refreshers itself, on its first cycle, and stops them when its cycle ends.
    Chains(SignalsConfig),
    /// Refreshers already running (`offpeak serve` starts them with its metrics and its
    /// shutdown: [`Refreshers::spawn`]).
    Refreshed(RefreshedFeed),
    /// Fixed rows per zone.
    Table(TableFeed),
}

/// Rows per zone in the scenario CSV format, for a tariff file or a replayed market.
#[derive(Debug, Clone, Default)]
pub struct TableFeed {
    zones: BTreeMap<String, SignalRows>,
    /// Rows count as published this far ahead of now (a day-ahead market); `None`: every row is
    /// known from the start (a tariff).
    publish_ahead: Option<Duration>,
}

impl TableFeed {
    /// An empty feed; see [`TableFeed::publish_ahead`].
    pub fn new(publish_ahead: Option<Duration>) -> Self {
        Self {
            zones: BTreeMap::new(),
            publish_ahead,
        }
    }

    /// Adds (or replaces) a zone's rows.
    pub fn zone(mut self, name: impl Into<String>, rows: SignalRows) -> Self {
        self.zones.insert(name.into(), rows);
        self
    }

    /// How far ahead rows count as known.
    pub fn publish_ahead(&self) -> Option<Duration> {
        self.publish_ahead
    }
}

/// One zone's known signals on a cycle's grid, from its slot 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub price: Vec<PricePerMwh>,
    pub carbon: Vec<GramsPerKwh>,
    /// Why the zone's signals are not what they should be, if they are not.
    pub degraded: Option<String>,
}

/// The feed while the service runs.
#[derive(Debug)]
pub(crate) enum LiveFeed {
    Snapshots(Snapshots),
    Table(TableFeed),
}

/// The zones' refreshed snapshots.
#[derive(Debug)]
pub(crate) struct Snapshots {
    zones: Vec<Watched>,
    /// Refreshers this feed runs itself (a placement opened on [`SignalFeed::Chains`]):
    /// spawned at the first read, so that opening needs no runtime.
    unstarted: Option<Refreshers>,
    /// Raised, or dropped with the feed, to stop the refreshers this feed started.
    stop: Option<watch::Sender<bool>>,
}

#[derive(Debug)]
struct Watched {
    watch: ZoneWatch,
    /// Its refresher is gone (the sender dropped): no change will come.
    closed: bool,
}

impl LiveFeed {
    /// Builds the feed; for chains, their refreshers on the placement's grid and clock. Fails
    /// only when no HTTP client can be made.
    pub(crate) fn new(
        feed: &SignalFeed,
        settings: &Settings,
        clock: &Arc<dyn Clock>,
    ) -> Result<Self, SignalError> {
        let watched = |f: RefreshedFeed| {
            f.zones
                .into_iter()
                .map(|watch| Watched {
                    watch,
                    closed: false,
                })
                .collect()
        };
        Ok(match feed {
            SignalFeed::Table(t) => LiveFeed::Table(t.clone()),
            SignalFeed::Refreshed(f) => LiveFeed::Snapshots(Snapshots {
                zones: watched(f.clone()),
                unstarted: None,
                stop: None,
            }),
            SignalFeed::Chains(cfg) => {
                let refreshers = Refreshers::build(cfg, settings, Arc::clone(clock))?;
                LiveFeed::Snapshots(Snapshots {
                    zones: watched(refreshers.feed()),
                    unstarted: Some(refreshers),
                    stop: Some(watch::Sender::new(false)),
                })
            }
        })
    }

    /// Every zone's known signals over slots `0..n_slots` of `grid`, as of `now`. A zone the
    /// feed knows nothing about is absent. Before a zone's first refresh has finished, waits
    /// for it (its requests have their timeouts), so that the first plan has every zone.
    pub(crate) async fn fetch(
        &mut self,
        now: DateTime<Utc>,
        grid: SlotGrid,
        n_slots: Slot,
    ) -> BTreeMap<String, Known> {
        match self {
            LiveFeed::Table(t) => t
                .zones
                .iter()
                .map(|(z, rows)| {
                    (
                        z.clone(),
                        from_rows(z, rows, t.publish_ahead, now, grid, n_slots),
                    )
                })
                .collect(),
            LiveFeed::Snapshots(s) => {
                s.start();
                let mut out = BTreeMap::new();
                for z in &mut s.zones {
                    let rx = &mut z.watch.snapshots;
                    if rx.wait_for(|snap| refreshed(snap)).await.is_err() {
                        z.closed = true;
                    }
                    let snap = Arc::clone(&rx.borrow_and_update());
                    out.insert(
                        z.watch.zone.clone(),
                        from_snapshot(&snap, now, grid, n_slots),
                    );
                }
                out
            }
        }
    }

    /// Resolves when a zone's snapshot has changed since it was last read; never for rows
    /// (what counts as known moves only with the clock, which the cycle follows anyway).
    pub(crate) async fn changed(&mut self) {
        let LiveFeed::Snapshots(s) = self else {
            return std::future::pending().await;
        };
        loop {
            let (i, alive) = {
                type Change<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
                let mut waits: Vec<(usize, Change<'_>)> = s
                    .zones
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, z)| !z.closed)
                    .map(|(i, z)| {
                        let rx = &mut z.watch.snapshots;
                        let change: Change<'_> =
                            Box::pin(async move { rx.changed().await.is_ok() });
                        (i, change)
                    })
                    .collect();
                if waits.is_empty() {
                    return std::future::pending().await;
                }
                std::future::poll_fn(|cx| {
                    for (i, w) in &mut waits {
                        if let Poll::Ready(alive) = w.as_mut().poll(cx) {
                            return Poll::Ready((*i, alive));
                        }
                    }
                    Poll::Pending
                })
                .await
            };
            if alive {
                return;
            }
            // Its refresher ended: the zone keeps its last snapshot, and is not watched again.
            s.zones[i].closed = true;
        }
    }
}

impl Snapshots {
    /// Spawns the refreshers this feed runs itself, once (called from the cycle's task, so
    /// within its runtime).
    fn start(&mut self) {
        if let (Some(r), Some(stop)) = (self.unstarted.take(), &self.stop) {
            r.spawn(&stop.subscribe());
        }
    }
}

/// Whether both signals of a snapshot have been refreshed at least once.
fn refreshed(snap: &ZoneSnapshot) -> bool {
    snap.status.price.last_refresh.is_some() && snap.status.carbon.last_refresh.is_some()
}

/// A zone's known signals from its latest snapshot: cut to the cycle's grid and to what is
/// known at `now`, degraded as the refresher found it (each signal's reason, as
/// `price: ...; carbon: ...`) and where gaps were filled.
fn from_snapshot(snap: &ZoneSnapshot, now: DateTime<Utc>, grid: SlotGrid, n_slots: Slot) -> Known {
    let mut why: Vec<String> = [&snap.status.price, &snap.status.carbon]
        .into_iter()
        .filter_map(|s| s.degraded.as_ref().map(|r| format!("{}: {r}", s.signal)))
        .collect();
    let (Some(price), Some(carbon)) = (&snap.price, &snap.carbon) else {
        // Never refreshed successfully: the zone is left out of the plan (the frame says so).
        if why.is_empty() {
            why.push("no signals yet".to_owned());
        }
        return Known {
            price: Vec::new(),
            carbon: Vec::new(),
            degraded: Some(why.join("; ")),
        };
    };
    let (price, filled_p) = known_values(price, now, grid, n_slots);
    let (carbon, filled_c) = known_values(carbon, now, grid, n_slots);
    if filled_p + filled_c > 0 {
        why.push(format!(
            "{} slots without data were given the value before them",
            filled_p + filled_c
        ));
    }
    Known {
        price: price.into_iter().map(PricePerMwh).collect(),
        carbon: carbon.into_iter().map(GramsPerKwh).collect(),
        degraded: (!why.is_empty()).then(|| why.join("; ")),
    }
}

/// The known prefix of a merged series on slots `0..n_slots` of `grid`: values from a source,
/// and, where the sources' data ended before `now` (stale, or a last good series), the chain's
/// seasonal estimate up to `now`, so that the planner has a recent past to estimate the future
/// from. Gaps are filled from the value before (the first value for a leading gap, which also
/// covers grid slots before the series starts). Also returns how many slots inside the data
/// were filled.
///
/// The series was fetched at its refresher's last refresh, from that slot's history: it starts
/// at or before the grid (a later cycle's grid has moved on), and is cut to it here.
fn known_values<U: SignalUnit>(
    m: &Merged<U>,
    now: DateTime<Utc>,
    grid: SlotGrid,
    n_slots: Slot,
) -> (Vec<f64>, usize) {
    let Some(head) = m.slots.first() else {
        return (Vec::new(), 0);
    };
    if m.slot_minutes != grid.minutes {
        // The refreshers are built on the placement's grid; this cannot happen, and guessing
        // values on another grid would be silently wrong.
        tracing::error!(zone = %m.zone, signal = %m.kind, series = m.slot_minutes, grid = grid.minutes, "signal series on another slot grid: ignored");
        return (Vec::new(), 0);
    }
    let step = i64::from(grid.minutes) * 60;
    let offset = (grid.start - head.start).num_seconds().div_euclid(step);
    let on_grid = |i: i64| {
        usize::try_from(offset + i)
            .ok()
            .and_then(|j| m.slots.get(j))
    };
    let usable = |s: Option<&crate::signals::chain::Slot<U>>| {
        let s = s?;
        match s.origin {
            Origin::Missing => None,
            Origin::Seasonal if s.start >= now => None,
            _ => s.value,
        }
    };
    let n = i64::from(n_slots);
    let Some(last) = (0..n)
        .take_while(|i| offset + i < m.slots.len() as i64)
        .filter(|i| usable(on_grid(*i)).is_some())
        .last()
    else {
        return (Vec::new(), 0);
    };
    let first = (0..=last)
        .find_map(|i| usable(on_grid(i)))
        .map_or(0.0, U::to_f64);
    let mut prev = first;
    let mut seen = false;
    let mut filled = 0;
    let values = (0..=last)
        .map(|i| {
            match usable(on_grid(i)) {
                Some(v) => {
                    prev = v.to_f64();
                    seen = true;
                }
                // Before the data starts is only history the provider does not serve.
                None if seen => filled += 1,
                None => {}
            }
            prev
        })
        .collect();
    (values, filled)
}

/// A zone's rows on the grid, cut where they stop being known. Rows that end before `now`
/// are carried on to `now` by the seasonal estimate of their last days (and the zone is
/// degraded), as a provider chain does with stale data.
fn from_rows(
    zone: &str,
    rows: &SignalRows,
    publish_ahead: Option<Duration>,
    now: DateTime<Utc>,
    grid: SlotGrid,
    n_slots: Slot,
) -> Known {
    let published_until = publish_ahead.map(|d| now + d);
    let mut tail: Option<Tail> = None;
    let mut price = Vec::new();
    let mut carbon = Vec::new();
    for s in 0..n_slots {
        let t = grid.instant(s);
        if published_until.is_some_and(|u| t >= u) {
            break;
        }
        // Before the first row, the first row's values: they are the nearest known.
        let at = if t < rows.start() { rows.start() } else { t };
        let (p, c) = match rows.at(at) {
            Some((p, c)) => (p.0, c.0),
            None if t < now => tail
                .get_or_insert_with(|| Tail::new(rows, grid.minutes))
                .at(t),
            None => break,
        };
        price.push(PricePerMwh(p));
        carbon.push(GramsPerKwh(c));
    }
    let wanted = published_until.unwrap_or(now).min(grid.instant(n_slots));
    let degraded = (rows.end() < wanted).then(|| {
        format!(
            "the rows of zone {zone} end at {}, before {}",
            rows.end().format("%Y-%m-%dT%H:%MZ"),
            wanted.format("%Y-%m-%dT%H:%MZ")
        )
    });
    Known {
        price,
        carbon,
        degraded,
    }
}

/// The last days of a zone's rows on slots, for the seasonal estimate past their end.
struct Tail {
    from: DateTime<Utc>,
    slot: Duration,
    slots_per_day: usize,
    price: Vec<f64>,
    carbon: Vec<f64>,
}

impl Tail {
    fn new(rows: &SignalRows, slot_minutes: u32) -> Self {
        let slot = Duration::minutes(i64::from(slot_minutes));
        let days = Duration::days(forecast::SEASONAL_DAYS as i64 + 1);
        let start = (rows.end() - days).max(rows.start());
        // On the slot grid counted from the epoch, so that times of day line up.
        let s = slot.num_seconds().max(1);
        let ts = start.timestamp();
        let from =
            DateTime::<Utc>::from_timestamp(ts + (s - ts.rem_euclid(s)) % s, 0).unwrap_or(start);
        let (mut price, mut carbon) = (Vec::new(), Vec::new());
        let mut t = from;
        while let Some((p, c)) = rows.at(t) {
            price.push(p.0);
            carbon.push(c.0);
            t += slot;
        }
        Self {
            from,
            slot,
            slots_per_day: (MINUTES_PER_DAY / slot_minutes.max(1)) as usize,
            price,
            carbon,
        }
    }

    fn at(&self, t: DateTime<Utc>) -> (f64, f64) {
        let s = ((t - self.from).num_seconds() / self.slot.num_seconds().max(1)).max(0) as usize;
        (
            forecast::estimate(&self.price, s, self.slots_per_day),
            forecast::estimate(&self.carbon, s, self.slots_per_day),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    /// Hourly carbon from `start`: a source's values, with a gap, then the seasonal estimate.
    fn merged(start: DateTime<Utc>) -> Merged<GramsPerKwh> {
        use crate::signals::chain::{SignalKind, Slot as ChainSlot};
        let source = Origin::Source {
            provider: "p",
            position: 1,
        };
        let slots = (0..10)
            .map(|h| {
                let origin = match h {
                    4 => Origin::Missing,
                    0..=6 => source.clone(),
                    _ => Origin::Seasonal,
                };
                ChainSlot {
                    start: start + Duration::hours(h),
                    value: (origin != Origin::Missing).then_some(GramsPerKwh(100.0 + h as f64)),
                    quality: None,
                    origin,
                }
            })
            .collect();
        Merged {
            zone: "A".into(),
            kind: SignalKind::Carbon,
            basis: None,
            slot_minutes: 60,
            slots,
            attempts: Vec::new(),
            degraded: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_snapshot_is_cut_to_the_cycles_grid_and_to_what_is_known() {
        let start = t("2024-01-01T00:00:00Z");
        let m = merged(start);
        let grid = |h: i64| SlotGrid {
            start: start + Duration::hours(h),
            minutes: 60,
        };
        // The grid moved on two hours since the refresh; the estimate after the sources' end
        // (07:00) counts up to now (08:30), not past it; the gap takes the value before it.
        let (v, filled) = known_values(&m, t("2024-01-01T08:30:00Z"), grid(2), 100);
        assert_eq!(v, [102.0, 103.0, 103.0, 105.0, 106.0, 107.0, 108.0]);
        assert_eq!(filled, 1);
        // A grid shorter than the data cuts it; a gap at its end is not known.
        let (v, _) = known_values(&m, t("2024-01-01T08:30:00Z"), grid(2), 4);
        assert_eq!(v, [102.0, 103.0, 103.0, 105.0]);
        let (v, _) = known_values(&m, t("2024-01-01T08:30:00Z"), grid(2), 3);
        assert_eq!(v, [102.0, 103.0]);
        // A grid starting before the series: its first value, not counted as filled.
        let (v, filled) = known_values(&m, t("2024-01-01T01:00:00Z"), grid(-2), 4);
        assert_eq!(v, [100.0, 100.0, 100.0, 101.0]);
        assert_eq!(filled, 0);
        // Another slot length is refused rather than misread.
        let (v, _) = known_values(&m, start, SlotGrid { start, minutes: 30 }, 10);
        assert!(v.is_empty());
    }

    #[test]
    fn rows_are_known_only_up_to_the_publication_horizon() {
        let rows = SignalRows::hourly(
            t("2024-01-01T00:00:00Z"),
            &(0..48).map(|h| (f64::from(h), 100.0)).collect::<Vec<_>>(),
        )
        .expect("rows");
        let grid = SlotGrid {
            start: t("2024-01-01T00:00:00Z"),
            minutes: 30,
        };
        let k = from_rows(
            "A",
            &rows,
            Some(Duration::hours(3)),
            t("2024-01-01T02:00:00Z"),
            grid,
            96,
        );
        assert_eq!(k.price.len(), 10);
        assert_eq!(k.price[3], PricePerMwh(1.0));
        assert_eq!(k.degraded, None);
        // a tariff: every row known, to the end of the rows
        let k = from_rows("A", &rows, None, t("2024-01-01T02:00:00Z"), grid, 200);
        assert_eq!(k.price.len(), 96);
        // rows ending before now degrade the zone, and are carried on to now by the estimate
        // of their last days (hour h of the day: the mean of h and h + 24)
        let k = from_rows("A", &rows, None, t("2024-01-03T05:00:00Z"), grid, 200);
        assert!(
            k.degraded
                .as_deref()
                .is_some_and(|d| d.contains("end at 2024-01-03T00:00Z"))
        );
        assert_eq!(k.price.len(), 106);
        assert_eq!(k.price[104], PricePerMwh(16.0));
    }
}
