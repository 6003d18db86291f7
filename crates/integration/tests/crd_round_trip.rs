//! Atoll's CRDs against a real kube-apiserver (1.20, from the test bed): they install, every
//! served version answers, upstream examples round-trip through kubectl and kube-rs, and invalid
//! objects get the API server's own errors.

mod common;

use anyhow::{Context, Result, bail, ensure};
use atoll_api::about::{ClusterProperty, ClusterPropertySpec};
use atoll_api::cluster_profile::{ClusterProfile, ClusterProfileStatus, ClusterVersion, Property};
use atoll_api::mcs::{ServiceExport, ServiceImport, ServiceImportSpec, ServicePort};
use atoll_api::work::Work;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

use common::{Fixture, fixtures, install_crds, start_one_cluster};

#[tokio::test]
async fn every_crd_installs_and_serves_every_version() -> Result<()> {
    let testbed = start_one_cluster().await?;
    let cluster = &testbed.clusters()[0];
    let client = cluster.client().await?;
    install_crds(&client).await?;

    let output = cluster.kubectl().arg("api-versions").output()?;
    ensure!(output.status.success(), "kubectl api-versions failed");
    let versions = String::from_utf8(output.stdout)?;
    for version in [
        "about.k8s.io/v1",
        "about.k8s.io/v1alpha1",
        "about.k8s.io/v1beta1",
        "multicluster.x-k8s.io/v1alpha1",
        "multicluster.x-k8s.io/v1beta1",
    ] {
        ensure!(
            versions.lines().any(|l| l == version),
            "{version} not served; served:\n{versions}"
        );
    }

    // Installing again is a no-op, as every write to a cluster must be.
    install_crds(&client).await?;
    Ok(())
}

