//! The figures `offpeak simulate` reports: a table for people, JSON for programs.

use std::fmt::Write as _;

use serde::Serialize;

use crate::schedule::Totals;

/// One policy's totals on one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyFigures {
    pub policy: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// What a simulation produced, with the `asap` baseline when it was run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub currency: String,
    pub jobs: usize,
    pub result: PolicyFigures,
    pub asap: Option<PolicyFigures>,
    /// (asap − result) / asap, on the objective (cost + carbon price × emissions).
    pub saving_vs_asap: Option<f64>,
    pub cost_saving_vs_asap: Option<f64>,
    pub carbon_saving_vs_asap: Option<f64>,
    pub elapsed_seconds: f64,
}

fn saving(base: f64, got: f64) -> Option<f64> {
    (base.abs() > f64::EPSILON).then(|| (base - got) / base)
}

impl Summary {
    pub fn new(
        scenario: String,
        currency: String,
        jobs: usize,
        result: PolicyFigures,
        asap: Option<PolicyFigures>,
        elapsed_seconds: f64,
    ) -> Self {
        let s = |f: fn(&Totals) -> f64| {
            asap.as_ref()
                .and_then(|a| saving(f(&a.totals), f(&result.totals)))
        };
        Summary {
            scenario,
            currency,
            jobs,
            saving_vs_asap: s(|t| t.objective.0),
            cost_saving_vs_asap: s(|t| t.cost.0),
            carbon_saving_vs_asap: s(|t| t.carbon_kg.0),
            result,
            asap,
            elapsed_seconds,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {}: {} jobs ({:.1} s)",
            self.scenario, self.jobs, self.elapsed_seconds
        );
        let _ = writeln!(
            out,
            "{:<10}{:>10}{:>8}{:>8}{:>14}{:>14}{:>14}{:>14}{:>6}",
            "policy",
            "scheduled",
            "unsched",
            "runs",
            "kWh",
            format!("cost {}", self.currency),
            "carbon kg",
            "objective",
            "late"
        );
        for f in std::iter::once(&self.result).chain(self.asap.as_ref()) {
            let t = &f.totals;
            let _ = writeln!(
                out,
                "{:<10}{:>10}{:>8}{:>8}{:>14.1}{:>14.2}{:>14.1}{:>14.2}{:>6}",
                f.policy,
                t.scheduled,
                t.unscheduled,
                t.runs,
                t.kwh.0,
                t.cost.0,
                t.carbon_kg.0,
                t.objective.0,
                t.late
            );
        }
        if let (Some(o), Some(c), Some(k)) = (
            self.saving_vs_asap,
            self.cost_saving_vs_asap,
            self.carbon_saving_vs_asap,
        ) {
            let _ = writeln!(
                out,
                "saving vs asap: {:.1}% of the objective ({:.1}% of energy cost, {:.1}% of carbon)",
                o * 100.0,
                c * 100.0,
                k * 100.0
            );
        }
        out
    }
}
