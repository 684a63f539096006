//! When each provider publishes new data, so that a refresher asks when there is something new
//! to get rather than on one fixed timer for all.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// How often a document (a tariff file, a CSV) is read again: files change only when someone
/// edits them, and reading one is cheap, so an hour bounds how long an edit goes unseen.
pub const DOCUMENT_REREAD: Duration = Duration::hours(1);

/// A provider's publication schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publication {
    /// New values at every multiple of this period counted from midnight UTC (the UK Carbon
    /// Intensity API every half-hour, WattTime every five minutes).
    Every(Duration),
    /// Once a day at a local time (day-ahead auction results), each publication reaching the
    /// end of the next local day.
    DailyAt { time: NaiveTime, zone: Tz },
    /// A document that changes only when edited: read again every [`DOCUMENT_REREAD`].
    Document,
}

impl Publication {
    /// The first publication strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        match *self {
            Publication::Every(period) => next_multiple(t, period),
            Publication::Document => next_multiple(t, DOCUMENT_REREAD),
            Publication::DailyAt { time, zone } => {
                let today = t.with_timezone(&zone).date_naive();
                // Today's, else tomorrow's (a day after a skipped time still has one).
                (0..=2)
                    .filter_map(|d| daily_instant(zone, today + Duration::days(d), time))
                    .find(|p| *p > t)
                    .unwrap_or(t + Duration::days(1))
            }
        }
    }

    /// How far the data should reach once the last publication at or before `now` is out:
    /// for a daily publication, the end of the next local day. `None` when the schedule
    /// promises no particular end.
    pub fn expected_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let Publication::DailyAt { time, zone } = *self else {
            return None;
        };
        let today = now.with_timezone(&zone).date_naive();
        let published_today = daily_instant(zone, today, time).is_some_and(|p| p <= now);
        // Before today's publication, yesterday's covers today.
        let days_ahead = if published_today { 2 } else { 1 };
        super::tariff::local_midnight(zone, today + Duration::days(days_ahead))
    }
}

/// A daily publication at `hour:minute` local time in `zone`.
pub fn daily(hour: u32, minute: u32, zone: Tz) -> Publication {
    Publication::DailyAt {
        // Callers pass constants; midnight is the harmless fallback for an impossible time.
        time: NaiveTime::from_hms_opt(hour, minute, 0).unwrap_or(NaiveTime::MIN),
        zone,
    }
}

/// The first multiple of `period` (from the Unix epoch, so from midnight UTC for periods that
/// divide a day) strictly after `t`.
fn next_multiple(t: DateTime<Utc>, period: Duration) -> DateTime<Utc> {
    let p = period.num_seconds().max(1);
    let next = (t.timestamp().div_euclid(p) + 1) * p;
    DateTime::from_timestamp(next, 0).unwrap_or(t + period)
}

/// `time` on local `date` in `zone`, the earlier reading of a repeated time, `None` if the
/// clocks skip it that day.
fn daily_instant(zone: Tz, date: chrono::NaiveDate, time: NaiveTime) -> Option<DateTime<Utc>> {
    zone.from_local_datetime(&date.and_time(time))
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("instant")
            .with_timezone(&Utc)
    }

    #[test]
    fn periodic_publications_fall_on_multiples_from_midnight() {
        let half_hour = Publication::Every(Duration::minutes(30));
        assert_eq!(
            half_hour.next_after(utc("2024-03-01T10:29:59Z")),
            utc("2024-03-01T10:30:00Z")
        );
        assert_eq!(
            half_hour.next_after(utc("2024-03-01T10:30:00Z")),
            utc("2024-03-01T11:00:00Z")
        );
        assert_eq!(half_hour.expected_until(utc("2024-03-01T10:30:00Z")), None);
    }

    #[test]
    fn daily_publications_follow_local_time_through_clock_changes() {
        let p = Publication::DailyAt {
            time: NaiveTime::from_hms_opt(13, 0, 0).expect("time"),
            zone: chrono_tz::Europe::Berlin,
        };
        // 13:00 CET is 12:00Z; after the spring change, 13:00 CEST is 11:00Z.
        assert_eq!(
            p.next_after(utc("2024-03-30T11:00:00Z")),
            utc("2024-03-30T12:00:00Z")
        );
        assert_eq!(
            p.next_after(utc("2024-03-30T12:00:00Z")),
            utc("2024-03-31T11:00:00Z")
        );
        // Before the day's publication the data reaches the end of today (local), after it
        // the end of tomorrow; the 31st has 23 hours.
        assert_eq!(
            p.expected_until(utc("2024-03-30T10:00:00Z")),
            Some(utc("2024-03-30T23:00:00Z"))
        );
        assert_eq!(
            p.expected_until(utc("2024-03-30T12:00:00Z")),
            Some(utc("2024-03-31T22:00:00Z"))
        );
    }
}
