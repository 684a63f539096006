//! Reading a scenario folder: `scenario.yaml`, the zones' signal CSVs and `jobs.csv`.
//!
//! Parsing is strict (unknown YAML keys are errors) and every semantic check names the file,
//! the line and the field, because a scenario is hand-edited as often as generated.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::error::ScenarioError;
use super::model::{Job, Node, Profile, ProfilePoint, Scenario, Zone};
use super::sources::{self, RawChainRef, ZoneSeries, ZoneSources};
use crate::signals::config::{CarbonSourceSpec, PriceSourceSpec};
use crate::units::{GramsPerKwh, Hours, MoneyPerTonne, PricePerMwh, Slot, SlotGrid, Watts};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    start: Spanned<String>,
    slot_minutes: Spanned<i64>,
    lookahead_hours: Spanned<f64>,
    #[serde(default)]
    checkpoint_overhead_minutes: Option<Spanned<f64>>,
    #[serde(default)]
    carbon_price_per_tonne: Option<Spanned<f64>>,
    #[serde(default = "default_currency")]
    currency: String,
    profiles: BTreeMap<String, RawProfile>,
    zones: Vec<RawZone>,
    jobs: Spanned<String>,
}

fn default_currency() -> String {
    "USD".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    points: Vec<RawPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    power_limit_watts: Spanned<f64>,
    throughput: Spanned<f64>,
    watts: Spanned<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawZone {
    name: Spanned<String>,
    pue: Spanned<f64>,
    #[serde(default)]
    signals: Option<Spanned<String>>,
    /// Opt-in: the zone's price from one signals source (see [`sources`]).
    #[serde(default)]
    price: Option<Spanned<PriceSourceSpec>>,
    /// Opt-in: the zone's carbon from one signals source.
    #[serde(default)]
    carbon: Option<Spanned<CarbonSourceSpec>>,
    /// Opt-in: both series from a signals configuration's chains.
    #[serde(default)]
    signals_config: Option<Spanned<RawChainRef>>,
    #[serde(default)]
    nodes: Vec<RawNodeGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNodeGroup {
    accelerator: Spanned<String>,
    gpus: Spanned<i64>,
    count: Spanned<i64>,
}

/// Reads one file of a scenario (a folder on disk, or files built into the binary). Signals
/// sources (`price`, `carbon`, `signals_config`) read theirs from disk.
pub type Files<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

/// Loads and validates the scenario in folder `dir`.
pub fn load(dir: &Path) -> Result<Scenario, ScenarioError> {
    load_with(dir, &|p: &Path| std::fs::read_to_string(p))
}

/// Loads and validates a scenario whose files `files` reads, named as if under `dir`.
pub fn load_with(dir: &Path, files: Files<'_>) -> Result<Scenario, ScenarioError> {
    let yaml_path = dir.join("scenario.yaml");
    let text = read(files, &yaml_path)?;
    let raw: RawScenario = serde_saphyr::from_str(&text).map_err(|e| ScenarioError::ParseYaml {
        path: yaml_path.clone(),
        message: e.to_string(),
    })?;
    let y = YamlCtx { path: &yaml_path };

    let start =
        parse_time(&raw.start.value).map_err(|reason| y.field(&raw.start, "start", reason))?;
    let slot_minutes = raw.slot_minutes.value;
    if !(1..=1440).contains(&slot_minutes) || 1440 % slot_minutes != 0 {
        return Err(y.field(
            &raw.slot_minutes,
            "slot_minutes",
            format!("{slot_minutes} must divide a day (1..=1440 minutes)"),
        ));
    }
    let grid = SlotGrid {
        start,
        minutes: slot_minutes as u32,
    };
    let lookahead = raw.lookahead_hours.value;
    if !(lookahead.is_finite() && lookahead > 0.0) {
        return Err(y.field(
            &raw.lookahead_hours,
            "lookahead_hours",
            format!("{lookahead} must be a positive number of hours"),
        ));
    }
    let lookahead_slots = (lookahead * 60.0 / slot_minutes as f64).floor() as Slot;
    let overhead_min = match &raw.checkpoint_overhead_minutes {
        Some(v) if !(v.value.is_finite() && v.value >= 0.0) => {
            return Err(y.field(
                v,
                "checkpoint_overhead_minutes",
                format!("{} must be zero or more", v.value),
            ));
        }
        Some(v) => v.value,
        None => 0.0,
    };
    let carbon_price = match &raw.carbon_price_per_tonne {
        Some(v) if !v.value.is_finite() => {
            return Err(y.field(
                v,
                "carbon_price_per_tonne",
                "must be a finite number".into(),
            ));
        }
        Some(v) => v.value,
        None => 0.0,
    };

    let profiles = load_profiles(&y, &raw.profiles)?;
    let (zone_defs, accelerators, nodes) = load_zones(&y, &raw.zones, true)?;

    let mut series = Vec::with_capacity(zone_defs.len());
    let mut n_slots: Option<Slot> = None;
    for (zi, ((name, _, signals_rel), rz)) in zone_defs.iter().zip(&raw.zones).enumerate() {
        let (price, carbon) = sources::zone_series(
            files,
            dir,
            &yaml_path,
            &raw.currency,
            &grid,
            &ZoneSources {
                index: zi,
                name,
                signals: signals_rel.as_deref(),
                price: rz.price.as_ref(),
                carbon: rz.carbon.as_ref(),
                chain: rz.signals_config.as_ref(),
            },
        )?;
        for len in [price.slots(), carbon.slots()].into_iter().flatten() {
            let len = len as Slot;
            n_slots = Some(n_slots.map_or(len, |n| n.min(len)));
        }
        series.push((price, carbon));
    }
    let n_slots = n_slots.unwrap_or(0);
    let mut zones = Vec::with_capacity(zone_defs.len());
    for (zi, ((name, pue, _), (price, carbon))) in zone_defs.into_iter().zip(series).enumerate() {
        let values = |s: ZoneSeries| -> Result<Vec<f64>, ScenarioError> {
            match s {
                ZoneSeries::Values(mut v) => {
                    v.truncate(n_slots as usize);
                    Ok(v)
                }
                ZoneSeries::Tariff(t) => sources::tariff_values(&t, &grid, n_slots, &yaml_path, zi),
            }
        };
        zones.push(Zone {
            name,
            pue,
            price: values(price)?.into_iter().map(PricePerMwh).collect(),
            carbon: values(carbon)?.into_iter().map(GramsPerKwh).collect(),
        });
    }

    let jobs_path = dir.join(&raw.jobs.value);
    let jobs = load_jobs(files, &jobs_path, &profiles, &accelerators)?;

    Ok(Scenario {
        name: raw.name,
        grid,
        lookahead_slots,
        checkpoint_overhead: Hours(overhead_min / 60.0),
        carbon_price: MoneyPerTonne(carbon_price),
        currency: raw.currency,
        profiles,
        accelerators,
        zones,
        nodes,
        jobs,
        n_slots,
    })
}

fn read(files: Files<'_>, path: &Path) -> Result<String, ScenarioError> {
    files(path).map_err(|source| ScenarioError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time ({e})"))
}

/// A YAML file being checked, for errors that name it, the line and the field.
pub(crate) struct YamlCtx<'a> {
    pub(crate) path: &'a Path,
}

impl YamlCtx<'_> {
    pub(crate) fn field<T>(&self, at: &Spanned<T>, field: &str, reason: String) -> ScenarioError {
        ScenarioError::InvalidField {
            path: self.path.to_owned(),
            line: at.referenced.line(),
            field: field.to_owned(),
            reason,
        }
    }
}

pub(crate) fn load_profiles(
    y: &YamlCtx<'_>,
    raw: &BTreeMap<String, RawProfile>,
) -> Result<Vec<Profile>, ScenarioError> {
    let mut out = Vec::with_capacity(raw.len());
    for (name, p) in raw {
        let mut points = Vec::with_capacity(p.points.len());
        for (i, pt) in p.points.iter().enumerate() {
            let field = |f: &str| format!("profiles.{name}.points[{i}].{f}");
            let lim = pt.power_limit_watts.value;
            if !(lim.is_finite() && lim > 0.0 && lim.fract() == 0.0) {
                return Err(y.field(
                    &pt.power_limit_watts,
                    &field("power_limit_watts"),
                    format!("{lim} must be a positive whole number of watts"),
                ));
            }
            let thr = pt.throughput.value;
            if !(thr.is_finite() && thr > 0.0) {
                return Err(y.field(
                    &pt.throughput,
                    &field("throughput"),
                    format!("{thr} must be positive"),
                ));
            }
            let w = pt.watts.value;
            if !(w.is_finite() && w >= 0.0) {
                return Err(y.field(
                    &pt.watts,
                    &field("watts"),
                    format!("{w} must be zero or more"),
                ));
            }
            if points.iter().any(|q: &ProfilePoint| q.power_limit.0 == lim) {
                return Err(y.field(
                    &pt.power_limit_watts,
                    &field("power_limit_watts"),
                    format!("{lim} W appears twice"),
                ));
            }
            points.push(ProfilePoint {
                power_limit: Watts(lim),
                throughput: thr,
                draw: Watts(w),
            });
        }
        if points.is_empty() {
            return Err(ScenarioError::InvalidFile {
                path: y.path.to_owned(),
                reason: format!(
                    "field `profiles.{name}.points`: a profile needs at least one point"
                ),
            });
        }
        points.sort_by(|a, b| a.power_limit.0.total_cmp(&b.power_limit.0));
        out.push(Profile {
            name: name.clone(),
            points,
        });
    }
    Ok(out)
}

/// Each zone's name, PUE and signals file (when it names one).
pub(crate) type ZoneDefs = Vec<(String, f64, Option<String>)>;

/// Checks the zones and their node groups; `signals_required`: every zone must name its
/// signals file (as a scenario's must).
pub(crate) fn load_zones(
    y: &YamlCtx<'_>,
    raw: &[RawZone],
    signals_required: bool,
) -> Result<(ZoneDefs, Vec<String>, Vec<Node>), ScenarioError> {
    let mut defs = Vec::new();
    let mut accelerators: Vec<String> = Vec::new();
    let mut nodes = Vec::new();
    if raw.is_empty() {
        return Err(ScenarioError::InvalidFile {
            path: y.path.to_owned(),
            reason: "field `zones`: at least one zone is needed".into(),
        });
    }
    for (zi, z) in raw.iter().enumerate() {
        let name = z.name.value.trim().to_owned();
        if name.is_empty() {
            return Err(y.field(
                &z.name,
                &format!("zones[{zi}].name"),
                "must not be empty".into(),
            ));
        }
        if defs
            .iter()
            .any(|(n, _, _): &(String, f64, Option<String>)| *n == name)
        {
            return Err(y.field(
                &z.name,
                &format!("zones[{zi}].name"),
                format!("zone {name} is defined twice"),
            ));
        }
        let pue = z.pue.value;
        if !(pue.is_finite() && pue >= 1.0) {
            return Err(y.field(
                &z.pue,
                &format!("zones[{zi}].pue"),
                format!("{pue} must be at least 1.0 (facility energy / IT energy)"),
            ));
        }
        // A zone whose signals sources give both series needs no CSV.
        let from_sources = z.signals_config.is_some() || (z.price.is_some() && z.carbon.is_some());
        let signals = match &z.signals {
            Some(s) if !s.value.trim().is_empty() => Some(s.value.trim().to_owned()),
            _ if !signals_required || from_sources => None,
            _ => {
                return Err(y.field(
                    &z.name,
                    &format!("zones[{zi}].signals"),
                    format!("zone {name} has no signals file"),
                ));
            }
        };
        let mut counters: HashMap<usize, usize> = HashMap::new();
        for (gi, g) in z.nodes.iter().enumerate() {
            let field = |f: &str| format!("zones[{zi}].nodes[{gi}].{f}");
            let acc = g.accelerator.value.trim();
            if acc.is_empty() {
                return Err(y.field(
                    &g.accelerator,
                    &field("accelerator"),
                    "must not be empty".into(),
                ));
            }
            if g.gpus.value < 1 || g.gpus.value > i64::from(u16::MAX) {
                return Err(y.field(
                    &g.gpus,
                    &field("gpus"),
                    format!(
                        "{} must be a positive number of GPUs per node",
                        g.gpus.value
                    ),
                ));
            }
            if g.count.value < 0 || g.count.value > 1_000_000 {
                return Err(y.field(
                    &g.count,
                    &field("count"),
                    format!("{} must be a node count from 0 to 1000000", g.count.value),
                ));
            }
            let ai = match accelerators.iter().position(|a| a == acc) {
                Some(i) => i,
                None => {
                    accelerators.push(acc.to_owned());
                    accelerators.len() - 1
                }
            };
            for _ in 0..g.count.value {
                let i = counters.entry(ai).or_insert(0);
                nodes.push(Node {
                    name: format!("{name}-{acc}-{i}"),
                    zone: zi,
                    accelerator: ai,
                    gpus: g.gpus.value as u32,
                });
                *i += 1;
            }
        }
        defs.push((name, pue, signals));
    }
    Ok((defs, accelerators, nodes))
}

/// A CSV reader over a file's text.
type CsvReader = csv::Reader<std::io::Cursor<Vec<u8>>>;

/// Opens a CSV file and maps the wanted columns to their positions.
fn open_csv(
    files: Files<'_>,
    path: &Path,
    columns: &[&str],
) -> Result<(CsvReader, Vec<usize>), ScenarioError> {
    let text = read(files, path)?;
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::Cursor::new(text.into_bytes()));
    let headers = rdr
        .headers()
        .map_err(|e| ScenarioError::InvalidFile {
            path: path.to_owned(),
            reason: format!("unreadable header: {e}"),
        })?
        .clone();
    let mut idx = Vec::with_capacity(columns.len());
    for c in columns {
        match headers.iter().position(|h| h.trim() == *c) {
            Some(i) => idx.push(i),
            None => {
                return Err(ScenarioError::MissingColumn {
                    path: path.to_owned(),
                    column: (*c).to_owned(),
                    found: headers.iter().collect::<Vec<_>>().join(","),
                });
            }
        }
    }
    Ok((rdr, idx))
}

