//! GPU → pod attribution through the kubelet's pod-resources gRPC API (`v1.PodResourcesLister`
//! on a unix socket, [`DEFAULT_SOCKET`]): the kubelet says which container of which pod the
//! device plugins gave each device to, and each sample then names that pod.
//!
//! Device ids are the device plugin's: NVIDIA's plugin uses the GPU UUIDs that NVML reports,
//! so they match the NVML source's device UUIDs as they are. With GPU time-slicing the plugin
//! hands out replicas named `<uuid>::<n>`; a replica counts as its GPU. A GPU shared by several
//! pods is attributed to the first in (namespace, pod, container) order, and the sharing is
//! logged: one pod per sample is all the wire has room for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use offpeak_proto::kubelet_podresources_v1::pod_resources_lister_client::PodResourcesListerClient;
use offpeak_proto::kubelet_podresources_v1::{ListPodResourcesRequest, ListPodResourcesResponse};
use offpeak_proto::v1::PodRef;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::client::{CONNECT_TIMEOUT, ClientError};

/// Where the kubelet serves the API.
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// The kubelet answers List from memory; a call slower than this means it is in trouble, and
/// the agent keeps its last attribution rather than wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Separates a time-sliced replica's number from its GPU's UUID in NVIDIA's device ids.
const REPLICA_SEPARATOR: &str = "::";

/// A client of the kubelet's pod-resources API that reconnects when a call fails.
#[derive(Debug)]
pub struct PodResources {
    socket: PathBuf,
    client: Option<PodResourcesListerClient<Channel>>,
}

impl PodResources {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            client: None,
        }
    }

    /// Which pod uses each device, by device UUID.
    pub async fn device_pods(&mut self) -> Result<HashMap<String, PodRef>, ClientError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ClientError::WatchPods(format!("{what} {}: {e}", self.socket.display()))
        };
        let mut client = match self.client.take() {
            Some(c) => c,
            None => {
                let endpoint = Endpoint::from_shared(format!("unix:{}", self.socket.display()))
                    .map_err(|e| fail("addressing", &e))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(CALL_TIMEOUT);
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|e| fail("connecting to", &crate::client::error_chain(&e)))?;
                PodResourcesListerClient::new(channel)
            }
        };
        let response = client
            .list(ListPodResourcesRequest {})
            .await
            .map_err(|e| fail("listing pod resources on", &e))?
            .into_inner();
        self.client = Some(client);
        let pods = attribute(&response);
        debug!(devices = pods.len(), "pod attribution refreshed");
        Ok(pods)
    }
}

/// The device → pod map in a List answer.
pub fn attribute(response: &ListPodResourcesResponse) -> HashMap<String, PodRef> {
    let mut claims: Vec<(String, PodRef)> = Vec::new();
    for pod in &response.pod_resources {
        for container in &pod.containers {
            for devices in &container.devices {
                for id in &devices.device_ids {
                    let uuid = id.split(REPLICA_SEPARATOR).next().unwrap_or(id);
                    claims.push((
                        uuid.to_owned(),
                        PodRef {
                            namespace: pod.namespace.clone(),
                            pod: pod.name.clone(),
                            container: container.name.clone(),
                        },
                    ));
                }
            }
        }
    }
    let key = |p: &PodRef| (p.namespace.clone(), p.pod.clone(), p.container.clone());
    claims.sort_by_key(|(uuid, p)| (uuid.clone(), key(p)));
    let mut out: HashMap<String, PodRef> = HashMap::new();
    for (uuid, pod) in claims {
        match out.get(&uuid) {
            None => {
                out.insert(uuid, pod);
            }
            Some(first) if *first != pod => {
                warn!(device = %uuid, first = ?key(first), also = ?key(&pod), "a device is shared by several pods; it is attributed to the first");
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use offpeak_proto::kubelet_podresources_v1::{
        ContainerDevices, ContainerResources, PodResources as Pod,
    };

    use super::*;

    fn pod(ns: &str, name: &str, container: &str, ids: &[&str]) -> Pod {
        Pod {
            name: name.into(),
            namespace: ns.into(),
            containers: vec![ContainerResources {
                name: container.into(),
                devices: vec![ContainerDevices {
                    resource_name: "nvidia.com/gpu".into(),
                    device_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                }],
            }],
        }
    }

    #[test]
    fn maps_devices_to_pods_replicas_to_their_gpu_and_sharing_to_the_first() {
        let response = ListPodResourcesResponse {
            pod_resources: vec![
                pod("ml", "train-b", "w", &["GPU-2::1"]),
                pod("ml", "train-a", "worker", &["GPU-0", "GPU-1"]),
                pod("ml", "train-a2", "w", &["GPU-2::0"]),
            ],
        };
        let map = attribute(&response);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get("GPU-0").map(|p| p.pod.as_str()), Some("train-a"));
        assert_eq!(
            map.get("GPU-1").map(|p| p.container.as_str()),
            Some("worker")
        );
        assert_eq!(map.get("GPU-2").map(|p| p.pod.as_str()), Some("train-a2"));
    }
}
