//! The OpenEI Utility Rate Database (<https://openei.org/wiki/Utility_Rate_Database>) JSON
//! format, as its API (v3 to v8) answers: `{"items": [record, ...]}`, or one record alone.
//!
//! What is read from a record:
//! - `energyratestructure`: one list of tiers per period; a tier's `rate` plus its `adj`
//!   (riders, fuel adjustments) is the price per kWh. A tier's `unit` must be `kWh` (absent
//!   means `kWh`): the other units (`kWh daily`, `kWh/kW`) bound tiers by something other than
//!   energy per slot and cannot be priced slot by slot, so they are refused. A period with
//!   several tiers is priced at the tier the configuration names (`tier`, counted from 1, the
//!   period's last tier if it has fewer); without one, a tiered record is refused, since which
//!   tier a month's energy falls in depends on consumption the planner does not know.
//! - `energyweekdayschedule` and `energyweekendschedule`: 12 × 24 period indices (month ×
//!   local hour), Monday to Friday and Saturday, Sunday (and configured holidays).
//! - `energytoulabels`: the period names, when present (else `period 0`, `period 1`, ... as
//!   the record indexes them).
//! - `startdate`, `enddate`: Unix times the record is in effect between.
//! - demand charges (`flatdemandstructure`, `flatdemandmonths`, `demandratestructure` and its
//!   schedules) and `fixedchargefirstmeter`: reported, not optimised.
//!
//! A URDB record does not name its time zone, so the configuration must; its rates are in US
//! dollars.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::Value;

use super::{
    DemandCharge, DemandKind, FixedCharge, Period, QUARTERS_PER_DAY, TableBuilder, Tariff,
    TariffError, TariffParts, per_kwh_to_per_mwh,
};
use crate::signals::Currency;

/// URDB rates are in US dollars.
pub const CURRENCY: &str = "USD";
const MONTHS: usize = 12;
const HOURS: usize = 24;
const QUARTERS_PER_HOUR: usize = QUARTERS_PER_DAY / HOURS;
/// Monday to Friday use the weekday schedule.
const WEEKDAYS: std::ops::Range<usize> = 0..5;
const DAYS_PER_WEEK: usize = 7;
/// The unit URDB energy rates are in when a tier does not say.
const ENERGY_UNIT: &str = "kWh";
/// The unit of demand charges when the record does not say.
const DEMAND_UNIT: &str = "kW";
/// The fixed charge's unit when the record does not say: URDB's default.
const FIXED_CHARGE_UNIT: &str = "$/month";

/// What the configuration adds to a URDB record.
#[derive(Debug, Clone, PartialEq)]
pub struct UrdbOptions {
    /// The tariff's local time zone (URDB records do not say).
    pub time_zone: Tz,
    /// The tier to plan with, counted from 1; required when a period has several.
    pub tier: Option<usize>,
    /// The record to use when the document holds several (its `label`).
    pub label: Option<String>,
    /// Local dates priced with the weekend schedule.
    pub holidays: BTreeSet<NaiveDate>,
}

