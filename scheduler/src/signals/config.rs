//! The `signals` section of the scheduler's YAML configuration: for each zone, an ordered chain
//! of price sources and one of carbon sources, and how old data may be before it is no longer
//! trusted.
//!
//! ```yaml
//! signals:
//!   slot_minutes: 60
//!   zones:
//!     - name: GB
//!       max_age_hours: 6
//!       price:
//!         - octopus: {product: AGILE-24-10-01, tariff: E-1R-AGILE-24-10-01-C, vat: excluded}
//!         - csv: {path: signals/GB.csv, value_column: price, time_zone: Europe/London,
//!                 unit: per_mwh, currency: GBP, resolution_minutes: 60}
//!       carbon:
//!         - electricity_maps: {zone: GB, api_key_env: EM_API_KEY}
//!         - uk_carbon: {region: 13}
//! ```
//!
//! Sources are externally tagged (`- kind: {fields}`), so that every field keeps its YAML
//! location. Parsing is strict (unknown keys are errors), and the raw form is checked into
//! [`SignalsConfig`] at load, every error naming the file, the line and the field path
//! (`zones[GB].carbon[2].electricity_maps.api_key_env`). API keys are not read here: a key that
//! cannot be read makes that one source fail at fetch time, so the chain falls through to the
//! next one instead of the whole zone going dark.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Duration, FixedOffset};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::carbon_aware::Zeros;
use super::csv_import::{CarbonCsv, CarbonUnit, PriceCsv, PriceUnit, TimeBasis};
use super::electricity_maps::Endpoint;
use super::octopus::Vat;
use super::recorded::{RecordedCarbon, RecordedPrice};
use super::tariff::Tariff;
use super::tariff::urdb::UrdbOptions;
use super::uk_carbon::Scope;
use super::watttime::{self, Place};
use super::{CarbonBasis, Currency, awattar, electricity_maps, entsoe, octopus, uk_carbon};

/// The slot length used when the file does not give one: the planner's hourly default, and
/// the resolution of most day-ahead markets until 2025.
pub const DEFAULT_SLOT_MINUTES: u32 = 60;
/// The region ids the UK Carbon Intensity API documents: 1 to 14 the distribution network
/// regions (13 is London), 15 to 17 England, Scotland and Wales.
const UK_REGION_IDS: std::ops::RangeInclusive<u8> = 1..=17;
const MINUTES_PER_DAY: u32 = 24 * 60;
const MINUTES_PER_HOUR: f64 = 60.0;
/// Octopus Agile rates are in pence, and so GBP.
const OCTOPUS_CURRENCY: &str = "GBP";
/// aWATTar and ENTSO-E publish the EPEX day-ahead price in euros.
const EURO: &str = "EUR";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Reading {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parsing { path: PathBuf, message: String },
    #[error("{path}: line {line}: `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        line: u64,
        field: String,
        reason: String,
    },
}

/// The validated signals configuration.
#[derive(Debug, Clone)]
pub struct SignalsConfig {
    /// The slot length every series is brought onto.
    pub slot_minutes: u32,
    pub zones: Vec<ZoneConfig>,
}

impl SignalsConfig {
    /// The zone called `name`.
    pub fn zone(&self, name: &str) -> Option<&ZoneConfig> {
        self.zones.iter().find(|z| z.name == name)
    }
}

/// One zone's chains, first choice first.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    pub name: String,
    /// An answer whose last point ended longer ago than this is stale.
    pub max_age: Duration,
    /// The currency every price source of the zone is in (checked at load).
    pub currency: Currency,
    pub price: Vec<PriceSourceConfig>,
    pub carbon: Vec<CarbonSourceConfig>,
}

/// Where an API key is read from when the source is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
}

/// Where a CSV is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvPlace {
    File(PathBuf),
    Url(String),
}

/// One price source, validated.
#[derive(Debug, Clone)]
pub enum PriceSourceConfig {
    Csv {
        import: PriceCsv,
        place: CsvPlace,
    },
    Octopus {
        base_url: String,
        product: String,
        tariff: String,
        vat: Vat,
    },
    Awattar {
        base_url: String,
    },
    Entsoe {
        base_url: String,
        eic: String,
        key: KeySource,
        sequence: u32,
    },
    /// A time-of-use tariff, read and checked at load.
    Tariff {
        tariff: Arc<Tariff>,
    },
    /// A provider's answer saved to a file.
    Recorded {
        path: PathBuf,
        format: RecordedPrice,
    },
}

/// Where a Carbon Aware SDK forecast is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarbonAwarePlace {
    File(PathBuf),
    Url(String),
    /// The SDK's Web API at `base_url`, for `location`.
    WebApi {
        base_url: String,
        location: String,
    },
}

