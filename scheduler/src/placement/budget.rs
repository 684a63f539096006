//! The monthly budget rule and the user's hold, in words.
//!
//! A job may carry its namespace's monthly energy budget (`JobSpec.monthly_budget`, which the
//! operator resolves from the `EnergyPolicy` objects selecting the namespace). Before a job's
//! next run is started, and whenever it is planned, the cycle adds the job's estimate (the cost
//! of its remaining work as planned: from the planned start, in one stretch at the planned
//! power limit, PUE applied) to what the namespace's jobs have used this month (their metered
//! cost, priced at the slots they ran in; months are UTC calendar months). If the sum is above
//! the budget, the job is held: phase PLANNED, reason `monthly budget of NAMESPACE exhausted:
//! ...`, no capacity kept for it. It is planned again once the month-to-date cost plus the
//! estimate it was held with fits (a new month, a raised budget, or a cheaper estimate when
//! it is planned again). A run in progress is never stopped by the rule, and jobs without a
//! budget are never held by it.

use crate::units::Money;

/// The reason of a job its user holds.
pub const HELD_BY_USER: &str = "held by the user";

/// Slack when comparing money with a budget: far below a cent, so that a budget met to the
/// cent is met.
const MONEY_EPS: f64 = 1e-9;

/// The reason a job is held, if `spent` plus `estimate` overruns `budget` of `namespace`.
pub fn exhausted(
    namespace: &str,
    spent: Money,
    estimate: Money,
    budget: Money,
    currency: &str,
) -> Option<String> {
    (spent.0 + estimate.0 > budget.0 + MONEY_EPS).then(|| {
        format!(
            "monthly budget of {namespace} exhausted: {:.2} {currency} metered this month and \
             {:.2} estimated for this job, against a budget of {:.2}",
            spent.0, estimate.0, budget.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_held_only_when_it_would_overrun() {
        let r = exhausted("ml", Money(95.0), Money(6.0), Money(100.0), "EUR");
        assert_eq!(
            r.as_deref(),
            Some(
                "monthly budget of ml exhausted: 95.00 EUR metered this month and 6.00 \
                 estimated for this job, against a budget of 100.00"
            )
        );
        assert_eq!(
            exhausted("ml", Money(95.0), Money(5.0), Money(100.0), "EUR"),
            None
        );
        // A zero budget holds every job that costs anything.
        assert!(exhausted("ml", Money(0.0), Money(0.01), Money(0.0), "EUR").is_some());
    }
}