impl UrdbOptions {
    /// Options for a single-record, untiered document in `time_zone`.
    pub fn new(time_zone: Tz) -> Self {
        Self {
            time_zone,
            tier: None,
            label: None,
            holidays: BTreeSet::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Record {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    utility: Option<String>,
    #[serde(default)]
    startdate: Option<i64>,
    #[serde(default)]
    enddate: Option<i64>,
    #[serde(default)]
    energyratestructure: Option<Vec<Vec<Tier>>>,
    #[serde(default)]
    energyweekdayschedule: Option<Vec<Vec<i64>>>,
    #[serde(default)]
    energyweekendschedule: Option<Vec<Vec<i64>>>,
    #[serde(default)]
    energytoulabels: Option<Vec<String>>,
    #[serde(default)]
    flatdemandstructure: Option<Vec<Vec<Tier>>>,
    #[serde(default)]
    flatdemandmonths: Option<Vec<i64>>,
    #[serde(default, alias = "flatDemandUnits")]
    flatdemandunit: Option<String>,
    #[serde(default)]
    demandratestructure: Option<Vec<Vec<Tier>>>,
    #[serde(default)]
    demandweekdayschedule: Option<Vec<Vec<i64>>>,
    #[serde(default)]
    demandweekendschedule: Option<Vec<Vec<i64>>>,
    #[serde(default, alias = "demandRateUnits")]
    demandrateunit: Option<String>,
    #[serde(default)]
    demandtoulabels: Option<Vec<String>>,
    #[serde(default)]
    fixedchargefirstmeter: Option<f64>,
    #[serde(default)]
    fixedchargeunits: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Tier {
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    adj: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    unit: Option<String>,
}

struct Ctx<'a> {
    origin: &'a str,
    /// `items[0].` or empty for a bare record.
    prefix: String,
}

impl Ctx<'_> {
    fn invalid(&self, at: &str, reason: String) -> TariffError {
        TariffError::Invalid {
            origin: self.origin.to_owned(),
            at: format!("{}{at}", self.prefix),
            reason,
        }
    }
}

/// Parses a URDB document (`origin` names it in errors: a file name).
pub fn parse(body: &[u8], origin: &str, opts: &UrdbOptions) -> Result<Tariff, TariffError> {
    let parsing = |message: String| TariffError::Parsing {
        origin: origin.to_owned(),
        message,
    };
    let doc: Value = serde_json::from_slice(body).map_err(|e| parsing(e.to_string()))?;
    let (value, prefix) = pick_record(doc, opts.label.as_deref()).map_err(parsing)?;
    let record: Record = serde_json::from_value(value)
        .map_err(|e| parsing(format!("{}: {e}", prefix.trim_end_matches('.'))))?;
    let ctx = Ctx { origin, prefix };
    record_to_tariff(&ctx, record, opts)
}

/// The record to read and its path for messages.
fn pick_record(doc: Value, label: Option<&str>) -> Result<(Value, String), String> {
    let (items, prefix) = match doc {
        Value::Object(mut o) if o.contains_key("items") => match o.remove("items") {
            Some(Value::Array(items)) => (items, "items"),
            _ => return Err("`items` is not a list of rate records".to_owned()),
        },
        Value::Object(o) => return Ok((Value::Object(o), String::new())),
        Value::Array(items) => (items, ""),
        _ => return Err("not a URDB document (expected an object or `items`)".to_owned()),
    };
    let label_of = |v: &Value| v.get("label").and_then(Value::as_str).map(str::to_owned);
    let labels: Vec<String> = items.iter().filter_map(label_of).collect();
    let index = match (label, items.len()) {
        (_, 0) => return Err(format!("`{prefix}` holds no rate record")),
        (None, 1) => 0,
        (None, n) => {
            return Err(format!(
                "`{prefix}` holds {n} rate records ({}): name one with `label`",
                labels.join(", ")
            ));
        }
        (Some(want), _) => items
            .iter()
            .position(|v| label_of(v).as_deref() == Some(want))
            .ok_or_else(|| {
                format!(
                    "no rate record labelled `{want}` (the document has: {})",
                    labels.join(", ")
                )
            })?,
    };
    let at = format!("{prefix}[{index}].");
    Ok((items.into_iter().nth(index).unwrap_or(Value::Null), at))
}

fn record_to_tariff(ctx: &Ctx<'_>, r: Record, opts: &UrdbOptions) -> Result<Tariff, TariffError> {
    let structure = match r.energyratestructure {
        Some(s) if !s.is_empty() => s,
        _ => {
            return Err(ctx.invalid(
                "energyratestructure",
                "the record has no energy rates".to_owned(),
            ));
        }
    };
    let names = period_names(ctx, "energytoulabels", r.energytoulabels, structure.len())?;
    let mut periods = Vec::with_capacity(structure.len());
    for (i, (tiers, name)) in structure.iter().zip(names).enumerate() {
        let at = format!("energyratestructure[{i}]");
        let tier = choose_tier(ctx, &at, tiers, opts.tier)?;
        let rate = tier_rate(ctx, &at, tier, true)?;
        periods.push(Period {
            name,
            price: per_kwh_to_per_mwh(rate),
        });
    }
    let weekday = schedule(
        ctx,
        "energyweekdayschedule",
        r.energyweekdayschedule,
        periods.len(),
    )?;
    let weekend = schedule(
        ctx,
        "energyweekendschedule",
        r.energyweekendschedule,
        periods.len(),
    )?;
    let mut table = TableBuilder::new();
    for month in 0..MONTHS {
        for day in 0..DAYS_PER_WEEK {
            let rows = if WEEKDAYS.contains(&day) {
                &weekday
            } else {
                &weekend
            };
            for (hour, period) in rows[month].iter().enumerate() {
                for q in 0..QUARTERS_PER_HOUR {
                    table.set(month, day, hour * QUARTERS_PER_HOUR + q, *period);
                }
            }
        }
    }
    // Every cell was set above.
    let table = table
        .finish()
        .map_err(|_| ctx.invalid("energyweekdayschedule", "incomplete".to_owned()))?;

    let instant = |field: &str, secs: Option<i64>| -> Result<Option<DateTime<Utc>>, TariffError> {
        secs.map(|s| {
            DateTime::from_timestamp(s, 0)
                .ok_or_else(|| ctx.invalid(field, format!("{s} is not a Unix time")))
        })
        .transpose()
    };
    let effective_from = instant("startdate", r.startdate)?;
    let effective_until = instant("enddate", r.enddate)?;
    if let (Some(f), Some(u)) = (effective_from, effective_until)
        && u <= f
    {
        return Err(ctx.invalid(
            "enddate",
            format!(
                "the record ends ({}) before it starts ({})",
                u.to_rfc3339(),
                f.to_rfc3339()
            ),
        ));
    }

    let mut demand_charges = flat_demand(
        ctx,
        r.flatdemandstructure.as_deref(),
        r.flatdemandmonths.as_deref(),
        r.flatdemandunit.as_deref(),
    )?;
    demand_charges.extend(tou_demand(
        ctx,
        r.demandratestructure,
        r.demandweekdayschedule,
        r.demandweekendschedule,
        r.demandtoulabels,
        r.demandrateunit.as_deref(),
    )?);
    let fixed_charge = match r.fixedchargefirstmeter {
        Some(a) if !a.is_finite() => {
            return Err(ctx.invalid("fixedchargefirstmeter", format!("{a} is not a number")));
        }
        Some(a) if a != 0.0 => Some(FixedCharge {
            amount: a,
            unit: r
                .fixedchargeunits
                .unwrap_or_else(|| FIXED_CHARGE_UNIT.to_owned()),
        }),
        _ => None,
    };

    let label = r.label.unwrap_or_default();
    let name = r
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| label.clone());
    let utility = r.utility.map(|u| format!(", {u}")).unwrap_or_default();
    Ok(Tariff::from_parts(TariffParts {
        name,
        origin: format!("OpenEI URDB {label}{utility}, {}", ctx.origin),
        currency: Currency(CURRENCY.to_owned()),
        time_zone: opts.time_zone,
        periods,
        table,
        holidays: opts.holidays.clone(),
        effective_from,
        effective_until,
        demand_charges,
        fixed_charge,
    }))
}

fn period_names(
    ctx: &Ctx<'_>,
    field: &str,
    labels: Option<Vec<String>>,
    n: usize,
) -> Result<Vec<String>, TariffError> {
    match labels {
        Some(l) if l.len() == n => Ok(l),
        Some(l) => Err(ctx.invalid(field, format!("{} names for {n} periods", l.len()))),
        None => Ok((0..n).map(|i| format!("period {i}")).collect()),
    }
}

fn choose_tier<'t>(
    ctx: &Ctx<'_>,
    at: &str,
    tiers: &'t [Tier],
    chosen: Option<usize>,
) -> Result<&'t Tier, TariffError> {
    let Some(last) = tiers.last() else {
        return Err(ctx.invalid(at, "the period has no tier".to_owned()));
    };
    match chosen {
        Some(t) => Ok(tiers.get(t.saturating_sub(1)).unwrap_or(last)),
        None if tiers.len() == 1 => Ok(last),
        None => {
            let bounds: Vec<String> = tiers
                .iter()
                .map(|t| {
                    t.max
                        .map_or("no limit".to_owned(), |m| format!("up to {m}"))
                })
                .collect();
            Err(ctx.invalid(
                at,
                format!(
                    "the period has {} tiers ({}): set `tier` to say which one to plan with",
                    tiers.len(),
                    bounds.join(", ")
                ),
            ))
        }
    }
}

