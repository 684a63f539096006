//! A short YAML form for a time-of-use tariff written by hand:
//!
//! ```yaml
//! tariff:
//!   name: Example business time-of-use
//!   currency: EUR
//!   time_zone: Europe/Berlin
//!   unit: per_kwh                  # per_kwh, subunit_per_kwh (ct/kWh) or per_mwh
//!   holidays: [2024-12-25]         # local dates priced as Sundays (optional)
//!   effective_from: 2024-01-01     # local dates, until exclusive (optional)
//!   effective_until: 2025-01-01
//!   periods:
//!     - name: peak
//!       rate: 0.32
//!       days: [weekdays]           # mon..sun, weekdays, weekend (default: every day)
//!       hours: ["16:00-21:00"]     # local [start, end), quarter-hours, may wrap midnight
//!       months: [6, 7, 8, 9]       # default: every month
//!     - name: off-peak
//!       rate: 0.18                 # no days, hours or months: every time no other period has
//!   demand_charges:                # reported, not optimised (optional)
//!     - {name: facility, rate_per_kw: 12.5}
//!   fixed_charge: {amount: 30, per: month}   # reported, not optimised (optional)
//! ```
//!
//! Periods with a selector may not overlap (the message names both and the first time they
//! share); at most one period has no selector and takes every time left; without one, every
//! time must be covered (the message names the first time that is not).

use std::collections::BTreeSet;

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    DemandCharge, DemandKind, FixedCharge, Period, QUARTER_MINUTES, QUARTERS_PER_DAY, TableBuilder,
    Tariff, TariffError, TariffParts, WEEKDAY_NAMES, local_midnight, quarter_clock,
};
use crate::signals::Currency;
use crate::units::PricePerMwh;

const MONTHS: u32 = 12;
const DAYS_PER_WEEK: usize = 7;
const KWH_PER_MWH: f64 = 1000.0;
const SUBUNITS_PER_UNIT: f64 = 100.0;
const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tariff: RawTariff,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTariff {
    name: String,
    currency: Spanned<String>,
    time_zone: Spanned<String>,
    unit: Spanned<String>,
    #[serde(default)]
    holidays: Vec<Spanned<String>>,
    #[serde(default)]
    effective_from: Option<Spanned<String>>,
    #[serde(default)]
    effective_until: Option<Spanned<String>>,
    periods: Vec<Spanned<RawPeriod>>,
    #[serde(default)]
    demand_charges: Vec<Spanned<RawDemand>>,
    #[serde(default)]
    fixed_charge: Option<Spanned<RawFixed>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeriod {
    name: String,
    rate: f64,
    #[serde(default)]
    days: Option<Vec<String>>,
    #[serde(default)]
    hours: Option<Vec<String>>,
    #[serde(default)]
    months: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemand {
    name: String,
    rate_per_kw: f64,
    #[serde(default)]
    months: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixed {
    amount: f64,
    per: String,
}

struct Ctx<'a> {
    origin: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, line: u64, field: &str, reason: String) -> TariffError {
        TariffError::Invalid {
            origin: self.origin.to_owned(),
            at: format!("line {line}: `tariff.{field}`"),
            reason,
        }
    }
}

fn line<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

/// Parses a hand-written tariff (`origin` names it in errors: a file name).
pub fn parse(body: &[u8], origin: &str) -> Result<Tariff, TariffError> {
    let text = std::str::from_utf8(body).map_err(|e| TariffError::Parsing {
        origin: origin.to_owned(),
        message: format!("not UTF-8 text: {e}"),
    })?;
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| TariffError::Parsing {
        origin: origin.to_owned(),
        message: e.to_string(),
    })?;
    let ctx = Ctx { origin };
    let t = raw.tariff;

    let currency = t.currency.value.trim();
    if !(currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase())) {
        return Err(ctx.invalid(
            line(&t.currency),
            "currency",
            format!("`{currency}` is not an ISO 4217 code (three capitals, e.g. EUR)"),
        ));
    }
    let time_zone: Tz = t.time_zone.value.trim().parse().map_err(|_| {
        ctx.invalid(
            line(&t.time_zone),
            "time_zone",
            format!(
                "`{}` is not an IANA time zone (Europe/Berlin)",
                t.time_zone.value
            ),
        )
    })?;
    let to_mwh = match t.unit.value.trim() {
        "per_kwh" => KWH_PER_MWH,
        "subunit_per_kwh" => KWH_PER_MWH / SUBUNITS_PER_UNIT,
        "per_mwh" => 1.0,
        other => {
            return Err(ctx.invalid(
                line(&t.unit),
                "unit",
                format!("`{other}` is not per_kwh, subunit_per_kwh or per_mwh"),
            ));
        }
    };
    let mut holidays = BTreeSet::new();
    for (i, h) in t.holidays.iter().enumerate() {
        let d = date(&ctx, h, &format!("holidays[{i}]"))?;
        holidays.insert(d);
    }
    let effective = |s: &Option<Spanned<String>>, field: &str| {
        s.as_ref()
            .map(|s| {
                let d = date(&ctx, s, field)?;
                local_midnight(time_zone, d).ok_or_else(|| {
                    ctx.invalid(
                        line(s),
                        field,
                        format!("{d} has no midnight in {time_zone}"),
                    )
                })
            })
            .transpose()
    };
    let effective_from = effective(&t.effective_from, "effective_from")?;
    let effective_until = effective(&t.effective_until, "effective_until")?;
    if let (Some(f), Some(u), Some(s)) = (effective_from, effective_until, &t.effective_until)
        && u <= f
    {
        return Err(ctx.invalid(
            line(s),
            "effective_until",
            "is not after effective_from".to_owned(),
        ));
    }

    let (periods, table) = periods(&ctx, &t.periods, to_mwh)?;
    let mut demand_charges = Vec::new();
    for (i, d) in t.demand_charges.iter().enumerate() {
        let at = format!("demand_charges[{i}]");
        if !d.value.rate_per_kw.is_finite() {
            return Err(ctx.invalid(line(d), &format!("{at}.rate_per_kw"), "not a number".into()));
        }
        let months = match &d.value.months {
            None => vec![],
            Some(m) => month_list(&ctx, line(d), &format!("{at}.months"), m)?,
        };
        demand_charges.push(DemandCharge {
            name: d.value.name.clone(),
            kind: if months.is_empty() {
                DemandKind::Flat
            } else {
                DemandKind::TimeOfUse
            },
            rate: d.value.rate_per_kw,
            unit: "kW".to_owned(),
            tiers: 1,
            months,
        });
    }
    let fixed_charge = match &t.fixed_charge {
        None => None,
        Some(f) => {
            let per = match f.value.per.trim() {
                p @ ("month" | "day") => p,
                other => {
                    return Err(ctx.invalid(
                        line(f),
                        "fixed_charge.per",
                        format!("`{other}` is not month or day"),
                    ));
                }
            };
            if !f.value.amount.is_finite() {
                return Err(ctx.invalid(line(f), "fixed_charge.amount", "not a number".into()));
            }
            Some(FixedCharge {
                amount: f.value.amount,
                unit: format!("{currency}/{per}"),
            })
        }
    };
    Ok(Tariff::from_parts(TariffParts {
        name: t.name,
        origin: origin.to_owned(),
        currency: Currency(currency.to_owned()),
        time_zone,
        periods,
        table,
        holidays,
        effective_from,
        effective_until,
        demand_charges,
        fixed_charge,
    }))
}

