//! The ClusterProfile status controller and leader election, against both kinds of hub (a
//! test-bed kube-apiserver and `atoll hub`), with real kube-apiservers as members.

mod common;

use common::hub::{Fleet, HubKind};

use std::time::Duration;

use anyhow::{Context, Result};
use atoll_api::about::{ClusterProperty, ClusterPropertySpec};
use atoll_api::cluster_profile::{
    CONDITION_CONTROL_PLANE_HEALTHY, ClusterProfile, TAINT_UNREACHABLE, TaintEffect,
};
use atoll_controllers::inventory::{self, JoinOptions, status::HealthConfig};
use atoll_controllers::leader::{Elector, LeaseConfig};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::Kubeconfig;

fn condition(profile: &ClusterProfile) -> Option<(String, String)> {
    let status = profile.status.as_ref()?;
    atoll_api::conditions::find(&status.conditions, CONDITION_CONTROL_PLANE_HEALTHY)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid}");
    Ok(())
}

crate::on_both_hubs!(
    profiles_follow_member_health_and_properties,
    one_leader_at_a_time_and_a_released_lease_passes_on,
);

async fn profiles_follow_member_health_and_properties(kind: HubKind) -> Result<()> {
    let fleet = Fleet::start(kind, 1).await?;
    let member_cluster = &fleet.members()[0];
    let hub = fleet.hub().await?;
    let member = member_cluster.client().await?;
    inventory::join(
        &hub,
        &JoinOptions {
            name: "member-1".into(),
            member_kubeconfig: Kubeconfig::read_from(member_cluster.kubeconfig_path())?,
            member_context: None,
            labels: Default::default(),
            cluster_set: "set".into(),
            cluster_id: None,
            manager_namespace: inventory::DEFAULT_MANAGER_NAMESPACE.into(),
            token_timeout: Duration::from_secs(60),
        },
    )
    .await?;

    let health = HealthConfig {
        period: Duration::from_millis(500),
        timeout: Duration::from_secs(1),
        failure_threshold: 2,
        success_threshold: 1,
        ..HealthConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(inventory::status::run(
        hub.clone(),
        inventory::DEFAULT_MANAGER_NAMESPACE.into(),
        health,
        async {
            let _ = stopped.await;
        },
    ));
    let profiles: Api<ClusterProfile> =
        Api::namespaced(hub.clone(), inventory::DEFAULT_MANAGER_NAMESPACE);
    let get = async || -> Result<ClusterProfile> { Ok(profiles.get("member-1").await?) };

    common::eventually(
        Duration::from_secs(30),
        "ControlPlaneHealthy=True",
        async || {
            let profile = get().await?;
            Ok((condition(&profile) == Some(("True".into(), "Ready".into()))).then_some(()))
        },
    )
    .await?;

    // A new ClusterProperty in the member shows in the profile; a deleted one goes away.
    let properties: Api<ClusterProperty> = Api::all(member.clone());
    properties
        .create(
            &PostParams::default(),
            &ClusterProperty::new(
                "region.example.com",
                ClusterPropertySpec {
                    value: "eu-1".into(),
                },
            ),
        )
        .await?;
    let mirrored = common::eventually(
        Duration::from_secs(15),
        "the property mirrored",
        async || {
            let status = get().await?.status.unwrap_or_default();
            Ok(status.property("region.example.com").cloned())
        },
    )
    .await?;
    anyhow::ensure!(mirrored.value == "eu-1" && mirrored.last_observed_time.is_some());
    properties
        .delete("region.example.com", &DeleteParams::default())
        .await?;
    common::eventually(Duration::from_secs(15), "the property gone", async || {
        let status = get().await?.status.unwrap_or_default();
        Ok(status
            .property("region.example.com")
            .is_none()
            .then_some(()))
    })
    .await?;

    // Freeze the member's API server: the cluster turns unhealthy, then recovers.
    let apiserver = *member_cluster.pids().first().context("apiserver pid")?;
    signal(apiserver, "STOP")?;
    let outcome = common::eventually(
        Duration::from_secs(30),
        "ControlPlaneHealthy=False",
        async || {
            let profile = get().await?;
            Ok(condition(&profile).filter(|(status, _)| status == "False"))
        },
    )
    .await;
    let tainted = match &outcome {
        Ok(_) => common::eventually(
            Duration::from_secs(10),
            "the unreachable taint",
            async || {
                let taints = get().await?.spec.taints;
                Ok(taints.into_iter().find(|t| t.key == TAINT_UNREACHABLE))
            },
        )
        .await
        .map(Some),
        Err(_) => Ok(None),
    };
    signal(apiserver, "CONT")?;
    let (_, reason) = outcome?;
    anyhow::ensure!(reason == "Unreachable", "reason {reason}");
    let taint = tainted?.context("no taint")?;
    anyhow::ensure!(taint.effect == TaintEffect::NoExecute && taint.time_added.is_some());
    common::eventually(Duration::from_secs(30), "recovery", async || {
        let profile = get().await?;
        let healthy = condition(&profile) == Some(("True".into(), "Ready".into()));
        Ok((healthy && profile.spec.taints.is_empty()).then_some(()))
    })
    .await?;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), controller).await??;
    Ok(())
}

async fn one_leader_at_a_time_and_a_released_lease_passes_on(kind: HubKind) -> Result<()> {
    let fleet = Fleet::start_with(kind, 0, false).await?;
    let hub = fleet.hub().await?;
    let elector = |identity: &str| {
        Elector::new(
            hub.clone(),
            LeaseConfig {
                namespace: "default".into(),
                name: "atoll-controller".into(),
                identity: identity.into(),
                duration: Duration::from_secs(3),
                renew_every: Duration::from_millis(200),
            },
        )
    };
    let (a, b) = (elector("a"), elector("b"));
    anyhow::ensure!(a.try_acquire_or_renew().await?, "a takes the free lease");
    anyhow::ensure!(
        !b.try_acquire_or_renew().await?,
        "b cannot while a holds it"
    );
    anyhow::ensure!(a.try_acquire_or_renew().await?, "a renews");
    a.release().await?;
    anyhow::ensure!(
        b.try_acquire_or_renew().await?,
        "b takes a released lease at once"
    );
    anyhow::ensure!(!a.try_acquire_or_renew().await?, "a is now refused");
    // b stops renewing (as if it died): a takes over once the lease expires.
    tokio::time::timeout(Duration::from_secs(10), a.acquire())
        .await
        .context("a did not take over an expired lease")??;
    anyhow::ensure!(!b.try_acquire_or_renew().await?);
    Ok(())
}
