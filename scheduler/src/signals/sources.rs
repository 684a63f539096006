//! The providers a configuration names, built into one price and one carbon source type, so
//! that a chain can hold any mix of them.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::awattar::Awattar;
use super::carbon_aware::{self, CarbonAware};
use super::config::{CarbonAwarePlace, CarbonSourceConfig, CsvPlace, KeySource, PriceSourceConfig};
use super::csv_import::{CarbonUnit, CsvLocation, CsvSource, PriceUnit};
use super::electricity_maps::ElectricityMaps;
use super::energy_charts::EnergyCharts;
use super::entsoe::Entsoe;
use super::octopus::OctopusAgile;
use super::recorded::{Recorded, RecordedCarbon, RecordedPrice};
use super::tariff::{Tariff, TariffSource};
use super::uk_carbon::UkCarbonIntensity;
use super::watttime::WattTime;
use super::{ApiKey, HttpFetcher, Publication, Series, SignalError, SignalProvider, Window};
use crate::units::{GramsPerKwh, PricePerMwh};

/// How often a source that could not be built (an unreadable key) is tried again: the key
/// file may be mounted late.
const UNAVAILABLE_RETRY: Publication = Publication::Document;

/// A price source of any kind.
#[derive(Debug, Clone)]
pub enum PriceProvider {
    Csv(CsvSource<PriceUnit>),
    Octopus(OctopusAgile),
    Awattar(Awattar),
    Entsoe(Entsoe),
    Tariff(TariffSource),
    Recorded(Recorded<RecordedPrice>),
    /// A source that could not be built (its API key is unreadable): it fails every fetch.
    Unavailable {
        provider: &'static str,
        reason: String,
    },
}

/// A carbon-intensity source of any kind.
#[derive(Debug, Clone)]
pub enum CarbonProvider {
    UkCarbon(UkCarbonIntensity),
    ElectricityMaps(ElectricityMaps),
    Csv(CsvSource<CarbonUnit>),
    WattTime(WattTime),
    CarbonAware(CarbonAware),
    EnergyCharts(EnergyCharts),
    Recorded(Recorded<RecordedCarbon>),
    /// A source that could not be built (its API key is unreadable): it fails every fetch.
    Unavailable {
        provider: &'static str,
        reason: String,
    },
}

/// `$call` on whichever provider `$self` holds (bound to `$p`); `$unavailable` for a source
/// that could not be built (its name and reason bound to `$provider` and `$reason`).
macro_rules! dispatch {
    ($enum:ident [$($variant:ident),*], $self:expr, $p:ident => $call:expr,
     $provider:ident, $reason:ident => $unavailable:expr) => {
        match $self {
            $($enum::$variant($p) => $call,)*
            $enum::Unavailable {
                provider: $provider,
                reason: $reason,
            } => $unavailable,
        }
    };
}

macro_rules! price {
    ($($rest:tt)*) => {
        dispatch!(PriceProvider [Csv, Octopus, Awattar, Entsoe, Tariff, Recorded], $($rest)*)
    };
}

macro_rules! carbon {
    ($($rest:tt)*) => {
        dispatch!(CarbonProvider [UkCarbon, ElectricityMaps, Csv, WattTime, CarbonAware, EnergyCharts, Recorded], $($rest)*)
    };
}

impl PriceProvider {
    /// The tariff this source evaluates, if it is one (for its period names).
    pub fn tariff(&self) -> Option<&Tariff> {
        match self {
            PriceProvider::Tariff(t) => Some(&t.tariff),
            _ => None,
        }
    }
}

impl SignalProvider for PriceProvider {
    type Unit = PricePerMwh;

    fn name(&self) -> &'static str {
        price!(self, p => p.name(), provider, _r => provider)
    }

    async fn fetch(&self, window: Window) -> Result<Series<PricePerMwh>, SignalError> {
        price!(self, p => p.fetch(window).await, provider, reason =>
            Err(SignalError::ReadingApiKey { provider, reason: reason.clone() }))
    }

    fn publication(&self) -> Publication {
        price!(self, p => p.publication(), _p, _r => UNAVAILABLE_RETRY)
    }

    fn notes(&self) -> Vec<String> {
        price!(self, p => p.notes(), _p, _r => Vec::new())
    }

    fn valid_until(&self, answer: &Series<PricePerMwh>) -> DateTime<Utc> {
        price!(self, p => p.valid_until(answer), _p, _r => answer.known_until)
    }
}

impl SignalProvider for CarbonProvider {
    type Unit = GramsPerKwh;

    fn name(&self) -> &'static str {
        carbon!(self, p => p.name(), provider, _r => provider)
    }

    async fn fetch(&self, window: Window) -> Result<Series<GramsPerKwh>, SignalError> {
        carbon!(self, p => p.fetch(window).await, provider, reason =>
            Err(SignalError::ReadingApiKey { provider, reason: reason.clone() }))
    }

    fn publication(&self) -> Publication {
        carbon!(self, p => p.publication(), _p, _r => UNAVAILABLE_RETRY)
    }

    fn notes(&self) -> Vec<String> {
        carbon!(self, p => p.notes(), _p, _r => Vec::new())
    }

    fn valid_until(&self, answer: &Series<GramsPerKwh>) -> DateTime<Utc> {
        carbon!(self, p => p.valid_until(answer), _p, _r => answer.known_until)
    }
}

