//! GPU → pod attribution through the kubelet's pod-resources API, against a real gRPC peer: a
//! tonic server on a unix socket in a temporary directory serving `v1.PodResourcesLister` as
//! the kubelet does. The agent names the pod in its samples, the scheduler meters energy per
//! pod, and when the pod goes away (its job ended) the agent lifts the limit it was given.

mod agent_common;

use std::sync::{Arc, Mutex};

use agent_common::{AgentSetup, Scheduler, SimAgent, finish_all, tick_all};
use anyhow::Context as _;
use offpeak_agent::PowerSource as _;
use offpeak_agent::podresources::PodResources;
use offpeak_agent::sim::SimConfig;
use offpeak_proto::kubelet_podresources_v1::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use offpeak_proto::kubelet_podresources_v1::{
    ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse,
    PodResources as Pod,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// Answers List with whatever the test last set, as the kubelet answers with the pods running.
#[derive(Debug, Clone, Default)]
struct Kubelet {
    pods: Arc<Mutex<Vec<Pod>>>,
}

impl Kubelet {
    fn set(&self, pods: Vec<Pod>) {
        *self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = pods;
    }
}

#[tonic::async_trait]
impl PodResourcesLister for Kubelet {
    async fn list(
        &self,
        _request: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let pods = self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: pods,
        }))
    }
}

fn training_pod(gpu: &str) -> Pod {
    Pod {
        name: "train-0".into(),
        namespace: "ml".into(),
        containers: vec![ContainerResources {
            name: "worker".into(),
            devices: vec![ContainerDevices {
                resource_name: "nvidia.com/gpu".into(),
                device_ids: vec![gpu.to_owned()],
            }],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_name_the_pod_energy_is_metered_per_pod_and_its_end_lifts_the_limit()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("kubelet.sock");
    let kubelet = Kubelet::default();
    let listener = UnixListener::bind(&socket)?;
    let (stop_kubelet, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PodResourcesListerServer::new(kubelet.clone()))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );

    let scheduler = Scheduler::in_memory().await?;
    let setup = AgentSetup {
        sim: SimConfig::flat(),
        ..AgentSetup::new("node-p", 3, 2)
    };
    let mut agent = SimAgent::start(setup, scheduler.uri())?;
    agent.registered().await?;
    let (gpu0, gpu1) = (agent.device(0), agent.device(1));
    let mut pods = PodResources::new(&socket);

    // Before the pod: nothing attributed.
    assert!(pods.device_pods().await?.is_empty());
    agent.tick().await?;
    let baseline = agent.counters()?;
    agent.tick().await?;

    // The pod starts on GPU 0 and the scheduler lowers that GPU's limit for its job.
    kubelet.set(vec![training_pod(&gpu0)]);
    let map = pods.device_pods().await?;
    let pod = map.get(&gpu0).context("GPU 0 not attributed")?;
    assert_eq!(
        (
            pod.namespace.as_str(),
            pod.pod.as_str(),
            pod.container.as_str()
        ),
        ("ml", "train-0", "worker")
    );
    assert!(!map.contains_key(&gpu1));
    agent.agent.update_pods(map);
    scheduler.commands.set_power_limit("node-p", &gpu0, 150)?;
    assert!(agent.serve_command().await?.ok);
    tick_all(std::slice::from_mut(&mut agent), 9).await?;
    let last_with_pod = agent.counters()?;
    agent.tick().await?;

    // The pod ends: the limit goes back to the default without a command.
    kubelet.set(vec![]);
    agent.agent.update_pods(pods.device_pods().await?);
    assert!(agent.agent.enforcer().changed().is_empty());
    assert_eq!(
        agent
            .agent
            .sampler_mut()
            .source_mut()
            .read(0)?
            .power_limit_watts,
        Some(250.0)
    );
    tick_all(std::slice::from_mut(&mut agent), 3).await?;
    finish_all(vec![agent]).await?;

    let key = ("node-p".to_string(), gpu0.clone());
    let expected = last_with_pod[&key] - baseline[&key];
    let by_pod = scheduler.registry.energy_by_pod();
    assert_eq!(by_pod.len(), 1);
    assert_eq!(
        by_pod.get(&("ml".into(), "train-0".into())),
        Some(&expected)
    );
    assert!(expected > 0);
    scheduler.stop().await?;

    // A kubelet that is gone is an error to log, not a crash.
    let _ = stop_kubelet.send(());
    server.await??;
    let e = pods.device_pods().await.err().map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|m| m.starts_with("watching pod resources")),
        "{e:?}"
    );
    Ok(())
}
