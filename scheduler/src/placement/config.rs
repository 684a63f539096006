//! The `placement` file of `offpeak serve --placement-config`: the cluster, profiles and
//! planning settings of the live cycle, in the scenario format's words.
//!
//! ```yaml
//! placement:
//!   slot_minutes: 15                # default 15
//!   horizon_hours: 168              # plans reach at least this far (default 7 days)
//!   lookahead_hours: 24             # how far published prices usually reach (default 24)
//!   checkpoint_overhead_minutes: 10
//!   carbon_price_per_tonne: 100
//!   currency: USD
//!   policy: offpeak                 # offpeak, asap or threshold, as `offpeak simulate`
//!   signals_config: signals.yaml    # provider chains (`offpeak signals`' format), or else:
//!   csv_publish_ahead_hours: 24     # the zones' CSV rows count as known this far ahead
//!                                   # (absent: every row is known, as for a tariff)
//!   profiles:
//!     v100/resnet50:
//!       points:
//!         - {power_limit_watts: 100, throughput: 0.72, watts: 98.9}
//!         - {power_limit_watts: 250, throughput: 1.0, watts: 220.7}
//!   zones:
//!     - name: GB
//!       pue: 1.2
//!       signals: signals/GB.csv      # scenario CSV; needed when there is no signals_config
//!       nodes:                       # known before their agents register (optional)
//!         - {accelerator: v100, gpus: 8, count: 2}
//! ```
//!
//! Relative paths are taken from the file's folder. Parsing is strict (unknown keys are
//! errors) and every error names the file, the line and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Duration;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::cluster::{NodeSpec, StaticProfiles, ZoneSpec};
use super::feed::{SignalFeed, TableFeed};
use super::{Clock, PlacementConfig, Settings};
use crate::planner::PolicyKind;
use crate::scenario::ScenarioError;
use crate::scenario::load::{RawProfile, RawZone, YamlCtx, load_profiles, load_zones};
use crate::signals::config as signals_config;
use crate::units::{Hours, MoneyPerTonne};

/// Why the placement file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error(transparent)]
    Placement(#[from] ScenarioError),
    #[error(transparent)]
    Signals(#[from] signals_config::ConfigError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    placement: RawPlacement,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    #[serde(default)]
    slot_minutes: Option<Spanned<i64>>,
    #[serde(default)]
    horizon_hours: Option<Spanned<f64>>,
    #[serde(default)]
    lookahead_hours: Option<Spanned<f64>>,
    #[serde(default)]
    checkpoint_overhead_minutes: Option<Spanned<f64>>,
    #[serde(default)]
    carbon_price_per_tonne: Option<Spanned<f64>>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    policy: Option<Spanned<String>>,
    #[serde(default)]
    signals_config: Option<Spanned<String>>,
    #[serde(default)]
    csv_publish_ahead_hours: Option<Spanned<f64>>,
    profiles: BTreeMap<String, RawProfile>,
    zones: Vec<RawZone>,
}

/// Loads the file at `path` into a configuration on `clock`, persisting to `store`.
pub fn load(
    path: &Path,
    clock: Arc<dyn Clock>,
    store: Option<PathBuf>,
) -> Result<PlacementConfig, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path, clock, store)
}

