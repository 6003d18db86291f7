//! The status, Work and MCS controllers run together as `atoll controller` runs them: on one
//! ClusterProfile watch and cache (`inventory::profiles::ProfileFeed`). The hub serves exactly
//! one watch of ClusterProfiles to all of them, counted by kube-apiserver's own metric; each
//! controller still does its job from it, and unjoining a cluster reaches every one.

mod mcs_support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use atoll_api::cluster_profile::{CONDITION_CONTROL_PLANE_HEALTHY, ClusterProfile};
use atoll_api::work::{Manifest, Work, WorkSpec, WorkloadTemplate};
use atoll_controllers::inventory::profiles::ProfileFeed;
use atoll_controllers::inventory::status::HealthConfig;
use atoll_controllers::inventory::{self, UnjoinOptions, cluster_namespace};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use mcs_support::{Fleet, MANAGER_NAMESPACE, Running, Shape, WAIT, eventually};

/// Watches of ClusterProfiles within one namespace that the hub is serving now.
fn namespaced_profile_watches(fleet: &Fleet) -> Result<u64> {
    let output = fleet.testbed.clusters()[0]
        .kubectl()
        .args(["get", "--raw", "/metrics"])
        .output()?;
    ensure!(
        output.status.success(),
        "reading the hub's metrics: {output:?}"
    );
    let metrics = String::from_utf8(output.stdout)?;
    let mut watches = 0;
    for line in metrics.lines() {
        let Some(labels_and_value) = line.strip_prefix("apiserver_longrunning_gauge{") else {
            continue;
        };
        if labels_and_value.contains(r#"resource="clusterprofiles""#)
            && labels_and_value.contains(r#"scope="namespace""#)
            && labels_and_value.contains(r#"verb="WATCH""#)
        {
            let value = labels_and_value
                .rsplit(' ')
                .next()
                .context("a metric without a value")?;
            watches += value.parse::<f64>()? as u64;
        }
    }
    Ok(watches)
}

fn healthy(profile: &ClusterProfile) -> bool {
    profile
        .status
        .as_ref()
        .and_then(|s| atoll_api::conditions::find(&s.conditions, CONDITION_CONTROL_PLANE_HEALTHY))
        .is_some_and(|c| c.status == atoll_api::conditions::TRUE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hub_controllers_share_one_profile_watch() -> Result<()> {
    let fleet = Fleet::start(2).await?;
    let hub = fleet.hub.clone();
    let [c0, c1] = [&fleet.members[0], &fleet.members[1]];
    let before = namespaced_profile_watches(&fleet)?;

    let mut feed = ProfileFeed::new();
    let status_profiles = feed.subscribe();
    let mcs_profiles = feed.subscribe();
    let work_profiles = feed.subscribe();
    let health = HealthConfig {
        period: Duration::from_millis(500),
        ..HealthConfig::default()
    };
    let _controllers = Running(tokio::spawn({
        let hub = hub.clone();
        async move {
            tokio::join!(
                feed.run(hub.clone(), MANAGER_NAMESPACE),
                inventory::status::run_with(
                    hub.clone(),
                    MANAGER_NAMESPACE.into(),
                    health,
                    status_profiles,
                    std::future::pending(),
                ),
                atoll_controllers::mcs::run_with(
                    hub.clone(),
                    MANAGER_NAMESPACE.into(),
                    mcs_profiles,
                    std::future::pending(),
                ),
                atoll_controllers::work::run_with(
                    hub,
                    Default::default(),
                    work_profiles,
                    std::future::pending(),
                ),
            );
        }
    }));

    // Status: both profiles healthy.
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), MANAGER_NAMESPACE);
    for name in ["c0", "c1"] {
        eventually(WAIT, "the profile to turn healthy", async || {
            Ok(profiles.get_opt(name).await?.filter(healthy))
        })
        .await
        .with_context(|| format!("status of {name}"))?;
    }

    // MCS: an export in c1 is imported in c0 (the aggregator finds both clusters in the
    // shared cache).
    let ns = "shared-watch";
    fleet.namespace(ns, &[0, 1]).await?;
    c1.create_service(ns, "web", &Shape::ports(&[("http", 80)]))
        .await?;
    c1.export(ns, "web").await?;
    eventually(WAIT, "c1's export imported in c0", async || {
        Ok(c0.import(ns, "web").await?.filter(|import| {
            import
                .status
                .as_ref()
                .is_some_and(|s| s.clusters.iter().any(|c| c.cluster == c1.id))
        }))
    })
    .await?;

    // Work: a Work in c1's hub namespace reaches c1.
    let works: Api<Work> = Api::namespaced(hub.clone(), &cluster_namespace("c1"));
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "from-hub", "namespace": "default"},
        "data": {"via": "shared-watch"},
    });
    works
        .create(
            &PostParams::default(),
            &Work::new(
                "hello",
                WorkSpec {
                    workload: WorkloadTemplate {
                        manifests: vec![Manifest(manifest)],
                    },
                    delete_option: None,
                    manifest_configs: Vec::new(),
                    apply_strategy: None,
                },
            ),
        )
        .await?;
    let member_configmaps: Api<ConfigMap> = Api::namespaced(c1.client.clone(), "default");
    eventually(WAIT, "the Work's ConfigMap in c1", async || {
        Ok(member_configmaps.get_opt("from-hub").await?)
    })
    .await?;

    // One watch of ClusterProfiles serves all three controllers (read until it shows: a
    // watch the watcher is just renewing is not counted for a moment). Each controller with
    // its own watch, and the aggregator with another, made four.
    eventually(
        WAIT,
        "exactly one namespaced ClusterProfile watch",
        async || {
            let watches = namespaced_profile_watches(&fleet)?.saturating_sub(before);
            Ok((watches == 1).then_some(()))
        },
    )
    .await?;

    // Unjoining c1 reaches the Work controller (its Works are released, so its hub
    // namespace goes) and MCS (c1 leaves c0's import).
    inventory::unjoin(
        &hub,
        &UnjoinOptions {
            name: "c1".into(),
            manager_namespace: MANAGER_NAMESPACE.into(),
            force: false,
            keep_workloads: false,
        },
    )
    .await?;
    let namespaces: Api<Namespace> = Api::all(hub.clone());
    eventually(
        Duration::from_secs(90),
        "c1's hub namespace gone",
        async || {
            Ok(namespaces
                .get_opt(&cluster_namespace("c1"))
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    eventually(WAIT, "c1 gone from c0's import", async || {
        Ok(match c0.import(ns, "web").await? {
            None => Some(()),
            Some(import) => import
                .status
                .as_ref()
                .is_none_or(|s| s.clusters.iter().all(|c| c.cluster != c1.id))
                .then_some(()),
        })
    })
    .await?;
    Ok(())
}
