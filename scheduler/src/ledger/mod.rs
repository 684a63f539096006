//! The energy ledger: append-only records of metered energy per job per interval, each priced
//! at the price and carbon intensity of its zone and interval, with PUE applied.
//!
//! Layout:
//! - [`record`]: [`LedgerRecord`] (one job, one zone, one interval) and [`MarketSlot`] (a
//!   zone's price and intensity over one slot, for "price paid against the market"); amounts
//!   are integer nano-units ([`Fixed`]), so every total is an exact integer sum;
//! - [`store`]: the [`LedgerStore`] interface (atomic [`Batch`] appends, interval queries,
//!   exact totals) and [`LedgerLocation`], which opens either backend;
//! - [`schema`]: what the backends share, written once: the columns, the numbered
//!   migrations, the queries (each rendered in a backend's dialect) and reading rows;
//! - [`sqlite`] and [`postgres`]: the two backends, keeping only their dialect and driver
//!   calls;
//! - here: [`Allocation`] (namespace to team and cost centre), [`from_replay`], [`counterfactual_from_replay`] and [`market_from_scenario`], which
//!   turn a simulator replay into records (actual, and "full power as soon as submitted"), and
//!   [`write_replay`], which stores them.
//!
//! Granularity: **one record per run slot** (a job's run over one slot of the scenario's grid).
//! A slot has one price and one carbon intensity, so each record is priced at exactly what its
//! energy cost then, and a report can split energy at any month or day boundary without
//! guessing how it was spread inside a run.
//!
//! Idempotence: a record's id is derived from what it meters (source, job and slot start;
//! [`record_id`]), and appending uses `INSERT ... ON CONFLICT (id) DO NOTHING`, so replaying
//! the same records changes nothing. Corrections are new records (`corrects` names the one
//! amended, their amounts are the difference), never updates.
//!
//! Backends: [`SqliteLedger`] (a file, the default) and [`PostgresLedger`] (production),
//! chosen by a [`LedgerLocation`] (a path, or a `postgres://` URL). Every append is one
//! transaction, so a process killed mid-write leaves all of a batch or none of it, and
//! writing the batch again adds exactly what is missing.
//!
//! Who pays: each record names its namespace's team and cost centre ([`Allocation`], from a
//! mapping; [`UNASSIGNED`] without one) and the tariff period its price came from ([`SPOT`]
//! for market prices, which is all a scenario's signals are).
//!
//! Live records: [`live`] turns the energy the node agents metered on a live job's pods into
//! records (source [`live::LIVE_SOURCE`], corrections for energy that arrives late, each
//! naming its zone's tariff period with [`tariff_period`]); `placement::ledger_sink` appends
//! them from the planning cycle. A scenario's zones are priced at spot.

pub mod live;
pub mod postgres;
pub mod record;
mod schema;
pub mod sqlite;
pub mod store;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use thiserror::Error;

pub use postgres::PostgresLedger;
pub use record::{Amounts, Fixed, LedgerRecord, MarketSlot, SPOT, UNASSIGNED};
pub use sqlite::SqliteLedger;
pub use store::{Appended, Batch, LedgerLocation, LedgerStore, RecordKind};

use crate::planner::context::slots_needed;
use crate::scenario::{Job, Scenario, Zone};
use crate::signals::tariff::Tariff;
use crate::sim::{Outcome, Replay};
use crate::units::Slot;

/// The database error under a [`LedgerError`].
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("SQLite")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL")]
    Postgres(#[from] ::postgres::Error),
}

/// A ledger operation that failed.
#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("opening ledger {location}")]
    Open {
        /// The file, or the database URL without its password.
        location: String,
        #[source]
        source: BackendError,
    },
    #[error("applying ledger schema migration {version}")]
    Migrate {
        version: i64,
        #[source]
        source: BackendError,
    },
    #[error("appending to the ledger")]
    Append {
        #[source]
        source: BackendError,
    },
    #[error("appending the mark of ledger record {record}: {reason}")]
    AppendMark { record: String, reason: String },
    #[error("querying the ledger")]
    Query {
        #[source]
        source: BackendError,
    },
    #[error("reading ledger record {id}: field `{field}`: {reason}")]
    ReadRecord {
        id: String,
        field: &'static str,
        reason: String,
    },
}