/// A tier's rate plus adjustment; `energy` checks that the tier is per kWh.
fn tier_rate(ctx: &Ctx<'_>, at: &str, tier: &Tier, energy: bool) -> Result<f64, TariffError> {
    if energy {
        let unit = tier.unit.as_deref().unwrap_or(ENERGY_UNIT);
        if !unit.trim().eq_ignore_ascii_case(ENERGY_UNIT) {
            return Err(ctx.invalid(
                &format!("{at}.unit"),
                format!(
                    "`{unit}` rates are not per kWh of energy, so they cannot be priced slot by \
                     slot (only `kWh` is)"
                ),
            ));
        }
    }
    let Some(rate) = tier.rate else {
        return Err(ctx.invalid(&format!("{at}.rate"), "the tier has no rate".to_owned()));
    };
    let total = rate + tier.adj.unwrap_or(0.0);
    if !total.is_finite() {
        return Err(ctx.invalid(&format!("{at}.rate"), format!("{total} is not a number")));
    }
    Ok(total)
}

/// A 12 × 24 schedule of period indices below `n`.
fn schedule(
    ctx: &Ctx<'_>,
    field: &str,
    rows: Option<Vec<Vec<i64>>>,
    n: usize,
) -> Result<Vec<Vec<u16>>, TariffError> {
    let Some(rows) = rows else {
        return Err(ctx.invalid(field, "missing".to_owned()));
    };
    if rows.len() != MONTHS {
        return Err(ctx.invalid(field, format!("has {} months, not {MONTHS}", rows.len())));
    }
    let mut out = Vec::with_capacity(MONTHS);
    for (m, row) in rows.iter().enumerate() {
        if row.len() != HOURS {
            return Err(ctx.invalid(
                &format!("{field}[{m}]"),
                format!("has {} hours, not {HOURS}", row.len()),
            ));
        }
        let mut hours = Vec::with_capacity(HOURS);
        for (h, p) in row.iter().enumerate() {
            match u16::try_from(*p) {
                Ok(p) if usize::from(p) < n => hours.push(p),
                _ => {
                    return Err(ctx.invalid(
                        &format!("{field}[{m}][{h}]"),
                        format!(
                            "period {p} does not exist (the rates have periods 0 to {})",
                            n - 1
                        ),
                    ));
                }
            }
        }
        out.push(hours);
    }
    Ok(out)
}

