//! Push-mode join and unjoin against both kinds of hub (a test-bed kube-apiserver with Atoll's
//! CRDs, and `atoll hub`), with real kube-apiservers as members.

mod common;

use common::hub::{Fleet, HubKind};

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use atoll_api::about::{CLUSTER_ID_PROPERTY, CLUSTER_SET_PROPERTY, ClusterProperty};
use atoll_api::cluster_profile::{ClusterProfile, LABEL_CLUSTER_MANAGER};
use atoll_api::work::Work;
use atoll_controllers::inventory::{
    self, JoinError, JoinOptions, UnjoinOptions, cluster_namespace, member_from_secret,
};
use atoll_testbed::Cluster;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::config::Kubeconfig;

const SET: &str = "fleet-a";

crate::on_both_hubs!(
    join_then_unjoin_leaves_the_member_as_it_was,
    collisions_and_bad_kubeconfigs_are_refused_and_leave_nothing_behind,
    an_operator_set_cluster_id_is_kept_and_what_atoll_did_not_create_stays,
    a_hub_that_restarts_during_a_join_converges_after_joining_again,
    unjoin_deletes_what_the_works_applied_as_their_delete_options_say,
    unjoin_keep_workloads_leaves_what_the_works_applied,
    unjoin_of_an_unreachable_member_says_what_force_leaves,
);

fn options(name: &str, member: &Cluster) -> Result<JoinOptions> {
    options_from(name, member.kubeconfig_path())
}

fn options_from(name: &str, kubeconfig: &std::path::Path) -> Result<JoinOptions> {
    Ok(JoinOptions {
        name: name.to_owned(),
        member_kubeconfig: Kubeconfig::read_from(kubeconfig)?,
        member_context: None,
        labels: [("env".to_owned(), "test".to_owned())].into(),
        cluster_set: SET.to_owned(),
        cluster_id: None,
        manager_namespace: inventory::DEFAULT_MANAGER_NAMESPACE.to_owned(),
        token_timeout: Duration::from_secs(60),
    })
}

fn unjoin_options(name: &str) -> UnjoinOptions {
    UnjoinOptions {
        name: name.to_owned(),
        manager_namespace: inventory::DEFAULT_MANAGER_NAMESPACE.to_owned(),
        force: false,
        keep_workloads: false,
    }
}

