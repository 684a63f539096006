//! Zone signals from the sources of [`crate::signals`] instead of, or on top of, the zone's
//! CSV (opt-in; see `docs/scenario.md`):
//!
//! ```yaml
//! zones:
//!   - name: CAISO
//!     pue: 1.2
//!     price:                  # one price source, as an item of a signals chain
//!       tariff: {path: tariffs/sce.json, time_zone: America/Los_Angeles}
//!     carbon:                 # one carbon source
//!       recorded: {provider: watttime, path: watttime/caiso.json, signal: marginal, endpoint: historical}
//!   - name: GB
//!     pue: 1.1
//!     signals_config: {path: signals.yaml, zone: GB, until: "2023-03-15T00:00:00Z"}
//! ```
//!
//! `price` and `carbon` take the offline kinds only (a tariff, a recorded answer, a CSV or a
//! Carbon Aware SDK forecast in a file): a scenario is a fixed document. `signals_config` runs a
//! zone's chains from a signals configuration over `[start, until)` as of `until`, network
//! sources included. A zone's price comes from `price`, else `signals_config`, else the
//! `signals` CSV; its carbon likewise.
//!
//! A series must cover the scenario's start; it is used up to its first slot without a value
//! from a source (a gap, or where a chain would fall back to its seasonal estimate): estimates
//! are not data to replay. As with CSVs, the scenario is as long as its shortest zone. A
//! tariff covers any span, so it is evaluated over the span the other series give, and must be
//! in effect throughout.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::error::ScenarioError;
use super::load::{Files, load_signals};
use crate::signals::chain::{Origin, ZoneChain};
use crate::signals::config::{
    self, CarbonAwarePlace, CarbonSourceConfig, CarbonSourceSpec, ConfigError, CsvPlace,
    PriceSourceConfig, PriceSourceSpec,
};
use crate::signals::sources::{CarbonProvider, PriceProvider};
use crate::signals::tariff::Tariff;
use crate::signals::{DEFAULT_TIMEOUT, HttpFetcher, Series, SignalProvider, SignalUnit, Window};
use crate::units::{Slot, SlotGrid};

/// `signals_config:` of a scenario zone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChainRef {
    /// The signals configuration, relative to the scenario folder.
    path: String,
    /// The zone of that configuration.
    zone: String,
    /// End of the span fetched (exclusive); also the instant staleness is judged at.
    until: String,
}

/// What a zone's raw YAML says about its signals.
#[derive(Debug)]
pub struct ZoneSources<'a> {
    pub index: usize,
    pub name: &'a str,
    pub signals: Option<&'a str>,
    pub price: Option<&'a Spanned<PriceSourceSpec>>,
    pub carbon: Option<&'a Spanned<CarbonSourceSpec>>,
    pub chain: Option<&'a Spanned<RawChainRef>>,
}

/// A zone's series before the scenario's length is known.
#[derive(Debug)]
pub enum ZoneSeries {
    /// Values for slots `0..len`.
    Values(Vec<f64>),
    /// A tariff, evaluated once the length is known.
    Tariff(Arc<Tariff>),
}

impl ZoneSeries {
    /// How many slots it covers; `None` for any number.
    pub fn slots(&self) -> Option<usize> {
        match self {
            ZoneSeries::Values(v) => Some(v.len()),
            ZoneSeries::Tariff(_) => None,
        }
    }
}

struct Ctx<'a> {
    yaml: &'a Path,
    grid: &'a SlotGrid,
    zone: &'a str,
    at: String,
}

impl Ctx<'_> {
    fn invalid(&self, line: u64, field: &str, reason: String) -> ScenarioError {
        ScenarioError::InvalidField {
            path: self.yaml.to_owned(),
            line,
            field: format!("{}.{field}", self.at),
            reason,
        }
    }
}

