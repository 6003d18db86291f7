//! A fake node: a kubelet and scheduler stand-in without containers.
//!
//! [`NodeSimulator`] registers a Ready node and keeps it alive (node status
//! heartbeats and a `kube-node-lease` Lease, so the node lifecycle controller
//! neither taints nor evicts it). It binds every unscheduled pod to the node
//! through the Binding subresource, reports every pod on the node Running
//! and Ready with an address from the node's pod CIDR, and completes the
//! deletion of pods on the node (there is no kubelet to finish graceful
//! termination). With the controller manager running, Deployments then
//! report ready replicas and Services get ready endpoints.
//!
//! Pods never run anything and never finish: Jobs stay active, probes are
//! ignored, every container is "running".

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::Error;

/// How often the node reports in. The node lifecycle controller's default
/// grace period is 40 s.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often every known pod is looked at again, in case an action failed.
const RESYNC: Duration = Duration::from_secs(2);
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Node numbers, unique within the process: node `n` gets the address
/// `127.0.0.<n+2>` and the pod CIDR `10.244.<n>.0/24` (wrapping after 250).
static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// A simulated node; stops (its tasks are aborted) when dropped.
#[derive(Debug)]
pub struct NodeSimulator {
    name: String,
    node_ip: Ipv4Addr,
    pod_cidr: String,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeSimulator {
    /// Registers node `node_name` (Ready, with room for 250 pods) and starts
    /// simulating it with `client`, which needs to read and write nodes,
    /// leases, pods, pod status and bindings (the admin client does).
    ///
    /// With several simulators in one cluster, an unscheduled pod goes to
    /// whichever binds it first, unless its `nodeSelector` only matches one
    /// (nodes carry `kubernetes.io/hostname=<node name>`).
    pub async fn start(client: Client, node_name: &str) -> Result<NodeSimulator, Error> {
        let n = NEXT_NODE.fetch_add(1, Ordering::Relaxed) % 250;
        let octet = u8::try_from(n).unwrap_or(0);
        let sim = Arc::new(Sim {
            client,
            node: node_name.to_owned(),
            node_ip: Ipv4Addr::new(127, 0, 0, octet + 2),
            pod_net: octet,
            labels: BTreeMap::from([
                ("kubernetes.io/hostname".to_owned(), node_name.to_owned()),
                ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
                ("atoll.dev/testbed-node".to_owned(), "true".to_owned()),
            ]),
            started: Timestamp::now(),
            ips: Mutex::new(PodIps::default()),
        });
        sim.register().await?;
        // A cluster that has just started (or restarted) may not serve the node-lease
        // namespace yet; the first heartbeat gets a few chances, later ones are retried anyway.
        let mut attempt = 0;
        while let Err(error) = sim.heartbeat().await {
            attempt += 1;
            if attempt >= 20 {
                return Err(error);
            }
            tracing::debug!(node = %node_name, %error, "first heartbeat failed; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }

        let heartbeat = {
            let sim = sim.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = sim.heartbeat().await {
                        tracing::warn!(node = %sim.node, error = %e, "node heartbeat failed");
                    }
                }
            })
        };
        let pods = {
            let sim = sim.clone();
            tokio::spawn(async move { sim.run_pods().await })
        };
        tracing::debug!(node = %node_name, ip = %sim.node_ip, "node simulator started");
        Ok(NodeSimulator {
            name: node_name.to_owned(),
            node_ip: sim.node_ip,
            pod_cidr: sim.pod_cidr(),
            tasks: vec![heartbeat, pods],
        })
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.name
    }

    /// The node's InternalIP (and every pod's hostIP): `127.0.0.x`.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    /// The node's pod CIDR, `10.244.x.0/24`, from which pods get addresses.
    pub fn pod_cidr(&self) -> &str {
        &self.pod_cidr
    }

    /// Stops simulating and waits for the tasks to end. The node object
    /// stays; without heartbeats the node lifecycle controller will mark it
    /// NotReady after its grace period.
    pub async fn shutdown(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Sim {
    client: Client,
    node: String,
    node_ip: Ipv4Addr,
    pod_net: u8,
    labels: BTreeMap<String, String>,
    started: Timestamp,
    ips: Mutex<PodIps>,
}

/// Pod addresses handed out, by pod UID.
#[derive(Default)]
struct PodIps {
    by_uid: HashMap<String, Ipv4Addr>,
    next: u8,
}

fn now_time() -> Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null)
}

fn time(ts: Timestamp) -> Value {
    serde_json::to_value(Time(ts)).unwrap_or(Value::Null)
}

