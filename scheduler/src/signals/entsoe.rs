//! ENTSO-E Transparency Platform day-ahead prices (document type A44, <https://transparency.entsoe.eu>),
//! an XML `Publication_MarketDocument` per request.
//!
//! How the document is read:
//! - each `TimeSeries` has `Period`s with a UTC `timeInterval`, a `resolution` (`PT15M`,
//!   `PT60M`, ...) and `Point`s numbered by `position` from 1;
//! - under curve type A03 a point holds until the next point's position (the platform leaves
//!   out repeated values), under A01 (the default) each point holds for its own position only;
//! - a bidding zone may carry several auctions, told apart by
//!   `classificationSequence_AttributeInstanceComponent.position`; the main day-ahead auction
//!   is sequence 1 (a series without the element counts as 1), and only the chosen sequence is
//!   read: mixing auctions would mix different prices for the same hour;
//! - when the chosen sequence changes resolution (the market moved from hours to quarter-hours
//!   on 2025-10-01), coarser prices are repeated on the finest resolution found, which is exact
//!   because a price holds for its whole interval;
//! - an `Acknowledgement_MarketDocument` (no data, bad parameters) becomes an error with its
//!   reason text.
//!
//! The security token goes in the query string, as the API requires; error messages show the
//! endpoint without it. Day-ahead prices are [`Quality::Published`].

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use roxmltree::{Document, Node};

use super::time::parse_instant;
use super::{
    ApiKey, Currency, HttpFetcher, Point, PriceSeries, Quality, Series, SignalError,
    SignalProvider, Window,
};
use crate::units::PricePerMwh;

/// Name in errors and status.
pub const PROVIDER: &str = "entsoe";
/// The public endpoint (`/api` is appended).
pub const DEFAULT_BASE_URL: &str = "https://web-api.tp.entsoe.eu";
/// The main day-ahead auction's classification sequence.
pub const MAIN_AUCTION: u32 = 1;
/// The only price unit the A44 document is read in.
const PER_MWH: &str = "MWH";
/// Curve type whose points hold until the next given position.
const CURVE_VARIABLE_BLOCKS: &str = "A03";

/// A client for one bidding zone.
#[derive(Debug, Clone)]
pub struct Entsoe {
    fetcher: HttpFetcher,
    base_url: String,
    key: ApiKey,
    /// The zone's EIC code (`10Y1001A1001A82H` is DE-LU).
    eic: String,
    /// Zone name given to the series (`DE-LU`).
    zone: String,
    sequence: u32,
}

impl Entsoe {
    /// A client reading the main auction ([`MAIN_AUCTION`]).
    pub fn new(
        fetcher: HttpFetcher,
        base_url: impl Into<String>,
        key: ApiKey,
        eic: impl Into<String>,
        zone: impl Into<String>,
    ) -> Self {
        Self {
            fetcher,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            key,
            eic: eic.into(),
            zone: zone.into(),
            sequence: MAIN_AUCTION,
        }
    }

    /// Reads another auction of the zone instead of the main one.
    pub fn with_sequence(mut self, sequence: u32) -> Self {
        self.sequence = sequence;
        self
    }

    /// The request URL without the token (which [`SignalProvider::fetch`] appends).
    pub fn url(&self, window: Window) -> String {
        const PERIOD_FORMAT: &str = "%Y%m%d%H%M";
        format!(
            "{}/api?documentType=A44&contract_MarketAgreement.type=A01&in_Domain={eic}&out_Domain={eic}&periodStart={}&periodEnd={}",
            self.base_url,
            window.from.format(PERIOD_FORMAT),
            window.to.format(PERIOD_FORMAT),
            eic = self.eic,
        )
    }
}

impl SignalProvider for Entsoe {
    type Unit = PricePerMwh;

    fn name(&self) -> &'static str {
        PROVIDER
    }

    /// The EPEX day-ahead results are out by 13:00 Brussels time and on the platform shortly after.
    fn publication(&self) -> super::Publication {
        super::publication::daily(13, 15, chrono_tz::Europe::Brussels)
    }

    async fn fetch(&self, window: Window) -> Result<PriceSeries, SignalError> {
        let url = format!("{}&securityToken={}", self.url(window), self.key.expose());
        let body = self.fetcher.get(PROVIDER, &url, &[]).await?;
        parse(&body, &self.zone, self.sequence)
    }
}

/// One price over one interval, as read before bringing all onto one resolution.
struct Block {
    start: DateTime<Utc>,
    minutes: u32,
    price: f64,
}