fn from_config(e: ConfigError) -> ScenarioError {
    match e {
        ConfigError::Invalid {
            path,
            line,
            field,
            reason,
        } => ScenarioError::InvalidField {
            path,
            line,
            field,
            reason,
        },
        ConfigError::Reading { path, source } => ScenarioError::ReadFile { path, source },
        ConfigError::Parsing { path, message } => ScenarioError::ParseYaml { path, message },
    }
}

/// The price and carbon series of one zone, from wherever its YAML says.
pub fn zone_series(
    files: Files<'_>,
    dir: &Path,
    yaml: &Path,
    currency: &str,
    grid: &SlotGrid,
    z: &ZoneSources<'_>,
) -> Result<(ZoneSeries, ZoneSeries), ScenarioError> {
    let ctx = Ctx {
        yaml,
        grid,
        zone: z.name,
        at: format!("zones[{}]", z.index),
    };
    // What the CSV and the chain give, only if something needs them.
    let needs_csv =
        z.price.is_none() && z.chain.is_none() || z.carbon.is_none() && z.chain.is_none();
    let csv = match (z.signals, needs_csv) {
        (Some(rel), true) => Some(load_signals(files, &dir.join(rel), grid)?),
        _ => None,
    };
    let chain = z.chain.map(|c| chain_series(&ctx, dir, c)).transpose()?;
    let price = match (z.price, &chain, &csv) {
        (Some(spec), _, _) => price_series(&ctx, spec, currency)?,
        (None, Some((p, _)), _) => ZoneSeries::Values(p.clone()),
        (None, None, Some((p, _))) => ZoneSeries::Values(p.iter().map(|v| v.value()).collect()),
        (None, None, None) => return Err(ctx.missing("price")),
    };
    let carbon = match (z.carbon, &chain, &csv) {
        (Some(spec), _, _) => carbon_series(&ctx, spec)?,
        (None, Some((_, c)), _) => c.clone(),
        (None, None, Some((_, c))) => c.iter().map(|v| v.value()).collect(),
        (None, None, None) => return Err(ctx.missing("carbon")),
    };
    if let Some((i, c)) = carbon.iter().enumerate().find(|(_, c)| **c < 0.0) {
        return Err(ctx.invalid(
            z.carbon.map_or(0, |s| s.referenced.line()),
            "carbon",
            format!("{c} g/kWh at {} is negative", grid.format(i as Slot)),
        ));
    }
    Ok((price, ZoneSeries::Values(carbon)))
}

impl Ctx<'_> {
    fn missing(&self, what: &str) -> ScenarioError {
        ScenarioError::InvalidFile {
            path: self.yaml.to_owned(),
            reason: format!(
                "field `{}`: zone {} has no {what}: give `signals` (a CSV), `{what}` (a source) \
                 or `signals_config`",
                self.at, self.zone
            ),
        }
    }
}

fn price_series(
    ctx: &Ctx<'_>,
    spec: &Spanned<PriceSourceSpec>,
    currency: &str,
) -> Result<ZoneSeries, ScenarioError> {
    let line = spec.referenced.line();
    let field = format!("{}.price", ctx.at);
    let (cfg, cur) = spec
        .value
        .check(ctx.zone, ctx.yaml, line, &field)
        .map_err(from_config)?;
    if cur.0 != currency {
        return Err(ctx.invalid(
            line,
            "price",
            format!("the source's prices are in {cur}, the scenario's currency is {currency}"),
        ));
    }
    let offline = match &cfg {
        PriceSourceConfig::Tariff { tariff } => return Ok(ZoneSeries::Tariff(Arc::clone(tariff))),
        PriceSourceConfig::Csv { place, .. } => matches!(place, CsvPlace::File(_)),
        PriceSourceConfig::Recorded { .. } => true,
        PriceSourceConfig::Octopus { .. }
        | PriceSourceConfig::Awattar { .. }
        | PriceSourceConfig::Entsoe { .. } => false,
    };
    if !offline {
        return Err(ctx.invalid(line, "price", ONLINE.to_owned()));
    }
    let provider = PriceProvider::build(&cfg, ctx.zone, &fetcher()?);
    let series = block_on(|| provider.fetch(open_window(ctx.grid)))
        .map_err(|e| ctx.invalid(line, "price", e))?;
    Ok(ZoneSeries::Values(
        leading_values(&series, ctx.grid).map_err(|r| ctx.invalid(line, "price", r))?,
    ))
}