struct Row<'a> {
    path: &'a Path,
    line: u64,
    record: csv::StringRecord,
}

impl Row<'_> {
    fn err(&self, field: &str, reason: String) -> ScenarioError {
        ScenarioError::InvalidField {
            path: self.path.to_owned(),
            line: self.line,
            field: field.to_owned(),
            reason,
        }
    }

    fn get(&self, i: usize, field: &str) -> Result<&str, ScenarioError> {
        self.record
            .get(i)
            .map(str::trim)
            .ok_or_else(|| self.err(field, "missing value (the row is too short)".into()))
    }

    fn number(&self, i: usize, field: &str) -> Result<f64, ScenarioError> {
        let s = self.get(i, field)?;
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.err(field, format!("`{s}` is not a finite number"))),
        }
    }

    fn time(&self, i: usize, field: &str) -> Result<DateTime<Utc>, ScenarioError> {
        parse_time(self.get(i, field)?).map_err(|r| self.err(field, r))
    }
}

fn rows<'a>(path: &'a Path, rdr: &mut CsvReader) -> Result<Vec<Row<'a>>, ScenarioError> {
    let mut out = Vec::new();
    for rec in rdr.records() {
        let record = rec.map_err(|e| ScenarioError::InvalidRow {
            path: path.to_owned(),
            line: e.position().map_or(0, |p| p.line()),
            reason: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        out.push(Row { path, line, record });
    }
    Ok(out)
}

/// Reads a zone's signal CSV onto the slot grid: each row holds from its time until the next
/// row's, the last row for one more interval of the same length.
pub(super) fn load_signals(
    files: Files<'_>,
    path: &Path,
    grid: &SlotGrid,
) -> Result<(Vec<PricePerMwh>, Vec<GramsPerKwh>), ScenarioError> {
    let rows = read_signal_rows(files, path)?;
    if rows.times[0] > grid.start {
        return Err(ScenarioError::InvalidField {
            path: path.to_owned(),
            line: 2,
            field: "time".into(),
            reason: format!(
                "signals start at {}, after the scenario start {}",
                rows.times[0], grid.start
            ),
        });
    }
    let n_slots = grid.position(rows.end()).floor().max(0.0) as Slot;
    let mut slot_price = Vec::with_capacity(n_slots as usize);
    let mut slot_carbon = Vec::with_capacity(n_slots as usize);
    for s in 0..n_slots {
        let (p, c) = rows.at(grid.instant(s)).unwrap_or_default();
        slot_price.push(p);
        slot_carbon.push(c);
    }
    Ok((slot_price, slot_carbon))
}

/// A zone's signals as its CSV gives them (`time,price_per_mwh,carbon_g_per_kwh`): each row
/// holds from its time until the next row's, the last row for one more interval of the same
/// length. The scenario loader puts them on its grid; the live planner reads them as a feed.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRows {
    /// At least two, strictly increasing.
    times: Vec<DateTime<Utc>>,
    price: Vec<PricePerMwh>,
    carbon: Vec<GramsPerKwh>,
}

