//! Octopus Energy's Agile tariff (<https://developer.octopus.energy>): half-hourly retail unit
//! rates for one product and region, published the afternoon before, no key needed.
//!
//! Rates are in pence per kWh, with and without VAT; they become GBP per MWh (× 10). Negative
//! rates (the tariff pays for consumption) are kept. The answer is paginated, newest first; all
//! pages are followed, up to [`MAX_PAGES`]. Every rate is [`Quality::Published`]: Agile rates
//! are fixed once published.

use chrono::Duration;
use serde::Deserialize;

use super::time::parse_instant;
use super::{
    Currency, HttpFetcher, Point, PriceSeries, Quality, Series, SignalError, SignalProvider, Window,
};
use crate::units::PricePerMwh;

/// Name in errors and status.
pub const PROVIDER: &str = "octopus-agile";
/// The public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.octopus.energy";
/// Each Agile rate holds for half an hour.
const RESOLUTION_MINUTES: u32 = 30;
/// Rates asked for per page: the API's maximum, a month of half-hours, so one page is the rule.
const PAGE_SIZE: u32 = 1500;
/// Pages followed before giving up, against a `next` link that never ends.
pub const MAX_PAGES: usize = 10;
/// Pence per pound.
const PENCE_PER_POUND: f64 = 100.0;
const KWH_PER_MWH: f64 = 1000.0;

/// Which of the two rates to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vat {
    /// Without VAT: what a business that reclaims VAT pays.
    Excluded,
    /// With VAT: what a household pays.
    Included,
}

/// A client for one Agile tariff.
#[derive(Debug, Clone)]
pub struct OctopusAgile {
    fetcher: HttpFetcher,
    base_url: String,
    /// The product code, `AGILE-24-10-01`.
    product: String,
    /// The tariff code, product and region: `E-1R-AGILE-24-10-01-C` (C is London).
    tariff: String,
    vat: Vat,
}

impl OctopusAgile {
    pub fn new(
        fetcher: HttpFetcher,
        base_url: impl Into<String>,
        product: impl Into<String>,
        tariff: impl Into<String>,
        vat: Vat,
    ) -> Self {
        Self {
            fetcher,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            product: product.into(),
            tariff: tariff.into(),
            vat,
        }
    }

    /// The first page's URL for `window`.
    pub fn url(&self, window: Window) -> String {
        format!(
            "{}/v1/products/{}/electricity-tariffs/{}/standard-unit-rates/?period_from={}&period_to={}&page_size={PAGE_SIZE}",
            self.base_url,
            self.product,
            self.tariff,
            window.from.format("%Y-%m-%dT%H:%M:%SZ"),
            window.to.format("%Y-%m-%dT%H:%M:%SZ"),
        )
    }
}

impl SignalProvider for OctopusAgile {
    type Unit = PricePerMwh;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    /// Agile rates for the next day are published around 16:00 UK time.
    fn publication(&self) -> super::Publication {
        super::publication::daily(16, 0, chrono_tz::Europe::London)
    }

    async fn fetch(&self, window: Window) -> Result<PriceSeries, SignalError> {
        let mut url = self.url(window);
        let mut rates = Vec::new();
        for _ in 0..MAX_PAGES {
            let body = self.fetcher.get(PROVIDER, &url, &[]).await?;
            let page = parse_page(&body)?;
            rates.extend(page.results);
            match page.next {
                Some(next) => url = next,
                None => return series(&self.tariff, rates, self.vat),
            }
        }
        Err(SignalError::Parsing {
            provider: PROVIDER,
            reason: format!("still more pages after {MAX_PAGES}"),
        })
    }
}

#[derive(Deserialize)]
struct Page {
    next: Option<String>,
    results: Vec<Rate>,
}

#[derive(Deserialize)]
struct Rate {
    value_exc_vat: f64,
    value_inc_vat: f64,
    valid_from: String,
    valid_to: Option<String>,
}

fn parse_page(body: &[u8]) -> Result<Page, SignalError> {
    serde_json::from_slice(body).map_err(|e| SignalError::Parsing {
        provider: PROVIDER,
        reason: e.to_string(),
    })
}

/// Parses one page (the whole answer when it has no `next`) for the tariff `tariff`.
pub fn parse(body: &[u8], tariff: &str, vat: Vat) -> Result<PriceSeries, SignalError> {
    series(tariff, parse_page(body)?.results, vat)
}

fn series(tariff: &str, rates: Vec<Rate>, vat: Vat) -> Result<PriceSeries, SignalError> {
    let bad = |reason: String| SignalError::Parsing {
        provider: PROVIDER,
        reason,
    };
    let mut points = Vec::with_capacity(rates.len());
    for r in rates {
        let start = parse_instant(&r.valid_from).map_err(|e| bad(format!("`valid_from`: {e}")))?;
        // Agile rates always end; an open end would mean this is not an Agile tariff.
        let Some(valid_to) = r.valid_to else {
            return Err(bad(format!("the rate from {} has no end", r.valid_from)));
        };
        let end = parse_instant(&valid_to).map_err(|e| bad(format!("`valid_to`: {e}")))?;
        if end - start != Duration::minutes(i64::from(RESOLUTION_MINUTES)) {
            return Err(bad(format!(
                "{} to {valid_to} is not a half-hour",
                r.valid_from
            )));
        }
        let pence_per_kwh = match vat {
            Vat::Excluded => r.value_exc_vat,
            Vat::Included => r.value_inc_vat,
        };
        points.push(Point {
            start,
            value: PricePerMwh(pence_per_kwh / PENCE_PER_POUND * KWH_PER_MWH),
            quality: Quality::Published,
        });
    }
    Series::new(
        PROVIDER,
        tariff,
        Currency("GBP".to_owned()),
        RESOLUTION_MINUTES,
        points,
    )
}
