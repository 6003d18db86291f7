//! The mcs-api conformance suite's Required cases, and its EndpointSlice and DNS Optional
//! cases, with the same assertions, against three real members joined in push mode
//! (`atoll controller`'s MCS part running in-process), and `atoll dns` asked by real `dig`.
//!
//! One ClusterSet serves every case (each in its own namespace) because starting three
//! API servers with controller managers is the slow part.

mod mcs_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use std::collections::BTreeMap;

use atoll_api::mcs::{ServiceExportSpec, ServiceImport, ServiceImportType, ServicePort};
use atoll_controllers::inventory::{self, UnjoinOptions};
use atoll_dns::{CancellationToken, DnsServer, Model, ZoneConfig};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use mcs_support::{Fleet, Shape, WAIT, dig, eventually};

const TCP: Option<&str> = Some("TCP");

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        protocol: TCP.map(Into::into),
        app_protocol: None,
        port: number,
    }
}

fn cluster_ids(import: &atoll_api::mcs::ServiceImport) -> Vec<String> {
    import
        .status
        .as_ref()
        .map(|s| s.clusters.iter().map(|c| c.cluster.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mcs_conformance_across_three_members() -> Result<()> {
    let fleet = Fleet::start(3).await?;
    let _controller = fleet.start_controller();
    let [c0, c1, c2] = [&fleet.members[0], &fleet.members[1], &fleet.members[2]];

    // --- ClusterSetIP: import in every cluster while any exports; removed after the last.
    let ns = "conf-ip";
    fleet.namespace(ns, &[0, 1, 2]).await?;
    let web = Shape {
        client_ip_affinity: Some(300),
        ..Shape::ports(&[("http", 80)])
    };
    for member in [c1, c2] {
        member.create_service(ns, "web", &web).await?;
        member.create_pods(ns, "web", 2).await?;
    }
    let c1_ips = c1.wait_local_endpoints(ns, "web", 2).await?;
    let c2_ips = c2.wait_local_endpoints(ns, "web", 2).await?;
    c1.export(ns, "web").await?;
    c1.wait_export_condition(ns, "web", "Valid", "True", "Valid")
        .await?;
    c1.wait_export_condition(ns, "web", "Ready", "True", "Exported")
        .await?;
    c1.wait_export_condition(ns, "web", "Conflict", "False", "NoConflicts")
        .await?;
    for member in [c0, c1, c2] {
        let import = eventually(WAIT, "a ClusterSetIP import with an IP", async || {
            Ok(member
                .import(ns, "web")
                .await?
                .filter(|i| !i.spec.ips.is_empty() && cluster_ids(i) == ["cluster-1"]))
        })
        .await?;
        ensure!(import.spec.type_ == ServiceImportType::ClusterSetIP);
        ensure!(
            import.spec.ports == [port("http", 80)],
            "{:?}",
            import.spec.ports
        );
        // Session affinity matches the exported Service.
        ensure!(import.spec.session_affinity.as_deref() == Some("ClientIP"));
        ensure!(
            import
                .spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                == Some(300)
        );
        // One IP per family, in ipFamilies order: the derived Service's ClusterIP.
        let derived_name = atoll_mcs::derived_service_name("web");
        let derived = member
            .service(ns, &derived_name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no derived Service in {}", member.name))?;
        let spec = derived.spec.clone().unwrap_or_default();
        ensure!(spec.selector.unwrap_or_default().is_empty(), "selectorless");
        ensure!(import.spec.ips == [spec.cluster_ip.clone().unwrap_or_default()]);
        ensure!(import.spec.ip_families.len() == import.spec.ips.len());
        ensure!(
            derived
                .owner_references()
                .iter()
                .any(|o| o.kind == "ServiceImport"
                    && o.name == "web"
                    && Some(&o.uid) == import.metadata.uid.as_ref()),
            "the derived Service is owned by the ServiceImport"
        );
        // EndpointSlices: c1's endpoints, labelled and bound to the derived Service.
        let endpoints = eventually(WAIT, "c1's endpoints imported", async || {
            let e = member.endpoints(ns, "web").await?;
            Ok((e.get("cluster-1") == Some(&c1_ips)).then_some(e))
        })
        .await?;
        ensure!(endpoints.len() == 1, "{endpoints:?}");
        for slice in member.mcs_slices(ns, "web").await? {
            let labels = slice.labels();
            ensure!(
                labels
                    .get("multicluster.kubernetes.io/service-name")
                    .map(String::as_str)
                    == Some("web")
            );
            ensure!(
                labels
                    .get("multicluster.kubernetes.io/source-cluster")
                    .map(String::as_str)
                    == Some("cluster-1")
            );
            ensure!(labels.get("kubernetes.io/service-name") == Some(&derived_name));
            let managed_by = labels.get("endpointslice.kubernetes.io/managed-by");
            ensure!(
                managed_by.is_some_and(|m| m != "endpointslice-controller.k8s.io"),
                "{managed_by:?}"
            );
        }
    }
    c2.export(ns, "web").await?;
    for member in [c0, c1, c2] {
        eventually(
            WAIT,
            "both clusters in the import and its slices",
            async || {
                let import = member.import(ns, "web").await?;
                let endpoints = member.endpoints(ns, "web").await?;
                Ok(
                    (import.is_some_and(|i| cluster_ids(&i) == ["cluster-1", "cluster-2"])
                        && endpoints.get("cluster-1") == Some(&c1_ips)
                        && endpoints.get("cluster-2") == Some(&c2_ips))
                    .then_some(()),
                )
            },
        )
        .await?;
    }
    c1.unexport(ns, "web").await?;
    for member in [c0, c1, c2] {
        eventually(
            WAIT,
            "the import to stay, with cluster-2 only",
            async || {
                let import = member.import(ns, "web").await?;
                let endpoints = member.endpoints(ns, "web").await?;
                Ok((import.is_some_and(|i| cluster_ids(&i) == ["cluster-2"])
                    && endpoints.keys().collect::<Vec<_>>() == ["cluster-2"])
                .then_some(()))
            },
        )
        .await?;
    }
    c2.unexport(ns, "web").await?;
    for member in [c0, c1, c2] {
        eventually(
            WAIT,
            "the import, derived Service and slices to go",
            async || {
                Ok((member.import(ns, "web").await?.is_none()
                    && member.mcs_slices(ns, "web").await?.is_empty()
                    && member
                        .service(ns, &atoll_mcs::derived_service_name("web"))
                        .await?
                        .is_none())
                .then_some(()))
            },
        )
        .await?;
    }

    // --- Ports: disjoint ports are the union, with Conflict on both exports.
    let ns = "conf-ports";
    fleet.namespace(ns, &[0, 1, 2]).await?;
    c1.create_service(ns, "disjoint", &Shape::ports(&[("http", 80)]))
        .await?;
    c2.create_service(ns, "disjoint", &Shape::ports(&[("https", 443)]))
        .await?;
    // Same name, different number: the oldest export's definition wins.
    c1.create_service(ns, "same", &Shape::ports(&[("http", 80)]))
        .await?;
    c2.create_service(ns, "same", &Shape::ports(&[("http", 8080)]))
        .await?;
    c1.export(ns, "disjoint").await?;
    c1.export(ns, "same").await?;
    c1.wait_export_condition(ns, "same", "Ready", "True", "Exported")
        .await?;
    c2.export(ns, "disjoint").await?;
    c2.export(ns, "same").await?;
    for member in [c1, c2] {
        for name in ["disjoint", "same"] {
            member
                .wait_export_condition(ns, name, "Conflict", "True", "PortConflict")
                .await?;
        }
    }
    for member in [c0, c1, c2] {
        eventually(WAIT, "the union of ports", async || {
            Ok(member
                .import(ns, "disjoint")
                .await?
                .filter(|i| i.spec.ports == [port("http", 80), port("https", 443)]))
        })
        .await?;
        eventually(WAIT, "the oldest export's port", async || {
            Ok(member
                .import(ns, "same")
                .await?
                .filter(|i| i.spec.ports == [port("http", 80)]))
        })
        .await?;
    }

    // --- Headless: type Headless, no IPs (consistently), endpoints with hostnames.
    let ns = "conf-headless";
    fleet.namespace(ns, &[0, 1, 2]).await?;
    let headless = Shape {
        headless: true,
        ..Shape::ports(&[("tcp", 5432)])
    };
    for member in [c1, c2] {
        member.create_service(ns, "db", &headless).await?;
        member.create_pods(ns, "db", 1).await?;
        member.wait_local_endpoints(ns, "db", 1).await?;
        member.export(ns, "db").await?;
    }
    for member in [c0, c1, c2] {
        eventually(
            WAIT,
            "a Headless import with both clusters' endpoints",
            async || {
                let import = member.import(ns, "db").await?;
                let endpoints = member.endpoints(ns, "db").await?;
                Ok(
                    (import.is_some_and(|i| i.spec.type_ == ServiceImportType::Headless)
                        && endpoints.len() == 2)
                        .then_some(()),
                )
            },
        )
        .await?;
        for _ in 0..10 {
            let import = member.import(ns, "db").await?;
            ensure!(
                import.is_some_and(|i| i.spec.ips.is_empty()),
                "a headless import has no IPs"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let derived = member
            .service(ns, &atoll_mcs::derived_service_name("db"))
            .await?;
        ensure!(
            derived
                .and_then(|s| s.spec)
                .and_then(|s| s.cluster_ip)
                .as_deref()
                == Some("None"),
            "the derived Service of a headless import is headless"
        );
    }
    c1.wait_export_condition(ns, "db", "Conflict", "False", "NoConflicts")
        .await?;

    // --- ExternalName: Valid=False, no import. A missing Service: NoService.
    let ns = "conf-invalid";
    fleet.namespace(ns, &[0, 1, 2]).await?;
    c1.create_service(
        ns,
        "ext",
        &Shape {
            external_name: true,
            ..Shape::ports(&[("http", 80)])
        },
    )
    .await?;
    c1.export(ns, "ext").await?;
    c1.export(ns, "ghost").await?;
    c1.wait_export_condition(ns, "ext", "Valid", "False", "InvalidServiceType")
        .await?;
    c1.wait_export_condition(ns, "ghost", "Valid", "False", "NoService")
        .await?;
    c1.wait_export_condition(ns, "ext", "Ready", "False", "Failed")
        .await?;
    for _ in 0..6 {
        for member in [c0, c1, c2] {
            ensure!(
                member.import(ns, "ext").await?.is_none(),
                "no import of an ExternalName Service"
            );
            ensure!(
                member.import(ns, "ghost").await?.is_none(),
                "no import without a Service"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // --- Mixed headlessness: Conflict on both, and the import is ClusterSetIP.
    let ns = "conf-mixed";
    fleet.namespace(ns, &[0, 1, 2]).await?;
    c1.create_service(ns, "mixed", &Shape::ports(&[("http", 80)]))
        .await?;
    c2.create_service(
        ns,
        "mixed",
        &Shape {
            headless: true,
            ..Shape::ports(&[("http", 80)])
        },
    )
    .await?;
    c1.export(ns, "mixed").await?;
    c2.export(ns, "mixed").await?;
    for member in [c1, c2] {
        member
            .wait_export_condition(ns, "mixed", "Conflict", "True", "TypeConflict")
            .await?;
    }
    for member in [c0, c1, c2] {
        eventually(WAIT, "a ClusterSetIP import with an IP", async || {
            Ok(member.import(ns, "mixed").await?.filter(|i| {
                i.spec.type_ == ServiceImportType::ClusterSetIP && i.spec.ips.len() == 1
            }))
        })
        .await?;
    }

    // --- Exported labels and annotations (Optional): only those propagate; the oldest wins
    // and a disagreement is a LabelsConflict.
    let ns = "conf-labels";
    fleet.namespace(ns, &[0, 1, 2]).await?;
    let spec = |tier: &str| ServiceExportSpec {
        exported_labels: BTreeMap::from([("tier".to_owned(), tier.to_owned())]),
        exported_annotations: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
    };
    for member in [c1, c2] {
        member
            .create_service(ns, "lbl", &Shape::ports(&[("http", 80)]))
            .await?;
    }
    c1.export_with(ns, "lbl", spec("web")).await?;
    let labelled = |i: &ServiceImport| {
        i.labels().get("tier").map(String::as_str) == Some("web")
            && i.annotations().get("team").map(String::as_str) == Some("a")
    };
    for member in [c0, c1, c2] {
        let import = eventually(WAIT, "the exported labels on the import", async || {
            Ok(member.import(ns, "lbl").await?.filter(|i| labelled(i)))
        })
        .await?;
        ensure!(
            !import.labels().contains_key("app"),
            "the Service's own labels stay behind"
        );
    }
    c1.wait_export_condition(ns, "lbl", "Ready", "True", "Exported")
        .await?;
    c2.export_with(ns, "lbl", spec("db")).await?;
    for member in [c1, c2] {
        member
            .wait_export_condition(ns, "lbl", "Conflict", "True", "LabelsConflict")
            .await?;
    }
    for member in [c0, c1, c2] {
        ensure!(
            member
                .import(ns, "lbl")
                .await?
                .is_some_and(|i| labelled(&i)),
            "the oldest wins"
        );
    }

    // --- DNS (Optional): `atoll dns` serving member c0, asked with dig.
    let ns = "conf-dns";
    fleet.namespace(ns, &[0, 1, 2]).await?;
    c1.create_service(ns, "web", &Shape::ports(&[("http", 80)]))
        .await?;
    c1.create_pods(ns, "web", 1).await?;
    c1.export(ns, "web").await?;
    c1.create_service(ns, "db", &headless).await?;
    c1.create_pods(ns, "db", 2).await?;
    c2.create_service(ns, "db", &headless).await?;
    c2.create_pods(ns, "db", 1).await?;
    let db_ips_1 = c1.wait_local_endpoints(ns, "db", 2).await?;
    let db_ips_2 = c2.wait_local_endpoints(ns, "db", 1).await?;
    c1.export(ns, "db").await?;
    c2.export(ns, "db").await?;
    let web_ip = eventually(WAIT, "the web import's IP in c0", async || {
        Ok(c0
            .import(ns, "web")
            .await?
            .and_then(|i| i.spec.ips.first().cloned()))
    })
    .await?;
    let model = Arc::new(Model::new(ZoneConfig::new("clusterset.local")?));
    let server = DnsServer::bind("127.0.0.1:0".parse()?, model.clone()).await?;
    let addr = server.local_addr();
    let cancel = CancellationToken::new();
    let _server = tokio::spawn(server.run(cancel.clone()));
    let _feed = tokio::spawn(atoll_dns::feed::run(
        c0.client.clone(),
        model,
        cancel.clone(),
    ));
    let _stop = cancel.clone().drop_guard();

    let web = format!("web.{ns}.svc.clusterset.local");
    eventually(WAIT, "A for the ClusterSetIP service", async || {
        Ok((dig(addr, &[&web, "A"]).await? == [web_ip.clone()]).then_some(()))
    })
    .await?;
    let srv = dig(addr, &[&format!("_http._tcp.{web}"), "SRV"]).await?;
    ensure!(
        srv.len() == 1 && srv[0].ends_with(&format!(" 80 {web}.")),
        "SRV: {srv:?}"
    );

    let db = format!("db.{ns}.svc.clusterset.local");
    let mut all_db: Vec<String> = db_ips_1.iter().chain(&db_ips_2).cloned().collect();
    all_db.sort();
    eventually(
        WAIT,
        "A for the headless service: every ready endpoint",
        async || Ok((dig(addr, &[&db, "A"]).await? == all_db).then_some(())),
    )
    .await?;
    let srv = dig(addr, &[&format!("_tcp._tcp.{db}"), "SRV"]).await?;
    ensure!(srv.len() == 3, "one SRV per endpoint: {srv:?}");
    ensure!(srv.iter().all(|r| r.contains(" 5432 ")), "{srv:?}");
    // Per-pod names: <hostname>.<clusterid>.<svc>.<ns>.svc.clusterset.local.
    let pod_ip = c2.local_endpoints(ns, "db").await?;
    ensure!(dig(addr, &[&format!("db-0.cluster-2.{db}"), "A"]).await? == pod_ip);
    ensure!(
        srv.iter()
            .any(|r| r.ends_with(&format!("db-0.cluster-2.{db}."))),
        "{srv:?}"
    );
    ensure!(
        dig(addr, &[&format!("nothing.{ns}.svc.clusterset.local"), "A"])
            .await?
            .is_empty()
    );

    // --- Unjoin in push mode: what MCS wrote into the member goes with Atoll's ClusterRole.
    inventory::unjoin(
        &fleet.hub,
        &UnjoinOptions {
            name: c2.name.clone(),
            manager_namespace: mcs_support::MANAGER_NAMESPACE.into(),
            force: false,
            keep_workloads: false,
        },
    )
    .await?;
    eventually(
        WAIT,
        "no ServiceImport, derived Service or MCS slice left in c2",
        async || {
            let imports = Api::<ServiceImport>::all(c2.client.clone())
                .list(&Default::default())
                .await?;
            let derived = Api::<Service>::all(c2.client.clone())
                .list(&ListParams::default().labels("mcs.atoll.io/role=member-import"))
                .await?;
            let slices = Api::<DynamicObject>::all_with(c2.client.clone(), &c2.slices)
                .list(&ListParams::default().labels("multicluster.kubernetes.io/service-name"))
                .await?;
            Ok(
                (imports.items.is_empty() && derived.items.is_empty() && slices.items.is_empty())
                    .then_some(()),
            )
        },
    )
    .await?;
    // The other members lose c2's endpoints.
    eventually(WAIT, "c2's endpoints to leave c0's imports", async || {
        Ok((!c0.endpoints(ns, "db").await?.contains_key("cluster-2")).then_some(()))
    })
    .await?;
    Ok(())
}
