//! Push mode to a lightweight member: an `atoll hub` API server (in this process, in-memory
//! store) joined with `inventory::join` as a kube-apiserver would be, and the hub-side
//! controller applying, reverting drift and garbage-collecting there through the impersonated
//! `atoll-work` identity. This is what `atoll-bench work-latency --member-kind atoll` relies on.

mod work_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use atoll_api::conditions::TRUE;
use atoll_api::work::{AppliedWork, CONDITION_APPLIED, Work};
use atoll_apiserver::{Hub, HubConfig};
use atoll_controllers::inventory::{
    self, JoinOptions, MEMBER_NAMESPACE, MEMBER_SERVICE_ACCOUNT, MEMBER_TOKEN_SECRET,
    cluster_namespace,
};
use atoll_testbed::{Testbed, TestbedConfig};
use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use work_support::*;

const TOKEN: &str = "lightweight-member-token-0123456789";

/// Starts an `atoll hub` that accepts [`TOKEN`] for the identity `atoll join` creates. It has
/// no service-account token controller, so [`fill_join_token`] plays that part.
async fn atoll_member(dir: &std::path::Path) -> Result<(Hub, Kubeconfig)> {
    let user = format!("system:serviceaccount:{MEMBER_NAMESPACE}:{MEMBER_SERVICE_ACCOUNT}");
    let tokens = dir.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!(
            "{TOKEN},{user},{user},\"system:serviceaccounts,system:serviceaccounts:{MEMBER_NAMESPACE}\"\n"
        ),
    )?;
    let hub = Hub::start(
        Arc::new(atoll_store::memory::MemoryStore::new()),
        HubConfig {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse()?,
            token_file: Some(tokens),
            extra_sans: Vec::new(),
            compaction_interval: None,
            max_token_expiration: atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION,
        },
    )
    .await?;
    let kubeconfig = Kubeconfig::read_from(&hub.admin_kubeconfig)?;
    Ok((hub, kubeconfig))
}

/// Writes the token into the Secret the join requests, as the token controller would.
async fn fill_join_token(member: Client) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(member, MEMBER_NAMESPACE);
    eventually(Duration::from_secs(60), "the join's token Secret", || {
        let secrets = secrets.clone();
        async move { Ok(secrets.get_opt(MEMBER_TOKEN_SECRET).await?.map(|_| ())) }
    })
    .await?;
    let token = base64::engine::general_purpose::STANDARD.encode(TOKEN);
    secrets
        .patch(
            MEMBER_TOKEN_SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"token": token}})),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn works_reach_an_atoll_hub_member_with_drift_reverted_and_deletion_cleaned() -> Result<()> {
    let testbed = Testbed::start(TestbedConfig::with_clusters(1)).await?;
    let hub = testbed.clusters()[0].client().await?;
    atoll_testbed::install_crds(&hub, atoll_api::crds()?).await?;
    let dir = tempfile::tempdir()?;
    let (member_server, kubeconfig) = atoll_member(dir.path()).await?;
    let member = Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
            .await?,
    )?;

    let options = JoinOptions {
        name: "light".into(),
        member_kubeconfig: kubeconfig,
        member_context: None,
        labels: Default::default(),
        cluster_set: "fleet".into(),
        cluster_id: None,
        manager_namespace: inventory::DEFAULT_MANAGER_NAMESPACE.into(),
        token_timeout: Duration::from_secs(60),
    };
    let (joined, token) = tokio::join!(
        inventory::join(&hub, &options),
        fill_join_token(member.clone())
    );
    token?;
    joined?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(atoll_controllers::work::run(
        hub.clone(),
        inventory::DEFAULT_MANAGER_NAMESPACE.into(),
        Default::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let works: Api<Work> = Api::namespaced(hub.clone(), &cluster_namespace("light"));
    create(
        &works,
        &work(
            "hello",
            vec![configmap("hello", "default", json!({"v": "1"}))],
        ),
    )
    .await?;
    work_until(&works, "hello", "applied", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
    })
    .await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(member.clone(), "default");
    let applied = configmaps.get("hello").await?;
    ensure!(applied.data.context("data")?.get("v").map(String::as_str) == Some("1"));
    let record = Api::<AppliedWork>::all(member.clone())
        .list(&Default::default())
        .await?;
    ensure!(
        record
            .items
            .iter()
            .any(|r| r
                .status
                .as_ref()
                .is_some_and(|s| s
                    .applied_resources
                    .iter()
                    .any(|a| a.identifier.name == "hello"
                        && Some(a.uid.as_str()) == applied.metadata.uid.as_deref()))),
        "the member's AppliedWork records the ConfigMap with its uid"
    );

    // Drift in the member is seen through the applier's (metadata-only) watch and reverted.
    configmaps
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "drifted"}})),
        )
        .await?;
    eventually(Duration::from_secs(30), "drift reverted", || async {
        let cm = member_configmap(&member, "default", "hello").await?;
        Ok(cm
            .and_then(|c| c.data)
            .is_some_and(|d| d.get("v").map(String::as_str) == Some("1"))
            .then_some(()))
    })
    .await?;

    // Deleting the Work deletes what it applied, and the finalizer lets the Work go.
    works.delete("hello", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(60), "the Work gone", || async {
        Ok(works.get_opt("hello").await?.is_none().then_some(()))
    })
    .await?;
    ensure!(
        member_configmap(&member, "default", "hello")
            .await?
            .is_none(),
        "the member's ConfigMap is deleted with the Work"
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), controller).await??;
    member_server.shutdown().await;
    Ok(())
}
