//! `offpeak signals show`: a zone's merged price and carbon series, slot by slot, with where
//! each value came from and whether it is published or estimated, as a table or CSV. Operators
//! use it to see what the planner sees.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::chain::{Chain, Merged, Origin, PriceProvider, Slot, ZoneChain, ZoneSignals};
use super::{DEFAULT_TIMEOUT, HttpFetcher, Quality, SignalUnit, Window, config};

/// `offpeak signals ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct SignalsArgs {
    #[command(subcommand)]
    pub command: SignalsCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SignalsCommand {
    /// Print a zone's merged price and carbon series with provenance and quality.
    Show(ShowArgs),
}

/// `offpeak signals show`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// Configuration file (YAML) with a `signals` section; relative paths in it are taken from
    /// its folder.
    #[arg(long, env = "OFFPEAK_CONFIG")]
    pub config: PathBuf,
    /// Zone to show, as named in the configuration (for example GB or DE-LU).
    #[arg(long)]
    pub zone: String,
    /// Start of the window, RFC 3339 (2023-03-01T00:00:00Z), on the slot grid.
    #[arg(long, value_parser = parse_instant)]
    pub from: DateTime<Utc>,
    /// End of the window (exclusive), RFC 3339, on the slot grid.
    #[arg(long, value_parser = parse_instant)]
    pub to: DateTime<Utc>,
    /// Print CSV (one row per slot) instead of a table; the degraded state goes to stderr.
    #[arg(long)]
    pub csv: bool,
    /// The instant staleness is judged from, RFC 3339; the current time by default. Set it to
    /// see what the planner would have seen then.
    #[arg(long, value_parser = parse_instant)]
    pub now: Option<DateTime<Utc>>,
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 instant ({e})"))
}

/// What `signals show` prints.
#[derive(Debug, Clone)]
pub struct Shown {
    /// The table or CSV, for stdout.
    pub text: String,
    /// Why the zone is degraded, `None` when it is not.
    pub degraded: Option<String>,
}

/// Loads the configuration, fetches the zone through its chains and renders the result. It
/// runs its own single-threaded async runtime, so it must not be called from inside one (the
/// command line calls it from `main`; a service would use [`ZoneChain`] directly).
pub fn show(args: &ShowArgs) -> anyhow::Result<Shown> {
    // The error names the file already.
    let cfg = config::load(&args.config)?;
    let zone = cfg.zone(&args.zone).with_context(|| {
        let names: Vec<&str> = cfg.zones.iter().map(|z| z.name.as_str()).collect();
        format!(
            "no zone `{}` in {} (it has: {})",
            args.zone,
            args.config.display(),
            names.join(", ")
        )
    })?;
    let fetcher = HttpFetcher::new(DEFAULT_TIMEOUT)?;
    let mut chain = ZoneChain::new(zone, &fetcher);
    let now = args.now.unwrap_or_else(Utc::now);
    let window = Window {
        from: args.from,
        to: args.to,
    };
    // One short-lived runtime: the command does one round of requests and exits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let signals = runtime.block_on(chain.fetch(now, window, cfg.slot_minutes))?;
    let periods = tariff_periods(&chain.price, &signals.price);
    let text = if args.csv {
        csv(&signals, periods.as_deref())?
    } else {
        table(&signals, now, periods.as_deref())
    };
    Ok(Shown {
        text,
        degraded: signals.degraded(),
    })
}

const TIME_FORMAT: &str = "%Y-%m-%dT%H:%MZ";

