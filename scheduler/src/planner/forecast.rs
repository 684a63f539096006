//! Signal estimates past the lookahead: a seasonal profile from the known history.
//!
//! Day-ahead prices and grid carbon follow the daily cycle (demand, solar) far more than
//! anything else, so the estimate for a slot beyond the known horizon is the mean of the same
//! time of day over the most recent known days. Only known values are read.

/// How many past days the seasonal estimate averages: enough to damp one odd day, few enough
/// to follow weekly and weather swings.
pub const SEASONAL_DAYS: usize = 3;

/// Extends `known` (values for slots `0..known.len()`) to slots `from..to` and returns the
/// values for `from..to`: known values where there are, seasonal estimates beyond.
pub fn extend(known: &[f64], from: usize, to: usize, slots_per_day: usize) -> Vec<f64> {
    let n = known.len();
    let mut out = Vec::with_capacity(to.saturating_sub(from));
    for s in from..to {
        if s < n {
            out.push(known[s]);
            continue;
        }
        out.push(estimate(known, s, slots_per_day));
    }
    out
}

/// The seasonal estimate for slot `s` (its known value if `s` is known).
pub fn estimate(known: &[f64], s: usize, slots_per_day: usize) -> f64 {
    let n = known.len();
    if n == 0 {
        return 0.0;
    }
    if s < n {
        return known[s];
    }
    let day = slots_per_day.max(1);
    // the most recent known slot at the same time of day
    let back = (s - n) / day + 1;
    let mut sum = 0.0;
    let mut k = 0usize;
    let mut offset = back * day;
    while k < SEASONAL_DAYS && offset <= s {
        sum += known[s - offset];
        k += 1;
        offset += day;
    }
    if k == 0 { known[n - 1] } else { sum / k as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_pass_through_and_estimates_repeat_the_day() {
        // two days of 4 slots: day 1 = 1,2,3,4, day 2 = 3,4,5,6
        let known = [1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 5.0, 6.0];
        let v = extend(&known, 6, 12, 4);
        assert_eq!(&v[..2], &[5.0, 6.0]);
        assert_eq!(&v[2..], &[2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn estimates_only_read_known_values() {
        let known = [7.0; 3];
        for s in 3..50 {
            assert_eq!(estimate(&known, s, 4), 7.0);
        }
        assert_eq!(estimate(&[1.0, 2.0], 1, 4), 2.0);
    }
}
