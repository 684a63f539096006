//! A zone's signals through its fallback chains: the first source that answers with fresh
//! data wins; a source that fails or answers stale data falls through to the next; when none
//! answers, the last good series this chain object kept in memory is used; and past the end of
//! whatever was used, the seasonal estimate of [`crate::planner::forecast`] fills the window,
//! every such slot [`Quality::Estimated`].
//!
//! The result says, slot by slot, where each value came from ([`Origin`]) and whether the zone
//! is degraded (its first choice did not answer with fresh data), with the reason; a degraded
//! zone is also logged with `tracing::warn!`. The clock is passed in (`now`), so that staleness
//! is decided the same way in tests, replays and production.
//!
//! Staleness: an answer is stale when what the provider vouches for ended more than the zone's
//! `max_age` before `now` ([`SignalProvider::valid_until`]: the end of its last point, or a
//! tariff's effective end). A stale answer is not thrown away: when nothing better is there (no
//! fresh answer, no last good series, or an older one), it is used, and the zone is degraded.
//!
//! Each failed attempt also says whether asking again soon may help ([`Retry`]), which the
//! [`refresh`](super::refresh) schedule follows.

use std::fmt;

use chrono::{DateTime, Duration, Utc};

use super::config::ZoneConfig;
use super::{
    FetchFailure, HttpFetcher, Quality, Series, SignalError, SignalProvider, SignalUnit, Window,
};
use crate::planner::forecast;
use crate::units::{GramsPerKwh, PricePerMwh};

pub use super::sources::{CarbonProvider, PriceProvider};

const MINUTES_PER_DAY: u32 = 24 * 60;
/// Instants in messages: to the minute, as slots are.
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%MZ";

/// Why a chain could not be asked at all (the request itself is wrong; provider failures are
/// never errors, they degrade the zone).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("the window {from} to {to} is empty")]
    EmptyWindow {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error("{at} is not on the {slot_minutes}-min slot grid (counted from midnight UTC)")]
    OffGrid {
        at: DateTime<Utc>,
        slot_minutes: u32,
    },
    #[error("slots of {0} min do not divide a day")]
    BadSlot(u32),
}

/// Which signal a chain carries, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    Price,
    Carbon,
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignalKind::Price => "price",
            SignalKind::Carbon => "carbon",
        })
    }
}

/// Where a slot's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Answered now by the chain's source at `position` (1 is the first choice).
    Source {
        provider: &'static str,
        position: usize,
    },
    /// Answered now by that source, but stale.
    StaleSource {
        provider: &'static str,
        position: usize,
    },
    /// The last good series this chain kept, fetched at `fetched_at`.
    LastGood {
        provider: &'static str,
        position: usize,
        fetched_at: DateTime<Utc>,
    },
    /// The seasonal estimate past the end of the series used.
    Seasonal,
    /// Nothing covers this slot (a gap inside the series, or no series at all).
    Missing,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Source { provider, position } => write!(f, "{provider}#{position}"),
            Origin::StaleSource { provider, position } => {
                write!(f, "{provider}#{position} (stale)")
            }
            Origin::LastGood {
                provider,
                position,
                fetched_at,
            } => write!(
                f,
                "{provider}#{position} (last good, {})",
                fetched_at.format(TIME_FORMAT)
            ),
            Origin::Seasonal => f.write_str("seasonal estimate"),
            Origin::Missing => f.write_str("none"),
        }
    }
}

/// One slot of a merged series.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot<U> {
    pub start: DateTime<Utc>,
    /// `None` where nothing covers the slot ([`Origin::Missing`]).
    pub value: Option<U>,
    pub quality: Option<Quality>,
    pub origin: Origin,
}

/// A run of consecutive slots with the same origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stretch {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub origin: Origin,
}

/// What one source did on one fetch, for the degraded reason and for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub provider: &'static str,
    pub position: usize,
    pub outcome: Outcome,
    /// For a failed attempt, when asking again may help; `None` for any other outcome.
    pub retry: Option<Retry>,
}

/// When a failed source is worth asking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The failure may pass (a timeout, a connection refused or cut, HTTP 408, 429 or 5xx):
    /// ask again after a backoff, and not before `not_before` when the server said so
    /// (`Retry-After`).
    Soon { not_before: Option<DateTime<Utc>> },
    /// The answer itself is wrong (another HTTP status, a body that does not parse, an
    /// unreadable key): asking again before the provider publishes again will not help.
    NextPublication,
}

