//! Attacks: see the suite's module list in main.rs.
//!
//! The attacker controls one member (a compromised agent in pull mode, or whoever can write
//! the member syncer's objects): it may write anything into its own cluster namespace on the
//! hub, labels included. It must not be able to speak for another cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use atoll_api::about::CLUSTER_ID_PROPERTY;
use atoll_api::cluster_profile::{
    ATOLL_CLUSTER_MANAGER, CONDITION_CLUSTER_ID_CONSISTENT, ClusterManager, ClusterProfile,
    ClusterProfileSpec, LABEL_CLUSTER_MANAGER, LABEL_MODE, MODE_PULL,
};
use atoll_api::conditions;
use atoll_api::mcs::{LABEL_SOURCE_CLUSTER, ServiceExport, ServiceImport};
use atoll_controllers::inventory::LABEL_CLUSTER_NAME;
use atoll_controllers::inventory::pull::{AGENT_STATUS_CONFIGMAP, STATUS_KEY_PROPERTIES};
use atoll_controllers::inventory::status::{self, HealthConfig, REASON_CLUSTER_ID_MISMATCH};
use atoll_integration::eventually;
use atoll_mcs::hub::HubConfig;
use atoll_mcs::{
    ANNOTATION_SERVICE, LABEL_NAMESPACE, LABEL_ROLE, LABEL_SERVICE, MANAGED_BY, ROLE_EXPORT,
    ROLE_IMPORT,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::json;

const MANAGER: &str = "atoll-system";
use crate::support::start_hub;

const PREFIX: &str = "atoll-cluster-";
/// The honest cluster's ID sorts first, so it wins a tie of export ages.
const VICTIM_ID: &str = "id-b-victim";
const ATTACKER_ID: &str = "id-z-attacker";

async fn namespace(hub: &Client, name: &str) -> Result<()> {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    Api::<Namespace>::all(hub.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// A joined cluster as the hub records it: its namespace and its profile with its ID.
async fn joined(hub: &Client, name: &str, id: &str) -> Result<()> {
    namespace(hub, &format!("{PREFIX}{name}")).await?;
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), MANAGER);
    let mut profile = ClusterProfile::new(
        name,
        ClusterProfileSpec {
            display_name: None,
            cluster_manager: ClusterManager {
                name: ATOLL_CLUSTER_MANAGER.into(),
            },
            taints: vec![],
        },
    );
    profile.metadata.labels = Some(BTreeMap::from([(
        LABEL_CLUSTER_MANAGER.to_owned(),
        ATOLL_CLUSTER_MANAGER.to_owned(),
    )]));
    profiles.create(&PostParams::default(), &profile).await?;
    profiles
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"properties": [
                {"name": CLUSTER_ID_PROPERTY, "value": id}
            ]}})),
        )
        .await?;
    Ok(())
}

/// What a member syncer publishes in its cluster namespace: the export of `default/web`
/// claiming `claimed_source`, with one port, and one slice of one endpoint.
async fn publish(
    hub: &Client,
    cluster: &str,
    claimed_source: &str,
    port: i32,
    endpoint: &str,
    slice_type: &ApiResource,
) -> Result<()> {
    let ns = format!("{PREFIX}{cluster}");
    let labels = json!({
        MANAGED_BY.0: MANAGED_BY.1,
        LABEL_ROLE: ROLE_EXPORT,
        LABEL_NAMESPACE: "default",
        LABEL_SERVICE: "web",
        LABEL_SOURCE_CLUSTER: claimed_source,
    });
    let shape = json!({
        "exportCreated": "2024-01-01T00:00:00Z",
        "ports": [{"name": "http", "protocol": "TCP", "port": port}],
    });
    let export: ServiceExport = serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1",
        "kind": "ServiceExport",
        "metadata": {"name": "default.web", "namespace": ns, "labels": labels,
            "annotations": {ANNOTATION_SERVICE: shape.to_string()}},
    }))?;
    Api::<ServiceExport>::namespaced(hub.clone(), &ns)
        .create(&PostParams::default(), &export)
        .await?;
    // The same slice name in both clusters: under a believed label, the attacker's slice
    // would take the victim's import slice name.
    let slice: DynamicObject = serde_json::from_value(json!({
        "apiVersion": slice_type.api_version,
        "kind": "EndpointSlice",
        "metadata": {"name": "default.web-1", "namespace": ns, "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [endpoint], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": port}],
    }))?;
    Api::<DynamicObject>::namespaced_with(hub.clone(), &ns, slice_type)
        .create(&PostParams::default(), &slice)
        .await?;
    Ok(())
}

