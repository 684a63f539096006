//! End to end on a real Kubernetes cluster: runs when `KUBECONFIG` is set, and is skipped (with
//! the reason printed) otherwise. Use a disposable cluster (kind or k3d, see operator/README.md):
//! the test installs the CRDs, advertises a fake accelerator resource on one node, creates and
//! deletes a namespace.
//!
//! It runs the real scheduler in process (loopback gRPC, cheap prices from now, the chosen node
//! as its only node) and the operator's own `run_with_client` against the cluster, applies a
//! two-worker TrainingJob (busybox printing its launcher environment), and waits for the job to
//! succeed: gated pods created, released together, pinned to the planned node, with
//! MASTER_ADDR/WORLD_SIZE/RANK set. Deleting it must remove the pods and the object
//! (finalizer).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DurationRound, Utc};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt, ResourceExt};
use offpeak_operator::crd::{EnergyPolicy, JobPhase, LABEL_JOB, TrainingJob, TrainingJobSpec};
use offpeak_operator::run::{OperatorConfig, run_with_client};
use offpeak_operator::workload::WorkloadSettings;
use offpeak_scheduler::placement::{
    ManualClock, NodeSpec, PlacementConfig, Settings, SignalRows, TableFeed,
};
use offpeak_scheduler::scenario::{Profile, ProfilePoint};
use offpeak_scheduler::service::{self, CommandCenter, CurveStore, NodeRegistry, ServiceConfig};
use offpeak_scheduler::units::Watts;
use serde_json::json;

/// The fake extended resource the test advertises on its node.
const FAKE_GPU: &str = "offpeak.dev/e2e-gpu";
/// Longest wait for the job to succeed (image pull included).
const JOB_PATIENCE: Duration = Duration::from_secs(300);
const MANAGER: &str = "offpeak-e2e";

#[tokio::test]
async fn a_training_job_runs_to_success_on_a_real_cluster() -> anyhow::Result<()> {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!(
            "skipped: KUBECONFIG is not set; point it at a disposable kind or k3d cluster to run \
             this test (operator/README.md)"
        );
        return Ok(());
    }
    let client = Client::try_default().await?;
    install_crds(&client).await?;
    let node = pick_node(&client).await?;
    let ns = format!("offpeak-e2e-{}", Utc::now().timestamp());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let outcome = run_job(&client, &ns, &node).await;
    // Clean up whatever happened.
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    let _ = set_fake_gpus(&client, &node, None).await;
    outcome
}

async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [TrainingJob::crd(), EnergyPolicy::crd()] {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let established = await_condition(crds.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established).await??;
    }
    Ok(())
}

/// The first schedulable node, advertising 8 fake accelerators.
async fn pick_node(client: &Client) -> anyhow::Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .ok_or_else(|| anyhow::anyhow!("the cluster has no schedulable node"))?;
    let name = node.name_any();
    set_fake_gpus(client, &name, Some(8)).await?;
    Ok(name)
}

