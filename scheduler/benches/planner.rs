//! Planner speed: one full re-plan of 10,000 queued jobs on 2,000 nodes over a 48 h horizon of
//! 15-minute slots, and one incremental placement of a new job into that plan.
//!
//! Signals are the example scenario's real DE-LU and GB prices and carbon; jobs follow the
//! shape of the scenario traces (mostly 1–8 GPUs, some large gangs, 60 % preemptible, a third
//! capped). Run with `cargo bench -p offpeak-scheduler --bench planner`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use offpeak_scheduler::planner::context::Context;
use offpeak_scheduler::planner::offpeak::Offpeak;
use offpeak_scheduler::planner::{Pending, Plan, Policy, Snapshot};
use offpeak_scheduler::scenario::{self, Node, Scenario};
use offpeak_scheduler::sim;
use offpeak_scheduler::units::{Hours, PricePerMwh, Slot};

const JOBS: usize = 10_000;
const NODES_PER_POOL: usize = 500; // 2 zones × 2 accelerators × 500 = 2,000 nodes
const HORIZON: Slot = 192; // 48 h of 15-minute slots
const NOW: Slot = 96; // one day of history before now

struct Fixture {
    sc: Scenario,
    nodes: Vec<Node>,
    queue: Vec<Pending>,
}

/// A small deterministic generator (64-bit LCG), so every run plans the same queue.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fixture() -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/de-gb-2023-03");
    let sc = scenario::load(&dir).expect("example scenario");
    let mut nodes = Vec::new();
    for (zi, z) in sc.zones.iter().enumerate() {
        for (ai, a) in sc.accelerators.iter().enumerate() {
            for i in 0..NODES_PER_POOL {
                nodes.push(Node {
                    name: format!("{}-{a}-{i}", z.name),
                    zone: zi,
                    accelerator: ai,
                    gpus: 8,
                });
            }
        }
    }
    let mut rng = Lcg(42);
    let gangs = [1, 1, 1, 1, 2, 2, 4, 8, 8, 16, 64];
    let queue = (0..=JOBS)
        .map(|_| {
            let accelerator = rng.below(sc.accelerators.len() as u64) as usize;
            let acc = &sc.accelerators[accelerator];
            let profiles: Vec<usize> = (0..sc.profiles.len())
                .filter(|&p| sc.profiles[p].name.starts_with(acc.as_str()))
                .collect();
            let work = 0.5 + rng.below(750) as f64 / 100.0;
            let earliest = NOW + rng.below(8) as Slot;
            let flex = [4, 48, 160][rng.below(3) as usize];
            let span = (work * 1.25 * 4.0).ceil() as Slot + flex;
            Pending {
                gpus: gangs[rng.below(gangs.len() as u64) as usize],
                accelerator,
                profile: profiles[rng.below(profiles.len() as u64) as usize],
                earliest,
                deadline: (earliest + span).min(NOW + HORIZON),
                preemptible: rng.below(10) < 6,
                price_cap: (rng.below(3) == 0).then_some(PricePerMwh(150.0)),
                carbon_cap: None,
                carbon_price: None,
                work_left: Hours(work),
                runs_done: 0,
            }
        })
        .collect();
    Fixture { sc, nodes, queue }
}

fn snapshot<'a>(f: &'a Fixture, queue: &'a [Pending]) -> Snapshot<'a> {
    let known = (NOW + f.sc.lookahead_slots) as usize;
    Snapshot {
        now: NOW,
        end: NOW + HORIZON,
        slot_hours: f.sc.grid.slot_hours(),
        checkpoint_overhead: f.sc.checkpoint_overhead,
        carbon_price: f.sc.carbon_price,
        currency: &f.sc.currency,
        lookahead: f.sc.lookahead_slots,
        zones: sim::zone_views(&f.sc, known),
        profiles: &f.sc.profiles,
        nodes: &f.nodes,
        active: &[],
        queue,
    }
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let mut group = c.benchmark_group("planner");
    group.sample_size(10);
    let full = snapshot(&f, &f.queue[..JOBS]);
    group.bench_function("full_replan_10k_jobs_2k_nodes_48h", |b| {
        b.iter(|| black_box(Offpeak.plan(black_box(&full))))
    });

    // the plan of the first 10,000 jobs, then the 10,001st placed into it
    let all = snapshot(&f, &f.queue);
    let mut planned = Context::new(&all);
    let mut plan = Plan::default();
    for qi in 0..JOBS {
        Offpeak.place(&mut planned, &all, qi, &mut plan);
    }
    let placed = plan.starts.len() + plan.intents.len();
    eprintln!(
        "full plan: {placed} of {JOBS} jobs placed, {} started now",
        plan.starts.len()
    );
    group.bench_function("incremental_place_one_job", |b| {
        b.iter_batched(
            || (planned.clone(), Plan::default()),
            |(mut ctx, mut p)| {
                Offpeak.place(&mut ctx, &all, JOBS, &mut p);
                black_box(p)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