fn addresses(slice: &DynamicObject) -> Vec<String> {
    slice.data["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// Cluster A's member writes an export and a slice of `default/web` labelled as cluster B's
/// (B's cluster ID in `source-cluster`, B's slice name). B's import slices keep only B's
/// endpoints, A's endpoints are imported as A's, and the conflict is decided by the real IDs
/// (B, whose ID sorts first, wins the port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_claiming_another_clusters_id_cannot_speak_for_it() -> Result<()> {
    let hub = start_hub().await?;
    let client = hub.client.clone();
    namespace(&client, MANAGER).await?;
    joined(&client, "victim", VICTIM_ID).await?;
    joined(&client, "attacker", ATTACKER_ID).await?;
    let slice_type = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice"),
        "endpointslices",
    );
    publish(&client, "victim", VICTIM_ID, 80, "10.0.0.1", &slice_type).await?;
    // The attack: the attacker's own namespace, the victim's identity.
    publish(&client, "attacker", VICTIM_ID, 6666, "6.6.6.6", &slice_type).await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let aggregator = tokio::spawn(atoll_mcs::hub::run(
        HubConfig {
            hub: client.clone(),
            manager_namespace: MANAGER.into(),
            cluster_namespace_prefix: PREFIX.into(),
        },
        async {
            let _ = stopped.await;
        },
    ));

    for cluster in ["victim", "attacker"] {
        let ns = format!("{PREFIX}{cluster}");
        let slices = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &slice_type);
        let imports: Api<ServiceImport> = Api::namespaced(client.clone(), &ns);
        let by_source = eventually(
            Duration::from_secs(30),
            "both clusters' slices imported",
            async || {
                let list = slices
                    .list(&ListParams::default().labels(&format!("{LABEL_ROLE}={ROLE_IMPORT}")))
                    .await?;
                let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for slice in &list.items {
                    let source = slice
                        .labels()
                        .get(LABEL_SOURCE_CLUSTER)
                        .cloned()
                        .unwrap_or_default();
                    by_source
                        .entry(source)
                        .or_default()
                        .extend(addresses(slice));
                }
                Ok((by_source.len() == 2).then_some(by_source))
            },
        )
        .await?;
        ensure!(
            by_source.get(VICTIM_ID) == Some(&vec!["10.0.0.1".to_owned()]),
            "{cluster}: the victim's imported endpoints are only its own: {by_source:?}"
        );
        ensure!(
            by_source.get(ATTACKER_ID) == Some(&vec!["6.6.6.6".to_owned()]),
            "{cluster}: the attacker's endpoints are imported as the attacker's: {by_source:?}"
        );
        let import = imports
            .get("default.web")
            .await
            .context("the import of default/web")?;
        let ports: Vec<i32> = import.spec.ports.iter().map(|p| p.port).collect();
        ensure!(
            ports == [80],
            "{cluster}: the conflict is decided by the real IDs (the victim's port): {ports:?}"
        );
        let clusters: Vec<String> = import
            .status
            .unwrap_or_default()
            .clusters
            .into_iter()
            .map(|c| c.cluster)
            .collect();
        ensure!(
            clusters == [VICTIM_ID, ATTACKER_ID],
            "{cluster}: status.clusters names each cluster by its real ID: {clusters:?}"
        );
    }
    let _ = stop.send(());
    aggregator.await?;
    Ok(())
}

