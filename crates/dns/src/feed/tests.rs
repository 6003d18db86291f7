//! The feed without a cluster: conversions, and the cache driven by synthetic watch events.

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use atoll_api::mcs::ServiceImportType;
use serde_json::{Value, json};

use super::*;
use crate::model::ZoneConfig;

fn import(namespace: &str, name: &str, spec: Value) -> Result<ServiceImport> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1",
        "kind": "ServiceImport",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))?)
}

fn slice(namespace: &str, name: &str, labels: Value, body: Value) -> Result<DynamicObject> {
    let mut object = json!({
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
    });
    if let (Some(object), Some(body)) = (object.as_object_mut(), body.as_object()) {
        object.extend(body.clone());
    }
    Ok(serde_json::from_value(object)?)
}

fn labels(service: &str, cluster: &str) -> Value {
    json!({LABEL_SERVICE_NAME: service, LABEL_SOURCE_CLUSTER: cluster})
}

/// A v1beta1 slice (with `topology`, which v1 dropped) of `addresses`, all ready.
fn simple_slice(
    name: &str,
    service: &str,
    cluster: &str,
    addresses: &[&str],
) -> Result<DynamicObject> {
    slice(
        "demo",
        name,
        labels(service, cluster),
        json!({
            "addressType": "IPv4",
            "endpoints": addresses.iter().map(|a| json!({
                "addresses": [a], "conditions": {"ready": true}, "topology": {"kubernetes.io/hostname": "n1"}
            })).collect::<Vec<_>>(),
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        }),
    )
}

fn ip(s: &str) -> Result<IpAddr> {
    Ok(s.parse()?)
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("demo", name)
}

#[test]
fn a_service_import_becomes_type_ips_and_ports() -> Result<()> {
    let view = import_view(&import(
        "demo",
        "web",
        json!({
            "type": "ClusterSetIP",
            "ips": ["10.42.0.1", "fd00::1", "not-an-ip"],
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80},
                {"port": 8080},
                {"name": "bad", "port": 70000},
            ],
        }),
    )?)
    .context("no view")?;
    ensure!(view.key == key("web"));
    ensure!(view.service.kind == ServiceImportType::ClusterSetIP);
    ensure!(view.service.ips == [ip("10.42.0.1")?, ip("fd00::1")?]);
    ensure!(
        view.service.ports
            == [
                Port {
                    name: Some("http".into()),
                    protocol: "TCP".into(),
                    port: 80
                },
                // Protocol defaults to TCP.
                Port {
                    name: None,
                    protocol: "TCP".into(),
                    port: 8080
                },
            ]
    );
    let headless = import_view(&import(
        "demo",
        "db",
        json!({"type": "Headless", "ports": []}),
    )?)
    .context("no view")?;
    ensure!(headless.service.kind == ServiceImportType::Headless);
    Ok(())
}

#[test]
fn a_v1beta1_endpoint_slice_becomes_endpoints_of_a_cluster() -> Result<()> {
    let object = slice(
        "demo",
        "db-c1-abcde",
        labels("db", "c1"),
        json!({
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.1.1"], "hostname": "db-0", "conditions": {"ready": true},
                 "topology": {"kubernetes.io/hostname": "node-1"}},
                {"addresses": ["10.0.1.2"], "hostname": "db-1", "conditions": {"ready": false}},
                // Unknown readiness counts as ready.
                {"addresses": ["10.0.1.3"]},
            ],
            "ports": [{"name": "pg", "protocol": "TCP", "port": 5432}],
        }),
    )?;
    let view = slice_view(&object).context("no view")?;
    ensure!(view.service == key("db") && view.cluster == "c1");
    let pg = vec![Port {
        name: Some("pg".into()),
        protocol: "TCP".into(),
        port: 5432,
    }];
    ensure!(
        view.endpoints
            == [
                Endpoint {
                    addresses: vec![ip("10.0.1.1")?],
                    hostname: Some("db-0".into()),
                    ready: true,
                    ports: pg.clone()
                },
                Endpoint {
                    addresses: vec![ip("10.0.1.2")?],
                    hostname: Some("db-1".into()),
                    ready: false,
                    ports: pg.clone()
                },
                Endpoint {
                    addresses: vec![ip("10.0.1.3")?],
                    hostname: None,
                    ready: true,
                    ports: pg
                },
            ]
    );
    Ok(())
}