impl SignalRows {
    /// Rows from (time, price, carbon) triples; `None` unless there are at least two rows, in
    /// strictly increasing time order, with finite values and no negative intensity.
    pub fn new(rows: &[(DateTime<Utc>, PricePerMwh, GramsPerKwh)]) -> Option<Self> {
        let ordered = rows.windows(2).all(|w| w[0].0 < w[1].0);
        let valid = rows
            .iter()
            .all(|r| r.1.0.is_finite() && r.2.0.is_finite() && r.2.0 >= 0.0);
        (rows.len() >= 2 && ordered && valid).then(|| Self {
            times: rows.iter().map(|r| r.0).collect(),
            price: rows.iter().map(|r| r.1).collect(),
            carbon: rows.iter().map(|r| r.2).collect(),
        })
    }

    /// Hourly rows from `start`: one (price per MWh, gCO2e/kWh) pair per hour.
    pub fn hourly(start: DateTime<Utc>, values: &[(f64, f64)]) -> Option<Self> {
        let rows: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(h, &(p, c))| {
                (
                    start + chrono::Duration::hours(h as i64),
                    PricePerMwh(p),
                    GramsPerKwh(c),
                )
            })
            .collect();
        Self::new(&rows)
    }

    /// The first row's time.
    pub fn start(&self) -> DateTime<Utc> {
        self.times[0]
    }

    /// The instant the last row stops holding.
    pub fn end(&self) -> DateTime<Utc> {
        let n = self.times.len();
        self.times[n - 1] + (self.times[n - 1] - self.times[n - 2])
    }

    /// The price and intensity holding at `t`; `None` before the first row or from the end on.
    pub fn at(&self, t: DateTime<Utc>) -> Option<(PricePerMwh, GramsPerKwh)> {
        if t >= self.end() {
            return None;
        }
        let i = self.times.partition_point(|x| *x <= t).checked_sub(1)?;
        Some((self.price[i], self.carbon[i]))
    }
}