fn date(ctx: &Ctx<'_>, s: &Spanned<String>, field: &str) -> Result<NaiveDate, TariffError> {
    NaiveDate::parse_from_str(s.value.trim(), "%Y-%m-%d").map_err(|_| {
        ctx.invalid(
            line(s),
            field,
            format!("`{}` is not a date (YYYY-MM-DD)", s.value),
        )
    })
}

/// Which cells a period's selectors cover.
struct Selection {
    months: Vec<usize>,
    days: Vec<usize>,
    quarters: Vec<usize>,
}

fn periods(
    ctx: &Ctx<'_>,
    raw: &[Spanned<RawPeriod>],
    to_mwh: f64,
) -> Result<(Vec<Period>, Vec<u16>), TariffError> {
    if raw.is_empty() {
        return Err(TariffError::Invalid {
            origin: ctx.origin.to_owned(),
            at: "`tariff.periods`".to_owned(),
            reason: "the tariff has no period".to_owned(),
        });
    }
    let mut periods: Vec<Period> = Vec::with_capacity(raw.len());
    let mut table = TableBuilder::new();
    let mut rest: Option<(u16, usize)> = None;
    for (i, p) in raw.iter().enumerate() {
        let at = format!("periods[{i}]");
        let l = line(p);
        let name = p.value.name.trim();
        if name.is_empty() {
            return Err(ctx.invalid(l, &format!("{at}.name"), "must not be empty".into()));
        }
        if periods.iter().any(|q| q.name == name) {
            return Err(ctx.invalid(l, &format!("{at}.name"), format!("`{name}` is named twice")));
        }
        if !p.value.rate.is_finite() {
            return Err(ctx.invalid(l, &format!("{at}.rate"), "not a number".into()));
        }
        let index = u16::try_from(i).map_err(|_| ctx.invalid(l, &at, "too many periods".into()))?;
        periods.push(Period {
            name: name.to_owned(),
            price: PricePerMwh(p.value.rate * to_mwh),
        });
        let v = &p.value;
        if v.days.is_none() && v.hours.is_none() && v.months.is_none() {
            if let Some((_, first)) = rest {
                return Err(ctx.invalid(
                    l,
                    &at,
                    format!(
                        "periods[{first}] already takes every time no other period has; give \
                         this one days, hours or months"
                    ),
                ));
            }
            rest = Some((index, i));
            continue;
        }
        let sel = selection(ctx, l, &at, v)?;
        for &m in &sel.months {
            for &d in &sel.days {
                for &q in &sel.quarters {
                    if let Some(other) = table.get(m, d, q) {
                        return Err(ctx.invalid(
                            l,
                            &at,
                            format!(
                                "overlaps `{}` on {} {} at {}",
                                periods[usize::from(other)].name,
                                MONTH_NAMES[m],
                                WEEKDAY_NAMES[d],
                                quarter_clock(q)
                            ),
                        ));
                    }
                    table.set(m, d, q, index);
                }
            }
        }
    }
    if let Some((index, _)) = rest {
        for m in 0..MONTHS as usize {
            for d in 0..DAYS_PER_WEEK {
                for q in 0..QUARTERS_PER_DAY {
                    if table.get(m, d, q).is_none() {
                        table.set(m, d, q, index);
                    }
                }
            }
        }
    }
    let table = table.finish().map_err(|(m, d, q)| TariffError::Invalid {
        origin: ctx.origin.to_owned(),
        at: "`tariff.periods`".to_owned(),
        reason: format!(
            "no period covers {} {} at {}: add it to a period, or add a period without days, \
             hours or months to take every time left",
            MONTH_NAMES[m - 1],
            WEEKDAY_NAMES[d],
            quarter_clock(q)
        ),
    })?;
    Ok((periods, table))
}

