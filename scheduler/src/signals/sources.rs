//! The providers a configuration names, built into one price and one carbon source type, so
//! that a chain can hold any mix of them. A source whose key cannot be read is built as an
//! [`Unavailable`] one, of either unit, which the chain passes over.

use std::marker::PhantomData;
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
use super::{
    ApiKey, HttpFetcher, Publication, Series, SignalError, SignalProvider, SignalUnit, Window,
};
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
    Unavailable(Unavailable<PricePerMwh>),
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
    Unavailable(Unavailable<GramsPerKwh>),
}

/// A source that could not be built (its API key is unreadable): it fails every fetch, so
/// that the chain falls through to the next source, and is tried again every
/// [`UNAVAILABLE_RETRY`].
#[derive(Debug, Clone)]
pub struct Unavailable<U> {
    pub provider: &'static str,
    pub reason: String,
    unit: PhantomData<U>,
}

impl<U> Unavailable<U> {
    /// `provider`, whose key could not be read for `e`.
    fn new(provider: &'static str, e: SignalError) -> Self {
        Unavailable {
            provider,
            reason: unavailable_reason(e),
            unit: PhantomData,
        }
    }
}

impl<U: SignalUnit + Sync> SignalProvider for Unavailable<U> {
    type Unit = U;

    fn name(&self) -> &'static str {
        self.provider
    }

    async fn fetch(&self, _window: Window) -> Result<Series<U>, SignalError> {
        Err(SignalError::ReadingApiKey {
            provider: self.provider,
            reason: self.reason.clone(),
        })
    }

    fn publication(&self) -> Publication {
        UNAVAILABLE_RETRY
    }
}

/// Implements [`SignalProvider`] for a source enum by handing every call to the source it
/// holds.
macro_rules! forward {
    ($enum:ident, $unit:ty, [$($variant:ident),*]) => {
        impl SignalProvider for $enum {
            type Unit = $unit;

            fn name(&self) -> &'static str {
                match self {
                    $($enum::$variant(p) => p.name(),)*
                }
            }

            async fn fetch(&self, window: Window) -> Result<Series<$unit>, SignalError> {
                match self {
                    $($enum::$variant(p) => p.fetch(window).await,)*
                }
            }

            fn publication(&self) -> Publication {
                match self {
                    $($enum::$variant(p) => p.publication(),)*
                }
            }

            fn notes(&self) -> Vec<String> {
                match self {
                    $($enum::$variant(p) => p.notes(),)*
                }
            }

            fn valid_until(&self, answer: &Series<$unit>) -> DateTime<Utc> {
                match self {
                    $($enum::$variant(p) => p.valid_until(answer),)*
                }
            }
        }
    };
}

forward!(
    PriceProvider,
    PricePerMwh,
    [Csv, Octopus, Awattar, Entsoe, Tariff, Recorded, Unavailable]
);
forward!(
    CarbonProvider,
    GramsPerKwh,
    [
        UkCarbon,
        ElectricityMaps,
        Csv,
        WattTime,
        CarbonAware,
        EnergyCharts,
        Recorded,
        Unavailable
    ]
);

impl PriceProvider {
    /// The tariff this source evaluates, if it is one (for its period names).
    pub fn tariff(&self) -> Option<&Tariff> {
        match self {
            PriceProvider::Tariff(t) => Some(&t.tariff),
            _ => None,
        }
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
                Err(e) => PriceProvider::Unavailable(Unavailable::new(super::entsoe::PROVIDER, e)),
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
                Err(e) => CarbonProvider::Unavailable(Unavailable::new(
                    super::electricity_maps::PROVIDER,
                    e,
                )),
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
                    (Err(e), _) | (_, Err(e)) => {
                        CarbonProvider::Unavailable(Unavailable::new(provider, e))
                    }
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