async fn set_fake_gpus(client: &Client, node: &str, count: Option<u32>) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let value = count.map(|c| json!(c.to_string()));
    let patch = json!({"status": {"capacity": {FAKE_GPU: value}}});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn run_job(client: &Client, ns: &str, node: &str) -> anyhow::Result<()> {
    // The scheduler: this node only, cheap prices from now, so the job runs at once.
    let now = Utc::now().duration_trunc(chrono::Duration::minutes(15))?;
    let clock = ManualClock::new(now);
    let mut placement = PlacementConfig::new(Arc::new(clock))
        .with_settings(Settings {
            debounce: Duration::from_millis(5),
            ..Settings::default()
        })
        .with_zone("A", 1.2)
        .with_profile(Profile {
            name: "v100/e2e".into(),
            points: vec![ProfilePoint {
                power_limit: Watts(250.0),
                throughput: 1.0,
                draw: Watts(220.0),
            }],
        })
        .with_signals(
            TableFeed::new(None).zone(
                "A",
                SignalRows::hourly(now, &[(20.0, 100.0); 48])
                    .ok_or_else(|| anyhow::anyhow!("signal rows"))?,
            ),
        );
    placement.nodes.push(NodeSpec {
        name: node.to_string(),
        zone: "A".into(),
        accelerator: "v100".into(),
        gpus: 8,
    });
    let registry = NodeRegistry::new();
    let bound = service::bind(ServiceConfig {
        grpc_addr: "127.0.0.1:0".parse()?,
        admin_addr: "127.0.0.1:0".parse()?,
        commands: CommandCenter::new(registry.clone()),
        curves: CurveStore::new(),
        registry,
        reports: None,
        placement: Some(placement),
    })
    .await?;
    let scheduler_addr = format!("http://{}", bound.addrs().grpc);
    let (stop_scheduler, scheduler_stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(bound.serve(async {
        let _ = scheduler_stopped.await;
    }));

    let (stop_operator, operator_stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(run_with_client(
        client.clone(),
        OperatorConfig {
            scheduler: scheduler_addr,
            field_manager: MANAGER.into(),
            namespace: Some(ns.to_string()),
            admin_addr: "127.0.0.1:0".parse()?,
            settings: WorkloadSettings {
                gpu_resource: FAKE_GPU.into(),
                ..WorkloadSettings::default()
            },
        },
        async {
            let _ = operator_stopped.await;
        },
    ));

    let result = job_succeeds_then_is_deleted(client, ns, node).await;
    let _ = stop_operator.send(());
    operator.await??;
    let _ = stop_scheduler.send(());
    scheduler.await??;
    result
}

async fn job_succeeds_then_is_deleted(client: &Client, ns: &str, node: &str) -> anyhow::Result<()> {
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), ns);
    let mut spec = TrainingJobSpec::new("busybox:1.36", 2, 1, 0.25);
    spec.command = vec!["sh".into(), "-c".into()];
    spec.args = vec![
        "echo rank $RANK/$WORLD_SIZE node $NODE_RANK nproc $NPROC_PER_NODE master \
         $MASTER_ADDR:$MASTER_PORT power $OFFPEAK_POWER_LIMIT_WATTS; test -n \"$MASTER_ADDR\""
            .into(),
    ];
    spec.max_delay = Some("2h".parse()?);
    let job = jobs
        .create(&PostParams::default(), &TrainingJob::new("e2e", spec))
        .await?;
    let uid = job.uid().ok_or_else(|| anyhow::anyhow!("no uid"))?;

    let settled = await_condition(jobs.clone(), "e2e", |j: Option<&TrainingJob>| {
        j.and_then(|j| j.status.as_ref())
            .and_then(|s| s.phase)
            .is_some_and(|p| {
                matches!(
                    p,
                    JobPhase::Succeeded | JobPhase::Failed | JobPhase::Rejected | JobPhase::Invalid
                )
            })
    });
    let job = tokio::time::timeout(JOB_PATIENCE, settled)
        .await??
        .ok_or_else(|| anyhow::anyhow!("the job disappeared"))?;
    let status = job.status.clone().unwrap_or_default();
    anyhow::ensure!(
        status.phase == Some(JobPhase::Succeeded),
        "the job ended {status:?}"
    );
    anyhow::ensure!(
        status.reported_state.as_deref() == Some("SUCCEEDED"),
        "{status:?}"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{LABEL_JOB}=e2e")))
        .await?;
    anyhow::ensure!(
        listed.items.len() == 2,
        "expected 2 worker pods, got {}",
        listed.items.len()
    );
    for pod in &listed.items {
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("pod without spec"))?;
        anyhow::ensure!(
            spec.node_name.as_deref() == Some(node),
            "pod {} not on {node}",
            pod.name_any()
        );
        anyhow::ensure!(
            spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty),
            "still gated"
        );
        let env: Vec<&str> = spec.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        for name in offpeak_operator::LAUNCHER_ENV {
            anyhow::ensure!(env.contains(&name), "{name} missing in {}", pod.name_any());
        }
    }

    jobs.delete("e2e", &DeleteParams::default()).await?;
    let gone = await_condition(jobs.clone(), "e2e", conditions::is_deleted(&uid));
    tokio::time::timeout(Duration::from_secs(120), gone).await??;
    let left = pods
        .list(&ListParams::default().labels(&format!("{LABEL_JOB}=e2e")))
        .await?;
    anyhow::ensure!(
        left.items
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some()),
        "pods left behind"
    );
    Ok(())
}