impl Retry {
    /// How `e`, seen at `now`, should be retried.
    pub fn of(e: &SignalError, now: DateTime<Utc>) -> Self {
        match e {
            SignalError::Fetching { failure, .. } => match failure {
                FetchFailure::Timeout(_) | FetchFailure::Transport(_) => {
                    Retry::Soon { not_before: None }
                }
                FetchFailure::Status {
                    status,
                    retry_after,
                    ..
                } if *status == HTTP_REQUEST_TIMEOUT
                    || *status == HTTP_TOO_MANY_REQUESTS
                    || (HTTP_SERVER_ERRORS).contains(status) =>
                {
                    Retry::Soon {
                        not_before: retry_after.as_deref().and_then(|r| retry_after_at(r, now)),
                    }
                }
                FetchFailure::Status { .. } | FetchFailure::TooLarge { .. } => {
                    Retry::NextPublication
                }
            },
            SignalError::BuildingClient(_)
            | SignalError::ReadingApiKey { .. }
            | SignalError::Parsing { .. }
            | SignalError::Normalising { .. } => Retry::NextPublication,
        }
    }
}

const HTTP_REQUEST_TIMEOUT: u16 = 408;
const HTTP_TOO_MANY_REQUESTS: u16 = 429;
const HTTP_SERVER_ERRORS: std::ops::RangeInclusive<u16> = 500..=599;

/// A `Retry-After` value (seconds, or an HTTP date) as an instant, `None` if unreadable.
pub fn retry_after_at(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u32>() {
        return Some(now + Duration::seconds(i64::from(secs)));
    }
    DateTime::parse_from_rfc2822(v)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Fresh,
    /// Answered, but its data ended at `known_until`, `age` before now: more than the
    /// maximum age.
    Stale {
        known_until: DateTime<Utc>,
        age: Duration,
    },
    /// Failed; the error's message (which never holds an API key).
    Failed(String),
    /// Not asked, because an earlier source answered with fresh data.
    NotAsked,
}

/// One signal of one zone over a window, one entry per slot.
#[derive(Debug, Clone)]
pub struct Merged<U: SignalUnit> {
    pub zone: String,
    pub kind: SignalKind,
    /// The currency or accounting basis of the series used (`None` if there was none).
    pub basis: Option<U::Basis>,
    pub slot_minutes: u32,
    pub slots: Vec<Slot<U>>,
    pub attempts: Vec<Attempt>,
    /// Why the signal is degraded; `None` when the first choice answered fresh data.
    pub degraded: Option<String>,
    /// What the source used says about its data besides the values (a tariff's periods and
    /// unoptimised charges, ...), for provenance.
    pub notes: Vec<String>,
}

impl<U: SignalUnit> Merged<U> {
    /// The runs of slots with one origin, in time order.
    pub fn stretches(&self) -> Vec<Stretch> {
        let step = Duration::minutes(i64::from(self.slot_minutes));
        let mut out: Vec<Stretch> = Vec::new();
        for s in &self.slots {
            match out.last_mut() {
                Some(last) if last.origin == s.origin && last.to == s.start => last.to += step,
                _ => out.push(Stretch {
                    from: s.start,
                    to: s.start + step,
                    origin: s.origin.clone(),
                }),
            }
        }
        out
    }
}

/// Both signals of a zone over a window.
#[derive(Debug, Clone)]
pub struct ZoneSignals {
    pub zone: String,
    pub price: Merged<PricePerMwh>,
    pub carbon: Merged<GramsPerKwh>,
}