/// A pull cluster's agent (as a compromised agent can) reports `properties` in its status
/// ConfigMap, which the status controller mirrors into the cluster's profile.
async fn agent_reports(hub: &Client, cluster: &str, id: &str) -> Result<()> {
    let ns = format!("{PREFIX}{cluster}");
    let properties = json!({ CLUSTER_ID_PROPERTY: id, "example.com/zone": "z1" });
    let report: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": AGENT_STATUS_CONFIGMAP, "namespace": ns,
            "labels": {LABEL_CLUSTER_NAME: cluster}},
        "data": {STATUS_KEY_PROPERTIES: properties.to_string(), "ready": "true"},
    }))?;
    Api::<ConfigMap>::namespaced(hub.clone(), &ns)
        .patch(
            AGENT_STATUS_CONFIGMAP,
            &PatchParams::apply("attack").force(),
            &Patch::Apply(&report),
        )
        .await?;
    Ok(())
}

/// A member reports another joined cluster's ID as its own `cluster.clusterset.k8s.io` (here
/// through a pull agent's status report; a push member's ClusterProperty reaches the same
/// mirror). The ID recorded at join stays the attacker's profile's ID, so the aggregator never
/// sees two profiles with the victim's ID and keeps importing the victim's service; the
/// attacker's profile says what is wrong (`ClusterIDConsistent=False`, `ClusterIDMismatch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_reporting_another_clusters_id_does_not_change_its_recorded_id() -> Result<()> {
    let hub = start_hub().await?;
    let client = hub.client.clone();
    namespace(&client, MANAGER).await?;
    let profiles: Api<ClusterProfile> = Api::namespaced(client.clone(), MANAGER);
    for (cluster, id) in [("victim", VICTIM_ID), ("attacker", ATTACKER_ID)] {
        joined(&client, cluster, id).await?;
        profiles
            .patch(
                cluster,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {LABEL_MODE: MODE_PULL}}})),
            )
            .await?;
    }
    let slice_type = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice"),
        "endpointslices",
    );
    publish(&client, "victim", VICTIM_ID, 80, "10.0.0.1", &slice_type).await?;
    agent_reports(&client, "victim", VICTIM_ID).await?;
    // The attack: the attacker's member now says it is the victim.
    agent_reports(&client, "attacker", VICTIM_ID).await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = futures::FutureExt::shared(async {
        let _ = stopped.await;
    });
    let statuses = tokio::spawn(status::run(
        client.clone(),
        MANAGER.into(),
        HealthConfig::default(),
        stopped.clone(),
    ));
    let aggregator = tokio::spawn(atoll_mcs::hub::run(
        HubConfig {
            hub: client.clone(),
            manager_namespace: MANAGER.into(),
            cluster_namespace_prefix: PREFIX.into(),
        },
        stopped,
    ));

    let condition = eventually(
        Duration::from_secs(30),
        "the attacker's profile shows the ID mismatch",
        async || {
            let profile = profiles.get("attacker").await?;
            let status = profile.status.unwrap_or_default();
            let mirrored = status.property("example.com/zone").is_some();
            Ok(
                conditions::find(&status.conditions, CONDITION_CLUSTER_ID_CONSISTENT)
                    .filter(|_| mirrored)
                    .cloned()
                    .map(|c| (c, status.property(CLUSTER_ID_PROPERTY).cloned())),
            )
        },
    )
    .await?;
    let (condition, recorded) = condition;
    ensure!(
        condition.status == conditions::FALSE && condition.reason == REASON_CLUSTER_ID_MISMATCH,
        "the condition: {condition:?}"
    );
    ensure!(
        condition.message.contains(VICTIM_ID)
            && condition.message.contains(ATTACKER_ID)
            && condition.message.contains("unjoin"),
        "the message says what was recorded, what is reported, and how to fix it: {}",
        condition.message
    );
    ensure!(
        recorded.map(|p| p.value).as_deref() == Some(ATTACKER_ID),
        "the recorded ID stays the attacker's own"
    );
    let victim = profiles.get("victim").await?.status.unwrap_or_default();
    ensure!(
        victim
            .property(CLUSTER_ID_PROPERTY)
            .map(|p| p.value.as_str())
            == Some(VICTIM_ID)
            && conditions::find(&victim.conditions, CONDITION_CLUSTER_ID_CONSISTENT).is_none(),
        "the victim's profile is untouched: {victim:?}"
    );

    // The victim's service is still imported as the victim's, everywhere.
    for cluster in ["victim", "attacker"] {
        let ns = format!("{PREFIX}{cluster}");
        let slices = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &slice_type);
        let imports: Api<ServiceImport> = Api::namespaced(client.clone(), &ns);
        eventually(
            Duration::from_secs(30),
            "the victim's service imported",
            async || {
                let Some(import) = imports.get_opt("default.web").await? else {
                    return Ok(None);
                };
                let clusters: Vec<String> = import
                    .status
                    .unwrap_or_default()
                    .clusters
                    .into_iter()
                    .map(|c| c.cluster)
                    .collect();
                let list = slices
                    .list(&ListParams::default().labels(&format!("{LABEL_ROLE}={ROLE_IMPORT}")))
                    .await?;
                let victims: Vec<String> = list
                    .items
                    .iter()
                    .filter(|s| {
                        s.labels().get(LABEL_SOURCE_CLUSTER).map(String::as_str) == Some(VICTIM_ID)
                    })
                    .flat_map(addresses)
                    .collect();
                Ok((clusters == [VICTIM_ID] && victims == ["10.0.0.1"]).then_some(()))
            },
        )
        .await?;
    }
    let _ = stop.send(());
    statuses.await?;
    aggregator.await?;
    Ok(())
}