const ONLINE: &str = "a scenario's own `price` or `carbon` reads a file (tariff, recorded, csv \
                      with a path, carbon_aware_sdk with a path); for a network provider use \
                      `signals_config` with `until`";

fn carbon_series(
    ctx: &Ctx<'_>,
    spec: &Spanned<CarbonSourceSpec>,
) -> Result<Vec<f64>, ScenarioError> {
    let line = spec.referenced.line();
    let field = format!("{}.carbon", ctx.at);
    let cfg = spec
        .value
        .check(ctx.zone, ctx.yaml, line, &field)
        .map_err(from_config)?;
    let offline = match &cfg {
        CarbonSourceConfig::Csv { place, .. } => matches!(place, CsvPlace::File(_)),
        CarbonSourceConfig::Recorded { .. } => true,
        CarbonSourceConfig::CarbonAware { place, .. } => matches!(place, CarbonAwarePlace::File(_)),
        CarbonSourceConfig::UkCarbon { .. }
        | CarbonSourceConfig::ElectricityMaps { .. }
        | CarbonSourceConfig::EnergyCharts { .. }
        | CarbonSourceConfig::WattTime { .. } => false,
    };
    if !offline {
        return Err(ctx.invalid(line, "carbon", ONLINE.to_owned()));
    }
    let provider = CarbonProvider::build_for(&cfg, ctx.zone, &fetcher()?);
    let series = block_on(|| provider.fetch(open_window(ctx.grid)))
        .map_err(|e| ctx.invalid(line, "carbon", e))?;
    leading_values(&series, ctx.grid).map_err(|r| ctx.invalid(line, "carbon", r))
}

/// Both series of a zone from a signals configuration's chains over `[start, until)`.
fn chain_series(
    ctx: &Ctx<'_>,
    dir: &Path,
    spec: &Spanned<RawChainRef>,
) -> Result<(Vec<f64>, Vec<f64>), ScenarioError> {
    let line = spec.referenced.line();
    let raw = &spec.value;
    let until = DateTime::parse_from_rfc3339(raw.until.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ctx.invalid(
                line,
                "signals_config.until",
                format!("`{}` is not an RFC 3339 time ({e})", raw.until),
            )
        })?;
    if until <= ctx.grid.start {
        return Err(ctx.invalid(
            line,
            "signals_config.until",
            format!("{until} is not after the scenario start {}", ctx.grid.start),
        ));
    }
    let cfg = config::load(&dir.join(raw.path.trim())).map_err(from_config)?;
    let zone = cfg.zone(&raw.zone).ok_or_else(|| {
        let names: Vec<&str> = cfg.zones.iter().map(|z| z.name.as_str()).collect();
        ctx.invalid(
            line,
            "signals_config.zone",
            format!(
                "`{}` is not a zone of {} ({})",
                raw.zone,
                raw.path,
                names.join(", ")
            ),
        )
    })?;
    let mut chain = ZoneChain::new(zone, &fetcher()?);
    let window = Window {
        from: ctx.grid.start,
        to: until,
    };
    let signals = block_on(|| chain.fetch(until, window, ctx.grid.minutes))
        .map_err(|e| ctx.invalid(line, "signals_config", e))?;
    let leading = |what: &str,
                   slots: Vec<(Origin, Option<f64>)>|
     -> Result<Vec<f64>, ScenarioError> {
        let values: Vec<f64> = slots
            .into_iter()
            .take_while(|(o, _)| {
                matches!(
                    o,
                    Origin::Source { .. } | Origin::StaleSource { .. } | Origin::LastGood { .. }
                )
            })
            .map_while(|(_, v)| v)
            .collect();
        if values.is_empty() {
            return Err(ctx.invalid(
                line,
                "signals_config",
                format!("the zone's {what} chain has no data at the scenario start"),
            ));
        }
        Ok(values)
    };
    let price = leading(
        "price",
        signals
            .price
            .slots
            .iter()
            .map(|s| (s.origin.clone(), s.value.map(SignalUnit::to_f64)))
            .collect(),
    )?;
    let carbon = leading(
        "carbon",
        signals
            .carbon
            .slots
            .iter()
            .map(|s| (s.origin.clone(), s.value.map(SignalUnit::to_f64)))
            .collect(),
    )?;
    Ok((price, carbon))
}