fn selection(ctx: &Ctx<'_>, l: u64, at: &str, p: &RawPeriod) -> Result<Selection, TariffError> {
    let months = match &p.months {
        None => (0..MONTHS as usize).collect(),
        Some(m) => month_list(ctx, l, &format!("{at}.months"), m)?
            .into_iter()
            .map(|m| m as usize - 1)
            .collect(),
    };
    let days = match &p.days {
        None => (0..DAYS_PER_WEEK).collect(),
        Some(list) => {
            let mut days = BTreeSet::new();
            for (j, d) in list.iter().enumerate() {
                let d = d.trim().to_ascii_lowercase();
                match d.as_str() {
                    "weekdays" => days.extend(0..5),
                    "weekend" | "weekends" => days.extend(5..7),
                    other => match WEEKDAY_NAMES.iter().position(|n| *n == other) {
                        Some(i) => {
                            days.insert(i);
                        }
                        None => {
                            return Err(ctx.invalid(
                                l,
                                &format!("{at}.days[{j}]"),
                                format!("`{other}` is not mon..sun, weekdays or weekend"),
                            ));
                        }
                    },
                }
            }
            days.into_iter().collect()
        }
    };
    let quarters = match &p.hours {
        None => (0..QUARTERS_PER_DAY).collect(),
        Some(list) => {
            let mut qs = BTreeSet::new();
            for (j, range) in list.iter().enumerate() {
                let field = format!("{at}.hours[{j}]");
                let (from, to) =
                    time_range(range).map_err(|reason| ctx.invalid(l, &field, reason))?;
                if from < to {
                    qs.extend(from..to);
                } else {
                    // Wraps midnight: to the end of the day, then from its start.
                    qs.extend(from..QUARTERS_PER_DAY);
                    qs.extend(0..to);
                }
            }
            qs.into_iter().collect()
        }
    };
    Ok(Selection {
        months,
        days,
        quarters,
    })
}

fn month_list(ctx: &Ctx<'_>, l: u64, field: &str, m: &[u32]) -> Result<Vec<u32>, TariffError> {
    let mut out = BTreeSet::new();
    for (j, month) in m.iter().enumerate() {
        if !(1..=MONTHS).contains(month) {
            return Err(ctx.invalid(
                l,
                &format!("{field}[{j}]"),
                format!("{month} is not a month (1 to 12)"),
            ));
        }
        out.insert(*month);
    }
    Ok(out.into_iter().collect())
}

/// `"HH:MM-HH:MM"` as quarter indices `[from, to)`; `24:00` ends the day; equal ends are
/// refused (a whole day is written `00:00-24:00`).
fn time_range(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}` is not a range of local times like `16:00-21:00`");
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let clock = |t: &str| -> Result<usize, String> {
        let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (usize, usize) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        let minutes = h * 60 + m;
        if m >= 60 || minutes > 24 * 60 {
            return Err(bad());
        }
        if m % QUARTER_MINUTES as usize != 0 {
            return Err(format!(
                "`{t}` is not on a quarter-hour: periods change at :00, :15, :30 or :45"
            ));
        }
        Ok(minutes / QUARTER_MINUTES as usize)
    };
    let (from, to) = (clock(a)?, clock(b)?);
    let to = if to == QUARTERS_PER_DAY {
        to
    } else {
        to % QUARTERS_PER_DAY
    };
    if from == to || from >= QUARTERS_PER_DAY {
        return Err(format!("`{s}` is empty; a whole day is `00:00-24:00`"));
    }
    Ok((from, to))
}