/// The tariff period of each price slot that a tariff of the chain priced (empty for the
/// others); `None` when the chain has no tariff, so that the column is shown only when it
/// means something.
fn tariff_periods(
    chain: &Chain<PriceProvider>,
    price: &Merged<crate::units::PricePerMwh>,
) -> Option<Vec<String>> {
    let sources = chain.sources();
    if !sources.iter().any(|s| s.tariff().is_some()) {
        return None;
    }
    Some(
        price
            .slots
            .iter()
            .map(|slot| {
                let position = match slot.origin {
                    Origin::Source { position, .. }
                    | Origin::StaleSource { position, .. }
                    | Origin::LastGood { position, .. } => position,
                    Origin::Seasonal | Origin::Missing => return String::new(),
                };
                sources
                    .get(position - 1)
                    .and_then(PriceProvider::tariff)
                    .and_then(|t| t.period_name_at(slot.start))
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect(),
    )
}

fn quality(q: Option<Quality>) -> &'static str {
    match q {
        Some(Quality::Published) => "published",
        Some(Quality::Estimated) => "estimated",
        None => "-",
    }
}

fn value<U: SignalUnit>(s: &Slot<U>, precise: bool) -> String {
    match (s.value, precise) {
        (Some(v), true) => v.to_f64().to_string(),
        (Some(v), false) => format!("{:.2}", v.to_f64()),
        (None, _) => String::new(),
    }
}

/// One CSV row per slot; values at full precision. With a tariff in the price chain, a last
/// column names each slot's tariff period.
fn csv(z: &ZoneSignals, periods: Option<&[String]>) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut head = vec![
        "time",
        "price_per_mwh",
        "price_quality",
        "price_source",
        "carbon_g_per_kwh",
        "carbon_quality",
        "carbon_source",
    ];
    if periods.is_some() {
        head.push("price_period");
    }
    w.write_record(&head)?;
    for (i, (p, c)) in z.price.slots.iter().zip(&z.carbon.slots).enumerate() {
        let mut row = vec![
            p.start.format(TIME_FORMAT).to_string(),
            value(p, true),
            quality(p.quality).to_owned(),
            p.origin.to_string(),
            value(c, true),
            quality(c.quality).to_owned(),
            c.origin.to_string(),
        ];
        if let Some(periods) = periods {
            row.push(periods.get(i).cloned().unwrap_or_default());
        }
        w.write_record(&row)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// A header saying what each column is in and where it came from, then one line per slot.
fn table(z: &ZoneSignals, now: DateTime<Utc>, periods: Option<&[String]>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "zone {}: slots of {} min, as of {}",
        z.zone,
        z.price.slot_minutes,
        now.format(TIME_FORMAT)
    );
    let price_unit = match &z.price.basis {
        Some(c) => format!("{c}/MWh"),
        None => "?/MWh".to_owned(),
    };
    let carbon_unit = match &z.carbon.basis {
        Some(b) => format!("gCO2e/kWh, {}", format!("{b:?}").to_lowercase()),
        None => "gCO2e/kWh".to_owned(),
    };
    header(&mut out, &z.price, &price_unit);
    header(&mut out, &z.carbon, &carbon_unit);
    let period_head = if periods.is_some() {
        "  tariff period"
    } else {
        ""
    };
    let head = format!(
        "{:<17}  {price_unit:>10}  {:<9}  {:<24}  {:>9}  {:<9}  {:<24}{period_head}",
        "time (UTC)", "quality", "price source", "carbon", "quality", "carbon source"
    );
    let _ = writeln!(out, "{}", head.trim_end());
    for (i, (p, c)) in z.price.slots.iter().zip(&z.carbon.slots).enumerate() {
        let period = periods
            .and_then(|ps| ps.get(i))
            .map(|name| format!("  {name}"))
            .unwrap_or_default();
        let line = format!(
            "{:<17}  {:>10}  {:<9}  {:<24}  {:>9}  {:<9}  {:<24}{period}",
            p.start.format(TIME_FORMAT),
            value(p, false),
            quality(p.quality),
            p.origin.to_string(),
            value(c, false),
            quality(c.quality),
            c.origin.to_string()
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn header<U: SignalUnit>(out: &mut String, m: &Merged<U>, unit: &str) {
    let state = match &m.degraded {
        Some(reason) => format!("DEGRADED: {reason}"),
        None => "ok".to_owned(),
    };
    let _ = writeln!(out, "{} ({unit}): {state}", m.kind);
    for note in &m.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    for s in m.stretches() {
        let _ = writeln!(
            out,
            "  {} to {}: {}",
            s.from.format(TIME_FORMAT),
            s.to.format(TIME_FORMAT),
            s.origin
        );
    }
}