/// Why a key could not be read, without the "reading the API key of ..." that the fetch error
/// adds again.
fn unavailable_reason(e: SignalError) -> String {
    match e {
        SignalError::ReadingApiKey { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn read_key(provider: &'static str, key: &KeySource) -> Result<ApiKey, SignalError> {
    match key {
        KeySource::Env(var) => ApiKey::from_env(provider, var),
        KeySource::File(path) => ApiKey::from_file(provider, path),
    }
}

fn csv_location(place: &CsvPlace, fetcher: &HttpFetcher) -> CsvLocation {
    match place {
        CsvPlace::File(p) => CsvLocation::File(p.clone()),
        CsvPlace::Url(u) => CsvLocation::Url {
            fetcher: fetcher.clone(),
            url: u.clone(),
        },
    }
}

impl PriceProvider {
    /// Builds the source; an unreadable key gives [`PriceProvider::Unavailable`].
    pub fn build(cfg: &PriceSourceConfig, zone: &str, fetcher: &HttpFetcher) -> Self {
        match cfg {
            PriceSourceConfig::Csv { import, place } => PriceProvider::Csv(CsvSource {
                import: import.clone(),
                location: csv_location(place, fetcher),
            }),
            PriceSourceConfig::Octopus {
                base_url,
                product,
                tariff,
                vat,
            } => PriceProvider::Octopus(OctopusAgile::new(
                fetcher.clone(),
                base_url,
                product,
                tariff,
                *vat,
            )),
            PriceSourceConfig::Awattar { base_url } => {
                PriceProvider::Awattar(Awattar::new(fetcher.clone(), base_url, zone))
            }
            PriceSourceConfig::Entsoe {
                base_url,
                eic,
                key,
                sequence,
            } => match read_key(super::entsoe::PROVIDER, key) {
                Ok(k) => PriceProvider::Entsoe(
                    Entsoe::new(fetcher.clone(), base_url, k, eic, zone).with_sequence(*sequence),
                ),
                Err(e) => PriceProvider::Unavailable {
                    provider: super::entsoe::PROVIDER,
                    reason: unavailable_reason(e),
                },
            },
            PriceSourceConfig::Tariff { tariff } => PriceProvider::Tariff(TariffSource {
                tariff: Arc::clone(tariff),
            }),
            PriceSourceConfig::Recorded { path, format } => PriceProvider::Recorded(Recorded {
                path: path.clone(),
                format: format.clone(),
                zone: zone.to_owned(),
            }),
        }
    }
}

impl CarbonProvider {
    /// Builds the source; an unreadable key gives [`CarbonProvider::Unavailable`].
    pub fn build(cfg: &CarbonSourceConfig, fetcher: &HttpFetcher) -> Self {
        Self::build_for(cfg, "", fetcher)
    }

    /// Like [`CarbonProvider::build`], naming series that do not name their zone `zone`.
    pub fn build_for(cfg: &CarbonSourceConfig, zone: &str, fetcher: &HttpFetcher) -> Self {
        match cfg {
            CarbonSourceConfig::UkCarbon { base_url, scope } => {
                CarbonProvider::UkCarbon(UkCarbonIntensity::new(fetcher.clone(), base_url, *scope))
            }
            CarbonSourceConfig::ElectricityMaps {
                base_url,
                zone,
                key,
                endpoint,
            } => match read_key(super::electricity_maps::PROVIDER, key) {
                Ok(k) => CarbonProvider::ElectricityMaps(ElectricityMaps::new(
                    fetcher.clone(),
                    base_url,
                    k,
                    zone,
                    *endpoint,
                )),
                Err(e) => CarbonProvider::Unavailable {
                    provider: super::electricity_maps::PROVIDER,
                    reason: unavailable_reason(e),
                },
            },
            CarbonSourceConfig::Csv { import, place } => CarbonProvider::Csv(CsvSource {
                import: import.clone(),
                location: csv_location(place, fetcher),
            }),
            CarbonSourceConfig::WattTime {
                base_url,
                place,
                signal,
                endpoint,
                horizon_hours,
                username,
                password,
            } => {
                let provider = super::watttime::PROVIDER;
                match (read_key(provider, username), read_key(provider, password)) {
                    (Ok(user), Ok(pass)) => {
                        let mut w = WattTime::new(
                            fetcher.clone(),
                            base_url,
                            user,
                            pass,
                            place.clone(),
                            *signal,
                            *endpoint,
                        );
                        if let Some(h) = horizon_hours {
                            w = w.with_horizon_hours(*h);
                        }
                        CarbonProvider::WattTime(w)
                    }
                    (Err(e), _) | (_, Err(e)) => CarbonProvider::Unavailable {
                        provider,
                        reason: unavailable_reason(e),
                    },
                }
            }
            CarbonSourceConfig::CarbonAware {
                place,
                location,
                basis,
                zeros,
            } => CarbonProvider::CarbonAware(CarbonAware {
                location: match place {
                    CarbonAwarePlace::File(p) => carbon_aware::Location::File(p.clone()),
                    CarbonAwarePlace::Url(u) => carbon_aware::Location::Url {
                        fetcher: fetcher.clone(),
                        url: u.clone(),
                    },
                    CarbonAwarePlace::WebApi { base_url, location } => {
                        carbon_aware::Location::WebApi {
                            fetcher: fetcher.clone(),
                            base_url: base_url.clone(),
                            location: location.clone(),
                        }
                    }
                },
                basis: *basis,
                zeros: *zeros,
                sdk_location: location.clone(),
            }),
            CarbonSourceConfig::EnergyCharts { base_url, country } => {
                CarbonProvider::EnergyCharts(EnergyCharts::new(fetcher.clone(), base_url, country))
            }
            CarbonSourceConfig::Recorded { path, format } => CarbonProvider::Recorded(Recorded {
                path: path.clone(),
                format: format.clone(),
                zone: zone.to_owned(),
            }),
        }
    }
}