/// A tariff's values on the scenario's first `n` slots; every slot must be in effect.
pub fn tariff_values(
    tariff: &Tariff,
    grid: &SlotGrid,
    n: Slot,
    yaml: &Path,
    zone_index: usize,
) -> Result<Vec<f64>, ScenarioError> {
    let bad = |reason: String| ScenarioError::InvalidFile {
        path: yaml.to_owned(),
        reason: format!("field `zones[{zone_index}].price`: {reason}"),
    };
    if n == 0 {
        return Ok(vec![]);
    }
    let window = Window {
        from: grid.start,
        to: grid.instant(n),
    };
    let series = tariff.series(window).map_err(|e| bad(e.to_string()))?;
    let slots = series.on_slots(grid, n).map_err(|e| bad(e.to_string()))?;
    slots
        .iter()
        .enumerate()
        .map(|(s, p)| {
            p.map(|p| p.value.value()).ok_or_else(|| {
                bad(format!(
                    "tariff `{}` is not in effect at {} ({})",
                    tariff.name,
                    grid.format(s as Slot),
                    tariff.effective_dates()
                ))
            })
        })
        .collect()
}

/// A window from the scenario's start that file sources ignore (they give what they hold).
fn open_window(grid: &SlotGrid) -> Window {
    Window {
        from: grid.start,
        to: grid.start + Duration::minutes(i64::from(grid.minutes)),
    }
}

/// The values of `series` on the grid's slots from slot 0 up to its first slot without one.
fn leading_values<U: SignalUnit>(series: &Series<U>, grid: &SlotGrid) -> Result<Vec<f64>, String> {
    let span = series.known_until - grid.start;
    let n = span.num_minutes() / i64::from(grid.minutes);
    if n <= 0 {
        return Err(format!(
            "the series ends at {}, before the scenario start {}",
            series.known_until.to_rfc3339(),
            grid.start.to_rfc3339()
        ));
    }
    let slots = series
        .on_slots(grid, n as Slot)
        .map_err(|e| e.to_string())?;
    let values: Vec<f64> = slots
        .iter()
        .map_while(|p| p.map(|p| p.value.to_f64()))
        .collect();
    if values.is_empty() {
        let first = series
            .points
            .first()
            .map(|p| p.start.to_rfc3339())
            .unwrap_or_default();
        return Err(format!(
            "the series starts at {first}, after the scenario start {}",
            grid.start.to_rfc3339()
        ));
    }
    Ok(values)
}

fn fetcher() -> Result<HttpFetcher, ScenarioError> {
    HttpFetcher::new(DEFAULT_TIMEOUT).map_err(|e| ScenarioError::InvalidFile {
        path: std::path::PathBuf::from("signals"),
        reason: e.to_string(),
    })
}

/// Runs `make()`'s future to completion on a runtime of its own, in a thread of its own, so
/// that loading works from synchronous code and from inside an async runtime alike.
fn block_on<F, M, T, E>(make: M) -> Result<T, String>
where
    M: FnOnce() -> F + Send,
    F: std::future::Future<Output = Result<T, E>>,
    T: Send,
    E: std::fmt::Display,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("starting a runtime to read signals: {e}"))?;
            rt.block_on(make()).map_err(|e| e.to_string())
        })
        .join()
    })
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