/// Who pays for a namespace's energy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub team: String,
    pub cost_centre: String,
}

/// Namespaces mapped to their team and cost centre; a namespace it does not name is
/// [`UNASSIGNED`] to both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub by_namespace: BTreeMap<String, Owner>,
}

impl Allocation {
    /// The team and cost centre of `namespace`.
    pub fn owner(&self, namespace: &str) -> (&str, &str) {
        self.by_namespace
            .get(namespace)
            .map_or((UNASSIGNED, UNASSIGNED), |o| {
                (o.team.as_str(), o.cost_centre.as_str())
            })
    }
}

/// The tariff period a record starting at `start` names: the tariff's period then (`peak`,
/// `off-peak`, ...), or [`SPOT`] where the zone is priced at a market price (no tariff) or the
/// tariff is not in effect then.
pub fn tariff_period(tariff: Option<&Tariff>, start: DateTime<Utc>) -> String {
    tariff
        .and_then(|t| t.period_name_at(start))
        .unwrap_or(SPOT)
        .to_string()
}

/// The source name of a simulator replay's records.
pub fn replay_source(sc: &Scenario, replay: &Replay) -> String {
    format!("sim/{}/{}", sc.name, replay.policy)
}

/// The deterministic id of the record metering `job` from `start` (RFC 3339 UTC) for `source`:
/// a job runs in at most one place at a time, so these three identify the record.
pub fn record_id(source: &str, job: &str, start: &str) -> String {
    format!("{source}|{job}|{start}")
}

/// The ledger records of a replay: one per slot of every run of every job the replay
/// completed. Priced with [`crate::schedule::price_run`]'s formulas, slot by slot (energy =
/// gpus × watts / 1000 × slot hours × PUE; cost = kWh × price / 1000; carbon = kWh × gCO2 /
/// 1000), so the ledger's totals equal [`crate::schedule::totals`]. Runs of jobs the replay
/// left unscheduled are not recorded, as `totals` does not price them either.
pub fn from_replay(sc: &Scenario, replay: &Replay, alloc: &Allocation) -> Vec<LedgerRecord> {
    let source = replay_source(sc, replay);
    let ctx = RecordContext {
        sc,
        source: &source,
        alloc,
    };
    let mut out = Vec::new();
    for (job, outcome) in sc.jobs.iter().zip(&replay.outcomes) {
        let Outcome::Done(runs) = outcome else {
            continue;
        };
        let profile = &sc.profiles[job.profile];
        for run in runs {
            let watts = profile.points[run.point].draw.0;
            out.extend(
                (run.start..run.end).map(|s| ctx.slot_record(job, &sc.zones[run.zone], s, watts)),
            );
        }
    }
    out
}

/// What every record of one replay shares.
struct RecordContext<'a> {
    sc: &'a Scenario,
    source: &'a str,
    alloc: &'a Allocation,
}

impl RecordContext<'_> {
    /// The record of `job` drawing `watts` per GPU in `zone` over slot `s`.
    fn slot_record(&self, job: &Job, zone: &Zone, s: Slot, watts: f64) -> LedgerRecord {
        let sc = self.sc;
        let slot_h = sc.grid.slot_hours().0;
        let it_kwh = f64::from(job.gpus) * watts / 1000.0 * slot_h;
        // The same expression and order as `price_run`, so the per-slot energy is bitwise the
        // one the simulator's totals use.
        let facility_kwh = f64::from(job.gpus) * watts / 1000.0 * slot_h * zone.pue;
        let (price, carbon) = (zone.price[s as usize], zone.carbon[s as usize]);
        let (team, cost_centre) = self.alloc.owner(&job.namespace);
        LedgerRecord {
            id: record_id(self.source, &job.id, &sc.grid.format(s)),
            source: self.source.to_owned(),
            namespace: job.namespace.clone(),
            team: team.to_owned(),
            cost_centre: cost_centre.to_owned(),
            job: job.id.clone(),
            zone: zone.name.clone(),
            // A scenario's zones are priced by their market signal, not a tariff.
            tariff_period: tariff_period(None, sc.grid.instant(s)),
            start: sc.grid.instant(s),
            end: sc.grid.instant(s + 1),
            gpus: job.gpus,
            price,
            carbon_intensity: carbon,
            pue: zone.pue,
            currency: sc.currency.clone(),
            amounts: Amounts {
                gpu_hours: Fixed::from_f64(f64::from(job.gpus) * slot_h),
                it_kwh: Fixed::from_f64(it_kwh),
                facility_kwh: Fixed::from_f64(facility_kwh),
                cost: Fixed::from_f64(facility_kwh * price.0 / 1000.0),
                carbon_kg: Fixed::from_f64(facility_kwh * carbon.0 / 1000.0),
            },
            corrects: None,
        }
    }
}

