//! A provider's answer saved to a file, read as if it had just been fetched: for replaying a
//! recorded day, running `offpeak signals show` offline, or building a scenario from real
//! answers. The file is read at every fetch (an operator may replace it) and parsed by the
//! provider's own parser, so it is checked exactly as a live answer would be. Prices and
//! carbon are served by one [`Recorded`], generic over its [`RecordedFormat`].

use std::path::PathBuf;

use super::octopus::Vat;
use super::{
    CarbonSeries, FetchFailure, PriceSeries, Publication, Series, SignalError, SignalProvider,
    SignalUnit, Window, awattar, electricity_maps, energy_charts, entsoe, octopus, uk_carbon,
    watttime,
};
use crate::units::{GramsPerKwh, PricePerMwh};

/// Which provider recorded a price answer, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedPrice {
    /// An Octopus Agile `standard-unit-rates` page.
    Octopus { vat: Vat },
    /// An aWATTar `/v1/marketdata` answer.
    Awattar,
    /// An ENTSO-E A44 document, one auction's sequence.
    Entsoe { sequence: u32 },
}

/// Which provider recorded a carbon answer, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedCarbon {
    UkCarbon,
    ElectricityMaps,
    /// An Energy-Charts `/co2eq` answer (the zone names its country).
    EnergyCharts,
    WattTime {
        signal: watttime::Signal,
        endpoint: watttime::Endpoint,
    },
}

/// A recorded answer in a file.
#[derive(Debug, Clone)]
pub struct Recorded<F> {
    pub path: PathBuf,
    pub format: F,
    /// The zone name given to series whose answer does not name one.
    pub zone: String,
}

/// How to read one provider's recorded answer: what [`Recorded`] needs of its format to
/// serve it like the live provider, prices and carbon alike.
pub trait RecordedFormat {
    /// What the answer measures.
    type Unit: SignalUnit;
    /// Parses `body` as this provider's answer; `zone` names a series the answer does not.
    fn parse(&self, body: &[u8], zone: &str) -> Result<Series<Self::Unit>, SignalError>;
    /// The provider that gave the answer, named as the live source names itself.
    fn provider(&self) -> &'static str;
}

impl RecordedFormat for RecordedPrice {
    type Unit = PricePerMwh;

    fn parse(&self, body: &[u8], zone: &str) -> Result<PriceSeries, SignalError> {
        match self {
            RecordedPrice::Octopus { vat } => octopus::parse(body, zone, *vat),
            RecordedPrice::Awattar => awattar::parse(body, zone),
            RecordedPrice::Entsoe { sequence } => entsoe::parse(body, zone, *sequence),
        }
    }

    fn provider(&self) -> &'static str {
        match self {
            RecordedPrice::Octopus { .. } => octopus::PROVIDER,
            RecordedPrice::Awattar => awattar::PROVIDER,
            RecordedPrice::Entsoe { .. } => entsoe::PROVIDER,
        }
    }
}

impl RecordedFormat for RecordedCarbon {
    type Unit = GramsPerKwh;

    fn parse(&self, body: &[u8], zone: &str) -> Result<CarbonSeries, SignalError> {
        match self {
            RecordedCarbon::UkCarbon => uk_carbon::parse(body),
            RecordedCarbon::ElectricityMaps => electricity_maps::parse(body),
            RecordedCarbon::EnergyCharts => energy_charts::parse(body, zone),
            RecordedCarbon::WattTime { signal, endpoint } => {
                watttime::parse(body, *signal, *endpoint)
            }
        }
    }

    fn provider(&self) -> &'static str {
        match self {
            RecordedCarbon::UkCarbon => uk_carbon::PROVIDER,
            RecordedCarbon::ElectricityMaps => electricity_maps::PROVIDER,
            RecordedCarbon::EnergyCharts => energy_charts::PROVIDER,
            RecordedCarbon::WattTime { .. } => watttime::PROVIDER,
        }
    }
}

impl<F: RecordedFormat + Sync> SignalProvider for Recorded<F> {
    type Unit = F::Unit;

    fn name(&self) -> &'static str {
        self.format.provider()
    }

    /// Reads the file again at every fetch, so that a replaced recording is served at once.
    async fn fetch(&self, _window: Window) -> Result<Series<F::Unit>, SignalError> {
        let body = std::fs::read(&self.path).map_err(|e| SignalError::Fetching {
            provider: self.name(),
            endpoint: self.path.display().to_string(),
            failure: FetchFailure::Transport(e.to_string()),
        })?;
        self.format.parse(&body, &self.zone)
    }

    fn publication(&self) -> Publication {
        Publication::Document
    }

    fn notes(&self) -> Vec<String> {
        vec![format!("recorded answer {}", self.path.display())]
    }
}
