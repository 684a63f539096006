//! Who pays and how much they may spend: the finance file maps namespaces to teams and cost
//! centres (stamped on each ledger record as it is written) and sets monthly energy budgets
//! per namespace or team (the figures an `EnergyPolicy` carries), which reports compare with
//! the month's actual cost.
//!
//! ```yaml
//! currency: USD            # the budgets' currency; a report in another one is refused
//! namespaces:
//!   research: {team: ml-research, cost_centre: CC-4100}
//! budgets:
//!   namespaces: {research: 60.00}
//!   teams: {ml-platform: 150.00}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use crate::ledger::{Allocation, Fixed, Owner};

/// A finance file that could not be used.
#[derive(Debug, Error)]
pub enum FinanceError {
    #[error("reading finance file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing finance file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("finance file {path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: String,
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFinance {
    currency: Option<String>,
    #[serde(default)]
    namespaces: BTreeMap<String, RawOwner>,
    #[serde(default)]
    budgets: RawBudgets,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    team: String,
    cost_centre: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudgets {
    #[serde(default)]
    namespaces: BTreeMap<String, f64>,
    #[serde(default)]
    teams: BTreeMap<String, f64>,
}

/// What a budget limits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum BudgetScope {
    Namespace(String),
    Team(String),
}

impl BudgetScope {
    /// "namespace" or "team".
    pub fn kind(&self) -> &'static str {
        match self {
            BudgetScope::Namespace(_) => "namespace",
            BudgetScope::Team(_) => "team",
        }
    }

    /// The namespace or team.
    pub fn name(&self) -> &str {
        match self {
            BudgetScope::Namespace(n) | BudgetScope::Team(n) => n,
        }
    }
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

/// A monthly energy budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub scope: BudgetScope,
    /// Per calendar month of the reporting time zone, in `currency`.
    pub monthly: Fixed,
    pub currency: String,
}

/// The finance file, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finance {
    pub allocation: Allocation,
    pub budgets: Vec<Budget>,
}

/// Reads and validates the finance file at `path`.
pub fn load(path: &Path) -> Result<Finance, FinanceError> {
    let text = std::fs::read_to_string(path).map_err(|source| FinanceError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, path)
}

/// Validates finance file text as if read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Finance, FinanceError> {
    let p = path.display().to_string();
    let raw: RawFinance = serde_saphyr::from_str(text).map_err(|e| FinanceError::Parse {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let invalid = |field: String, reason: &str| FinanceError::Invalid {
        path: p.clone(),
        field,
        reason: reason.to_string(),
    };
    let mut allocation = Allocation::default();
    for (ns, o) in raw.namespaces {
        for (what, v) in [("team", &o.team), ("cost_centre", &o.cost_centre)] {
            if v.trim().is_empty() {
                return Err(invalid(format!("namespaces.{ns}.{what}"), "is empty"));
            }
        }
        allocation.by_namespace.insert(
            ns,
            Owner {
                team: o.team,
                cost_centre: o.cost_centre,
            },
        );
    }
    let scoped = raw
        .budgets
        .namespaces
        .into_iter()
        .map(|(n, v)| (BudgetScope::Namespace(n), v))
        .chain(
            raw.budgets
                .teams
                .into_iter()
                .map(|(t, v)| (BudgetScope::Team(t), v)),
        );
    let mut budgets = Vec::new();
    for (scope, amount) in scoped {
        let field = format!("budgets.{}s.{}", scope.kind(), scope.name());
        if !amount.is_finite() || amount < 0.0 {
            return Err(invalid(
                field,
                &format!("{amount} is not a monthly amount (a number of at least 0)"),
            ));
        }
        let Some(currency) = raw.currency.clone() else {
            return Err(invalid(
                "currency".into(),
                "is required when budgets are given (e.g. currency: USD)",
            ));
        };
        budgets.push(Budget {
            scope,
            monthly: Fixed::from_f64(amount),
            currency,
        });
    }
    if let Some(c) = &raw.currency
        && (c.len() != 3 || !c.chars().all(|ch| ch.is_ascii_uppercase()))
    {
        return Err(invalid(
            "currency".into(),
            &format!("{c:?} is not an ISO 4217 code such as USD"),
        ));
    }
    Ok(Finance {
        allocation,
        budgets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Finance, FinanceError> {
        parse(s, Path::new("finance.yaml"))
    }

    #[test]
    fn a_full_file_maps_namespaces_and_sets_budgets() {
        let f = parse_str(
            "currency: USD\nnamespaces:\n  research: {team: ml, cost_centre: CC-1}\n\
             budgets:\n  namespaces: {research: 12.5}\n  teams: {ml: 100}\n",
        )
        .expect("valid");
        assert_eq!(f.allocation.owner("research"), ("ml", "CC-1"));
        assert_eq!(f.allocation.owner("other"), ("unassigned", "unassigned"));
        assert_eq!(f.budgets.len(), 2);
        assert_eq!(f.budgets[0].monthly, Fixed(12_500_000_000));
        assert_eq!(f.budgets[1].scope, BudgetScope::Team("ml".into()));
    }

    #[test]
    fn the_example_finance_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/finance.yaml");
        let f = load(&path).expect("examples/finance.yaml");
        assert_eq!(f.allocation.owner("batch"), ("ml-platform", "CC-2010"));
        assert_eq!(f.budgets.len(), 3);
        assert!(f.budgets.iter().all(|b| b.currency == "USD"));
    }

    #[test]
    fn each_class_of_bad_file_names_what_is_wrong() {
        for (text, needle) in [
            ("namespaces:\n  a: {team: t}\n", "cost_centre"),
            ("namspaces: {}\n", "namspaces"),
            (
                "currency: USD\nbudgets:\n  namespaces: {a: -1}\n",
                "budgets.namespaces.a",
            ),
            ("budgets:\n  teams: {a: 1}\n", "currency"),
            ("currency: dollars\n", "ISO 4217"),
            (
                "namespaces:\n  a: {team: '', cost_centre: x}\n",
                "namespaces.a.team",
            ),
            (
                "currency: USD\nbudgets:\n  teams: {a: lots}\n",
                "finance.yaml",
            ),
        ] {
            let e = parse_str(text).expect_err(text);
            let msg = e.to_string();
            assert!(msg.contains(needle), "{text:?}: {msg}");
            assert!(msg.contains("finance.yaml"), "{msg}");
        }
    }
}
