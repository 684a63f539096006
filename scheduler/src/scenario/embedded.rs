//! The example scenario (`examples/scenarios/de-gb-2023-03`, real DE-LU and GB prices and
//! carbon, 260 jobs of the Microsoft ITP trace) built into the binary, so that
//! `offpeak simulate` runs on a fresh machine with nothing else at hand.

use std::path::{Path, PathBuf};

use super::{Scenario, ScenarioError, load::load_with};

/// Name the built-in scenario's files are reported under in errors.
pub const EXAMPLE_NAME: &str = "built-in:de-gb-2023-03";

const FILES: [(&str, &str); 4] = [
    (
        "scenario.yaml",
        include_str!("../../../examples/scenarios/de-gb-2023-03/scenario.yaml"),
    ),
    (
        "jobs.csv",
        include_str!("../../../examples/scenarios/de-gb-2023-03/jobs.csv"),
    ),
    (
        "signals/DE-LU.csv",
        include_str!("../../../examples/scenarios/de-gb-2023-03/signals/DE-LU.csv"),
    ),
    (
        "signals/GB.csv",
        include_str!("../../../examples/scenarios/de-gb-2023-03/signals/GB.csv"),
    ),
];

/// Loads the built-in example scenario.
pub fn example() -> Result<Scenario, ScenarioError> {
    let root = PathBuf::from(EXAMPLE_NAME);
    load_with(&root, &|p: &Path| {
        let rel = p.strip_prefix(&root).unwrap_or(p);
        FILES
            .iter()
            .find(|(name, _)| Path::new(name) == rel)
            .map(|(_, text)| (*text).to_owned())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a file of the built-in scenario",
                )
            })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_built_in_example_loads() {
        let sc = super::example().expect("built-in scenario");
        assert_eq!(sc.name, "DE-LU+GB-2023-03-01-14d-cluster03-s1");
        assert_eq!(sc.jobs.len(), 260);
        assert_eq!(sc.zones.len(), 2);
    }
}