async fn join_then_unjoin_leaves_the_member_as_it_was(kind: HubKind) -> Result<()> {
    let fleet = Fleet::start(kind, 1).await?;
    let member_cluster = &fleet.members()[0];
    let hub = fleet.hub().await?;
    let member = member_cluster.client().await?;
    let before = common::snapshot(&member).await?;

    let joined = inventory::join(&hub, &options("member-1", member_cluster)?).await?;
    let kube_system_uid = Api::<Namespace>::all(member.clone())
        .get("kube-system")
        .await?
        .uid()
        .context("kube-system uid")?;
    ensure!(
        joined.cluster_id == kube_system_uid,
        "default cluster ID is kube-system's UID"
    );
    ensure!(joined.created);

    // Member: the About API says who it is and where it belongs.
    let properties: Api<ClusterProperty> = Api::all(member.clone());
    ensure!(properties.get(CLUSTER_ID_PROPERTY).await?.spec.value == kube_system_uid);
    ensure!(properties.get(CLUSTER_SET_PROPERTY).await?.spec.value == SET);

    // Hub: profile, namespace, credentials.
    let profiles: Api<ClusterProfile> =
        Api::namespaced(hub.clone(), inventory::DEFAULT_MANAGER_NAMESPACE);
    let profile = profiles.get("member-1").await?;
    ensure!(profile.spec.cluster_manager.name == "atoll");
    ensure!(
        profile
            .labels()
            .get(LABEL_CLUSTER_MANAGER)
            .map(String::as_str)
            == Some("atoll")
    );
    ensure!(profile.labels().get("env").map(String::as_str) == Some("test"));
    let status = profile.status.clone().context("profile status")?;
    ensure!(
        atoll_api::conditions::is_true(&status.conditions, "Joined"),
        "{:?}",
        status.conditions
    );
    ensure!(
        status
            .version
            .as_ref()
            .and_then(|v| v.kubernetes.as_deref())
            == Some("v1.20.2"),
        "version from the member's /version"
    );
    let property = |name: &str| status.property(name).map(|p| p.value.clone());
    ensure!(property(CLUSTER_ID_PROPERTY) == Some(kube_system_uid.clone()));
    ensure!(property(CLUSTER_SET_PROPERTY).as_deref() == Some(SET));
    let provider = status.access_providers.first().context("access provider")?;
    ensure!(
        provider
            .cluster
            .as_ref()
            .map(|c| c.server.trim_end_matches('/'))
            == Some(member_cluster.url().trim_end_matches('/'))
    );
    // The credentials are in the manager namespace, none in the tenants' cluster namespace.
    let namespace = cluster_namespace("member-1");
    let manager_secrets: Api<Secret> =
        Api::namespaced(hub.clone(), inventory::DEFAULT_MANAGER_NAMESPACE);
    manager_secrets
        .get(&inventory::member_kubeconfig_secret("member-1"))
        .await?;
    ensure!(
        Api::<Secret>::namespaced(hub.clone(), &namespace)
            .get_opt(inventory::MEMBER_KUBECONFIG_SECRET)
            .await?
            .is_none()
    );

    // The stored credential works, and has least privilege in the member.
    let as_hub = member_from_secret(&hub, inventory::DEFAULT_MANAGER_NAMESPACE, "member-1")
        .await?
        .context("member credentials")?;
    ensure!(as_hub.apiserver_version().await?.git_version == "v1.20.2");
    Api::<ClusterProperty>::all(as_hub.clone())
        .list(&ListParams::default())
        .await?;
    match Api::<Secret>::all(as_hub.clone())
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => bail!("Atoll's member identity can list secrets: {other:?}"),
    }

    // Joining again completes nothing new and fails nothing.
    let again = inventory::join(&hub, &options("member-1", member_cluster)?).await?;
    ensure!(!again.created && again.cluster_id == kube_system_uid);

    let unjoined = inventory::unjoin(&hub, &unjoin_options("member-1")).await?;
    ensure!(unjoined.member_cleaned);
    ensure!(!unjoined.kept_cluster_property_crd, "Atoll installed it");
    ensure!(profiles.get_opt("member-1").await?.is_none());
    ensure!(
        manager_secrets
            .get_opt(&inventory::member_kubeconfig_secret("member-1"))
            .await?
            .is_none(),
        "unjoin removes the stored credentials"
    );

    // The member converges to exactly what it had: namespaces and CRDs take a moment to go.
    common::converges_to(&member, &before).await?;

    // Unjoining what is not joined is a clear error.
    match inventory::unjoin(&hub, &unjoin_options("member-1")).await {
        Err(JoinError::NotJoined { .. }) => {}
        other => bail!("expected NotJoined, got {other:?}"),
    }
    Ok(())
}

async fn collisions_and_bad_kubeconfigs_are_refused_and_leave_nothing_behind(
    kind: HubKind,
) -> Result<()> {
    let fleet = Fleet::start(kind, 1).await?;
    let member_cluster = &fleet.members()[0];
    let hub = fleet.hub().await?;
    // Another cluster to join under taken names: the hub itself, whichever kind it is.
    let hub_kubeconfig = fleet.hub_kubeconfig_path()?;
    inventory::join(&hub, &options("member-1", member_cluster)?).await?;
    let hub_before = common::snapshot(&hub).await?;

    // The same member under another name: its cluster ID is taken.
    match inventory::join(&hub, &options("member-2", member_cluster)?).await {
        Err(JoinError::DuplicateClusterId {
            existing_cluster, ..
        }) => ensure!(existing_cluster == "member-1"),
        other => bail!("expected DuplicateClusterId, got {other:?}"),
    }

    // Another cluster (the hub itself) under the taken name.
    match inventory::join(&hub, &options_from("member-1", &hub_kubeconfig)?).await {
        Err(JoinError::NameCollision { name, .. }) => ensure!(name == "member-1"),
        other => bail!("expected NameCollision, got {other:?}"),
    }

    // A cluster ID that is not an RFC-1123 subdomain.
    let mut bad_id = options_from("member-3", &hub_kubeconfig)?;
    bad_id.cluster_id = Some("Not_A_Subdomain".into());
    match inventory::join(&hub, &bad_id).await {
        Err(e @ JoinError::InvalidClusterId(_)) => {
            ensure!(e.to_string().contains("RFC-1123"), "{e}")
        }
        other => bail!("expected InvalidClusterId, got {other:?}"),
    }

    // A member whose API server is not there.
    let mut unreachable = options_from("member-4", &hub_kubeconfig)?;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    for cluster in &mut unreachable.member_kubeconfig.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(format!("https://127.0.0.1:{closed_port}"));
        }
    }
    match inventory::join(&hub, &unreachable).await {
        Err(e @ JoinError::MemberUnreachable { .. }) => {
            ensure!(e.to_string().contains("cannot reach"), "{e}")
        }
        other => bail!("expected MemberUnreachable, got {other:?}"),
    }

    // A member whose certificate is not signed by the kubeconfig's CA: the member's URL with
    // the hub's CA.
    let mut wrong_ca = options_from("member-5", &hub_kubeconfig)?;
    for cluster in &mut wrong_ca.member_kubeconfig.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(member_cluster.url());
        }
    }
    match inventory::join(&hub, &wrong_ca).await {
        Err(e @ JoinError::MemberUnreachable { .. }) => {
            ensure!(e.to_string().contains("CA"), "{e}")
        }
        other => bail!("expected MemberUnreachable for a wrong CA, got {other:?}"),
    }

    // None of the refused joins left anything on the hub.
    let hub_after = common::snapshot(&hub).await?;
    let added: Vec<_> = hub_after.difference(&hub_before).collect();
    ensure!(
        added.is_empty(),
        "refused joins left objects on the hub: {added:#?}"
    );
    Ok(())
}