#[tokio::test]
async fn upstream_examples_round_trip_through_kubectl() -> Result<()> {
    let testbed = start_one_cluster().await?;
    let cluster = &testbed.clusters()[0];
    install_crds(&cluster.client().await?).await?;
    for namespace in ["fleet-system", "cluster1", "demo"] {
        common::kubectl_ok(cluster.kubectl().args(["create", "namespace", namespace]))?;
    }

    for fixture in fixtures()? {
        common::kubectl_ok(cluster.kubectl().args(["apply", "-f"]).arg(&fixture.path))
            .with_context(|| format!("applying {}", fixture.file))?;

        // Read back at the example's own apiVersion and compare what the user wrote.
        let mut get = cluster.kubectl();
        get.args(["get", "-o", "json", &fixture.resource_arg()]);
        if let Some(ns) = fixture.namespace() {
            get.args(["-n", ns]);
        }
        let stored: Value = serde_json::from_str(&common::kubectl_ok(&mut get)?)?;
        ensure!(
            stored["apiVersion"] == fixture.object["apiVersion"],
            "{}: read back as {}",
            fixture.file,
            stored["apiVersion"]
        );
        ensure!(
            stored.get("spec") == fixture.object.get("spec")
                || fixture.object.get("spec").is_none(),
            "{}: spec changed on the way through:\nwrote {}\nread  {}",
            fixture.file,
            fixture.object["spec"],
            stored["spec"]
        );
        for (key, value) in fixture.object["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
        {
            ensure!(
                stored["metadata"]["labels"][key] == *value,
                "{}: label {key}",
                fixture.file
            );
        }

        // The printer columns make `kubectl get` useful.
        let mut table = cluster.kubectl();
        table.args(["get", &fixture.plural()]);
        match fixture.namespace() {
            Some(ns) => table.args(["-n", ns]),
            None => &mut table,
        };
        let table = common::kubectl_ok(&mut table)?;
        let header = table.lines().next().unwrap_or_default().to_owned();
        for column in fixture.expected_columns() {
            ensure!(
                header.contains(column),
                "{}: `kubectl get` lacks column {column}:\n{table}",
                fixture.file
            );
        }
        ensure!(
            table.contains(&fixture.name()),
            "{}: `kubectl get` does not list it:\n{table}",
            fixture.file
        );
    }
    Ok(())
}

#[tokio::test]
async fn upstream_examples_round_trip_through_kube_rs() -> Result<()> {
    let testbed = start_one_cluster().await?;
    let cluster = &testbed.clusters()[0];
    let client = cluster.client().await?;
    install_crds(&client).await?;
    for namespace in ["fleet-system", "cluster1", "demo"] {
        common::create_namespace(&client, namespace).await?;
    }

    let fixtures = fixtures()?;
    let by_kind = |kind: &str| -> Result<&Fixture> {
        fixtures
            .iter()
            .find(|f| f.object["kind"] == kind)
            .with_context(|| format!("no {kind} fixture"))
    };
    let pp = PostParams::default();

    // Typed: each example parsed into Atoll's types, written, read back, compared.
    let api: Api<ClusterProperty> = Api::all(client.clone());
    for fixture in fixtures.iter().filter(|f| f.kind() == "ClusterProperty") {
        let property: ClusterProperty = fixture.typed()?;
        let created = api.create(&pp, &property).await?;
        ensure!(created.spec == property.spec);
        ensure!(api.get(&fixture.name()).await?.spec == property.spec);
    }

    let profile: ClusterProfile = by_kind("ClusterProfile")?.typed()?;
    let api: Api<ClusterProfile> = Api::namespaced(client.clone(), "fleet-system");
    let created = api.create(&pp, &profile).await?;
    ensure!(created.spec == profile.spec);
    let status = ClusterProfileStatus {
        conditions: vec![
            atoll_api::conditions::condition(
                "ControlPlaneHealthy",
                "True",
                "Healthy",
                "",
                None,
                Time(now()),
            ),
            atoll_api::conditions::condition("Joined", "True", "Joined", "", None, Time(now())),
        ],
        version: Some(ClusterVersion {
            kubernetes: Some("1.28.0".into()),
        }),
        properties: vec![
            Property {
                name: "clusterset.k8s.io".into(),
                value: "some-clusterset".into(),
                last_observed_time: None,
            },
            Property {
                name: "location".into(),
                value: "apac".into(),
                last_observed_time: Some(Time(now())),
            },
        ],
        ..Default::default()
    };
    let patched = api
        .patch_status(
            "some-cluster-name",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    ensure!(
        patched
            .status
            .as_ref()
            .map(|s| (&s.properties, &s.version, s.conditions.len()))
            == Some((&status.properties, &status.version, 2)),
        "status did not round-trip: {:?}",
        patched.status
    );
    ensure!(
        patched.spec == profile.spec,
        "a status write changed the spec"
    );

    let work: Work = by_kind("Work")?.typed()?;
    let api: Api<Work> = Api::namespaced(client.clone(), "cluster1");
    let created = api.create(&pp, &work).await?;
    ensure!(
        created.spec == work.spec,
        "Work spec changed: {:?}",
        created.spec
    );

    let import: ServiceImport = by_kind("ServiceImport")?.typed()?;
    let api: Api<ServiceImport> = Api::namespaced(client.clone(), "demo");
    let created = api.create(&pp, &import).await?;
    ensure!(created.spec == import.spec);

    let export: ServiceExport = by_kind("ServiceExport")?.typed()?;
    let api: Api<ServiceExport> = Api::namespaced(client.clone(), "demo");
    let created = api.create(&pp, &export).await?;
    ensure!(created.spec == export.spec);

    // Dynamic: every example at its own apiVersion (about.k8s.io/v1, mcs v1alpha1), read back
    // through kube-rs at the storage version too.
    for fixture in &fixtures {
        let gvk = fixture.gvk()?;
        let resource = ApiResource::from_gvk_with_plural(&gvk, &fixture.plural());
        let api: Api<DynamicObject> = match fixture.namespace() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let read = api.get(&fixture.name()).await?;
        ensure!(
            read.data.get("spec") == fixture.object.get("spec")
                || fixture.object.get("spec").is_none(),
            "{}: dynamic read differs: {:?}",
            fixture.file,
            read.data.get("spec")
        );
    }
    Ok(())
}

#[tokio::test]
async fn invalid_objects_get_the_api_servers_own_errors() -> Result<()> {
    let testbed = start_one_cluster().await?;
    let cluster = &testbed.clusters()[0];
    let client = cluster.client().await?;
    install_crds(&client).await?;
    common::create_namespace(&client, "demo").await?;

    let empty = ClusterProperty::new(
        "cluster.clusterset.k8s.io",
        ClusterPropertySpec {
            value: String::new(),
        },
    );
    let api: Api<ClusterProperty> = Api::all(client.clone());
    expect_invalid(
        api.create(&PostParams::default(), &empty).await,
        "spec.value",
    )?;

    let three_ips = ServiceImport::new(
        "too-many-ips",
        ServiceImportSpec {
            ports: vec![ServicePort {
                port: 80,
                ..Default::default()
            }],
            ips: vec!["10.0.0.1".into(), "10.0.0.2".into(), "10.0.0.3".into()],
            ..Default::default()
        },
    );
    let api: Api<ServiceImport> = Api::namespaced(client.clone(), "demo");
    expect_invalid(
        api.create(&PostParams::default(), &three_ips).await,
        "spec.ips",
    )?;

    // kubectl shows the same refusal; --validate=false so that the server, not kubectl's
    // client-side schema check, is what refuses.
    let bad_type = r#"{"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
        "metadata": {"name": "bad-type", "namespace": "demo"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}"#;
    let output = common::kubectl_stdin(
        cluster
            .kubectl()
            .args(["create", "--validate=false", "-f", "-"]),
        bad_type,
    )?;
    ensure!(!output.status.success(), "kubectl accepted an invalid type");
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains("spec.type") && stderr.contains("ClusterSetIP"),
        "unexpected kubectl error: {stderr}"
    );
    Ok(())
}

fn expect_invalid<T: std::fmt::Debug>(result: kube::Result<T>, field: &str) -> Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 422 && status.reason == "Invalid" => {
            ensure!(
                status.message.contains(field),
                "the error does not name {field}: {}",
                status.message
            );
            Ok(())
        }
        other => bail!("expected 422 Invalid naming {field}, got {other:?}"),
    }
}

/// Now, at the one-second precision metav1.Time is stored with.
fn now() -> k8s_openapi::jiff::Timestamp {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}