/// Reads a zone's signal CSV, checking every row (the error names the file, line and field).
pub fn read_signal_rows(files: Files<'_>, path: &Path) -> Result<SignalRows, ScenarioError> {
    let (mut rdr, idx) = open_csv(files, path, &["time", "price_per_mwh", "carbon_g_per_kwh"])?;
    let mut times: Vec<DateTime<Utc>> = Vec::new();
    let mut price = Vec::new();
    let mut carbon = Vec::new();
    for row in rows(path, &mut rdr)? {
        let t = row.time(idx[0], "time")?;
        if let Some(prev) = times.last()
            && t <= *prev
        {
            return Err(row.err("time", format!("{t} does not come after the previous row's {prev}: rows must be in time order without duplicates")));
        }
        let p = row.number(idx[1], "price_per_mwh")?;
        let c = row.number(idx[2], "carbon_g_per_kwh")?;
        if c < 0.0 {
            return Err(row.err("carbon_g_per_kwh", format!("{c} is negative")));
        }
        times.push(t);
        price.push(PricePerMwh(p));
        carbon.push(GramsPerKwh(c));
    }
    if times.len() < 2 {
        return Err(ScenarioError::InvalidFile {
            path: path.to_owned(),
            reason: format!("needs at least two rows of signals, has {}", times.len()),
        });
    }
    Ok(SignalRows {
        times,
        price,
        carbon,
    })
}