async fn an_operator_set_cluster_id_is_kept_and_what_atoll_did_not_create_stays(
    kind: HubKind,
) -> Result<()> {
    let fleet = Fleet::start(kind, 1).await?;
    let member_cluster = &fleet.members()[0];
    let hub = fleet.hub().await?;
    let member = member_cluster.client().await?;

    // The member's operators installed the About API themselves and named the cluster.
    let about_crd = atoll_api::crds()?
        .into_iter()
        .filter(|c| c.spec.group == atoll_api::about::GROUP);
    atoll_testbed::install_crds(&member, about_crd).await?;
    let properties: Api<ClusterProperty> = Api::all(member.clone());
    properties
        .create(
            &kube::api::PostParams::default(),
            &ClusterProperty::new(
                CLUSTER_ID_PROPERTY,
                atoll_api::about::ClusterPropertySpec {
                    value: "eu-west-7".into(),
                },
            ),
        )
        .await?;
    let before = common::snapshot(&member).await?;

    let joined = inventory::join(&hub, &options("member-1", member_cluster)?).await?;
    ensure!(
        joined.cluster_id == "eu-west-7",
        "the member's own ID is kept"
    );

    // Asking for another ID is refused, not silently ignored.
    let mut other_id = options("member-1", member_cluster)?;
    other_id.cluster_id = Some("something-else".into());
    match inventory::join(&hub, &other_id).await {
        Err(e @ JoinError::ClusterIdMismatch { .. }) => {
            ensure!(e.to_string().contains("eu-west-7"), "{e}")
        }
        other => bail!("expected ClusterIdMismatch, got {other:?}"),
    }

    let unjoined = inventory::unjoin(&hub, &unjoin_options("member-1")).await?;
    ensure!(
        unjoined.kept_cluster_property_crd,
        "unjoin says the operators' CRD stayed"
    );
    // The operators' CRD and ID stay; only Atoll's own objects went.
    ensure!(properties.get(CLUSTER_ID_PROPERTY).await?.spec.value == "eu-west-7");
    ensure!(properties.get_opt(CLUSTER_SET_PROPERTY).await?.is_none());
    common::converges_to(&member, &before).await
}

