//! Fixture builder: a small valid scenario folder that tests then break or extend.

#![allow(dead_code)]

pub mod http;
pub mod io;

use std::path::{Path, PathBuf};

/// A scenario on disk, built from editable parts.
#[derive(Debug, Clone)]
pub struct ScenarioFixture {
    pub yaml: String,
    pub signals: Vec<(String, String)>,
    pub jobs: String,
}

pub const HEADER: &str = "id,submit,gpus,accelerator,profile,work_hours,deadline,preemptible,price_cap_per_mwh,namespace";

impl Default for ScenarioFixture {
    fn default() -> Self {
        let yaml = r#"name: fixture
start: "2024-01-01T00:00:00Z"
slot_minutes: 15
lookahead_hours: 24
checkpoint_overhead_minutes: 10
carbon_price_per_tonne: 100.0
currency: USD
profiles:
  v100/resnet50:
    points:
      - {power_limit_watts: 100, throughput: 0.72, watts: 98.9}
      - {power_limit_watts: 250, throughput: 1.0, watts: 220.7}
zones:
  - name: A
    pue: 1.2
    signals: signals/A.csv
    nodes:
      - {accelerator: v100, gpus: 8, count: 2}
  - name: B
    pue: 1.1
    signals: signals/B.csv
    nodes:
      - {accelerator: v100, gpus: 8, count: 1}
jobs: jobs.csv
"#
        .to_owned();
        ScenarioFixture {
            yaml,
            signals: vec![
                ("A".into(), flat_signals(48, 50.0, 300.0)),
                ("B".into(), flat_signals(48, 60.0, 200.0)),
            ],
            jobs: format!(
                "{HEADER}\nj1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,2.0,2024-01-01T20:00:00Z,true,,research\n"
            ),
        }
    }
}

/// Hourly signals: `hours` rows of constant price and carbon.
pub fn flat_signals(hours: usize, price: f64, carbon: f64) -> String {
    hourly(&vec![(price, carbon); hours])
}

/// Hourly signals from (price, carbon) pairs starting 2024-01-01T00:00Z.
pub fn hourly(values: &[(f64, f64)]) -> String {
    let mut s = String::from("time,price_per_mwh,carbon_g_per_kwh\n");
    for (h, (p, c)) in values.iter().enumerate() {
        s.push_str(&format!(
            "2024-01-{:02}T{:02}:00:00Z,{p},{c}\n",
            1 + h / 24,
            h % 24
        ));
    }
    s
}

impl ScenarioFixture {
    /// Writes the folder under `root` and returns its path.
    pub fn write(&self, root: &Path) -> PathBuf {
        let dir = root.join("scenario");
        std::fs::create_dir_all(dir.join("signals")).expect("create fixture folder");
        std::fs::write(dir.join("scenario.yaml"), &self.yaml).expect("write scenario.yaml");
        for (zone, csv) in &self.signals {
            std::fs::write(dir.join("signals").join(format!("{zone}.csv")), csv)
                .expect("write signals");
        }
        std::fs::write(dir.join("jobs.csv"), &self.jobs).expect("write jobs.csv");
        dir
    }

    /// Replaces the jobs with these rows (header added).
    pub fn with_jobs(mut self, rows: &[&str]) -> Self {
        self.jobs = format!("{HEADER}\n{}\n", rows.join("\n"));
        self
    }
}
