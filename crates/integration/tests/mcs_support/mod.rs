//! A ClusterSet for the MCS tests: real kube-apiservers with controller managers from the
//! test bed, each with a simulated node (Ready pods with IPs, real EndpointSlices), all joined
//! in push mode to cluster 0, which is both the hub and a member.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use atoll_api::mcs::{ServiceExport, ServiceExportSpec, ServiceImport};
use atoll_controllers::inventory::{self, JoinOptions};
use atoll_testbed::{NodeSimulator, Testbed, TestbedConfig};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Pod, PodSpec, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::config::Kubeconfig;
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;

pub const MANAGER_NAMESPACE: &str = inventory::DEFAULT_MANAGER_NAMESPACE;

/// One joined member.
pub struct Member {
    /// Its name on the hub (`c0`, `c1`, ...).
    pub name: String,
    /// Its cluster ID (`cluster-0`, ...).
    pub id: String,
    pub client: Client,
    /// The EndpointSlice resource it serves.
    pub slices: ApiResource,
    pub index: usize,
}

pub struct Fleet {
    pub hub: Client,
    pub members: Vec<Member>,
    pub nodes: Vec<NodeSimulator>,
    pub testbed: Testbed,
}

// Like the rest of this module, not every suite that includes it waits.
#[allow(unused_imports)]
pub use atoll_integration::eventually;

pub const WAIT: Duration = Duration::from_secs(60);

impl Fleet {
    /// `clusters` clusters, every one joined; cluster 0 is also the hub.
    pub async fn start(clusters: usize) -> Result<Fleet> {
        let testbed = Testbed::start(TestbedConfig::with_clusters(clusters)).await?;
        let hub = testbed.clusters()[0].client().await?;
        atoll_testbed::install_crds(&hub, atoll_api::crds()?).await?;
        let mcs_crds: Vec<_> = atoll_api::crds()?
            .into_iter()
            .filter(|c| {
                c.spec.group == atoll_api::mcs::GROUP && c.spec.names.plural.starts_with("service")
            })
            .collect();
        let mut members = Vec::new();
        let mut nodes = Vec::new();
        for (index, cluster) in testbed.clusters().iter().enumerate() {
            let client = cluster.client().await?;
            atoll_testbed::install_crds(&client, mcs_crds.clone()).await?;
            nodes.push(NodeSimulator::start(client.clone(), &format!("node-{index}")).await?);
            let name = format!("c{index}");
            let id = format!("cluster-{index}");
            inventory::join(
                &hub,
                &JoinOptions {
                    name: name.clone(),
                    member_kubeconfig: Kubeconfig::read_from(cluster.kubeconfig_path())?,
                    member_context: None,
                    labels: Default::default(),
                    cluster_set: "clusterset".into(),
                    cluster_id: Some(id.clone()),
                    manager_namespace: MANAGER_NAMESPACE.into(),
                    token_timeout: Duration::from_secs(60),
                },
            )
            .await
            .with_context(|| format!("joining {name}"))?;
            let slices = atoll_mcs::slices::discover(&client).await;
            members.push(Member {
                name,
                id,
                client,
                slices,
                index,
            });
        }
        Ok(Fleet {
            hub,
            members,
            nodes,
            testbed,
        })
    }

    /// `atoll controller`'s MCS part (aggregator and push-mode syncers), in this process.
    pub fn start_controller(&self) -> Running {
        Running(tokio::spawn(atoll_controllers::mcs::run(
            self.hub.clone(),
            MANAGER_NAMESPACE.into(),
            std::future::pending(),
        )))
    }

    /// Creates `namespace` in the given members.
    pub async fn namespace(&self, namespace: &str, members: &[usize]) -> Result<()> {
        for &i in members {
            let api: Api<Namespace> = Api::all(self.members[i].client.clone());
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            // Pods need the default service account.
            let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(self.members[i].client.clone(), namespace);
            eventually(WAIT, "the default service account", async || {
                Ok(accounts.get_opt("default").await?)
            })
            .await?;
        }
        Ok(())
    }
}