const JOB_COLUMNS: [&str; 10] = [
    "id",
    "submit",
    "gpus",
    "accelerator",
    "profile",
    "work_hours",
    "deadline",
    "preemptible",
    "price_cap_per_mwh",
    "namespace",
];

fn load_jobs(
    files: Files<'_>,
    path: &Path,
    profiles: &[Profile],
    accelerators: &[String],
) -> Result<Vec<Job>, ScenarioError> {
    let (mut rdr, idx) = open_csv(files, path, &JOB_COLUMNS)?;
    let mut jobs = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for row in rows(path, &mut rdr)? {
        let id = row.get(idx[0], "id")?.to_owned();
        if id.is_empty() {
            return Err(row.err("id", "must not be empty".into()));
        }
        if let Some(first) = seen.insert(id.clone(), row.line) {
            return Err(row.err("id", format!("job {id} already appears on line {first}")));
        }
        let submit = row.time(idx[1], "submit")?;
        let gpus_s = row.get(idx[2], "gpus")?;
        let gpus = match gpus_s.parse::<i64>() {
            Ok(g) if g >= 1 && g <= i64::from(u16::MAX) => g as u32,
            Ok(g) => {
                return Err(row.err(
                    "gpus",
                    format!("gang size {g} must be a positive number of GPUs"),
                ));
            }
            Err(_) => {
                return Err(row.err("gpus", format!("`{gpus_s}` is not a whole number of GPUs")));
            }
        };
        let acc = row.get(idx[3], "accelerator")?;
        let accelerator = accelerators.iter().position(|a| a == acc).ok_or_else(|| {
            row.err(
                "accelerator",
                format!(
                    "unknown accelerator `{acc}`: no zone has nodes of it (known: {})",
                    accelerators.join(", ")
                ),
            )
        })?;
        let prof = row.get(idx[4], "profile")?;
        let profile = profiles
            .iter()
            .position(|p| p.name == prof)
            .ok_or_else(|| {
                row.err(
                    "profile",
                    format!(
                        "unknown profile `{prof}` (scenario.yaml defines: {})",
                        profiles
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
        let work = row.number(idx[5], "work_hours")?;
        if work <= 0.0 {
            return Err(row.err(
                "work_hours",
                format!("{work} must be a positive number of hours"),
            ));
        }
        let deadline = row.time(idx[6], "deadline")?;
        if deadline < submit {
            return Err(row.err(
                "deadline",
                format!("deadline {deadline} is before the job's submit time {submit}"),
            ));
        }
        let preemptible = match row
            .get(idx[7], "preemptible")?
            .to_ascii_lowercase()
            .as_str()
        {
            "true" => true,
            "false" => false,
            other => return Err(row.err("preemptible", format!("`{other}` must be true or false"))),
        };
        let cap_s = row.get(idx[8], "price_cap_per_mwh")?;
        let price_cap = if cap_s.is_empty() {
            None
        } else {
            Some(PricePerMwh(row.number(idx[8], "price_cap_per_mwh")?))
        };
        let namespace = row.get(idx[9], "namespace")?.to_owned();
        jobs.push(Job {
            id,
            submit,
            gpus,
            accelerator,
            profile,
            work: Hours(work),
            deadline,
            preemptible,
            price_cap,
            carbon_cap: None,
            namespace,
        });
    }
    Ok(jobs)
}