#[test]
fn a_v1_endpoint_slice_reads_the_same() -> Result<()> {
    let mut object = slice(
        "demo",
        "db-c2",
        labels("db", "c2"),
        json!({
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00::2:1"], "conditions": {"ready": true, "serving": true},
                           "nodeName": "node-2", "zone": "z1"}],
        }),
    )?;
    object.types = Some(kube::core::TypeMeta {
        api_version: "discovery.k8s.io/v1".into(),
        kind: "EndpointSlice".into(),
    });
    let view = slice_view(&object).context("no view")?;
    ensure!(view.cluster == "c2");
    ensure!(view.endpoints.len() == 1 && view.endpoints[0].addresses == [ip("fd00::2:1")?]);
    // No ports: endpoints, but nothing for SRV.
    ensure!(view.endpoints[0].ports.is_empty());
    Ok(())
}

#[test]
fn slices_without_both_labels_or_with_fqdn_addresses_are_ignored() -> Result<()> {
    let body = json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]});
    let no_cluster = slice("demo", "a", json!({LABEL_SERVICE_NAME: "db"}), body.clone())?;
    ensure!(slice_view(&no_cluster).is_none());
    let no_service = slice("demo", "b", json!({LABEL_SOURCE_CLUSTER: "c1"}), body)?;
    ensure!(slice_view(&no_service).is_none());
    let fqdn = slice(
        "demo",
        "c",
        labels("db", "c1"),
        json!({"addressType": "FQDN", "endpoints": [{"addresses": ["db.example.org"]}]}),
    )?;
    ensure!(slice_view(&fqdn).is_none());
    Ok(())
}

fn initial_list(cache: &mut Cache, imports: Vec<ServiceImport>, slices: Vec<DynamicObject>) {
    cache.handle(Change::Import(Event::Init));
    for object in imports {
        cache.handle(Change::Import(Event::InitApply(object)));
    }
    cache.handle(Change::Import(Event::InitDone));
    cache.handle(Change::Slice(Event::Init));
    for object in slices {
        cache.handle(Change::Slice(Event::InitApply(object)));
    }
    cache.handle(Change::Slice(Event::InitDone));
}

fn changes(cache: &mut Cache) -> BTreeMap<ServiceKey, Option<Service>> {
    cache.take_changes().into_iter().collect()
}

fn headless(name: &str) -> Result<ServiceImport> {
    import(
        "demo",
        name,
        json!({"type": "Headless", "ports": [{"name": "http", "port": 8080}]}),
    )
}

fn cluster_addresses(service: &Service, cluster: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = service
        .clusters
        .get(cluster)
        .into_iter()
        .flatten()
        .flat_map(|e| e.addresses.iter().copied())
        .collect();
    out.sort();
    out
}

#[test]
fn the_cache_is_synced_once_both_watches_have_listed() -> Result<()> {
    let mut cache = Cache::default();
    ensure!(!cache.is_synced());
    cache.handle(Change::Import(Event::Init));
    cache.handle(Change::Import(Event::InitDone));
    ensure!(!cache.is_synced(), "EndpointSlices not listed yet");
    cache.handle(Change::Slice(Event::Init));
    cache.handle(Change::Slice(Event::InitDone));
    ensure!(cache.is_synced());
    ensure!(cache.take_changes().is_empty());
    Ok(())
}

#[test]
fn a_service_joins_its_import_and_all_its_slices() -> Result<()> {
    let mut cache = Cache::default();
    initial_list(
        &mut cache,
        vec![headless("db")?],
        vec![
            simple_slice("db-c1-a", "db", "c1", &["10.0.1.1"])?,
            simple_slice("db-c1-b", "db", "c1", &["10.0.1.2"])?,
            simple_slice("db-c2-a", "db", "c2", &["10.0.2.1"])?,
            // A slice whose import is missing makes no service.
            simple_slice("orphan-c1", "orphan", "c1", &["10.0.9.1"])?,
        ],
    );
    let changes = changes(&mut cache);
    let db = changes
        .get(&key("db"))
        .cloned()
        .flatten()
        .context("db missing")?;
    ensure!(cluster_addresses(&db, "c1") == [ip("10.0.1.1")?, ip("10.0.1.2")?]);
    ensure!(cluster_addresses(&db, "c2") == [ip("10.0.2.1")?]);
    ensure!(changes.get(&key("orphan")) == Some(&None));
    Ok(())
}