impl ZoneSignals {
    /// Why the zone is degraded (both signals' reasons), `None` if it is not.
    pub fn degraded(&self) -> Option<String> {
        let reasons: Vec<String> = [
            (SignalKind::Price, &self.price.degraded),
            (SignalKind::Carbon, &self.carbon.degraded),
        ]
        .into_iter()
        .filter_map(|(k, r)| r.as_ref().map(|r| format!("{k}: {r}")))
        .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// The chain.

/// A series kept from an earlier fetch.
#[derive(Debug, Clone)]
struct Kept<U: SignalUnit> {
    /// Already on the chain's slot grid.
    series: Series<U>,
    provider: &'static str,
    position: usize,
    fetched_at: DateTime<Utc>,
}

/// One signal's chain for one zone, remembering its last good series between fetches.
#[derive(Debug)]
pub struct Chain<P: SignalProvider> {
    zone: String,
    kind: SignalKind,
    sources: Vec<P>,
    max_age: Duration,
    last_good: Option<Kept<P::Unit>>,
}

impl<P: SignalProvider> Chain<P> {
    /// A chain over `sources`, first choice first.
    pub fn new(
        zone: impl Into<String>,
        kind: SignalKind,
        sources: Vec<P>,
        max_age: Duration,
    ) -> Self {
        Self {
            zone: zone.into(),
            kind,
            sources,
            max_age,
            last_good: None,
        }
    }

    /// The chain's sources, first choice first.
    pub fn sources(&self) -> &[P] {
        &self.sources
    }

    /// The zone the chain is for.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Which signal the chain carries.
    pub fn kind(&self) -> SignalKind {
        self.kind
    }

    /// When the kept last good series was fetched, if there is one.
    pub fn last_good_fetched_at(&self) -> Option<DateTime<Utc>> {
        self.last_good.as_ref().map(|k| k.fetched_at)
    }

    /// The signal over `window` on slots of `slot_minutes`, as of `now`.
    pub async fn fetch(
        &mut self,
        now: DateTime<Utc>,
        window: Window,
        slot_minutes: u32,
    ) -> Result<Merged<P::Unit>, ChainError> {
        check_window(window, slot_minutes)?;
        let mut attempts = Vec::with_capacity(self.sources.len());
        let mut chosen: Option<Kept<P::Unit>> = None;
        let mut stale: Option<Kept<P::Unit>> = None;
        for (i, source) in self.sources.iter().enumerate() {
            let position = i + 1;
            let provider = source.name();
            if chosen.is_some() {
                attempts.push(Attempt {
                    provider,
                    position,
                    outcome: Outcome::NotAsked,
                    retry: None,
                });
                continue;
            }
            // Regridding is part of accepting an answer: one that cannot be put on the slots
            // (no whole slot covered) is as useless as a failed request.
            // Staleness is judged on how long the provider vouches for its answer: the end of
            // its data for a forecast, the end of its effective dates for a tariff.
            let answer = match source.fetch(window).await {
                Ok(s) => {
                    let valid_until = source.valid_until(&s);
                    on_slots(s, slot_minutes).map(|(_, g)| (valid_until, g))
                }
                Err(e) => Err(e),
            };
            let mut retry = None;
            let outcome = match answer {
                Err(e) => {
                    retry = Some(Retry::of(&e, now));
                    Outcome::Failed(e.to_string())
                }
                Ok((known_until, series)) => {
                    let kept = Kept {
                        series,
                        provider,
                        position,
                        fetched_at: now,
                    };
                    if now - known_until > self.max_age {
                        if stale
                            .as_ref()
                            .is_none_or(|s| s.series.known_until < kept.series.known_until)
                        {
                            stale = Some(kept);
                        }
                        Outcome::Stale {
                            known_until,
                            age: now - known_until,
                        }
                    } else {
                        chosen = Some(kept);
                        Outcome::Fresh
                    }
                }
            };
            attempts.push(Attempt {
                provider,
                position,
                outcome,
                retry,
            });
        }

        let (used, origin, degraded) = match chosen {
            Some(kept) => {
                self.last_good = Some(kept.clone());
                let degraded = (kept.position > 1).then(|| {
                    format!(
                        "using {}#{} because {}",
                        kept.provider,
                        kept.position,
                        failures(&attempts, self.max_age)
                    )
                });
                let origin = Origin::Source {
                    provider: kept.provider,
                    position: kept.position,
                };
                (Some(kept), origin, degraded)
            }
            None => self.fallback(now, stale, &attempts),
        };

        let slots = match &used {
            Some(kept) => fill(&kept.series, &origin, window, slot_minutes),
            None => missing(window, slot_minutes),
        };
        if let Some(reason) = &degraded {
            tracing::warn!(zone = %self.zone, signal = %self.kind, %reason, "signal degraded");
        }
        let notes = used
            .as_ref()
            .and_then(|k| self.sources.get(k.position - 1))
            .map(SignalProvider::notes)
            .unwrap_or_default();
        Ok(Merged {
            zone: self.zone.clone(),
            kind: self.kind,
            basis: used.map(|k| k.series.basis),
            slot_minutes,
            slots,
            attempts,
            degraded,
            notes,
        })
    }

    /// No source answered fresh data: the newer of the last good series and the freshest
    /// stale answer, or nothing.
    fn fallback(
        &self,
        now: DateTime<Utc>,
        stale: Option<Kept<P::Unit>>,
        attempts: &[Attempt],
    ) -> (Option<Kept<P::Unit>>, Origin, Option<String>) {
        let why = failures(attempts, self.max_age);
        // The last good series wins unless a stale answer of this round reaches further.
        let good = self.last_good.as_ref().filter(|g| {
            stale
                .as_ref()
                .is_none_or(|s| s.series.known_until <= g.series.known_until)
        });
        if let Some(good) = good {
            let reason = format!(
                "{why}; using the last good series from {}#{}, fetched {}, ending {} ({} h \
                 before now)",
                good.provider,
                good.position,
                good.fetched_at.format(TIME_FORMAT),
                good.series.known_until.format(TIME_FORMAT),
                (now - good.series.known_until).num_hours()
            );
            let origin = Origin::LastGood {
                provider: good.provider,
                position: good.position,
                fetched_at: good.fetched_at,
            };
            return (Some(good.clone()), origin, Some(reason));
        }
        if let Some(s) = stale {
            let reason = format!(
                "{why}; no fresher data, so using the stale data of {}#{}",
                s.provider, s.position
            );
            let origin = Origin::StaleSource {
                provider: s.provider,
                position: s.position,
            };
            return (Some(s), origin, Some(reason));
        }
        (
            None,
            Origin::Missing,
            Some(format!("{why}; no last good series: no data")),
        )
    }
}

/// "uk-carbon-intensity#1 failed: ...; csv#2 is stale (ends ...)".
fn failures(attempts: &[Attempt], max_age: Duration) -> String {
    let parts: Vec<String> = attempts
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::Failed(e) => Some(format!("{}#{} failed: {e}", a.provider, a.position)),
            Outcome::Stale { known_until, age } => Some(format!(
                "{}#{} is stale (its data ends {}, {} h before now, over the {} h limit)",
                a.provider,
                a.position,
                known_until.format(TIME_FORMAT),
                age.num_hours(),
                max_age.num_hours()
            )),
            Outcome::Fresh | Outcome::NotAsked => None,
        })
        .collect();
    if parts.is_empty() {
        "no source is configured".to_owned()
    } else {
        parts.join("; ")
    }
}

