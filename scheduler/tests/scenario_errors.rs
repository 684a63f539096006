//! Every class of malformed scenario gives an error naming the file, line and field.

mod common;

use common::{HEADER, ScenarioFixture};
use offpeak_scheduler::scenario;

fn load_err(f: &ScenarioFixture) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = f.write(tmp.path());
    match scenario::load(&dir) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` should mention `{p}`");
    }
}

#[test]
fn the_fixture_itself_loads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sc = scenario::load(&ScenarioFixture::default().write(tmp.path())).expect("valid fixture");
    assert_eq!(sc.zones.len(), 2);
    assert_eq!(
        sc.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["A-v100-0", "A-v100-1", "B-v100-0"]
    );
    assert_eq!(sc.n_slots, 48 * 4);
    assert_eq!(sc.jobs.len(), 1);
}

#[test]
fn missing_column_is_named() {
    let mut f = ScenarioFixture::default();
    f.jobs = f
        .jobs
        .replace("price_cap_per_mwh,", "")
        .replace(",,research", ",research");
    assert_has(
        &load_err(&f),
        &["jobs.csv", "missing column `price_cap_per_mwh`"],
    );
    let mut f = ScenarioFixture::default();
    f.signals[1].1 = "time,price_per_mwh\n2024-01-01T00:00:00Z,5\n".into();
    assert_has(
        &load_err(&f),
        &["B.csv", "missing column `carbon_g_per_kwh`"],
    );
}

#[test]
fn bad_time_names_line_and_field() {
    let f = ScenarioFixture::default()
        .with_jobs(&["j1,yesterday,8,v100,v100/resnet50,2.0,2024-01-01T20:00:00Z,true,,research"]);
    assert_has(
        &load_err(&f),
        &["jobs.csv", "line 2", "field `submit`", "yesterday"],
    );
    let mut f = ScenarioFixture::default();
    f.signals[0].1 = f.signals[0]
        .1
        .replace("2024-01-01T05:00:00Z", "2024-01-01 05:00");
    assert_has(&load_err(&f), &["A.csv", "line 7", "field `time`"]);
    let mut f = ScenarioFixture::default();
    f.yaml = f
        .yaml
        .replace("\"2024-01-01T00:00:00Z\"", "\"first of january\"");
    assert_has(&load_err(&f), &["scenario.yaml", "line 2", "field `start`"]);
}

#[test]
fn negative_or_zero_gang_size_is_rejected() {
    let f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,-8,v100,v100/resnet50,2.0,2024-01-01T20:00:00Z,true,,research",
    ]);
    assert_has(
        &load_err(&f),
        &["jobs.csv", "line 2", "field `gpus`", "gang size -8"],
    );
    let f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,0,v100,v100/resnet50,2.0,2024-01-01T20:00:00Z,true,,research",
    ]);
    assert_has(&load_err(&f), &["field `gpus`", "gang size 0"]);
}

#[test]
fn unknown_profile_and_accelerator_are_named() {
    let f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/gpt5,2.0,2024-01-01T20:00:00Z,true,,research",
    ]);
    assert_has(
        &load_err(&f),
        &[
            "line 2",
            "field `profile`",
            "unknown profile `v100/gpt5`",
            "v100/resnet50",
        ],
    );
    let f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,tpu,v100/resnet50,2.0,2024-01-01T20:00:00Z,true,,research",
    ]);
    assert_has(
        &load_err(&f),
        &["field `accelerator`", "unknown accelerator `tpu`"],
    );
}

#[test]
fn deadline_before_submit_is_rejected() {
    let f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,2.0,2024-01-01T20:00:00Z,true,,research",
        "j2,2024-01-01T10:00:00Z,8,v100,v100/resnet50,2.0,2024-01-01T09:00:00Z,true,,research",
    ]);
    assert_has(
        &load_err(&f),
        &[
            "jobs.csv",
            "line 3",
            "field `deadline`",
            "before the job's submit time",
        ],
    );
}

#[test]
fn zone_without_signals_is_rejected() {
    let mut f = ScenarioFixture::default();
    f.yaml = f.yaml.replace("    signals: signals/B.csv\n", "");
    assert_has(
        &load_err(&f),
        &[
            "scenario.yaml",
            "field `zones[1].signals`",
            "zone B has no signals",
        ],
    );
    let mut f = ScenarioFixture::default();
    f.signals[1].1 = "time,price_per_mwh,carbon_g_per_kwh\n".into();
    assert_has(&load_err(&f), &["B.csv", "at least two rows"]);
    let mut f = ScenarioFixture::default();
    f.signals.pop();
    assert_has(&load_err(&f), &["reading", "B.csv"]);
}

#[test]
fn other_bad_values_are_named() {
    let row = |cells: &str| ScenarioFixture::default().with_jobs(&[cells]);
    assert_has(
        &load_err(&row(
            "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,-1,2024-01-01T20:00:00Z,true,,research",
        )),
        &["field `work_hours`"],
    );
    assert_has(
        &load_err(&row(
            "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,NaN,2024-01-01T20:00:00Z,true,,research",
        )),
        &["field `work_hours`", "not a finite number"],
    );
    assert_has(
        &load_err(&row(
            "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,2,2024-01-01T20:00:00Z,maybe,,research",
        )),
        &["field `preemptible`", "true or false"],
    );
    assert_has(
        &load_err(&row(
            "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,2,2024-01-01T20:00:00Z,true,cheap,research",
        )),
        &["field `price_cap_per_mwh`"],
    );
    let f = ScenarioFixture::default().with_jobs(&[
        "j1,2024-01-01T00:10:00Z,8,v100,v100/resnet50,2.0,2024-01-01T20:00:00Z,true,,research",
        "j1,2024-01-01T00:20:00Z,8,v100,v100/resnet50,2.0,2024-01-01T20:00:00Z,true,,research",
    ]);
    assert_has(
        &load_err(&f),
        &["line 3", "field `id`", "already appears on line 2"],
    );
    let mut f = ScenarioFixture::default();
    f.signals[0].1 = f.signals[0].1.replace(
        "2024-01-01T03:00:00Z,50,300",
        "2024-01-01T03:00:00Z,fifty,300",
    );
    assert_has(&load_err(&f), &["A.csv", "line 5", "field `price_per_mwh`"]);
    let mut f = ScenarioFixture::default();
    f.signals[0].1 = f.signals[0]
        .1
        .replace("2024-01-01T03:00:00Z", "2024-01-01T01:00:00Z");
    assert_has(&load_err(&f), &["A.csv", "line 5", "time order"]);
}

#[test]
fn bad_yaml_is_named() {
    let mut f = ScenarioFixture::default();
    f.yaml = f
        .yaml
        .replace("currency: USD", "currency: USD\ncolour: green");
    assert_has(&load_err(&f), &["scenario.yaml", "colour"]);
    let mut f = ScenarioFixture::default();
    f.yaml = f.yaml.replace("slot_minutes: 15", "slot_minutes: 7");
    assert_has(
        &load_err(&f),
        &["scenario.yaml", "field `slot_minutes`", "must divide a day"],
    );
    let mut f = ScenarioFixture::default();
    f.yaml = f.yaml.replace("pue: 1.1", "pue: 0.5");
    assert_has(&load_err(&f), &["field `zones[1].pue`"]);
    let mut f = ScenarioFixture::default();
    f.yaml = f.yaml.replace("throughput: 0.72", "throughput: -1");
    assert_has(
        &load_err(&f),
        &["field `profiles.v100/resnet50.points[0].throughput`"],
    );
    let mut f = ScenarioFixture::default();
    f.yaml = f.yaml.replace(
        "{accelerator: v100, gpus: 8, count: 1}",
        "{accelerator: v100, gpus: -8, count: 1}",
    );
    assert_has(&load_err(&f), &["field `zones[1].nodes[0].gpus`"]);
}

#[test]
fn a_truncated_jobs_row_is_named() {
    let f = ScenarioFixture {
        jobs: format!("{HEADER}\nj1,2024-01-01T00:10:00Z,8\n"),
        ..Default::default()
    };
    assert_has(
        &load_err(&f),
        &["jobs.csv", "line 2", "field `accelerator`", "missing value"],
    );
}