#[test]
fn events_after_the_list_recompute_only_the_touched_services() -> Result<()> {
    let mut cache = Cache::default();
    initial_list(
        &mut cache,
        vec![headless("db")?, headless("web")?],
        vec![simple_slice("db-c1", "db", "c1", &["10.0.1.1"])?],
    );
    cache.take_changes();

    // A slice changes.
    cache.handle(Change::Slice(Event::Apply(simple_slice(
        "db-c1",
        "db",
        "c1",
        &["10.0.1.9"],
    )?)));
    let changed = changes(&mut cache);
    ensure!(changed.keys().eq([&key("db")]));
    let db = changed
        .get(&key("db"))
        .cloned()
        .flatten()
        .context("db missing")?;
    ensure!(cluster_addresses(&db, "c1") == [ip("10.0.1.9")?]);

    // A slice is relabelled to another service: both are recomputed.
    cache.handle(Change::Slice(Event::Apply(simple_slice(
        "db-c1",
        "web",
        "c1",
        &["10.0.1.9"],
    )?)));
    let changed = changes(&mut cache);
    ensure!(changed.keys().eq([&key("db"), &key("web")]));
    let db = changed
        .get(&key("db"))
        .cloned()
        .flatten()
        .context("db missing")?;
    ensure!(db.clusters.is_empty());
    let web = changed
        .get(&key("web"))
        .cloned()
        .flatten()
        .context("web missing")?;
    ensure!(cluster_addresses(&web, "c1") == [ip("10.0.1.9")?]);

    // A slice loses its source-cluster label: it stops counting.
    let unlabelled = slice(
        "demo",
        "db-c1",
        json!({LABEL_SERVICE_NAME: "web"}),
        json!({"addressType": "IPv4"}),
    )?;
    cache.handle(Change::Slice(Event::Apply(unlabelled)));
    let web = changes(&mut cache)
        .remove(&key("web"))
        .flatten()
        .context("web missing")?;
    ensure!(web.clusters.is_empty());

    // The import goes: the service goes.
    cache.handle(Change::Import(Event::Delete(headless("db")?)));
    ensure!(changes(&mut cache) == BTreeMap::from([(key("db"), None)]));
    Ok(())
}

#[test]
fn a_relist_drops_what_is_gone_and_keeps_serving_meanwhile() -> Result<()> {
    let mut cache = Cache::default();
    initial_list(
        &mut cache,
        vec![headless("db")?, headless("web")?],
        vec![
            simple_slice("db-c1", "db", "c1", &["10.0.1.1"])?,
            simple_slice("web-c1", "web", "c1", &["10.0.3.1"])?,
        ],
    );
    cache.take_changes();
    // The watch restarts; during the relist the old contents stay.
    cache.handle(Change::Slice(Event::Init));
    cache.handle(Change::Slice(Event::InitApply(simple_slice(
        "db-c1",
        "db",
        "c1",
        &["10.0.1.1"],
    )?)));
    ensure!(cache.take_changes().is_empty());
    cache.handle(Change::Slice(Event::InitDone));
    let changed = changes(&mut cache);
    // web-c1 was not relisted: deleted while the watch was down. db-c1 is unchanged.
    ensure!(changed.keys().eq([&key("web")]), "{changed:?}");
    let web = changed
        .get(&key("web"))
        .cloned()
        .flatten()
        .context("web missing")?;
    ensure!(web.clusters.is_empty());
    ensure!(cache.is_synced());
    Ok(())
}

#[tokio::test]
async fn following_events_fills_the_model_and_marks_it_synced() -> Result<()> {
    let model = Model::new(ZoneConfig::new("clusterset.local")?);
    let events: Vec<Result<Change, String>> = vec![
        Ok(Change::Import(Event::Init)),
        Ok(Change::Import(Event::InitApply(headless("db")?))),
        Err("a transient watch error".into()),
        Ok(Change::Import(Event::InitDone)),
        Ok(Change::Slice(Event::Init)),
        Ok(Change::Slice(Event::InitApply(simple_slice(
            "db-c1",
            "db",
            "c1",
            &["10.0.1.1"],
        )?))),
        Ok(Change::Slice(Event::InitDone)),
    ];
    follow(futures::stream::iter(events), &model).await;
    ensure!(model.is_synced());
    let db = model.service(&key("db")).context("db missing")?;
    ensure!(cluster_addresses(&db, "c1") == [ip("10.0.1.1")?]);
    Ok(())
}

#[tokio::test]
async fn a_model_is_not_synced_by_half_a_list() -> Result<()> {
    let model = Model::new(ZoneConfig::new("clusterset.local")?);
    let events: Vec<Result<Change, String>> = vec![
        Ok(Change::Import(Event::Init)),
        Ok(Change::Import(Event::InitApply(headless("db")?))),
        Ok(Change::Import(Event::InitDone)),
        Ok(Change::Slice(Event::Init)),
    ];
    follow(futures::stream::iter(events), &model).await;
    ensure!(!model.is_synced());
    Ok(())
}
