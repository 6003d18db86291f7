//! MCS under bad input and faults, against three real members: a namespace in only some
//! clusters, a Service changing type while exported, a member (syncer) restart and a hub
//! (aggregator) restart with changes made while each was down, a cluster turning unhealthy
//! and recovering, and a cluster leaving.
//!
//! The member syncers run as pull-mode agents would: each with a hub identity that RBAC
//! confines to its own cluster namespace. The aggregator runs apart, so each side can be
//! restarted on its own.

mod mcs_support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use atoll_api::cluster_profile::{ClusterProfile, TAINT_UNREACHABLE};
use atoll_api::mcs::ServiceImportType;
use atoll_controllers::inventory::status::HealthConfig;
use atoll_controllers::inventory::{
    self, CLUSTER_NAMESPACE_PREFIX, UnjoinOptions, cluster_namespace,
};
use atoll_mcs::hub::HubConfig;
use atoll_mcs::member::MemberConfig;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mcs_support::{Fleet, MANAGER_NAMESPACE, Running, Shape, WAIT, eventually};

/// What a pull-mode agent may do on the hub: MCS objects in its own cluster namespace.
async fn agent_role(fleet: &Fleet) -> Result<()> {
    let role = ClusterRole {
        metadata: ObjectMeta {
            name: Some("test:mcs-agent".into()),
            ..Default::default()
        },
        rules: Some(atoll_mcs::rbac::hub_namespace_rules()),
        ..Default::default()
    };
    Api::<ClusterRole>::all(fleet.hub.clone())
        .create(&PostParams::default(), &role)
        .await?;
    for member in &fleet.members {
        let namespace = cluster_namespace(&member.name);
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some("mcs-agent".into()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: "test:mcs-agent".into(),
            },
            subjects: Some(vec![Subject {
                kind: "User".into(),
                name: format!("agent-{}", member.name),
                api_group: Some("rbac.authorization.k8s.io".into()),
                ..Default::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(fleet.hub.clone(), &namespace)
            .create(&PostParams::default(), &binding)
            .await?;
    }
    Ok(())
}

/// Starts member `index`'s syncer with its confined hub identity.
async fn syncer(fleet: &Fleet, index: usize) -> Result<Running> {
    let member = &fleet.members[index];
    let hub = fleet.testbed.clusters()[0]
        .client_for_user(&format!("agent-{}", member.name), &[])
        .await?;
    Ok(Running(tokio::spawn(atoll_mcs::member::run(
        MemberConfig {
            hub,
            hub_namespace: cluster_namespace(&member.name),
            member: member.client.clone(),
            cluster_name: member.name.clone(),
            cluster_id: member.id.clone(),
            member_owner: role_owner(&member.client).await?,
        },
        std::future::pending(),
    ))))
}

/// Atoll's member ClusterRole as the owner of what MCS writes, as push mode does.
async fn role_owner(member: &kube::Client) -> Result<Option<OwnerReference>> {
    let role = Api::<ClusterRole>::all(member.clone())
        .get(inventory::MEMBER_CLUSTER_ROLE)
        .await?;
    Ok(Some(OwnerReference {
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: "ClusterRole".into(),
        name: inventory::MEMBER_CLUSTER_ROLE.into(),
        uid: role.metadata.uid.unwrap_or_default(),
        ..Default::default()
    }))
}

/// A process stopped with SIGSTOP until dropped (SIGCONT), even when the test fails.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Result<Frozen> {
        signal(pid, "STOP")?;
        Ok(Frozen(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = signal(self.0, "CONT");
    }
}

fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{signal} {pid}");
    Ok(())
}

fn aggregator(fleet: &Fleet) -> Running {
    Running(tokio::spawn(atoll_mcs::hub::run(
        HubConfig {
            hub: fleet.hub.clone(),
            manager_namespace: MANAGER_NAMESPACE.into(),
            cluster_namespace_prefix: CLUSTER_NAMESPACE_PREFIX.into(),
        },
        std::future::pending(),
    )))
}

async fn set_taint(fleet: &Fleet, cluster: &str, taint: Option<&str>) -> Result<()> {
    let taints = match taint {
        Some(key) => serde_json::json!([{"key": key, "effect": "NoExecute"}]),
        None => serde_json::json!([]),
    };
    Api::<ClusterProfile>::namespaced(fleet.hub.clone(), MANAGER_NAMESPACE)
        .patch(
            cluster,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"taints": taints}})),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mcs_converges_through_bad_input_and_faults() -> Result<()> {
    let fleet = Fleet::start(3).await?;
    agent_role(&fleet).await?;
    let mut syncers = [
        syncer(&fleet, 0).await?,
        syncer(&fleet, 1).await?,
        syncer(&fleet, 2).await?,
    ];
    let mut hub = aggregator(&fleet);
    let [c0, c1, c2] = [&fleet.members[0], &fleet.members[1], &fleet.members[2]];
    let web = Shape::ports(&[("http", 80)]);

    // --- A namespace in only some clusters: imported where it exists, and once it appears.
    let ns = "partial";
    fleet.namespace(ns, &[1, 2]).await?;
    c1.create_service(ns, "web", &web).await?;
    c1.create_pods(ns, "web", 1).await?;
    let c1_ips = c1.wait_local_endpoints(ns, "web", 1).await?;
    c1.export(ns, "web").await?;
    for member in [c1, c2] {
        eventually(WAIT, "the import where the namespace exists", async || {
            let import = member.import(ns, "web").await?;
            Ok((import.is_some_and(|i| !i.spec.ips.is_empty())
                && member.endpoints(ns, "web").await?.get("cluster-1") == Some(&c1_ips))
            .then_some(()))
        })
        .await?;
    }
    ensure!(
        Api::<Namespace>::all(c0.client.clone())
            .get_opt(ns)
            .await?
            .is_none()
    );
    fleet.namespace(ns, &[0]).await?;
    eventually(WAIT, "the import once the namespace appears", async || {
        let import = c0.import(ns, "web").await?;
        Ok((import.is_some_and(|i| !i.spec.ips.is_empty())
            && c0.endpoints(ns, "web").await?.get("cluster-1") == Some(&c1_ips))
        .then_some(()))
    })
    .await?;

    // --- A Service changing type while exported: ClusterIP, headless, then ExternalName.
    let ns = "retype";
    fleet.namespace(ns, &[0, 1, 2]).await?;
    c1.create_service(ns, "svc", &web).await?;
    c1.create_pods(ns, "svc", 1).await?;
    c1.export(ns, "svc").await?;
    eventually(WAIT, "a ClusterSetIP import", async || {
        Ok(c0
            .import(ns, "svc")
            .await?
            .filter(|i| i.spec.ips.len() == 1))
    })
    .await?;
    c1.delete_service(ns, "svc").await?;
    c1.create_service(
        ns,
        "svc",
        &Shape {
            headless: true,
            ..web.clone()
        },
    )
    .await?;
    let derived = atoll_mcs::derived_service_name("svc");
    eventually(
        WAIT,
        "a Headless import with a headless derived Service",
        async || {
            let import = c0.import(ns, "svc").await?;
            let service = c0.service(ns, &derived).await?;
            Ok((import.is_some_and(|i| {
                i.spec.type_ == ServiceImportType::Headless && i.spec.ips.is_empty()
            }) && service
                .and_then(|s| s.spec)
                .and_then(|s| s.cluster_ip)
                .as_deref()
                == Some("None")
                && c0.endpoints(ns, "svc").await?.len() == 1)
                .then_some(()))
        },
    )
    .await?;
    c1.delete_service(ns, "svc").await?;
    c1.create_service(
        ns,
        "svc",
        &Shape {
            external_name: true,
            ..web.clone()
        },
    )
    .await?;
    c1.wait_export_condition(ns, "svc", "Valid", "False", "InvalidServiceType")
        .await?;
    for member in [c0, c1, c2] {
        eventually(
            WAIT,
            "the import, derived Service and slices to go",
            async || {
                Ok((member.import(ns, "svc").await?.is_none()
                    && member.service(ns, &derived).await?.is_none()
                    && member.mcs_slices(ns, "svc").await?.is_empty())
                .then_some(()))
            },
        )
        .await?;
    }

    // --- A member restart: changes while its syncer is down; nothing stale after.
    let ns = "restart";
    fleet.namespace(ns, &[0, 1, 2]).await?;
    for name in ["web", "gone"] {
        c1.create_service(ns, name, &web).await?;
        c1.export(ns, name).await?;
    }
    c1.create_pods(ns, "web", 2).await?;
    c1.wait_local_endpoints(ns, "web", 2).await?;
    eventually(WAIT, "both imports with c1's endpoints in c0", async || {
        Ok((c0.import(ns, "gone").await?.is_some()
            && c0
                .endpoints(ns, "web")
                .await?
                .get("cluster-1")
                .map(Vec::len)
                == Some(2))
        .then_some(()))
    })
    .await?;
    drop(std::mem::replace(
        &mut syncers[0],
        Running(tokio::spawn(async {})),
    ));
    drop(std::mem::replace(
        &mut syncers[1],
        Running(tokio::spawn(async {})),
    ));
    Api::<Pod>::namespaced(c1.client.clone(), ns)
        .delete("web-1", &DeleteParams::default().grace_period(0))
        .await?;
    let remaining = c1.wait_local_endpoints(ns, "web", 1).await?;
    c1.unexport(ns, "gone").await?;
    syncers[1] = syncer(&fleet, 1).await?;
    // c1's change reaches the hub; c0 is still down and keeps its old view.
    let c2_sees = async || -> Result<Option<()>> {
        Ok((c2.import(ns, "gone").await?.is_none()
            && c2.endpoints(ns, "web").await?.get("cluster-1") == Some(&remaining))
        .then_some(()))
    };
    eventually(WAIT, "c2 to follow c1's changes", c2_sees).await?;
    ensure!(
        c0.import(ns, "gone").await?.is_some(),
        "c0's syncer is down"
    );
    syncers[0] = syncer(&fleet, 0).await?;
    eventually(
        WAIT,
        "c0 to converge after its restart, nothing stale",
        async || {
            Ok((c0.import(ns, "gone").await?.is_none()
                && c0.mcs_slices(ns, "gone").await?.is_empty()
                && c0.endpoints(ns, "web").await?.get("cluster-1") == Some(&remaining))
            .then_some(()))
        },
    )
    .await?;
    c1.wait_export_condition(ns, "web", "Ready", "True", "Exported")
        .await?;

    // --- A hub restart: exports change while the aggregator is down.
    drop(std::mem::replace(&mut hub, Running(tokio::spawn(async {}))));
    c2.create_service(ns, "web", &web).await?;
    c2.create_pods(ns, "web", 1).await?;
    let c2_ips = c2.wait_local_endpoints(ns, "web", 1).await?;
    c2.export(ns, "web").await?;
    c2.create_service(ns, "solo", &web).await?;
    c2.export(ns, "solo").await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // let the syncers publish; not asserted
    ensure!(
        c0.import(ns, "solo").await?.is_none(),
        "no aggregator, no import"
    );
    hub = aggregator(&fleet);
    for member in [c0, c1, c2] {
        eventually(
            WAIT,
            "both clusters' endpoints and the new import",
            async || {
                let endpoints = member.endpoints(ns, "web").await?;
                Ok((member.import(ns, "solo").await?.is_some()
                    && endpoints.get("cluster-1") == Some(&remaining)
                    && endpoints.get("cluster-2") == Some(&c2_ips))
                .then_some(()))
            },
        )
        .await?;
    }
    c2.wait_export_condition(ns, "web", "Conflict", "False", "NoConflicts")
        .await?;

    // --- An unhealthy cluster: its endpoints leave every import, and come back.
    set_taint(&fleet, "c2", Some(TAINT_UNREACHABLE)).await?;
    for member in [c0, c1] {
        eventually(WAIT, "cluster-2's endpoints to leave", async || {
            let import = member.import(ns, "web").await?;
            let endpoints = member.endpoints(ns, "web").await?;
            Ok((endpoints.keys().collect::<Vec<_>>() == ["cluster-1"]
                && import.is_some_and(|i| {
                    i.status
                        .is_some_and(|s| s.clusters.iter().all(|c| c.cluster != "cluster-2"))
                }))
            .then_some(()))
        })
        .await?;
    }
    set_taint(&fleet, "c2", None).await?;
    for member in [c0, c1] {
        eventually(WAIT, "cluster-2's endpoints to come back", async || {
            Ok(
                (member.endpoints(ns, "web").await?.get("cluster-2") == Some(&c2_ips))
                    .then_some(()),
            )
        })
        .await?;
    }

    // --- The same, driven by the inventory's health checks: c2's API server frozen.
    let status = Running(tokio::spawn(inventory::status::run(
        fleet.hub.clone(),
        MANAGER_NAMESPACE.into(),
        HealthConfig {
            period: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            failure_threshold: 2,
            success_threshold: 1,
            ..HealthConfig::default()
        },
        std::future::pending(),
    )));
    {
        let apiserver = *fleet.testbed.clusters()[2]
            .pids()
            .first()
            .context("apiserver pid")?;
        let _frozen = Frozen::new(apiserver)?;
        for member in [c0, c1] {
            eventually(WAIT, "a frozen cluster's endpoints to leave", async || {
                let endpoints = member.endpoints(ns, "web").await?;
                Ok((endpoints.keys().collect::<Vec<_>>() == ["cluster-1"]).then_some(()))
            })
            .await?;
        }
    }
    for member in [c0, c1] {
        eventually(
            WAIT,
            "a thawed cluster's endpoints to come back",
            async || {
                Ok(
                    (member.endpoints(ns, "web").await?.get("cluster-2") == Some(&c2_ips))
                        .then_some(()),
                )
            },
        )
        .await?;
    }
    drop(status);

    // --- A cluster leaving: unjoined, its endpoints and its only export leave.
    drop(std::mem::replace(
        &mut syncers[2],
        Running(tokio::spawn(async {})),
    ));
    inventory::unjoin(
        &fleet.hub,
        &UnjoinOptions {
            name: "c2".into(),
            manager_namespace: MANAGER_NAMESPACE.into(),
            force: false,
            keep_workloads: false,
        },
    )
    .await?;
    for member in [c0, c1] {
        eventually(
            WAIT,
            "the unjoined cluster to leave every import",
            async || {
                let endpoints = member.endpoints(ns, "web").await?;
                Ok((endpoints.keys().collect::<Vec<_>>() == ["cluster-1"]
                    && member.import(ns, "solo").await?.is_none())
                .then_some(()))
            },
        )
        .await?;
    }
    // What MCS wrote into the unjoined member went with Atoll's ClusterRole.
    eventually(
        WAIT,
        "the unjoined member's imports, derived Services and slices to go",
        async || {
            let imports = Api::<atoll_api::mcs::ServiceImport>::all(c2.client.clone())
                .list(&Default::default())
                .await?;
            Ok(
                (imports.items.is_empty() && c2.mcs_slices(ns, "web").await?.is_empty())
                    .then_some(()),
            )
        },
    )
    .await?;
    drop(hub);
    Ok(())
}
