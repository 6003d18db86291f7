//! Shared helpers for the Work API tests: a hub (cluster 0, with Atoll's CRDs) and members,
//! an applier running in the test process, and polling.

#![allow(dead_code)] // each test binary uses its own subset

use std::time::Duration;

use anyhow::{Result, bail};
use atoll_api::conditions;
use atoll_api::work::{Manifest, ManifestCondition, Work, WorkSpec, WorkloadTemplate};
use atoll_testbed::{Testbed, TestbedConfig};
use atoll_work::ApplierConfig;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The hub namespace of the member the tests apply to.
pub const NAMESPACE: &str = "atoll-cluster-member";

pub struct Fleet {
    pub testbed: Testbed,
    pub hub: Client,
    pub member: Client,
    pub works: Api<Work>,
}

/// A hub with Atoll's CRDs and the cluster namespace, and one member (with a controller
/// manager, so garbage collection and Deployments work).
pub async fn fleet() -> Result<Fleet> {
    let testbed = Testbed::start(TestbedConfig::with_clusters(2)).await?;
    let hub = testbed.clusters()[0].client().await?;
    atoll_testbed::install_crds(&hub, atoll_api::crds()?).await?;
    let mut ns = Namespace::default();
    ns.metadata.name = Some(NAMESPACE.into());
    Api::<Namespace>::all(hub.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let member = testbed.clusters()[1].client().await?;
    let works = Api::namespaced(hub.clone(), NAMESPACE);
    Ok(Fleet {
        testbed,
        hub,
        member,
        works,
    })
}

/// An applier running in this process until stopped.
pub struct Applier {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Applier {
    pub fn start(works: Api<Work>, member: Client) -> Applier {
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ApplierConfig {
            resync_period: Duration::from_secs(30),
            max_backoff: Duration::from_secs(5),
            ..Default::default()
        };
        let task = tokio::spawn(atoll_work::run(works, member, config, async move {
            let _ = stopped.await;
        }));
        Applier {
            stop: Some(stop),
            task,
        }
    }

    /// Stops it cleanly and waits until it has.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task).await??;
        Ok(())
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn work(name: &str, manifests: Vec<Value>) -> Work {
    Work::new(
        name,
        WorkSpec {
            workload: WorkloadTemplate {
                manifests: manifests.into_iter().map(Manifest).collect(),
            },
            delete_option: None,
            manifest_configs: Vec::new(),
            apply_strategy: None,
        },
    )
}

pub async fn create(works: &Api<Work>, work: &Work) -> Result<Work> {
    Ok(works.create(&PostParams::default(), work).await?)
}

/// Replaces a Work's spec (retrying on conflicts with the applier's writes).
pub async fn edit(works: &Api<Work>, name: &str, change: impl Fn(&mut WorkSpec)) -> Result<()> {
    for _ in 0..10 {
        let mut work = works.get(name).await?;
        change(&mut work.spec);
        match works.replace(name, &PostParams::default(), &work).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("could not edit Work {name}: conflicts")
}

// Like the rest of this module, not every suite that includes it waits.
#[allow(unused_imports)]
pub use atoll_integration::eventually;

/// The Work once `accept` holds for it (60 s at most), or an error with its last status.
pub async fn work_until(
    works: &Api<Work>,
    name: &str,
    what: &str,
    accept: impl Fn(&Work) -> bool,
) -> Result<Work> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let work = works.get(name).await?;
        if accept(&work) {
            return Ok(work);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "timed out waiting for {what}; last status: {}",
                serde_json::to_string_pretty(&work.status)?
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Work condition of this type has this status.
pub fn work_condition(work: &Work, type_: &str, status: &str) -> bool {
    work.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, type_))
        .is_some_and(|c| c.status == status && c.observed_generation == work.metadata.generation)
}

/// The manifest condition of the manifest with this ordinal.
pub fn manifest(work: &Work, ordinal: i64) -> Option<&ManifestCondition> {
    work.status
        .as_ref()?
        .manifest_conditions
        .iter()
        .find(|m| m.identifier.ordinal == ordinal)
}

pub fn manifest_condition<'a>(
    work: &'a Work,
    ordinal: i64,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions::find(&manifest(work, ordinal)?.conditions, type_)
}

pub fn configmap(name: &str, namespace: &str, data: Value) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    })
}

/// A ConfigMap's data in the member, if it exists.
pub async fn member_configmap(
    member: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<k8s_openapi::api::core::v1::ConfigMap>> {
    Ok(Api::namespaced(member.clone(), namespace)
        .get_opt(name)
        .await?)
}

pub fn uid<K: kube::Resource>(object: &K) -> String {
    object.uid().unwrap_or_default()
}

/// Waits until the API server behind `client` answers again.
pub async fn wait_ready(client: &Client) -> Result<()> {
    eventually(
        Duration::from_secs(90),
        "the API server to answer",
        || async { Ok(client.apiserver_version().await.ok().map(|_| ())) },
    )
    .await
}
