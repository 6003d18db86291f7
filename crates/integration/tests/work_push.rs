//! Push mode end to end: clusters joined with `inventory::join`, the hub-side controller
//! running one applier per cluster with the stored (impersonated) credentials, and unjoin
//! releasing the Works so the cluster's hub namespace goes.

mod work_support;

use std::time::Duration;

use anyhow::{Result, ensure};
use atoll_api::conditions::TRUE;
use atoll_api::work::{CONDITION_APPLIED, Work};
use atoll_controllers::inventory::{self, JoinOptions, UnjoinOptions, cluster_namespace};
use atoll_testbed::{Testbed, TestbedConfig};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::config::Kubeconfig;
use serde_json::json;
use work_support::*;

#[tokio::test]
async fn the_controller_applies_each_clusters_works_and_unjoin_releases_them() -> Result<()> {
    let testbed = Testbed::start(TestbedConfig::with_clusters(3)).await?;
    let hub = testbed.clusters()[0].client().await?;
    atoll_testbed::install_crds(&hub, atoll_api::crds()?).await?;
    for (name, cluster) in [
        ("east", &testbed.clusters()[1]),
        ("west", &testbed.clusters()[2]),
    ] {
        inventory::join(
            &hub,
            &JoinOptions {
                name: name.into(),
                member_kubeconfig: Kubeconfig::read_from(cluster.kubeconfig_path())?,
                member_context: None,
                labels: Default::default(),
                cluster_set: "fleet".into(),
                cluster_id: None,
                manager_namespace: inventory::DEFAULT_MANAGER_NAMESPACE.into(),
                token_timeout: Duration::from_secs(60),
            },
        )
        .await?;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(atoll_controllers::work::run(
        hub.clone(),
        inventory::DEFAULT_MANAGER_NAMESPACE.into(),
        Default::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let mut works = Vec::new();
    for name in ["east", "west"] {
        let api: Api<Work> = Api::namespaced(hub.clone(), &cluster_namespace(name));
        // Secrets too: the applier's identity may write any kind, unlike the hub's own.
        create(
            &api,
            &work(
                "hello",
                vec![
                    configmap("hello", "default", json!({"cluster": name})),
                    json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "hello", "namespace": "default"},
                        "stringData": {"k": "v"}}),
                ],
            ),
        )
        .await?;
        works.push(api);
    }
    for (api, (name, index)) in works.iter().zip([("east", 1), ("west", 2)]) {
        work_until(api, "hello", "applied", |w| {
            work_condition(w, CONDITION_APPLIED, TRUE)
        })
        .await?;
        let member = testbed.clusters()[index].client().await?;
        let cm = member_configmap(&member, "default", "hello").await?;
        ensure!(
            cm.and_then(|c| c.data)
                .and_then(|d| d.get("cluster").cloned())
                .as_deref()
                == Some(name),
            "each cluster gets its own Work"
        );
        ensure!(
            Api::<Secret>::namespaced(member, "default")
                .get_opt("hello")
                .await?
                .is_some()
        );
    }

    // Unjoin west: its Work is released, its hub namespace goes, east keeps working.
    inventory::unjoin(
        &hub,
        &UnjoinOptions {
            name: "west".into(),
            manager_namespace: inventory::DEFAULT_MANAGER_NAMESPACE.into(),
            force: false,
            keep_workloads: false,
        },
    )
    .await?;
    eventually(Duration::from_secs(90), "west's namespace gone", || async {
        Ok(Api::<Namespace>::all(hub.clone())
            .get_opt(&cluster_namespace("west"))
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    edit(&works[0], "hello", |spec| {
        spec.workload.manifests[0] = atoll_api::work::Manifest(configmap(
            "hello",
            "default",
            json!({"cluster": "east", "v": "2"}),
        ));
    })
    .await?;
    let east = testbed.clusters()[1].client().await?;
    eventually(Duration::from_secs(30), "east updated", || async {
        let cm = member_configmap(&east, "default", "hello").await?;
        Ok(cm
            .and_then(|c| c.data)
            .is_some_and(|d| d.get("v").map(String::as_str) == Some("2"))
            .then_some(()))
    })
    .await?;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), controller).await??;
    Ok(())
}