/// A task aborted on drop.
pub struct Running(pub JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A Service's shape for the tests.
#[derive(Clone, Debug, Default)]
pub struct Shape {
    pub ports: Vec<(&'static str, i32)>,
    pub headless: bool,
    pub external_name: bool,
    pub client_ip_affinity: Option<i32>,
}

impl Shape {
    pub fn ports(ports: &[(&'static str, i32)]) -> Shape {
        Shape {
            ports: ports.to_vec(),
            ..Default::default()
        }
    }
}

pub fn service(namespace: &str, name: &str, shape: &Shape) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(
                if shape.external_name {
                    "ExternalName"
                } else {
                    "ClusterIP"
                }
                .into(),
            ),
            external_name: shape.external_name.then(|| "example.com".into()),
            cluster_ip: shape.headless.then(|| "None".into()),
            selector: (!shape.external_name)
                .then(|| BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ports: Some(
                shape
                    .ports
                    .iter()
                    .map(|(port_name, port)| ServicePort {
                        name: Some((*port_name).into()),
                        port: *port,
                        ..Default::default()
                    })
                    .collect(),
            ),
            session_affinity: shape.client_ip_affinity.map(|_| "ClientIP".into()),
            session_affinity_config: shape.client_ip_affinity.map(|timeout| {
                SessionAffinityConfig {
                    client_ip: Some(k8s_openapi::api::core::v1::ClientIPConfig {
                        timeout_seconds: Some(timeout),
                    }),
                }
            }),
            ..Default::default()
        }),
        status: None,
    }
}

impl Member {
    pub async fn create_service(&self, namespace: &str, name: &str, shape: &Shape) -> Result<()> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), &service(namespace, name, shape))
            .await
            .with_context(|| format!("creating Service {namespace}/{name} in {}", self.name))?;
        Ok(())
    }

    pub async fn delete_service(&self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        api.delete(name, &DeleteParams::default()).await?;
        eventually(WAIT, "the Service to go", async || {
            Ok(api.get_opt(name).await?.is_none().then_some(()))
        })
        .await
    }

    /// `count` pods selected by Service `app`, with hostnames `<app>-<i>` under subdomain `app`.
    pub async fn create_pods(&self, namespace: &str, app: &str, count: usize) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        for i in 0..count {
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(format!("{app}-{i}")),
                    labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    hostname: Some(format!("{app}-{i}")),
                    subdomain: Some(app.into()),
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("registry.invalid/app:1".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                status: None,
            };
            api.create(&PostParams::default(), &pod).await?;
        }
        Ok(())
    }

    pub async fn export(&self, namespace: &str, name: &str) -> Result<()> {
        self.export_with(namespace, name, ServiceExportSpec::default())
            .await
    }

    pub async fn export_with(
        &self,
        namespace: &str,
        name: &str,
        spec: ServiceExportSpec,
    ) -> Result<()> {
        let api: Api<ServiceExport> = Api::namespaced(self.client.clone(), namespace);
        let mut export = ServiceExport::new(name, spec);
        export.metadata.namespace = Some(namespace.into());
        api.create(&PostParams::default(), &export)
            .await
            .with_context(|| format!("exporting {namespace}/{name} from {}", self.name))?;
        Ok(())
    }

    pub async fn unexport(&self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<ServiceExport> = Api::namespaced(self.client.clone(), namespace);
        api.delete(name, &DeleteParams::default()).await?;
        Ok(())
    }

    pub async fn import(&self, namespace: &str, name: &str) -> Result<Option<ServiceImport>> {
        let api: Api<ServiceImport> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?)
    }

    pub async fn service(&self, namespace: &str, name: &str) -> Result<Option<Service>> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?)
    }

    /// `(status, reason)` of a condition of the member's ServiceExport.
    pub async fn export_condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
    ) -> Result<Option<(String, String)>> {
        let api: Api<ServiceExport> = Api::namespaced(self.client.clone(), namespace);
        let Some(export) = api.get_opt(name).await? else {
            return Ok(None);
        };
        Ok(export.status.and_then(|s| {
            atoll_api::conditions::find(&s.conditions, type_)
                .map(|c| (c.status.clone(), c.reason.clone()))
        }))
    }

    /// Waits until the export's condition is `(status, reason)`.
    pub async fn wait_export_condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Result<()> {
        let wanted = Some((status.to_owned(), reason.to_owned()));
        eventually(
            WAIT,
            &format!(
                "{type_}={status}/{reason} on {namespace}/{name} in {}",
                self.name
            ),
            async || {
                Ok((self.export_condition(namespace, name, type_).await? == wanted).then_some(()))
            },
        )
        .await
    }

    /// The MCS EndpointSlices of `service` in this member.
    pub async fn mcs_slices(&self, namespace: &str, service: &str) -> Result<Vec<DynamicObject>> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &self.slices);
        let list = api
            .list(
                &kube::api::ListParams::default()
                    .labels(&format!("{}={service}", atoll_api::mcs::LABEL_SERVICE_NAME)),
            )
            .await?;
        Ok(list.items)
    }

    /// Ready endpoint addresses of `service`'s MCS slices, by source cluster.
    pub async fn endpoints(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<BTreeMap<String, Vec<String>>> {
        let mut by_cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for slice in self.mcs_slices(namespace, service).await? {
            let cluster = slice
                .labels()
                .get(atoll_api::mcs::LABEL_SOURCE_CLUSTER)
                .cloned()
                .unwrap_or_default();
            let data = atoll_mcs::slices::SliceData::read(&slice).unwrap_or_default();
            let entry = by_cluster.entry(cluster).or_default();
            for endpoint in data.endpoints {
                if endpoint.conditions.ready != Some(false) {
                    entry.extend(endpoint.addresses);
                }
            }
            entry.sort();
        }
        Ok(by_cluster)
    }

    /// The ready pod IPs behind the member's own Service `app` (from its own slices).
    pub async fn local_endpoints(&self, namespace: &str, app: &str) -> Result<Vec<String>> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &self.slices);
        let list = api
            .list(&kube::api::ListParams::default().labels(&format!(
                "kubernetes.io/service-name={app},endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
            )))
            .await?;
        let mut ips = Vec::new();
        for slice in list.items {
            for endpoint in atoll_mcs::slices::SliceData::read(&slice)
                .unwrap_or_default()
                .endpoints
            {
                if endpoint.conditions.ready != Some(false) {
                    ips.extend(endpoint.addresses);
                }
            }
        }
        ips.sort();
        Ok(ips)
    }

    /// Waits until the member's own slices for `app` have `count` ready endpoints.
    pub async fn wait_local_endpoints(
        &self,
        namespace: &str,
        app: &str,
        count: usize,
    ) -> Result<Vec<String>> {
        eventually(
            WAIT,
            &format!(
                "{count} ready endpoints of {namespace}/{app} in {}",
                self.name
            ),
            async || {
                let ips = self.local_endpoints(namespace, app).await?;
                Ok((ips.len() == count).then_some(ips))
            },
        )
        .await
    }
}

/// `dig @addr -p port +short <args>`, one sorted line per record.
pub async fn dig(addr: std::net::SocketAddr, args: &[&str]) -> Result<Vec<String>> {
    let output = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args([
            "-p",
            &addr.port().to_string(),
            "+norecurse",
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .await
        .context("running dig")?;
    if !output.status.success() {
        bail!(
            "dig {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut lines: Vec<String> = String::from_utf8(output.stdout)?
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    Ok(lines)
}