async fn a_hub_that_restarts_during_a_join_converges_after_joining_again(
    kind: HubKind,
) -> Result<()> {
    let fleet = Fleet::start(kind, 1).await?;
    let member_cluster = &fleet.members()[0];
    let hub = fleet.hub().await?;
    let member = member_cluster.client().await?;
    let before = common::snapshot(&member).await?;

    // The hub dies once the join has written the member's side, before it reaches the hub's.
    let join = tokio::spawn({
        let hub = hub.clone();
        let options = options("member-1", member_cluster)?;
        async move { inventory::join(&hub, &options).await }
    });
    let properties: Api<ClusterProperty> = Api::all(member.clone());
    common::eventually(
        Duration::from_secs(30),
        "the join writing the member",
        async || {
            let written = matches!(properties.get_opt(CLUSTER_SET_PROPERTY).await, Ok(Some(_)));
            Ok((written || join.is_finished()).then_some(()))
        },
    )
    .await?;
    fleet.kill_hub().await?;
    let first = join.await?;
    if let Err(error) = &first {
        let message = error.to_string();
        ensure!(
            message.starts_with("hub:"),
            "a failed join says the hub failed: {message}"
        );
    }
    fleet.restart_hub().await?;

    // Joining again (the operator's retry) completes the cluster; nothing is duplicated.
    let hub = fleet.hub().await?;
    let joined = inventory::join(&hub, &options("member-1", member_cluster)?).await?;
    let profiles: Api<ClusterProfile> =
        Api::namespaced(hub.clone(), inventory::DEFAULT_MANAGER_NAMESPACE);
    let profile = profiles.get("member-1").await?;
    ensure!(atoll_api::conditions::is_true(
        &profile.status.unwrap_or_default().conditions,
        "Joined"
    ));
    ensure!(
        profiles.list(&ListParams::default()).await?.items.len() == 1,
        "one profile"
    );
    ensure!(properties.get(CLUSTER_ID_PROPERTY).await?.spec.value == joined.cluster_id);

    // And unjoin still leaves the member exactly as it was.
    inventory::unjoin(&hub, &unjoin_options("member-1")).await?;
    common::converges_to(&member, &before).await?;
    Ok(())
}

/// A Work of ConfigMaps in `default`, with a delete option given as JSON.
fn configmap_work(
    name: &str,
    configmaps: &[&str],
    delete_option: serde_json::Value,
) -> Result<Work> {
    let manifests: Vec<serde_json::Value> = configmaps
        .iter()
        .map(|cm| {
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": cm, "namespace": "default"}, "data": {"k": "v"}})
        })
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "Work",
        "metadata": {"name": name},
        "spec": {"workload": {"manifests": manifests}, "deleteOption": delete_option},
    }))?)
}

