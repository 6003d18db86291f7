//! The server as a lightweight member cluster: what Atoll's Work applier and metadata-only
//! clients (kube-rs `*_metadata`, client-go's metadata client) ask of a member.

mod common;

use std::time::Duration;

use anyhow::Context;
use common::TestHub;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn cm(name: &str, value: &str) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "data": {"v": value},
    }))?)
}

/// Server-side apply as the Work applier sends it (field manager, force): it creates what is
/// missing and writes the applied fields over what exists. The server merges the applied
/// object (no managedFields), which is what the applier's manifests need: it always applies
/// the whole manifest.
#[tokio::test]
async fn server_side_apply_creates_then_updates() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(hub.client().await?, "default");
    let mut params = PatchParams::apply("atoll");
    params.force = true;

    let created = api
        .patch("applied", &params, &Patch::Apply(&cm("applied", "1")?))
        .await?;
    assert_eq!(created.data.context("data")?["v"], "1");
    assert!(created.metadata.uid.is_some());

    // Drift in the member, reverted by applying the manifest again.
    api.patch(
        "applied",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "drifted"}})),
    )
    .await?;
    let reverted = api
        .patch("applied", &params, &Patch::Apply(&cm("applied", "1")?))
        .await?;
    assert_eq!(reverted.data.context("data")?["v"], "1");
    assert_eq!(reverted.metadata.uid, created.metadata.uid);
    Ok(())
}

/// `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1` answers with
/// metadata only, as kube-apiserver does, for get, list and watch.
#[tokio::test]
async fn metadata_only_get_list_and_watch() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let client = hub.client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("first", "1")?)
        .await?;

    // Raw answers: the shape and the kinds, with no data.
    let raw: serde_json::Value = client
        .request(
            http::Request::get("/api/v1/namespaces/default/configmaps/first")
                .header(
                    "Accept",
                    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
                )
                .body(Vec::new())?,
        )
        .await?;
    assert_eq!(raw["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(raw["kind"], "PartialObjectMetadata");
    assert_eq!(raw["metadata"]["name"], "first");
    assert_eq!(raw["metadata"]["labels"]["app"], "demo");
    assert!(raw.get("data").is_none(), "{raw}");
    let raw: serde_json::Value = client
        .request(
            http::Request::get("/api/v1/namespaces/default/configmaps")
                .header(
                    "Accept",
                    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
                )
                .body(Vec::new())?,
        )
        .await?;
    assert_eq!(raw["kind"], "PartialObjectMetadataList");
    assert_eq!(raw["apiVersion"], "meta.k8s.io/v1");
    assert!(raw["metadata"]["resourceVersion"].is_string());
    assert_eq!(raw["items"][0]["kind"], "PartialObjectMetadata");
    assert!(raw["items"][0].get("data").is_none(), "{raw}");

    // kube-rs' metadata calls.
    let meta = api.get_metadata("first").await?;
    assert_eq!(meta.metadata.name.as_deref(), Some("first"));
    let list = api.list_metadata(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    let rv = list.metadata.resource_version.context("resourceVersion")?;
    let mut events = api
        .watch_metadata(&WatchParams::default().timeout(20), &rv)
        .await?
        .boxed();
    api.create(&PostParams::default(), &cm("second", "2")?)
        .await?;
    let added = tokio::time::timeout(WAIT, events.try_next())
        .await??
        .context("the watch ended")?;
    match added {
        WatchEvent::Added(object) => {
            assert_eq!(object.metadata.name.as_deref(), Some("second"));
            let types = object.types.context("types")?;
            assert_eq!(
                (types.api_version.as_str(), types.kind.as_str()),
                ("meta.k8s.io/v1", "PartialObjectMetadata")
            );
        }
        other => anyhow::bail!("expected ADDED, got {other:?}"),
    }

    // kube-runtime's watcher over `PartialObjectMeta` (metadata-only requests, as the Work
    // applier watches what it applied) sees changes.
    let metadata: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), "default");
    let mut stream = watcher(metadata, watcher::Config::default())
        .applied_objects()
        .boxed();
    api.patch(
        "first",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"changed": "yes"}}})),
    )
    .await?;
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(object) = stream.try_next().await? {
            if object.metadata.labels.unwrap_or_default().get("changed") == Some(&"yes".into()) {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await??;
    assert!(seen, "the metadata watcher saw the label change");
    Ok(())
}