/// One carbon-intensity source, validated.
#[derive(Debug, Clone)]
pub enum CarbonSourceConfig {
    UkCarbon {
        base_url: String,
        scope: Scope,
    },
    ElectricityMaps {
        base_url: String,
        zone: String,
        key: KeySource,
        endpoint: Endpoint,
    },
    Csv {
        import: CarbonCsv,
        place: CsvPlace,
    },
    WattTime {
        base_url: String,
        place: Place,
        signal: watttime::Signal,
        endpoint: watttime::Endpoint,
        horizon_hours: Option<u32>,
        username: KeySource,
        password: KeySource,
    },
    EnergyCharts {
        base_url: String,
        country: String,
    },
    CarbonAware {
        place: CarbonAwarePlace,
        /// The SDK location to read from a document holding several.
        location: Option<String>,
        basis: CarbonBasis,
        zeros: Zeros,
    },
    /// A provider's answer saved to a file.
    Recorded {
        path: PathBuf,
        format: RecordedCarbon,
    },
}

impl CarbonSourceConfig {
    /// Whether the source gives marginal rates (`Some(true)`), average intensities
    /// (`Some(false)`), or does not say (`None`).
    fn marginal(&self) -> Option<bool> {
        let of = |b: CarbonBasis| match b {
            CarbonBasis::Marginal => Some(true),
            CarbonBasis::Unspecified => None,
            CarbonBasis::Direct | CarbonBasis::Lifecycle => Some(false),
        };
        match self {
            CarbonSourceConfig::UkCarbon { .. }
            | CarbonSourceConfig::ElectricityMaps { .. }
            | CarbonSourceConfig::EnergyCharts { .. } => Some(false),
            CarbonSourceConfig::Csv { import, .. } => of(import.basis),
            CarbonSourceConfig::WattTime { signal, .. } => of(signal.basis()),
            CarbonSourceConfig::CarbonAware { basis, .. } => of(*basis),
            CarbonSourceConfig::Recorded { format, .. } => match format {
                RecordedCarbon::WattTime { signal, .. } => of(signal.basis()),
                RecordedCarbon::UkCarbon
                | RecordedCarbon::ElectricityMaps
                | RecordedCarbon::EnergyCharts => Some(false),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    signals: RawSignals,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignals {
    #[serde(default)]
    slot_minutes: Option<Spanned<u32>>,
    zones: Vec<Spanned<RawZone>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    name: String,
    max_age_hours: Spanned<f64>,
    price: Vec<Spanned<RawPriceSource>>,
    carbon: Vec<Spanned<RawCarbonSource>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawPriceSource {
    Csv(RawCsv),
    Octopus(RawOctopus),
    Awattar(RawAwattar),
    Entsoe(RawEntsoe),
    Tariff(RawTariff),
    Recorded(RawRecordedPrice),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawCarbonSource {
    UkCarbon(RawUkCarbon),
    ElectricityMaps(RawElectricityMaps),
    Csv(RawCsv),
    #[serde(rename = "watttime")]
    WattTime(RawWattTime),
    CarbonAwareSdk(RawCarbonAware),
    EnergyCharts(RawEnergyCharts),
    Recorded(RawRecordedCarbon),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnergyCharts {
    country: String,
    #[serde(default)]
    base_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWattTime {
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
    /// `marginal` or `average`: required, never defaulted.
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    horizon_hours: Option<u32>,
    #[serde(default)]
    username_env: Option<String>,
    #[serde(default)]
    username_file: Option<String>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    password_file: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCarbonAware {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    basis: Option<String>,
    #[serde(default)]
    zeros: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecordedCarbon {
    provider: String,
    path: String,
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecordedPrice {
    provider: String,
    path: String,
    #[serde(default)]
    vat: Option<String>,
    #[serde(default)]
    sequence: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCsv {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default = "default_time_column")]
    time_column: String,
    value_column: String,
    #[serde(default)]
    estimated_column: Option<String>,
    time_zone: String,
    unit: String,
    /// Prices only.
    #[serde(default)]
    currency: Option<String>,
    /// Carbon only.
    #[serde(default)]
    basis: Option<String>,
    resolution_minutes: u32,
}

fn default_time_column() -> String {
    "time".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOctopus {
    product: String,
    tariff: String,
    vat: String,
    #[serde(default)]
    base_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAwattar {
    #[serde(default)]
    base_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntsoe {
    eic: String,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    api_key_file: Option<String>,
    #[serde(default)]
    sequence: Option<u32>,
    #[serde(default)]
    base_url: Option<String>,
}

/// A tariff file: OpenEI URDB JSON (`.json`, which needs `time_zone`) or the hand-written YAML
/// form (`.yaml`, `.yml`, which states everything itself).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTariff {
    path: String,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    tier: Option<usize>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    holidays: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUkCarbon {
    #[serde(default)]
    region: Option<u8>,
    #[serde(default)]
    base_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawElectricityMaps {
    zone: String,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    api_key_file: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
}

/// One price source written alone, in the same forms as an item of a zone's `price` chain
/// (`tariff: {...}`, `recorded: {...}`, `csv: {...}`, ...): what a scenario zone's `price`
/// takes.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct PriceSourceSpec(RawPriceSource);

/// One carbon source written alone, like an item of a zone's `carbon` chain.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct CarbonSourceSpec(RawCarbonSource);

impl PriceSourceSpec {
    /// Checks the source as written at `line` of `file` (relative paths from its folder),
    /// naming it `field` in errors; returns it with the currency of its prices.
    pub fn check(
        &self,
        zone: &str,
        file: &Path,
        line: u64,
        field: &str,
    ) -> Result<(PriceSourceConfig, Currency), ConfigError> {
        let ctx = Ctx::of(file);
        ctx.price_source(zone, &self.0, line, field)
    }
}

impl CarbonSourceSpec {
    /// Checks the source as written at `line` of `file`, naming it `field` in errors.
    pub fn check(
        &self,
        zone: &str,
        file: &Path,
        line: u64,
        field: &str,
    ) -> Result<CarbonSourceConfig, ConfigError> {
        let ctx = Ctx::of(file);
        ctx.carbon_source(zone, &self.0, line, field)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading and checking.

/// Reads and checks the configuration file at `path`. Relative CSV and key-file paths are
/// taken from the file's folder.
pub fn load(path: &Path) -> Result<SignalsConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Reading {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Checks configuration text as if read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<SignalsConfig, ConfigError> {
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parsing {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let ctx = Ctx::of(path);
    let slot_minutes = match &raw.signals.slot_minutes {
        None => DEFAULT_SLOT_MINUTES,
        Some(s) if s.value == 0 || !MINUTES_PER_DAY.is_multiple_of(s.value) => {
            return Err(ctx.invalid(
                line(s),
                "signals.slot_minutes",
                format!("{} must divide a day (1..=1440 minutes)", s.value),
            ));
        }
        Some(s) => s.value,
    };
    let mut seen = BTreeSet::new();
    let mut zones = Vec::with_capacity(raw.signals.zones.len());
    for z in &raw.signals.zones {
        if !seen.insert(z.value.name.clone()) {
            return Err(ctx.invalid(
                line(z),
                &format!("zones[{}].name", z.value.name),
                "the zone is configured twice".to_owned(),
            ));
        }
        zones.push(ctx.zone(z)?);
    }
    Ok(SignalsConfig {
        slot_minutes,
        zones,
    })
}

fn line<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

/// Checking what was read from `path`, whose relative paths are taken from `dir`.
struct Ctx<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl<'a> Ctx<'a> {
    fn of(path: &'a Path) -> Self {
        Ctx {
            path,
            dir: path.parent().unwrap_or(Path::new("")),
        }
    }
}

impl Ctx<'_> {
    fn invalid(&self, line: u64, field: &str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            field: field.to_owned(),
            reason,
        }
    }

    fn zone(&self, z: &Spanned<RawZone>) -> Result<ZoneConfig, ConfigError> {
        let raw = &z.value;
        let at = format!("zones[{}]", raw.name);
        let hours = raw.max_age_hours.value;
        if !(hours.is_finite() && hours > 0.0) {
            return Err(self.invalid(
                line(&raw.max_age_hours),
                &format!("{at}.max_age_hours"),
                format!("{hours} must be a positive number of hours"),
            ));
        }
        let max_age = Duration::minutes((hours * MINUTES_PER_HOUR).round() as i64);
        for (chain, empty) in [
            ("price", raw.price.is_empty()),
            ("carbon", raw.carbon.is_empty()),
        ] {
            if empty {
                return Err(self.invalid(
                    line(z),
                    &format!("{at}.{chain}"),
                    "needs at least one source".to_owned(),
                ));
            }
        }
        let mut price = Vec::with_capacity(raw.price.len());
        let mut currency: Option<(Currency, String)> = None;
        for (i, s) in raw.price.iter().enumerate() {
            let field = format!("{at}.price[{}]", i + 1);
            let (source, cur) = self.price_source(&raw.name, &s.value, line(s), &field)?;
            match &currency {
                Some((first, first_field)) if *first != cur => {
                    return Err(self.invalid(
                        line(s),
                        &field,
                        format!(
                            "prices in {cur}, but {first_field} gives {first}: a fallback must \
                             be in the same currency"
                        ),
                    ));
                }
                Some(_) => {}
                None => currency = Some((cur, field)),
            }
            price.push(source);
        }
        let mut carbon: Vec<CarbonSourceConfig> = Vec::with_capacity(raw.carbon.len());
        let mut kind: Option<(bool, String)> = None;
        for (i, s) in raw.carbon.iter().enumerate() {
            let field = format!("{at}.carbon[{}]", i + 1);
            let source = self.carbon_source(&raw.name, &s.value, line(s), &field)?;
            match (&kind, source.marginal()) {
                (Some((first, first_field)), Some(this)) if *first != this => {
                    let name = |m: bool| if m { "marginal" } else { "average" };
                    return Err(self.invalid(
                        line(s),
                        &field,
                        format!(
                            "gives {} intensities, but {first_field} gives {} ones: a fallback \
                             must measure the same thing",
                            name(this),
                            name(*first)
                        ),
                    ));
                }
                (None, Some(this)) => kind = Some((this, field.clone())),
                _ => {}
            }
            carbon.push(source);
        }
        let Some((currency, _)) = currency else {
            return Err(self.invalid(line(z), &at, "no price source".to_owned()));
        };
        Ok(ZoneConfig {
            name: raw.name.clone(),
            max_age,
            currency,
            price,
            carbon,
        })
    }

    fn price_source(
        &self,
        zone: &str,
        raw: &RawPriceSource,
        line: u64,
        at: &str,
    ) -> Result<(PriceSourceConfig, Currency), ConfigError> {
        Ok(match raw {
            RawPriceSource::Csv(c) => {
                let at = format!("{at}.csv");
                let unit = match c.unit.as_str() {
                    "per_mwh" => PriceUnit::PerMwh,
                    "per_kwh" => PriceUnit::PerKwh,
                    "subunit_per_kwh" => PriceUnit::SubunitPerKwh,
                    other => {
                        return Err(self.invalid(
                            line,
                            &format!("{at}.unit"),
                            format!(
                                "`{other}` is not a price unit (per_mwh, per_kwh, subunit_per_kwh)"
                            ),
                        ));
                    }
                };
                if c.basis.is_some() {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.basis"),
                        "is for carbon files; a price file states its `currency`".to_owned(),
                    ));
                }
                let Some(cur) = &c.currency else {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.currency"),
                        "a price file must state its currency (ISO 4217, e.g. EUR)".to_owned(),
                    ));
                };
                let currency = self.currency(cur, line, &format!("{at}.currency"))?;
                let (time_basis, resolution) = self.csv_common(c, line, &at)?;
                let mut import = PriceCsv::new(
                    zone,
                    &c.time_column,
                    &c.value_column,
                    time_basis,
                    unit,
                    currency.clone(),
                    resolution,
                );
                import.estimated_column = c.estimated_column.clone();
                let place = self.csv_place(c, line, &at)?;
                (PriceSourceConfig::Csv { import, place }, currency)
            }
            RawPriceSource::Octopus(o) => {
                let vat = match o.vat.as_str() {
                    "excluded" => Vat::Excluded,
                    "included" => Vat::Included,
                    other => {
                        return Err(self.invalid(
                            line,
                            &format!("{at}.octopus.vat"),
                            format!("`{other}` is not `included` or `excluded`"),
                        ));
                    }
                };
                (
                    PriceSourceConfig::Octopus {
                        base_url: self.base_url(
                            &o.base_url,
                            octopus::DEFAULT_BASE_URL,
                            line,
                            at,
                        )?,
                        product: o.product.clone(),
                        tariff: o.tariff.clone(),
                        vat,
                    },
                    Currency(OCTOPUS_CURRENCY.to_owned()),
                )
            }
            RawPriceSource::Awattar(a) => (
                PriceSourceConfig::Awattar {
                    base_url: self.base_url(&a.base_url, awattar::DEFAULT_BASE_URL, line, at)?,
                },
                Currency(EURO.to_owned()),
            ),
            RawPriceSource::Entsoe(e) => {
                let at = format!("{at}.entsoe");
                if e.eic.trim().is_empty() {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.eic"),
                        "must name the bidding zone's EIC code".to_owned(),
                    ));
                }
                (
                    PriceSourceConfig::Entsoe {
                        base_url: self.base_url(
                            &e.base_url,
                            entsoe::DEFAULT_BASE_URL,
                            line,
                            &at,
                        )?,
                        eic: e.eic.trim().to_owned(),
                        key: self.key(&e.api_key_env, &e.api_key_file, line, &at)?,
                        sequence: e.sequence.unwrap_or(entsoe::MAIN_AUCTION),
                    },
                    Currency(EURO.to_owned()),
                )
            }
            RawPriceSource::Recorded(r) => {
                let at = format!("{at}.recorded");
                let vat = |v: &Option<String>| match v.as_deref() {
                    Some("excluded") => Ok(Vat::Excluded),
                    Some("included") => Ok(Vat::Included),
                    other => Err(self.invalid(
                        line,
                        &format!("{at}.vat"),
                        format!(
                            "an Octopus answer needs `vat: included` or `vat: excluded`, not {}",
                            other.map_or("nothing".to_owned(), |o| format!("`{o}`"))
                        ),
                    )),
                };
                let (format, currency) = match r.provider.as_str() {
                    "octopus" => (
                        RecordedPrice::Octopus { vat: vat(&r.vat)? },
                        OCTOPUS_CURRENCY,
                    ),
                    "awattar" => (RecordedPrice::Awattar, EURO),
                    "entsoe" => (
                        RecordedPrice::Entsoe {
                            sequence: r.sequence.unwrap_or(entsoe::MAIN_AUCTION),
                        },
                        EURO,
                    ),
                    other => {
                        return Err(self.invalid(
                            line,
                            &format!("{at}.provider"),
                            format!("`{other}` is not octopus, awattar or entsoe"),
                        ));
                    }
                };
                let only = |given: bool, field: &str, provider: &str| {
                    if given && r.provider != provider {
                        Err(self.invalid(
                            line,
                            &format!("{at}.{field}"),
                            format!("is for `provider: {provider}` only"),
                        ))
                    } else {
                        Ok(())
                    }
                };
                only(r.vat.is_some(), "vat", "octopus")?;
                only(r.sequence.is_some(), "sequence", "entsoe")?;
                (
                    PriceSourceConfig::Recorded {
                        path: self.dir.join(r.path.trim()),
                        format,
                    },
                    Currency(currency.to_owned()),
                )
            }
            RawPriceSource::Tariff(t) => {
                let tariff = self.tariff(t, line, &format!("{at}.tariff"))?;
                let currency = tariff.currency.clone();
                (
                    PriceSourceConfig::Tariff {
                        tariff: Arc::new(tariff),
                    },
                    currency,
                )
            }
        })
    }

    /// Reads and checks a tariff file now, so that a broken tariff stops the start-up.
    fn tariff(&self, t: &RawTariff, line: u64, at: &str) -> Result<Tariff, ConfigError> {
        let path = self.dir.join(t.path.trim());
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let urdb = match ext.as_deref() {
            Some("json") => {
                let Some(tz) = &t.time_zone else {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.time_zone"),
                        "an OpenEI URDB tariff does not name its time zone: give it (for \
                         example America/Los_Angeles)"
                            .to_owned(),
                    ));
                };
                let time_zone: Tz = tz.trim().parse().map_err(|_| {
                    self.invalid(
                        line,
                        &format!("{at}.time_zone"),
                        format!("`{tz}` is not an IANA time zone (America/Los_Angeles)"),
                    )
                })?;
                if t.tier == Some(0) {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.tier"),
                        "tiers are counted from 1".to_owned(),
                    ));
                }
                let mut holidays = BTreeSet::new();
                for (i, h) in t.holidays.iter().flatten().enumerate() {
                    let d =
                        chrono::NaiveDate::parse_from_str(h.trim(), "%Y-%m-%d").map_err(|_| {
                            self.invalid(
                                line,
                                &format!("{at}.holidays[{i}]"),
                                format!("`{h}` is not a date (YYYY-MM-DD)"),
                            )
                        })?;
                    holidays.insert(d);
                }
                Some(UrdbOptions {
                    time_zone,
                    tier: t.tier,
                    label: t.label.clone(),
                    holidays,
                })
            }
            Some("yaml" | "yml") => {
                let extra = [
                    ("time_zone", t.time_zone.is_some()),
                    ("tier", t.tier.is_some()),
                    ("label", t.label.is_some()),
                    ("holidays", t.holidays.is_some()),
                ];
                if let Some((field, _)) = extra.iter().find(|(_, given)| *given) {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.{field}"),
                        "is for OpenEI URDB (.json) tariffs; a YAML tariff states it in its own \
                         file"
                            .to_owned(),
                    ));
                }
                None
            }
            _ => {
                return Err(self.invalid(
                    line,
                    &format!("{at}.path"),
                    format!(
                        "`{}` is neither an OpenEI URDB tariff (.json) nor a YAML tariff (.yaml)",
                        t.path
                    ),
                ));
            }
        };
        Tariff::load(&path, urdb.as_ref())
            .map_err(|e| self.invalid(line, &format!("{at}.path"), crate::signals::error_chain(&e)))
    }

    fn carbon_source(
        &self,
        zone: &str,
        raw: &RawCarbonSource,
        line: u64,
        at: &str,
    ) -> Result<CarbonSourceConfig, ConfigError> {
        Ok(match raw {
            RawCarbonSource::UkCarbon(u) => {
                let at = format!("{at}.uk_carbon");
                let scope = match u.region {
                    None => Scope::National,
                    Some(r) if UK_REGION_IDS.contains(&r) => Scope::Region(r),
                    Some(r) => {
                        return Err(self.invalid(
                            line,
                            &format!("{at}.region"),
                            format!(
                                "{r} is not a region id of the API ({}..={})",
                                UK_REGION_IDS.start(),
                                UK_REGION_IDS.end()
                            ),
                        ));
                    }
                };
                CarbonSourceConfig::UkCarbon {
                    base_url: self.base_url(&u.base_url, uk_carbon::DEFAULT_BASE_URL, line, &at)?,
                    scope,
                }
            }
            RawCarbonSource::ElectricityMaps(m) => {
                let at = format!("{at}.electricity_maps");
                let endpoint = self.choice(
                    m.endpoint.as_deref(),
                    Endpoint::Forecast,
                    &[
                        ("forecast", Endpoint::Forecast),
                        ("history", Endpoint::History),
                        ("past_range", Endpoint::PastRange),
                    ],
                    line,
                    &format!("{at}.endpoint"),
                )?;
                CarbonSourceConfig::ElectricityMaps {
                    base_url: self.base_url(
                        &m.base_url,
                        electricity_maps::DEFAULT_BASE_URL,
                        line,
                        &at,
                    )?,
                    zone: m.zone.clone(),
                    key: self.key(&m.api_key_env, &m.api_key_file, line, &at)?,
                    endpoint,
                }
            }
            RawCarbonSource::Csv(c) => {
                let at = format!("{at}.csv");
                let unit = match c.unit.as_str() {
                    "g_per_kwh" => CarbonUnit::GramsPerKwh,
                    "lb_per_mwh" => CarbonUnit::PoundsPerMwh,
                    other => {
                        return Err(self.invalid(
                            line,
                            &format!("{at}.unit"),
                            format!("`{other}` is not a carbon unit (g_per_kwh, lb_per_mwh)"),
                        ));
                    }
                };
                if c.currency.is_some() {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.currency"),
                        "is for price files; a carbon file states its `basis`".to_owned(),
                    ));
                }
                let basis = self.choice(
                    c.basis.as_deref(),
                    CarbonBasis::Unspecified,
                    &[
                        ("direct", CarbonBasis::Direct),
                        ("lifecycle", CarbonBasis::Lifecycle),
                        ("unspecified", CarbonBasis::Unspecified),
                    ],
                    line,
                    &format!("{at}.basis"),
                )?;
                let (time_basis, resolution) = self.csv_common(c, line, &at)?;
                let mut import = CarbonCsv::new(
                    zone,
                    &c.time_column,
                    &c.value_column,
                    time_basis,
                    unit,
                    basis,
                    resolution,
                );
                import.estimated_column = c.estimated_column.clone();
                CarbonSourceConfig::Csv {
                    import,
                    place: self.csv_place(c, line, &at)?,
                }
            }
            RawCarbonSource::WattTime(w) => self.watttime(w, line, &format!("{at}.watttime"))?,
            RawCarbonSource::CarbonAwareSdk(c) => {
                self.carbon_aware(c, line, &format!("{at}.carbon_aware_sdk"))?
            }
            RawCarbonSource::EnergyCharts(e) => {
                let at = format!("{at}.energy_charts");
                let country = e.country.trim().to_ascii_lowercase();
                if country.is_empty()
                    || !country
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.country"),
                        format!(
                            "`{}` is not an Energy-Charts country code (de, fr, ch, ...)",
                            e.country
                        ),
                    ));
                }
                CarbonSourceConfig::EnergyCharts {
                    base_url: self.base_url(
                        &e.base_url,
                        super::energy_charts::DEFAULT_BASE_URL,
                        line,
                        &at,
                    )?,
                    country,
                }
            }
            RawCarbonSource::Recorded(r) => {
                let at = format!("{at}.recorded");
                let format = match r.provider.as_str() {
                    "uk_carbon" => RecordedCarbon::UkCarbon,
                    "electricity_maps" => RecordedCarbon::ElectricityMaps,
                    "energy_charts" => RecordedCarbon::EnergyCharts,
                    "watttime" => {
                        let (signal, endpoint) =
                            self.watttime_signal(&r.signal, &r.endpoint, line, &at)?;
                        RecordedCarbon::WattTime { signal, endpoint }
                    }
                    other => {
                        return Err(self.invalid(
                            line,
                            &format!("{at}.provider"),
                            format!(
                                "`{other}` is not uk_carbon, electricity_maps, energy_charts or \
                                 watttime"
                            ),
                        ));
                    }
                };
                if r.provider != "watttime" && (r.signal.is_some() || r.endpoint.is_some()) {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.signal"),
                        "`signal` and `endpoint` are for `provider: watttime` only".to_owned(),
                    ));
                }
                CarbonSourceConfig::Recorded {
                    path: self.dir.join(r.path.trim()),
                    format,
                }
            }
        })
    }

    /// A WattTime signal, which must be chosen, and endpoint (the forecast by default).
    fn watttime_signal(
        &self,
        signal: &Option<String>,
        endpoint: &Option<String>,
        line: u64,
        at: &str,
    ) -> Result<(watttime::Signal, watttime::Endpoint), ConfigError> {
        let signal = match signal.as_deref() {
            Some("marginal") => watttime::Signal::Marginal,
            Some("average") => watttime::Signal::Average,
            other => {
                return Err(self.invalid(
                    line,
                    &format!("{at}.signal"),
                    format!(
                        "must be `marginal` (co2_moer: what one more kWh emits) or `average` \
                         (co2_aoer), not {}: the two differ severalfold and are not defaulted",
                        other.map_or("nothing".to_owned(), |o| format!("`{o}`"))
                    ),
                ));
            }
        };
        let endpoint = self.choice(
            endpoint.as_deref(),
            watttime::Endpoint::Forecast,
            &[
                ("forecast", watttime::Endpoint::Forecast),
                ("historical", watttime::Endpoint::Historical),
            ],
            line,
            &format!("{at}.endpoint"),
        )?;
        Ok((signal, endpoint))
    }

    fn watttime(
        &self,
        w: &RawWattTime,
        line: u64,
        at: &str,
    ) -> Result<CarbonSourceConfig, ConfigError> {
        let (signal, endpoint) = self.watttime_signal(&w.signal, &w.endpoint, line, at)?;
        let place = match (&w.region, w.latitude, w.longitude) {
            (Some(r), None, None) if !r.trim().is_empty() => Place::Region(r.trim().to_owned()),
            (None, Some(latitude), Some(longitude))
                if (-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude) =>
            {
                Place::Location {
                    latitude,
                    longitude,
                }
            }
            _ => {
                return Err(self.invalid(
                    line,
                    &format!("{at}.region"),
                    "give either `region` (CAISO_NORTH) or `latitude` and `longitude` (degrees)"
                        .to_owned(),
                ));
            }
        };
        if endpoint == watttime::Endpoint::Historical && w.horizon_hours.is_some() {
            return Err(self.invalid(
                line,
                &format!("{at}.horizon_hours"),
                "is for the forecast endpoint".to_owned(),
            ));
        }
        Ok(CarbonSourceConfig::WattTime {
            base_url: self.base_url(&w.base_url, watttime::DEFAULT_BASE_URL, line, at)?,
            place,
            signal,
            endpoint,
            horizon_hours: w.horizon_hours,
            username: self.secret(&w.username_env, &w.username_file, line, at, "username")?,
            password: self.secret(&w.password_env, &w.password_file, line, at, "password")?,
        })
    }

    fn carbon_aware(
        &self,
        c: &RawCarbonAware,
        line: u64,
        at: &str,
    ) -> Result<CarbonSourceConfig, ConfigError> {
        let place = match (&c.path, &c.url, &c.base_url) {
            (Some(p), None, None) => CarbonAwarePlace::File(self.dir.join(p.trim())),
            (None, Some(u), None) => {
                CarbonAwarePlace::Url(self.url(u, line, &format!("{at}.url"))?)
            }
            (None, None, Some(b)) => {
                let Some(location) = c.location.clone().filter(|l| !l.trim().is_empty()) else {
                    return Err(self.invalid(
                        line,
                        &format!("{at}.location"),
                        "the Web API needs the SDK `location` to forecast (eastus, DE, ...)"
                            .to_owned(),
                    ));
                };
                CarbonAwarePlace::WebApi {
                    base_url: self.url(b, line, &format!("{at}.base_url"))?,
                    location,
                }
            }
            _ => {
                return Err(self.invalid(
                    line,
                    &format!("{at}.path"),
                    "give exactly one of `path` (a file), `url` (a document) and `base_url` (the \
                     SDK's Web API)"
                        .to_owned(),
                ));
            }
        };
        let basis = self.choice(
            c.basis.as_deref(),
            CarbonBasis::Unspecified,
            &[
                ("marginal", CarbonBasis::Marginal),
                ("direct", CarbonBasis::Direct),
                ("lifecycle", CarbonBasis::Lifecycle),
                ("unspecified", CarbonBasis::Unspecified),
            ],
            line,
            &format!("{at}.basis"),
        )?;
        let zeros = self.choice(
            c.zeros.as_deref(),
            Zeros::AreGaps,
            &[("gaps", Zeros::AreGaps), ("values", Zeros::AreValues)],
            line,
            &format!("{at}.zeros"),
        )?;
        Ok(CarbonSourceConfig::CarbonAware {
            place,
            location: c.location.clone(),
            basis,
            zeros,
        })
    }

    /// A credential read from a variable or a file, never written in the configuration.
    fn secret(
        &self,
        env: &Option<String>,
        file: &Option<String>,
        line: u64,
        at: &str,
        what: &str,
    ) -> Result<KeySource, ConfigError> {
        match (env, file) {
            (Some(v), None) if !v.trim().is_empty() => Ok(KeySource::Env(v.trim().to_owned())),
            (None, Some(f)) if !f.trim().is_empty() => Ok(KeySource::File(self.dir.join(f.trim()))),
            _ => Err(self.invalid(
                line,
                &format!("{at}.{what}_env"),
                format!(
                    "give exactly one of `{what}_env` (a variable name) and `{what}_file` (a \
                     path); the {} itself never goes in the config",
                    what.replace('_', " ")
                ),
            )),
        }
    }

    fn csv_common(&self, c: &RawCsv, line: u64, at: &str) -> Result<(TimeBasis, u32), ConfigError> {
        let tz = c.time_zone.trim();
        let time_basis = if tz.eq_ignore_ascii_case("UTC") || tz == "Z" {
            TimeBasis::Offset(FixedOffset::east_opt(0).ok_or_else(|| {
                self.invalid(line, &format!("{at}.time_zone"), "no UTC offset".to_owned())
            })?)
        } else if let Ok(zone) = tz.parse::<Tz>() {
            TimeBasis::Zone(zone)
        } else if let Ok(off) = tz.parse::<FixedOffset>() {
            TimeBasis::Offset(off)
        } else {
            return Err(self.invalid(
                line,
                &format!("{at}.time_zone"),
                format!("`{tz}` is not UTC, an IANA zone (Europe/Berlin) or an offset (+01:00)"),
            ));
        };
        let r = c.resolution_minutes;
        if r == 0 || !MINUTES_PER_DAY.is_multiple_of(r) {
            return Err(self.invalid(
                line,
                &format!("{at}.resolution_minutes"),
                format!("{r} must divide a day (1..=1440 minutes)"),
            ));
        }
        Ok((time_basis, r))
    }

    fn csv_place(&self, c: &RawCsv, line: u64, at: &str) -> Result<CsvPlace, ConfigError> {
        match (&c.path, &c.url) {
            (Some(p), None) => Ok(CsvPlace::File(self.dir.join(p))),
            (None, Some(u)) => Ok(CsvPlace::Url(self.url(u, line, &format!("{at}.url"))?)),
            _ => Err(self.invalid(
                line,
                &format!("{at}.path"),
                "give exactly one of `path` and `url`".to_owned(),
            )),
        }
    }

    /// The value `options` pairs with the word given for `field`, or `default` where none
    /// is; any other word is an error listing the words allowed.
    fn choice<T: Copy>(
        &self,
        given: Option<&str>,
        default: T,
        options: &[(&str, T)],
        line: u64,
        field: &str,
    ) -> Result<T, ConfigError> {
        let Some(word) = given else {
            return Ok(default);
        };
        if let Some(&(_, value)) = options.iter().find(|(w, _)| *w == word) {
            return Ok(value);
        }
        let words: Vec<&str> = options.iter().map(|(w, _)| *w).collect();
        let allowed = match words.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => words.concat(),
        };
        Err(self.invalid(line, field, format!("`{word}` is not {allowed}")))
    }

    /// An API key, read from a variable or a file like any [`Ctx::secret`].
    fn key(
        &self,
        env: &Option<String>,
        file: &Option<String>,
        line: u64,
        at: &str,
    ) -> Result<KeySource, ConfigError> {
        self.secret(env, file, line, at, "api_key")
    }

    fn base_url(
        &self,
        given: &Option<String>,
        default: &str,
        line: u64,
        at: &str,
    ) -> Result<String, ConfigError> {
        match given {
            None => Ok(default.to_owned()),
            Some(u) => self.url(u, line, &format!("{at}.base_url")),
        }
    }

    fn url(&self, u: &str, line: u64, field: &str) -> Result<String, ConfigError> {
        let u = u.trim();
        if u.starts_with("https://") || u.starts_with("http://") {
            Ok(u.to_owned())
        } else {
            Err(self.invalid(
                line,
                field,
                format!("`{u}` is not an http:// or https:// URL"),
            ))
        }
    }

    fn currency(&self, c: &str, line: u64, field: &str) -> Result<Currency, ConfigError> {
        let c = c.trim();
        if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()) {
            Ok(Currency(c.to_owned()))
        } else {
            Err(self.invalid(
                line,
                field,
                format!("`{c}` is not an ISO 4217 code (three capitals, e.g. EUR)"),
            ))
        }
    }
}
