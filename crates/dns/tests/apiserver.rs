//! The feed against a real kube-apiserver from the test bed (1.20 by default, which serves
//! EndpointSlices only as `discovery.k8s.io/v1beta1`): objects written through the API show
//! up in `dig` answers, and leave them when deleted.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use atoll_api::mcs::ServiceImport;
use atoll_dns::{Model, ZoneConfig};
use atoll_testbed::{Testbed, TestbedConfig};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

use common::Running;

/// Installs Atoll's CRDs (409 is fine) and waits until each is Established.
async fn install_crds(client: &kube::Client) -> Result<()> {
    Ok(atoll_testbed::install_crds(client, atoll_api::crds()?).await?)
}

/// The EndpointSlice resource to write: v1beta1 when served (as on 1.20), else v1.
async fn endpoint_slices(client: &kube::Client) -> Result<ApiResource> {
    let group = kube::discovery::group(client, "discovery.k8s.io").await?;
    let version = ["v1beta1", "v1"]
        .into_iter()
        .find(|v| group.versions().any(|served| served == *v))
        .context("no EndpointSlice API")?;
    Ok(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice"),
        "endpointslices",
    ))
}

fn slice(
    resource: &ApiResource,
    name: &str,
    cluster: &str,
    endpoints: serde_json::Value,
) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": resource.api_version,
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "demo",
            "labels": {
                "multicluster.kubernetes.io/service-name": "db",
                "multicluster.kubernetes.io/source-cluster": cluster,
                "endpointslice.kubernetes.io/managed-by": "atoll-dns-test",
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "pg", "protocol": "TCP", "port": 5432}],
    }))?)
}

/// Retries `check` until it succeeds or 30 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() > deadline => bail!("{what}: {error:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn expect_short(server: &Running, args: &[&str], expected: &[&str]) -> Result<()> {
    let got = server.short(args).await?;
    if got != expected {
        bail!("{args:?}: got {got:?}, expected {expected:?}");
    }
    Ok(())
}

async fn expect_status(server: &Running, args: &[&str], status: &str) -> Result<()> {
    let answer = server.dig(args).await?;
    if answer.status != status {
        bail!("{args:?}: got {}, expected {status}", answer.status);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_service_imports_and_endpoint_slices() -> Result<()> {
    let testbed = Testbed::start(TestbedConfig {
        clusters: 1,
        controller_manager: false,
        ..Default::default()
    })
    .await?;
    let client = testbed.clusters()[0].client().await?;
    install_crds(&client).await?;
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some("demo".into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;

    // Start before anything exists: the first sync is of empty lists.
    let model = Arc::new(Model::new(ZoneConfig::new("clusterset.local")?));
    let server = Running::start_shared(model.clone()).await?;
    let feed = tokio::spawn(atoll_dns::feed::run(
        client.clone(),
        model,
        server.cancel.clone(),
    ));
    eventually("first sync", || {
        expect_status(&server, &["db.demo.svc.clusterset.local", "A"], "NXDOMAIN")
    })
    .await?;

    let imports: Api<ServiceImport> = Api::namespaced(client.clone(), "demo");
    for (name, spec) in [
        (
            "web",
            json!({"type": "ClusterSetIP", "ips": ["10.42.0.1"], "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}),
        ),
        (
            "db",
            json!({"type": "Headless", "ports": [{"name": "pg", "protocol": "TCP", "port": 5432}]}),
        ),
    ] {
        let import: ServiceImport = serde_json::from_value(json!({
            "apiVersion": "multicluster.x-k8s.io/v1beta1",
            "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": spec,
        }))?;
        imports.create(&PostParams::default(), &import).await?;
    }
    let resource = endpoint_slices(&client).await?;
    let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), "demo", &resource);
    slices
        .create(
            &PostParams::default(),
            &slice(
                &resource,
                "db-c1",
                "c1",
                json!([
                    {"addresses": ["10.0.1.1"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.0.1.2"], "hostname": "db-1", "conditions": {"ready": false}},
                ]),
            )?,
        )
        .await?;
    slices
        .create(
            &PostParams::default(),
            &slice(
                &resource,
                "db-c2",
                "c2",
                json!([{"addresses": ["10.0.2.1"], "conditions": {"ready": true}}]),
            )?,
        )
        .await?;

    eventually("ClusterSetIP A", || {
        expect_short(
            &server,
            &["web.demo.svc.clusterset.local", "A"],
            &["10.42.0.1"],
        )
    })
    .await?;
    eventually("headless A", || {
        expect_short(
            &server,
            &["db.demo.svc.clusterset.local", "A"],
            &["10.0.1.1", "10.0.2.1"],
        )
    })
    .await?;
    expect_short(
        &server,
        &["_http._tcp.web.demo.svc.clusterset.local", "SRV"],
        &["10 100 80 web.demo.svc.clusterset.local."],
    )
    .await?;
    expect_short(
        &server,
        &["_pg._tcp.db.demo.svc.clusterset.local", "SRV"],
        &[
            "10 100 5432 10-0-2-1.c2.db.demo.svc.clusterset.local.",
            "10 100 5432 db-0.c1.db.demo.svc.clusterset.local.",
        ],
    )
    .await?;
    expect_short(
        &server,
        &["db-0.c1.db.demo.svc.clusterset.local", "A"],
        &["10.0.1.1"],
    )
    .await?;
    expect_status(
        &server,
        &["db-1.c1.db.demo.svc.clusterset.local", "A"],
        "NXDOMAIN",
    )
    .await?;

    // Deletions take effect.
    slices.delete("db-c2", &DeleteParams::default()).await?;
    eventually("slice deleted", || {
        expect_short(
            &server,
            &["db.demo.svc.clusterset.local", "A"],
            &["10.0.1.1"],
        )
    })
    .await?;
    imports.delete("web", &DeleteParams::default()).await?;
    eventually("import deleted", || {
        expect_status(&server, &["web.demo.svc.clusterset.local", "A"], "NXDOMAIN")
    })
    .await?;

    server.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), feed)
        .await
        .context("feed did not stop")??;
    Ok(())
}
