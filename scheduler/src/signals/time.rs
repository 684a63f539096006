//! Instants as providers write them.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

/// Parses an ISO 8601 instant with an offset or `Z`, with or without seconds: RFC 3339 proper
/// (`2024-03-05T20:00:00.000Z`) and the UK Carbon Intensity API's minute form
/// (`2023-12-03T10:30Z`). A timestamp without an offset is refused: its zone would be a guess.
pub(crate) fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    // Minutes only: `Z` or a numeric offset after `HH:MM`.
    if let Some(naive) = s.strip_suffix('Z')
        && let Ok(t) = NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M")
    {
        return Ok(t.and_utc());
    }
    if let Ok(t) = DateTime::<FixedOffset>::parse_from_str(s, "%Y-%m-%dT%H:%M%:z") {
        return Ok(t.with_timezone(&Utc));
    }
    Err(format!("`{s}` is not an ISO 8601 instant with an offset"))
}

/// An instant as the UK Carbon Intensity API takes it in a path (`2023-12-03T10:30Z`).
pub(crate) fn minute_utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%MZ").to_string()
}