/// `series` on slots of `slot_minutes`, with its own end (`known_until`) beside it. A series
/// already on those slots is kept as it is: [`Series::on_grid`] recomputes every value as a
/// time-weighted mean, which can move it by a rounding error (154.246 becomes
/// 154.24599999999998), and the operator must see the provider's number.
fn on_slots<U: SignalUnit>(
    series: Series<U>,
    slot_minutes: u32,
) -> Result<(DateTime<Utc>, Series<U>), SignalError> {
    let known_until = series.known_until;
    if series.resolution_minutes == slot_minutes {
        return Ok((known_until, series));
    }
    series.on_grid(slot_minutes).map(|g| (known_until, g))
}

fn check_window(window: Window, slot_minutes: u32) -> Result<(), ChainError> {
    if slot_minutes == 0 || !MINUTES_PER_DAY.is_multiple_of(slot_minutes) {
        return Err(ChainError::BadSlot(slot_minutes));
    }
    if window.to <= window.from {
        return Err(ChainError::EmptyWindow {
            from: window.from,
            to: window.to,
        });
    }
    let slot_s = i64::from(slot_minutes) * 60;
    for at in [window.from, window.to] {
        if at.timestamp().rem_euclid(slot_s) != 0 || at.timestamp_subsec_nanos() != 0 {
            return Err(ChainError::OffGrid { at, slot_minutes });
        }
    }
    Ok(())
}