/// The source name of a replay's counterfactual records.
pub fn counterfactual_source(sc: &Scenario, replay: &Replay) -> String {
    format!("counterfactual/{}/{}", sc.name, replay.policy)
}

/// The counterfactual of a replay, record by record: every job the replay completed, run
/// instead at full power from the first slot after its submission, in one run, in the zone of
/// its first actual run, priced on the same signals with the same formulas. Capacity is not
/// modelled (like the checker's `asap` reference), and a run that would pass the end of the
/// signals is cut there. The report's saving is this minus the actual records.
pub fn counterfactual_from_replay(
    sc: &Scenario,
    replay: &Replay,
    alloc: &Allocation,
) -> Vec<LedgerRecord> {
    let source = counterfactual_source(sc, replay);
    let ctx = RecordContext {
        sc,
        source: &source,
        alloc,
    };
    let slot_h = sc.grid.slot_hours().0;
    let mut out = Vec::new();
    for (job, outcome) in sc.jobs.iter().zip(&replay.outcomes) {
        let Outcome::Done(runs) = outcome else {
            continue;
        };
        let Some(first) = runs.first() else {
            continue;
        };
        let profile = &sc.profiles[job.profile];
        let point = profile.points[profile.full_power()];
        let n = slots_needed(job.work.0, point.throughput, slot_h);
        let start = sc.earliest_slot(job);
        let end = start
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX))
            .min(sc.n_slots);
        out.extend(
            (start..end).map(|s| ctx.slot_record(job, &sc.zones[first.zone], s, point.draw.0)),
        );
    }
    out
}

/// Every zone's price and carbon intensity over every slot of the scenario.
pub fn market_from_scenario(sc: &Scenario) -> Vec<MarketSlot> {
    let mut out = Vec::new();
    for zone in &sc.zones {
        for s in 0..sc.n_slots {
            let i = s as usize;
            out.push(MarketSlot {
                zone: zone.name.clone(),
                start: sc.grid.instant(s),
                end: sc.grid.instant(s + 1),
                price: zone.price[i],
                carbon_intensity: zone.carbon[i],
                currency: sc.currency.clone(),
            });
        }
    }
    out
}

/// Stores a replay's records, its counterfactual and the scenario's market slots in `store`,
/// in one transaction; returns how many rows were new (none when the replay was stored
/// before).
pub fn write_replay(
    store: &mut dyn LedgerStore,
    sc: &Scenario,
    replay: &Replay,
    alloc: &Allocation,
) -> Result<Appended, LedgerError> {
    let market = market_from_scenario(sc);
    let counterfactual = counterfactual_from_replay(sc, replay, alloc);
    let records = from_replay(sc, replay, alloc);
    store.append_batch(&Batch {
        market: &market,
        counterfactual: &counterfactual,
        records: &records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_its_tariffs_period_or_spot() {
        let tariff = crate::signals::tariff::handwritten::parse(
            br#"tariff:
  name: test
  currency: USD
  time_zone: America/Los_Angeles
  unit: per_kwh
  periods:
    - {name: peak, rate: 0.40, hours: ["16:00-21:00"]}
    - {name: off-peak, rate: 0.20}
"#,
            "test.yaml",
        )
        .expect("tariff");
        // 17:00 in Los Angeles (PDT, UTC-7) is peak; 03:00 is off-peak.
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        assert_eq!(
            tariff_period(Some(&tariff), at("2024-07-02T00:00:00Z")),
            "peak"
        );
        assert_eq!(
            tariff_period(Some(&tariff), at("2024-07-02T10:00:00Z")),
            "off-peak"
        );
        assert_eq!(tariff_period(None, at("2024-07-02T00:00:00Z")), SPOT);
    }
}