/// Parses an A44 document, keeping the auction `sequence`.
pub fn parse(body: &[u8], zone: &str, sequence: u32) -> Result<PriceSeries, SignalError> {
    let bad = |reason: String| SignalError::Parsing {
        provider: PROVIDER,
        reason,
    };
    let text = std::str::from_utf8(body).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let doc = Document::parse(text).map_err(|e| bad(format!("not XML: {e}")))?;
    let root = doc.root_element();
    match root.tag_name().name() {
        "Publication_MarketDocument" => {}
        "Acknowledgement_MarketDocument" => {
            let reasons: Vec<String> = children(root, "Reason")
                .map(|r| {
                    format!(
                        "{} {}",
                        child_text(r, "code").unwrap_or("?"),
                        child_text(r, "text").unwrap_or("")
                    )
                })
                .collect();
            return Err(bad(format!(
                "the platform answered with an acknowledgement: {}",
                reasons.join("; ")
            )));
        }
        other => return Err(bad(format!("unexpected document `{other}`"))),
    }

    let mut currency: Option<String> = None;
    let mut blocks = Vec::new();
    for ts in children(root, "TimeSeries") {
        let seq = match descendant_text(
            ts,
            "classificationSequence_AttributeInstanceComponent.position",
        ) {
            None => MAIN_AUCTION,
            Some(s) => s
                .parse()
                .map_err(|_| bad(format!("classification sequence `{s}` is not a number")))?,
        };
        if seq != sequence {
            continue;
        }
        let cur = child_text(ts, "currency_Unit.name")
            .ok_or_else(|| bad("a TimeSeries has no currency_Unit.name".to_owned()))?;
        match &currency {
            Some(c) if c != cur => {
                return Err(bad(format!("series in both {c} and {cur}")));
            }
            _ => currency = Some(cur.to_owned()),
        }
        let unit = child_text(ts, "price_Measure_Unit.name").unwrap_or(PER_MWH);
        if unit != PER_MWH {
            return Err(bad(format!("prices per `{unit}`, expected per {PER_MWH}")));
        }
        let fill_forward = child_text(ts, "curveType") == Some(CURVE_VARIABLE_BLOCKS);
        for period in children(ts, "Period") {
            read_period(period, fill_forward, &mut blocks).map_err(&bad)?;
        }
    }
    let Some(currency) = currency else {
        return Err(bad(format!("no TimeSeries of auction sequence {sequence}")));
    };
    let finest = blocks
        .iter()
        .map(|b| b.minutes)
        .min()
        .ok_or_else(|| bad("the series hold no prices".to_owned()))?;
    // Keyed by start so that the same instant given twice is caught below.
    let mut points: BTreeMap<DateTime<Utc>, f64> = BTreeMap::new();
    for b in &blocks {
        if b.minutes % finest != 0 {
            return Err(bad(format!(
                "resolutions of {} and {finest} min do not nest",
                b.minutes
            )));
        }
        for k in 0..b.minutes / finest {
            let start = b.start + Duration::minutes(i64::from(k * finest));
            if points.insert(start, b.price).is_some() {
                return Err(bad(format!("{} is priced twice", start.to_rfc3339())));
            }
        }
    }
    let points = points
        .into_iter()
        .map(|(start, price)| Point {
            start,
            value: PricePerMwh(price),
            quality: Quality::Published,
        })
        .collect();
    Series::new(PROVIDER, zone, Currency(currency), finest, points)
}

fn read_period(period: Node, fill_forward: bool, out: &mut Vec<Block>) -> Result<(), String> {
    let interval = child(period, "timeInterval").ok_or("a Period has no timeInterval")?;
    let instant = |name: &'static str| -> Result<DateTime<Utc>, String> {
        let s = child_text(interval, name).ok_or(format!("a timeInterval has no {name}"))?;
        parse_instant(s)
    };
    let (start, end) = (instant("start")?, instant("end")?);
    let res_text = child_text(period, "resolution").ok_or("a Period has no resolution")?;
    let minutes = resolution_minutes(res_text)?;
    let span = (end - start).num_minutes();
    if span <= 0 || span % i64::from(minutes) != 0 {
        return Err(format!(
            "the period {} to {} is not a whole number of {res_text}",
            start.to_rfc3339(),
            end.to_rfc3339()
        ));
    }
    let positions =
        u32::try_from(span / i64::from(minutes)).map_err(|_| format!("a period of {span} min"))?;

    let mut given = Vec::new();
    for p in children(period, "Point") {
        let pos_text = child_text(p, "position").ok_or("a Point has no position")?;
        let pos: u32 = pos_text
            .parse()
            .map_err(|_| format!("position `{pos_text}` is not a number"))?;
        if pos == 0 || pos > positions {
            return Err(format!(
                "position {pos} outside the period's 1 to {positions}"
            ));
        }
        let price_text = child_text(p, "price.amount").ok_or("a Point has no price.amount")?;
        let price: f64 = price_text
            .parse()
            .map_err(|_| format!("price `{price_text}` is not a number"))?;
        given.push((pos, price));
    }
    given.sort_by_key(|&(pos, _)| pos);
    if let Some(w) = given.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("position {} given twice", w[0].0));
    }
    for (i, &(pos, price)) in given.iter().enumerate() {
        let until = if fill_forward {
            given.get(i + 1).map_or(positions + 1, |&(next, _)| next)
        } else {
            pos + 1
        };
        for q in pos..until {
            out.push(Block {
                start: start + Duration::minutes(i64::from((q - 1) * minutes)),
                minutes,
                price,
            });
        }
    }
    Ok(())
}

/// Minutes of an ISO 8601 duration of the forms `PTnM` and `PTnH`.
fn resolution_minutes(s: &str) -> Result<u32, String> {
    const MINUTES_PER_HOUR: u32 = 60;
    let err = || format!("resolution `{s}` is not PTnM or PTnH");
    let rest = s.strip_prefix("PT").ok_or_else(err)?;
    let (number, factor) = if let Some(n) = rest.strip_suffix('M') {
        (n, 1)
    } else if let Some(n) = rest.strip_suffix('H') {
        (n, MINUTES_PER_HOUR)
    } else {
        return Err(err());
    };
    let n: u32 = number.parse().map_err(|_| err())?;
    match n.checked_mul(factor) {
        Some(m) if m > 0 => Ok(m),
        _ => Err(err()),
    }
}

fn children<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> Option<Node<'a, 'i>> {
    children(node, name).next()
}

fn child_text<'a>(node: Node<'a, '_>, name: &'static str) -> Option<&'a str> {
    child(node, name).and_then(|c| c.text()).map(str::trim)
}

/// The classification sequence sits one level down, inside `MktPSRType` or a wrapper,
/// depending on the document version.
fn descendant_text<'a>(node: Node<'a, '_>, name: &'static str) -> Option<&'a str> {
    node.descendants()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .and_then(|c| c.text())
        .map(str::trim)
}