/// Parses the file's text; `path` names it in errors and anchors its relative paths.
pub fn parse(
    text: &str,
    path: &Path,
    clock: Arc<dyn Clock>,
    store: Option<PathBuf>,
) -> Result<PlacementConfig, ConfigFileError> {
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| ScenarioError::ParseYaml {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let raw = raw.placement;
    let y = YamlCtx { path };
    let dir = path.parent().unwrap_or(Path::new("."));
    let settings = settings(&y, &raw)?;
    let profiles = load_profiles(&y, &raw.profiles)?;
    let chains = raw
        .signals_config
        .as_ref()
        .map(|p| dir.join(p.value.trim()));
    let (defs, accelerators, nodes) = load_zones(&y, &raw.zones, chains.is_none())?;
    let signals = match chains {
        Some(p) => SignalFeed::Chains(signals_config::load(&p)?),
        None => {
            let ahead = positive_hours(
                &y,
                raw.csv_publish_ahead_hours.as_ref(),
                "csv_publish_ahead_hours",
            )?;
            let mut feed = TableFeed::new(ahead.map(hours));
            for (name, _, csv) in &defs {
                let csv = dir.join(csv.as_deref().unwrap_or_default());
                let rows = crate::scenario::read_signal_rows(
                    &|p: &Path| std::fs::read_to_string(p),
                    &csv,
                )?;
                feed = feed.zone(name.clone(), rows);
            }
            SignalFeed::Table(feed)
        }
    };
    let zones: Vec<ZoneSpec> = defs
        .iter()
        .map(|(name, pue, _)| ZoneSpec {
            name: name.clone(),
            pue: *pue,
        })
        .collect();
    let nodes = nodes
        .into_iter()
        .map(|n| NodeSpec {
            zone: zones[n.zone].name.clone(),
            accelerator: super::spec::accelerator_name(&accelerators[n.accelerator]),
            name: n.name,
            gpus: n.gpus,
        })
        .collect();
    Ok(PlacementConfig {
        settings,
        zones,
        nodes,
        signals,
        profiles: Arc::new(StaticProfiles(profiles)),
        clock,
        store,
    })
}

fn hours(h: f64) -> Duration {
    Duration::seconds((h * 3600.0).round() as i64)
}

fn positive_hours(
    y: &YamlCtx<'_>,
    v: Option<&Spanned<f64>>,
    field: &str,
) -> Result<Option<f64>, ScenarioError> {
    match v {
        Some(h) if !(h.value.is_finite() && h.value > 0.0) => Err(y.field(
            h,
            field,
            format!("{} must be a positive number of hours", h.value),
        )),
        Some(h) => Ok(Some(h.value)),
        None => Ok(None),
    }
}

fn settings(y: &YamlCtx<'_>, raw: &RawPlacement) -> Result<Settings, ScenarioError> {
    let mut s = Settings::default();
    if let Some(m) = &raw.slot_minutes {
        if !(1..=1440).contains(&m.value) || 1440 % m.value != 0 {
            return Err(y.field(
                m,
                "slot_minutes",
                format!("{} must divide a day (1..=1440 minutes)", m.value),
            ));
        }
        s.slot_minutes = m.value as u32;
    }
    if let Some(h) = positive_hours(y, raw.horizon_hours.as_ref(), "horizon_hours")? {
        s.horizon = hours(h);
        if s.horizon > s.max_horizon {
            s.max_horizon = s.horizon;
        }
    }
    if let Some(h) = positive_hours(y, raw.lookahead_hours.as_ref(), "lookahead_hours")? {
        s.lookahead = hours(h);
    }
    if let Some(v) = &raw.checkpoint_overhead_minutes {
        if !(v.value.is_finite() && v.value >= 0.0) {
            return Err(y.field(
                v,
                "checkpoint_overhead_minutes",
                format!("{} must be zero or more", v.value),
            ));
        }
        s.checkpoint_overhead = Hours(v.value / 60.0);
    }
    if let Some(v) = &raw.carbon_price_per_tonne {
        if !v.value.is_finite() {
            return Err(y.field(
                v,
                "carbon_price_per_tonne",
                "must be a finite number".into(),
            ));
        }
        s.carbon_price = MoneyPerTonne(v.value);
    }
    if let Some(c) = &raw.currency {
        s.currency = c.trim().to_owned();
    }
    if let Some(p) = &raw.policy {
        s.policy = p
            .value
            .parse::<PolicyKind>()
            .map_err(|reason| y.field(p, "policy", reason))?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::ManualClock;

    const GOOD: &str = r#"placement:
  slot_minutes: 30
  checkpoint_overhead_minutes: 12
  csv_publish_ahead_hours: 24
  profiles:
    v100/resnet50:
      points:
        - {power_limit_watts: 250, throughput: 1.0, watts: 220.7}
  zones:
    - name: A
      pue: 1.2
      signals: A.csv
      nodes:
        - {accelerator: V100, gpus: 8, count: 2}
"#;

    fn clock() -> Arc<dyn Clock> {
        Arc::new(ManualClock::new(
            "2024-01-01T00:00:00Z".parse().expect("time"),
        ))
    }

    fn write(dir: &Path, yaml: &str) -> PathBuf {
        let csv = "time,price_per_mwh,carbon_g_per_kwh\n2024-01-01T00:00:00Z,50,300\n2024-01-01T01:00:00Z,60,200\n";
        std::fs::write(dir.join("A.csv"), csv).expect("write csv");
        let p = dir.join("placement.yaml");
        std::fs::write(&p, yaml).expect("write yaml");
        p
    }

    #[test]
    fn a_good_file_loads_into_the_cluster_and_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = load(&write(dir.path(), GOOD), clock(), None).expect("loads");
        assert_eq!(cfg.settings.slot_minutes, 30);
        assert_eq!(cfg.settings.checkpoint_overhead, Hours(0.2));
        assert_eq!(cfg.nodes.len(), 2);
        assert_eq!(cfg.nodes[1].name, "A-V100-1");
        assert_eq!(cfg.nodes[1].accelerator, "v100");
        assert!(
            matches!(&cfg.signals, SignalFeed::Table(t) if t.publish_ahead() == Some(Duration::hours(24)))
        );
    }

    #[test]
    fn bad_files_name_the_line_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            (
                GOOD.replace("slot_minutes: 30", "slot_minutes: 7"),
                "slot_minutes",
            ),
            (GOOD.replace("pue: 1.2", "pue: 0.5"), "zones[0].pue"),
            (
                GOOD.replace("      signals: A.csv\n", ""),
                "zones[0].signals",
            ),
            (
                GOOD.replace("placement:\n", "placement:\n  policy: fastest\n"),
                "policy",
            ),
            (
                GOOD.replace("csv_publish_ahead_hours: 24", "csv_publish_ahead_hours: -1"),
                "csv_publish_ahead_hours",
            ),
        ];
        for (yaml, field) in cases {
            let err = load(&write(dir.path(), &yaml), clock(), None).expect_err(field);
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("`{field}`")) && msg.contains("line"),
                "{field}: {msg}"
            );
        }
        let unknown = GOOD.replace(
            "  slot_minutes: 30\n",
            "  slot_minutes: 30\n  colour: red\n",
        );
        let err = load(&write(dir.path(), &unknown), clock(), None).expect_err("unknown key");
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