fn flat_demand(
    ctx: &Ctx<'_>,
    structure: Option<&[Vec<Tier>]>,
    months: Option<&[i64]>,
    unit: Option<&str>,
) -> Result<Vec<DemandCharge>, TariffError> {
    let Some(structure) = structure.filter(|s| !s.is_empty()) else {
        return Ok(vec![]);
    };
    let months: Vec<i64> = match months {
        Some(m) if m.len() == MONTHS => m.to_vec(),
        Some(m) => {
            return Err(ctx.invalid(
                "flatdemandmonths",
                format!("has {} months, not {MONTHS}", m.len()),
            ));
        }
        None => vec![0; MONTHS],
    };
    let mut out = Vec::new();
    for (p, tiers) in structure.iter().enumerate() {
        let at = format!("flatdemandstructure[{p}]");
        let Some(first) = tiers.first() else {
            return Err(ctx.invalid(&at, "the period has no tier".to_owned()));
        };
        let rate = tier_rate(ctx, &at, first, false)?;
        let in_months: Vec<u32> = (1..=MONTHS as u32)
            .filter(|m| months[*m as usize - 1] == p as i64)
            .collect();
        if in_months.is_empty() || rate == 0.0 {
            continue;
        }
        out.push(DemandCharge {
            name: if structure.len() == 1 {
                "flat".to_owned()
            } else {
                format!("flat period {p}")
            },
            kind: DemandKind::Flat,
            rate,
            unit: unit.unwrap_or(DEMAND_UNIT).to_owned(),
            tiers: tiers.len(),
            months: if in_months.len() == MONTHS {
                vec![]
            } else {
                in_months
            },
        });
    }
    if let Some((m, p)) = months
        .iter()
        .enumerate()
        .find(|(_, p)| usize::try_from(**p).is_ok_and(|p| p >= structure.len()) || **p < 0)
    {
        return Err(ctx.invalid(
            &format!("flatdemandmonths[{m}]"),
            format!("period {p} does not exist"),
        ));
    }
    Ok(out)
}

fn tou_demand(
    ctx: &Ctx<'_>,
    structure: Option<Vec<Vec<Tier>>>,
    weekday: Option<Vec<Vec<i64>>>,
    weekend: Option<Vec<Vec<i64>>>,
    labels: Option<Vec<String>>,
    unit: Option<&str>,
) -> Result<Vec<DemandCharge>, TariffError> {
    let Some(structure) = structure.filter(|s| !s.is_empty()) else {
        return Ok(vec![]);
    };
    let n = structure.len();
    let names = period_names(ctx, "demandtoulabels", labels, n)?;
    let weekday = schedule(ctx, "demandweekdayschedule", weekday, n)?;
    let weekend = schedule(ctx, "demandweekendschedule", weekend, n)?;
    let mut out = Vec::new();
    for (p, (tiers, name)) in structure.iter().zip(names).enumerate() {
        let at = format!("demandratestructure[{p}]");
        let Some(first) = tiers.first() else {
            return Err(ctx.invalid(&at, "the period has no tier".to_owned()));
        };
        let rate = tier_rate(ctx, &at, first, false)?;
        let months: Vec<u32> = (0..MONTHS)
            .filter(|m| {
                weekday[*m]
                    .iter()
                    .chain(&weekend[*m])
                    .any(|x| usize::from(*x) == p)
            })
            .map(|m| m as u32 + 1)
            .collect();
        if months.is_empty() || rate == 0.0 {
            continue;
        }
        out.push(DemandCharge {
            name,
            kind: DemandKind::TimeOfUse,
            rate,
            unit: unit.unwrap_or(DEMAND_UNIT).to_owned(),
            tiers: tiers.len(),
            months: if months.len() == MONTHS {
                vec![]
            } else {
                months
            },
        });
    }
    Ok(out)
}