fn slot_starts(window: Window, slot_minutes: u32) -> impl Iterator<Item = DateTime<Utc>> {
    let step = Duration::minutes(i64::from(slot_minutes));
    std::iter::successors(Some(window.from), move |t| Some(*t + step))
        .take_while(move |t| *t < window.to)
}

fn missing<U: SignalUnit>(window: Window, slot_minutes: u32) -> Vec<Slot<U>> {
    slot_starts(window, slot_minutes)
        .map(|start| Slot {
            start,
            value: None,
            quality: None,
            origin: Origin::Missing,
        })
        .collect()
}

/// The slots of `window` from `series` (already on the slot grid): its own points where it
/// has them, the seasonal estimate from its trailing unbroken run at and after its end, and
/// missing slots before its start or in its gaps.
fn fill<U: SignalUnit>(
    series: &Series<U>,
    origin: &Origin,
    window: Window,
    slot_minutes: u32,
) -> Vec<Slot<U>> {
    let step = Duration::minutes(i64::from(slot_minutes));
    // A kept series was put on the slots of the call that kept it; a later call may use others.
    let regridded;
    let series = if series.resolution_minutes == slot_minutes {
        series
    } else {
        match on_slots(series.clone(), slot_minutes) {
            Ok((_, s)) => {
                regridded = s;
                &regridded
            }
            Err(_) => return missing(window, slot_minutes),
        }
    };
    // The trailing unbroken run: the estimator reads "the same time of day" by index, so it
    // needs consecutive slots.
    let mut run_from = series.points.len();
    while run_from > 0 {
        let i = run_from - 1;
        let consecutive = series
            .points
            .get(run_from)
            .zip(series.points.get(i))
            .is_none_or(|(next, this)| next.start - this.start == step);
        if !consecutive {
            break;
        }
        run_from = i;
    }
    let run = &series.points[run_from..];
    let known: Vec<f64> = run.iter().map(|p| p.value.to_f64()).collect();
    let run_start = run.first().map(|p| p.start);
    let slots_per_day = (MINUTES_PER_DAY / slot_minutes) as usize;

    slot_starts(window, slot_minutes)
        .map(|start| {
            if let Some(p) = series.at(start) {
                return Slot {
                    start,
                    value: Some(p.value),
                    quality: Some(p.quality),
                    origin: origin.clone(),
                };
            }
            match run_start {
                Some(rs) if start >= series.known_until => {
                    let s = ((start - rs).num_minutes() / i64::from(slot_minutes)) as usize;
                    Slot {
                        start,
                        value: Some(U::from_f64(forecast::estimate(&known, s, slots_per_day))),
                        quality: Some(Quality::Estimated),
                        origin: Origin::Seasonal,
                    }
                }
                _ => Slot {
                    start,
                    value: None,
                    quality: None,
                    origin: Origin::Missing,
                },
            }
        })
        .collect()
}

/// Both chains of a zone, built from its configuration.
#[derive(Debug)]
pub struct ZoneChain {
    pub zone: String,
    pub price: Chain<PriceProvider>,
    pub carbon: Chain<CarbonProvider>,
}

impl ZoneChain {
    /// Builds every source of `cfg` on `fetcher`.
    pub fn new(cfg: &ZoneConfig, fetcher: &HttpFetcher) -> Self {
        let price = cfg
            .price
            .iter()
            .map(|s| PriceProvider::build(s, &cfg.name, fetcher))
            .collect();
        let carbon = cfg
            .carbon
            .iter()
            .map(|s| CarbonProvider::build_for(s, &cfg.name, fetcher))
            .collect();
        Self {
            zone: cfg.name.clone(),
            price: Chain::new(&cfg.name, SignalKind::Price, price, cfg.max_age),
            carbon: Chain::new(&cfg.name, SignalKind::Carbon, carbon, cfg.max_age),
        }
    }

    /// Both signals over `window` as of `now`.
    pub async fn fetch(
        &mut self,
        now: DateTime<Utc>,
        window: Window,
        slot_minutes: u32,
    ) -> Result<ZoneSignals, ChainError> {
        let price = self.price.fetch(now, window, slot_minutes).await?;
        let carbon = self.carbon.fetch(now, window, slot_minutes).await?;
        Ok(ZoneSignals {
            zone: self.zone.clone(),
            price,
            carbon,
        })
    }
}
