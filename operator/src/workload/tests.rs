use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::crd::{Checkpoint, TrainingJobSpec};

pub(crate) fn job(workers: u32, gpus: u32) -> TrainingJob {
    let mut spec = TrainingJobSpec::new("ghcr.io/acme/train:1", workers, gpus, 4.0);
    spec.team = Some("nlp".into());
    let mut job = TrainingJob::new("bert", spec);
    job.metadata.namespace = Some("ml".into());
    job.metadata.uid = Some("uid-1".into());
    job.metadata.creation_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    job
}

fn plan() -> JobPlan {
    JobPlan {
        key: "ml/bert".into(),
        uid: "uid-1".into(),
        zone: "DE-LU".into(),
        power_limit_watts: 250,
        revision: 7,
        ..Default::default()
    }
}

fn node(name: &str, gpus: u32) -> NodeAssignment {
    NodeAssignment {
        node: name.into(),
        gpus,
    }
}

fn env_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.spec.as_ref().expect("spec").containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn ranks_fill_nodes_in_plan_order() {
    let nodes = [node("a", 8), node("b", 4)];
    assert_eq!(assign_nodes(&nodes, 3, 4).expect("fits"), ["a", "a", "b"]);
    assert_eq!(assign_nodes(&nodes, 1, 8).expect("fits"), ["a"]);
    let err = assign_nodes(&nodes, 2, 8).expect_err("b has 4 only");
    assert_eq!(err.offered, 1);
    assert!(assign_nodes(&[node("", 8)], 1, 8).is_err(), "unnamed node");
    assert!(assign_nodes(&[], 1, 1).is_err());
}

#[test]
fn worker_pod_is_gated_pinned_and_has_the_launcher_environment() {
    let pod = worker_pod(
        &job(2, 4),
        &plan(),
        1,
        "gpu-node-7",
        &WorkloadSettings::default(),
    );
    assert_eq!(pod.metadata.name.as_deref(), Some("bert-worker-1"));
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(
        spec.scheduling_gates.as_ref().expect("gates")[0].name,
        GANG_GATE
    );
    assert!(spec.node_name.is_none(), "nodeName cannot go with a gate");
    let term = &spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("required affinity")
        .node_selector_terms[0];
    let field = &term.match_fields.as_ref().expect("fields")[0];
    assert_eq!(field.key, "metadata.name");
    assert_eq!(
        field.values.as_deref(),
        Some(&["gpu-node-7".to_string()][..])
    );
    assert_eq!(spec.hostname.as_deref(), Some("bert-worker-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("bert"));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));

    let env = env_of(&pod);
    for name in crate::LAUNCHER_ENV {
        assert!(env.contains_key(name), "{name} missing");
    }
    assert_eq!(
        env["MASTER_ADDR"],
        "bert-worker-0.bert.ml.svc.cluster.local"
    );
    assert_eq!(env["MASTER_PORT"], "29500");
    assert_eq!(env["WORLD_SIZE"], "2");
    assert_eq!(env["RANK"], "1");
    assert_eq!(env["NODE_RANK"], "1");
    assert_eq!(env["NPROC_PER_NODE"], "4");
    assert_eq!(env[ENV_POWER_LIMIT], "250");

    let annotations = pod.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(annotations[ANNOTATION_POWER_LIMIT], "250");
    assert_eq!(annotations[ANNOTATION_ZONE], "DE-LU");
    let labels = pod.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels[LABEL_RANK], "1");
    assert_eq!(labels[LABEL_JOB_UID], "uid-1");
    assert_eq!(labels[crate::crd::LABEL_TEAM], "nlp");
    let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("TrainingJob", Some(true))
    );

    let limits = spec.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    assert_eq!(limits["nvidia.com/gpu"], Quantity("4".into()));
    assert!(
        spec.containers[0].lifecycle.is_none(),
        "SIGTERM needs no hook"
    );
}

#[test]
fn checkpoint_signal_other_than_sigterm_gets_a_pre_stop_hook() {
    let mut j = job(1, 1);
    j.spec.preemptible = true;
    j.spec.checkpoint = Some(Checkpoint {
        signal: CheckpointSignal::SIGUSR1,
        grace_period_seconds: 600,
    });
    let pod = worker_pod(&j, &plan(), 0, "n", &WorkloadSettings::default());
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.termination_grace_period_seconds, Some(600));
    let command = spec.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("preStop exec");
    assert!(command[2].starts_with("kill -s USR1 1;"), "{command:?}");
}

#[test]
fn user_requests_get_the_accelerators_too() {
    let mut j = job(1, 2);
    j.spec.resources = Some(ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_string(), Quantity("8".into()))])),
        ..Default::default()
    });
    let pod = worker_pod(&j, &plan(), 0, "n", &WorkloadSettings::default());
    let r = pod.spec.expect("spec").containers[0]
        .resources
        .clone()
        .expect("resources");
    assert_eq!(
        r.requests.expect("requests")["nvidia.com/gpu"],
        Quantity("2".into())
    );
    assert_eq!(
        r.limits.expect("limits")["nvidia.com/gpu"],
        Quantity("2".into())
    );
}

#[test]
fn service_is_headless_and_publishes_unready_workers() {
    let svc = service(&job(2, 1), &WorkloadSettings::default());
    assert_eq!(svc.metadata.name.as_deref(), Some("bert"));
    let spec = svc.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    let selector = spec.selector.expect("selector");
    assert_eq!(selector[LABEL_JOB], "bert");
    assert_eq!(selector[LABEL_JOB_UID], "uid-1");
}