/// Joins member-1, runs the push-mode Work controller, creates `works` and waits until every
/// ConfigMap they name is in the member. Returns the controller's stop handle.
async fn joined_with_works(
    hub: &kube::Client,
    member_cluster: &Cluster,
    works: &[Work],
) -> Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    inventory::join(hub, &options("member-1", member_cluster)?).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(atoll_controllers::work::run(
        hub.clone(),
        inventory::DEFAULT_MANAGER_NAMESPACE.into(),
        Default::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let api: Api<Work> = Api::namespaced(hub.clone(), &cluster_namespace("member-1"));
    for work in works {
        api.create(&kube::api::PostParams::default(), work).await?;
    }
    let member = member_cluster.client().await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(member, "default");
    for work in works {
        for manifest in &work.spec.workload.manifests {
            let name = manifest.0["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            common::eventually(
                Duration::from_secs(60),
                "a Work's ConfigMap applied",
                async || Ok(configmaps.get_opt(&name).await?.map(|_| ())),
            )
            .await?;
        }
    }
    Ok((stop, controller))
}

async fn present(member: &kube::Client, names: &[&str]) -> Result<Vec<String>> {
    let configmaps: Api<ConfigMap> = Api::namespaced(member.clone(), "default");
    let mut found = Vec::new();
    for name in names {
        if configmaps.get_opt(name).await?.is_some() {
            found.push((*name).to_owned());
        }
    }
    Ok(found)
}

/// As Karmada and OCM do: unjoining deletes what the cluster's Works applied, each Work's
/// `deleteOption` deciding (Foreground deletes, Orphan keeps, SelectivelyOrphan keeps what it
/// lists), while a Work controller is still running; the AppliedWork records and their CRD go.
async fn unjoin_deletes_what_the_works_applied_as_their_delete_options_say(
    kind: HubKind,
) -> Result<()> {
    let fleet = Fleet::start(kind, 1).await?;
    let member_cluster = &fleet.members()[0];
    let hub = fleet.hub().await?;
    let member = member_cluster.client().await?;
    let works = [
        configmap_work("plain", &["plain-cm"], serde_json::Value::Null)?,
        configmap_work(
            "orphan",
            &["orphan-cm"],
            serde_json::json!({"propagationPolicy": "Orphan"}),
        )?,
        configmap_work(
            "selective",
            &["selective-kept", "selective-gone"],
            serde_json::json!({"propagationPolicy": "SelectivelyOrphan", "selectivelyOrphans": {
                "orphaningRules": [{"resource": "configmaps", "namespace": "default", "name": "selective-kept"}]}}),
        )?,
    ];
    let (stop, controller) = joined_with_works(&hub, member_cluster, &works).await?;

    let unjoined = inventory::unjoin(&hub, &unjoin_options("member-1")).await?;
    ensure!(unjoined.member_cleaned);
    let all = ["plain-cm", "orphan-cm", "selective-kept", "selective-gone"];
    ensure!(
        present(&member, &all).await? == ["orphan-cm", "selective-kept"],
        "left in the member: {:?}",
        present(&member, &all).await?
    );
    let names = |set: &std::collections::BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>();
    ensure!(
        names(&unjoined.workloads.deleted)
            == [
                "ConfigMap default/plain-cm",
                "ConfigMap default/selective-gone"
            ],
        "{unjoined:?}"
    );
    ensure!(
        names(&unjoined.workloads.kept)
            == [
                "ConfigMap default/orphan-cm",
                "ConfigMap default/selective-kept"
            ],
        "{unjoined:?}"
    );
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(member.clone());
    common::eventually(
        Duration::from_secs(30),
        "the AppliedWork CRD gone",
        async || {
            Ok(crds
                .get_opt("appliedworks.multicluster.x-k8s.io")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    let _ = stop.send(());
    controller.await?;
    Ok(())
}

/// `atoll unjoin --keep-workloads`: everything the Works applied stays (even a Work that
/// asked for Foreground deletion, and with its applier still running), untracked.
async fn unjoin_keep_workloads_leaves_what_the_works_applied(kind: HubKind) -> Result<()> {
    let fleet = Fleet::start(kind, 1).await?;
    let member_cluster = &fleet.members()[0];
    let hub = fleet.hub().await?;
    let member = member_cluster.client().await?;
    let works = [configmap_work(
        "plain",
        &["plain-cm"],
        serde_json::Value::Null,
    )?];
    let (stop, controller) = joined_with_works(&hub, member_cluster, &works).await?;

    let mut keep = unjoin_options("member-1");
    keep.keep_workloads = true;
    let unjoined = inventory::unjoin(&hub, &keep).await?;
    ensure!(unjoined.member_cleaned);
    ensure!(unjoined.workloads.deleted.is_empty(), "{unjoined:?}");
    ensure!(
        unjoined.workloads.kept.iter().collect::<Vec<_>>() == ["ConfigMap default/plain-cm"],
        "{unjoined:?}"
    );
    // Once the hub has let the cluster's Works go, the ConfigMap is still there.
    common::eventually(
        Duration::from_secs(90),
        "the cluster namespace gone",
        async || {
            Ok(Api::<Namespace>::all(hub.clone())
                .get_opt(&cluster_namespace("member-1"))
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    ensure!(present(&member, &["plain-cm"]).await? == ["plain-cm"]);
    let _ = stop.send(());
    controller.await?;
    Ok(())
}

/// Unjoining a member that does not answer fails, names `--force` and what it would leave,
/// and keeps the cluster joined; `--force` then removes it from the hub.
async fn unjoin_of_an_unreachable_member_says_what_force_leaves(kind: HubKind) -> Result<()> {
    let fleet = Fleet::start(kind, 1).await?;
    let member_cluster = &fleet.members()[0];
    let hub = fleet.hub().await?;
    inventory::join(&hub, &options("member-1", member_cluster)?).await?;
    member_cluster.kill_apiserver();
    let error = match inventory::unjoin(&hub, &unjoin_options("member-1")).await {
        Err(error @ JoinError::MemberNotCleaned { .. }) => error.to_string(),
        other => bail!("expected MemberNotCleaned, got {other:?}"),
    };
    ensure!(
        error.contains("--force") && error.contains("Works applied"),
        "{error}"
    );
    let profiles: Api<ClusterProfile> =
        Api::namespaced(hub.clone(), inventory::DEFAULT_MANAGER_NAMESPACE);
    ensure!(
        profiles.get_opt("member-1").await?.is_some(),
        "still joined"
    );
    let mut force = unjoin_options("member-1");
    force.force = true;
    let unjoined = inventory::unjoin(&hub, &force).await?;
    ensure!(!unjoined.member_cleaned);
    ensure!(profiles.get_opt("member-1").await?.is_none());
    Ok(())
}