impl Sim {
    fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.pod_net)
    }

    fn conditions(&self) -> Value {
        let heartbeat = now_time();
        let since = time(self.started);
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            json!({
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": since,
            })
        };
        json!([
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "simulated"
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "simulated"
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "simulated"
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "simulated by atoll-testbed"
            ),
        ])
    }

    async fn register(&self) -> Result<(), Error> {
        let resources =
            json!({"cpu": "32", "memory": "128Gi", "pods": "250", "ephemeral-storage": "100Gi"});
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": self.labels},
            "spec": {"podCIDR": self.pod_cidr(), "podCIDRs": [self.pod_cidr()]},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": self.conditions(),
                "addresses": [
                    {"type": "InternalIP", "address": self.node_ip.to_string()},
                    {"type": "Hostname", "address": self.node},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": format!("atoll-testbed-{}", self.node),
                    "systemUUID": format!("atoll-testbed-{}", self.node),
                    "bootID": format!("atoll-testbed-{}", self.node),
                    "kernelVersion": "simulated",
                    "osImage": "atoll-testbed simulated node",
                    "containerRuntimeVersion": "simulated://0",
                    "kubeletVersion": format!("v{}", crate::KUBE_VERSION),
                    "kubeProxyVersion": format!("v{}", crate::KUBE_VERSION),
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }))
        .map_err(Error::client("building the simulated node"))?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => Ok(()),
            // Already registered (a restarted simulator): the heartbeat
            // refreshes its status.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(Error::client(format!("registering node {}", self.node))(e)),
        }
    }

    /// Refreshes the node's conditions and renews its Lease.
    async fn heartbeat(&self) -> Result<(), Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes
            .patch_status(
                &self.node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": self.conditions()}})),
            )
            .await
            .map_err(Error::client(format!("updating node {} status", self.node)))?;

        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let renew = serde_json::to_value(MicroTime(Timestamp::now()))
            .map_err(Error::client("formatting a lease time"))?;
        let spec = json!({
            "holderIdentity": self.node,
            "leaseDurationSeconds": 40,
            "renewTime": renew,
        });
        let context = || format!("renewing the lease of node {}", self.node);
        match leases
            .patch(
                &self.node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease: Lease = serde_json::from_value(json!({
                    "metadata": {
                        "name": self.node,
                        "namespace": LEASE_NAMESPACE,
                        "ownerReferences": [{
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": self.node,
                            "uid": node.uid().unwrap_or_default(),
                        }],
                    },
                    "spec": spec,
                }))
                .map_err(Error::client(context()))?;
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
                    .map_err(Error::client(context()))
            }
            Err(e) => Err(Error::client(context())(e)),
        }
    }

    /// Watches all pods and acts on each; every [`RESYNC`] looks at all of
    /// them again, so a failed action is retried.
    async fn run_pods(&self) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let (store, writer) = reflector::store::<Pod>();
        let events = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        let mut events = std::pin::pin!(events);
        let mut resync = tokio::time::interval(RESYNC);
        let mut listed = false;
        loop {
            tokio::select! {
                event = events.try_next() => match event {
                    Ok(Some(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                        self.reconcile(&pod).await;
                    }
                    Ok(Some(watcher::Event::Delete(pod))) => {
                        if let Some(uid) = pod.uid() {
                            self.ips.lock().await.by_uid.remove(&uid);
                        }
                    }
                    Ok(Some(watcher::Event::InitDone)) => listed = true,
                    Ok(Some(watcher::Event::Init)) => {}
                    Ok(None) => return,
                    Err(e) => tracing::debug!(node = %self.node, error = %e, "pod watch error"),
                },
                _ = resync.tick() => {
                    let pods = store.state();
                    if listed {
                        let uids: std::collections::HashSet<String> =
                            pods.iter().filter_map(|p| p.uid()).collect();
                        self.ips.lock().await.by_uid.retain(|uid, _| uids.contains(uid));
                    }
                    for pod in pods {
                        self.reconcile(&pod).await;
                    }
                }
            }
        }
    }

    async fn reconcile(&self, pod: &Pod) {
        let Some(spec) = &pod.spec else { return };
        let ours = spec.node_name.as_deref() == Some(self.node.as_str());
        let result = if pod.metadata.deletion_timestamp.is_some() {
            if ours {
                self.finish_deletion(pod).await
            } else {
                Ok(())
            }
        } else if spec.node_name.is_none() {
            if self.should_bind(pod) {
                self.bind(pod).await
            } else {
                Ok(())
            }
        } else if ours && !is_running(pod) {
            self.mark_running(pod).await
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {}
            // Gone or changed meanwhile: the watch brings the new state.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(
                node = %self.node,
                pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                error = %e,
                "simulating pod failed; will retry"
            ),
        }
    }

    fn should_bind(&self, pod: &Pod) -> bool {
        let Some(spec) = &pod.spec else { return false };
        let default_scheduler = spec
            .scheduler_name
            .as_deref()
            .is_none_or(|s| s == "default-scheduler");
        let selected = spec.node_selector.as_ref().is_none_or(|selector| {
            selector
                .iter()
                .all(|(k, v)| self.labels.get(k).is_some_and(|l| l == v))
        });
        let pending = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|p| p == "Pending");
        default_scheduler && selected && pending
    }

    async fn bind(&self, pod: &Pod) -> Result<(), kube::Error> {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": pod.uid()},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        });
        let _: Value = api
            .create_subresource("binding", &name, &PostParams::default(), &binding)
            .await?;
        tracing::debug!(node = %self.node, pod = %format!("{namespace}/{name}"), "bound");
        Ok(())
    }

    async fn pod_ip(&self, pod: &Pod) -> Ipv4Addr {
        let uid = pod.uid().unwrap_or_default();
        let existing = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let mut ips = self.ips.lock().await;
        if let Some(ip) = existing.or_else(|| ips.by_uid.get(&uid).copied()) {
            ips.by_uid.insert(uid, ip);
            return ip;
        }
        // Hosts .2 to .254, skipping addresses in use while any are free.
        let mut candidate = Ipv4Addr::new(10, 244, self.pod_net, 2);
        for _ in 0..253 {
            let host = 2 + ips.next % 253;
            ips.next = ips.next.wrapping_add(1) % 253;
            candidate = Ipv4Addr::new(10, 244, self.pod_net, host);
            if !ips.by_uid.values().any(|ip| *ip == candidate) {
                break;
            }
        }
        ips.by_uid.insert(uid, candidate);
        candidate
    }

    async fn mark_running(&self, pod: &Pod) -> Result<(), kube::Error> {
        let Some(spec) = &pod.spec else { return Ok(()) };
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let ip = if spec.host_network == Some(true) {
            self.node_ip
        } else {
            self.pod_ip(pod).await
        }
        .to_string();
        let now = now_time();
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| now.clone());
        let condition = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        // Init containers have run to completion; the others are running.
        let container_status = |c: &Container, state: Value| {
            let image = c.image.clone().unwrap_or_default();
            json!({
                "name": c.name,
                "image": image,
                "imageID": format!("atoll-testbed://{image}"),
                "containerID": format!("atoll-testbed://{uid}/{}", c.name),
                "ready": true,
                "restartCount": 0,
                "state": state,
            })
        };
        let containers: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| {
                let mut status = container_status(c, json!({"running": {"startedAt": started}}));
                status["started"] = json!(true);
                status
            })
            .collect();
        let init_containers: Vec<Value> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| {
                container_status(
                    c,
                    json!({"terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": started,
                        "finishedAt": started,
                    }}),
                )
            })
            .collect();
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": self.node_ip.to_string(),
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": started,
            "conditions": [
                condition("Initialized"),
                condition("Ready"),
                condition("ContainersReady"),
                condition("PodScheduled"),
            ],
            "containerStatuses": containers,
            "initContainerStatuses": init_containers,
        }});
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
        tracing::debug!(node = %self.node, pod = %format!("{namespace}/{name}"), %ip, "running");
        Ok(())
    }

    /// What the kubelet does once containers have stopped: delete for good.
    async fn finish_deletion(&self, pod: &Pod) -> Result<(), kube::Error> {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams::default()
            .grace_period(0)
            .preconditions(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            });
        api.delete(&name, &params).await?;
        if let Some(uid) = pod.uid() {
            self.ips.lock().await.by_uid.remove(&uid);
        }
        tracing::debug!(node = %self.node, pod = %format!("{namespace}/{name}"), "deleted");
        Ok(())
    }
}

/// Whether the pod already looks like `mark_running` left it.
fn is_running(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    terminal || (status.phase.as_deref() == Some("Running") && ready && status.pod_ip.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_pod_is_left_alone() -> Result<(), serde_json::Error> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {
                "phase": "Running",
                "podIP": "10.244.0.2",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))?;
        assert!(is_running(&pod));
        let pending: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending"},
        }))?;
        assert!(!is_running(&pending));
        Ok(())
    }
}