/// A compromised agent reports its member lacks the MCS CRDs with a megabyte-sized sentence,
/// and tries to speak for another cluster by naming it. Its own profile gets the condition
/// with at most a sentence of its text; the other cluster's profile is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_report_of_missing_mcs_crds_is_bounded_and_its_own() -> Result<()> {
    use atoll_controllers::inventory::pull::STATUS_KEY_MCS_CRDS_MISSING;
    use atoll_controllers::mcs::{CONDITION_MCS_READY, REASON_CRDS_MISSING};
    let hub = start_hub().await?;
    let client = hub.client.clone();
    namespace(&client, MANAGER).await?;
    let profiles: Api<ClusterProfile> = Api::namespaced(client.clone(), MANAGER);
    for (cluster, id) in [("victim", VICTIM_ID), ("attacker", ATTACKER_ID)] {
        joined(&client, cluster, id).await?;
        profiles
            .patch(
                cluster,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {LABEL_MODE: MODE_PULL}}})),
            )
            .await?;
    }
    let ns = format!("{PREFIX}attacker");
    let flood = format!("cluster victim: {}", "x".repeat(900 * 1024));
    let report: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": AGENT_STATUS_CONFIGMAP, "namespace": ns,
            "labels": {LABEL_CLUSTER_NAME: "victim"}},
        "data": {STATUS_KEY_MCS_CRDS_MISSING: flood, "ready": "ok"},
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(
            AGENT_STATUS_CONFIGMAP,
            &PatchParams::apply("attack").force(),
            &Patch::Apply(&report),
        )
        .await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let statuses = tokio::spawn(status::run(
        client.clone(),
        MANAGER.into(),
        HealthConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let condition = eventually(
        Duration::from_secs(30),
        "the attacker's profile says MCS is paused",
        || async {
            let profile = profiles.get("attacker").await?;
            Ok(profile
                .status
                .and_then(|s| conditions::find(&s.conditions, CONDITION_MCS_READY).cloned()))
        },
    )
    .await?;
    ensure!(condition.status == conditions::FALSE && condition.reason == REASON_CRDS_MISSING);
    ensure!(
        condition.message.len() < 1024,
        "at most a sentence of the agent's text: {} bytes",
        condition.message.len()
    );
    let victim = profiles.get("victim").await?;
    ensure!(
        victim
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, CONDITION_MCS_READY))
            .is_none(),
        "the report speaks only for the attacker's own cluster"
    );
    let _ = stop.send(());
    statuses.await?;
    Ok(())
}
