//! The hub API server driven by kube-rs over HTTPS: verbs, concurrency, CRDs, finalizers,
//! lists, watches, namespace deletion and garbage collection.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use atoll_store::memory::{MemoryOptions, MemoryStore};
use atoll_store::{Store, WatchOptions as StoreWatchOptions};
use common::{TestHub, eventually, gadget_crd, widget_crd};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn api_error(err: kube::Error) -> anyhow::Result<Box<kube::core::Status>> {
    match err {
        kube::Error::Api(status) => Ok(status),
        other => Err(anyhow::anyhow!("expected an API error, got {other}")),
    }
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let mut cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap_or_default();
    cm.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    cm
}

#[tokio::test]
async fn configmaps_follow_kube_apiserver_semantics() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let client = hub.client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let created = api
        .create(&PostParams::default(), &cm("one", &[("a", "1")]))
        .await?;
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    let rv = meta.resource_version.clone().context("resourceVersion")?;

    // A stale resourceVersion is a conflict.
    let mut changed = created.clone();
    changed.data = Some([("a".to_string(), "2".to_string())].into());
    api.replace("one", &PostParams::default(), &changed).await?;
    let stale = api
        .replace("one", &PostParams::default(), &changed)
        .await
        .err()
        .context("a stale update succeeded")?;
    let status = api_error(stale)?;
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        r#"Operation cannot be fulfilled on configmaps "one": the object has been modified; please apply your changes to the latest version and try again"#
    );
    assert_ne!(api.get("one").await?.metadata.resource_version, Some(rv));

    // Creating twice is AlreadyExists.
    let exists = api_error(
        api.create(&PostParams::default(), &cm("one", &[]))
            .await
            .err()
            .context("a duplicate create succeeded")?,
    )?;
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );

    // generateName.
    let mut generated = cm("", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = api.create(&PostParams::default(), &generated).await?;
    let name = generated.metadata.name.context("generated name")?;
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    // Names are validated per kind, naming the field.
    let invalid = api_error(
        api.create(&PostParams::default(), &cm("Not_Valid", &[]))
            .await
            .err()
            .context("an invalid name was accepted")?,
    )?;
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    let causes = invalid.details.context("details")?.causes;
    assert_eq!(causes[0].field, "metadata.name");
    assert!(api.get_opt("Not_Valid").await?.is_none());

    // A missing namespace is NotFound.
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    let nf = api_error(
        missing
            .create(&PostParams::default(), &cm("x", &[]))
            .await
            .err()
            .context("created in a missing namespace")?,
    )?;
    assert_eq!(
        (nf.code, nf.message.as_str()),
        (404, r#"namespaces "nowhere" not found"#)
    );

    // Patches: merge, JSON, and strategic merge.
    api.patch(
        "one",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"b": "2"}})),
    )
    .await?;
    api.patch(
        "one",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(
            json!([{"op": "add", "path": "/data/c", "value": "3"}]),
        )?),
    )
    .await?;
    let patched = api
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"d": "4"}})),
        )
        .await?;
    let data = patched.data.context("data")?;
    assert_eq!(
        data.keys().cloned().collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );

    // dryRun=All stores nothing.
    api.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &cm("dry", &[]),
    )
    .await?;
    assert!(api.get_opt("dry").await?.is_none());

    // Delete with a failing precondition is a conflict; then delete; then NotFound.
    let precondition = api_error(
        api.delete(
            "one",
            &DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some("not-the-uid".into()),
                    resource_version: None,
                }),
                ..Default::default()
            },
        )
        .await
        .err()
        .context("a failing precondition deleted")?,
    )?;
    assert_eq!(precondition.code, 409);
    api.delete("one", &DeleteParams::default()).await?;
    let gone = api_error(api.get("one").await.err().context("still there")?)?;
    assert_eq!(
        (gone.code, gone.message.as_str()),
        (404, r#"configmaps "one" not found"#)
    );
    Ok(())
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(hub.client().await?, "default");
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &held).await?;
    api.delete("held", &DeleteParams::default()).await?;
    let pending = api.get("held").await?;
    assert!(pending.metadata.deletion_timestamp.is_some());
    // No new finalizers once deleting.
    let refused = api
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}}),
            ),
        )
        .await
        .err()
        .context("a finalizer was added during deletion")?;
    assert_eq!(api_error(refused)?.code, 422);
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert!(api.get_opt("held").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn lists_page_over_one_snapshot_and_select_by_label_and_field() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(hub.client().await?, "default");
    for i in 0..25 {
        let mut c = cm(&format!("cm-{i:02}"), &[]);
        c.metadata.labels = Some(
            [(
                "tier".to_string(),
                ["web", "db", "cache"][i % 3].to_string(),
            )]
            .into(),
        );
        api.create(&PostParams::default(), &c).await?;
    }
    let first = api.list(&ListParams::default().limit(10)).await?;
    assert_eq!(first.items.len(), 10);
    let token = first.metadata.continue_.clone().context("continue")?;
    // Changes after the first page do not show in later pages.
    api.create(&PostParams::default(), &cm("cm-99", &[]))
        .await?;
    api.delete("cm-20", &DeleteParams::default()).await?;
    let mut names: Vec<String> = first
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let mut next = Some(token);
    while let Some(token) = next {
        let page = api
            .list(&ListParams::default().limit(10).continue_token(&token))
            .await?;
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        names.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        next = page.metadata.continue_.clone().filter(|t| !t.is_empty());
    }
    let expected: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, expected);

    let count = |sel: &str| {
        let api = api.clone();
        let sel = sel.to_string();
        async move {
            anyhow::Ok(
                api.list(&ListParams::default().labels(&sel))
                    .await?
                    .items
                    .len(),
            )
        }
    };
    assert_eq!(count("tier=web").await?, 9);
    assert_eq!(count("tier in (db,cache)").await?, 15);
    assert_eq!(count("tier notin (web)").await?, 16); // cm-99 has no tier
    assert_eq!(count("!tier").await?, 1);
    assert_eq!(count("tier,tier!=db").await?, 16);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=cm-03"))
        .await?;
    assert_eq!(by_name.items.len(), 1);
    // Exact reads at an old revision.
    let old = api
        .list(
            &ListParams::default()
                .at(first.metadata.resource_version.as_deref().unwrap_or("0"))
                .matching(kube::api::VersionMatch::Exact),
        )
        .await?;
    assert_eq!(old.items.len(), 25);
    Ok(())
}

#[tokio::test]
async fn large_lists_read_the_store_in_pages_and_miss_nothing() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    // More objects than the server reads per store page (500), written straight to the store.
    let total = 1234;
    for chunk in (0..total).collect::<Vec<usize>>().chunks(100) {
        let success = chunk
            .iter()
            .map(|i| {
                let name = format!("cm-{i:04}");
                let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": "default", "uid": format!("u-{i}")},
                    "data": {"i": i.to_string()}});
                atoll_store::Op::Put {
                    key: format!("/registry/core/configmaps/default/{name}"),
                    value: serde_json::to_vec(&obj).unwrap_or_default().into(),
                }
            })
            .collect();
        hub.store
            .txn(atoll_store::Txn {
                compares: vec![],
                success,
                failure: vec![],
            })
            .await?;
    }
    let api: Api<ConfigMap> = Api::namespaced(hub.client().await?, "default");
    let expected: Vec<String> = (0..total).map(|i| format!("cm-{i:04}")).collect();
    let names = |items: &[ConfigMap]| -> Vec<String> {
        items
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect()
    };
    let all = api.list(&ListParams::default()).await?;
    assert_eq!(names(&all.items), expected);
    assert!(
        all.metadata
            .continue_
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    );
    // Pages larger than one store page, and a label selector that skips most objects.
    let first = api.list(&ListParams::default().limit(700)).await?;
    let token = first.metadata.continue_.clone().context("continue")?;
    let rest = api
        .list(&ListParams::default().limit(700).continue_token(&token))
        .await?;
    assert!(
        rest.metadata
            .continue_
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    );
    let mut paged = names(&first.items);
    paged.extend(names(&rest.items));
    assert_eq!(paged, expected);
    let one = api
        .list(&ListParams::default().fields("metadata.name=cm-1200"))
        .await?;
    assert_eq!(names(&one.items), vec!["cm-1200".to_string()]);
    Ok(())
}

#[tokio::test]
async fn watches_resume_without_gaps_and_expire_after_compaction() -> anyhow::Result<()> {
    let store = Arc::new(MemoryStore::with_options(MemoryOptions {
        watch: StoreWatchOptions {
            progress_interval: Duration::from_millis(200),
            ..Default::default()
        },
        ..Default::default()
    }));
    let hub = TestHub::start_with(store.clone(), None).await?;
    let api: Api<ConfigMap> = Api::namespaced(hub.client().await?, "default");
    let start = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("rv")?;
    api.create(&PostParams::default(), &cm("w1", &[])).await?;
    api.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await?;
    api.delete("w1", &DeleteParams::default()).await?;
    let mut stream = api
        .watch(&WatchParams::default().timeout(10), &start)
        .await?
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream.try_next().await?.context("watch ended early")? {
            WatchEvent::Added(c) => seen.push(("ADDED", c.metadata.name)),
            WatchEvent::Modified(c) => seen.push(("MODIFIED", c.metadata.name)),
            WatchEvent::Deleted(c) => seen.push(("DELETED", c.metadata.name)),
            other => anyhow::bail!("unexpected event {other:?}"),
        }
    }
    let w1 = Some("w1".to_string());
    assert_eq!(
        seen,
        vec![
            ("ADDED", w1.clone()),
            ("MODIFIED", w1.clone()),
            ("DELETED", w1)
        ]
    );

    // Bookmarks come when asked for.
    let now = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("rv")?;
    let mut bookmarks = api
        .watch(&WatchParams::default().timeout(10), &now)
        .await?
        .boxed();
    let first = tokio::time::timeout(WAIT, bookmarks.try_next()).await??;
    assert!(matches!(first, Some(WatchEvent::Bookmark(_))), "{first:?}");

    // After compaction, an old resourceVersion is gone: 410 Expired.
    let current = store.current_revision().await?;
    store.compact(current).await?;
    let mut expired = api
        .watch(&WatchParams::default().timeout(5), &start)
        .await?
        .boxed();
    match expired.try_next().await? {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert!(
                e.message.starts_with("too old resource version"),
                "{}",
                e.message
            );
        }
        other => anyhow::bail!("expected 410, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn kube_runtime_watcher_and_reflector_run_unmodified() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(hub.client().await?, "default");
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels("app=demo");
    let stream = reflector(writer, watcher(api.clone(), config))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(async move {
        let _ = stream.try_for_each(|_| async { Ok(()) }).await;
    });
    for i in 0..5 {
        let mut c = cm(&format!("r{i}"), &[]);
        c.metadata.labels = Some([("app".to_string(), "demo".to_string())].into());
        api.create(&PostParams::default(), &c).await?;
    }
    api.create(&PostParams::default(), &cm("unlabelled", &[]))
        .await?;
    eventually(WAIT, || {
        let reader = reader.clone();
        async move { Ok((reader.state().len() == 5).then_some(())) }
    })
    .await?;
    api.delete("r0", &DeleteParams::default()).await?;
    eventually(WAIT, || {
        let reader = reader.clone();
        async move { Ok((reader.state().len() == 4).then_some(())) }
    })
    .await?;
    task.abort();
    Ok(())
}

fn widget_api(client: kube::Client, version: &str, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.com", version, "Widget");
    Api::namespaced_with(
        client,
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    )
}

#[tokio::test]
async fn crds_serve_their_kinds_with_schema_status_and_versions() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let client = hub.client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd())?,
    )
    .await?;
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(gadget_crd())?,
    )
    .await?;
    let established = eventually(WAIT, || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("widgets.example.com").await?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            Ok(conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(()))
        }
    })
    .await;
    established?;

    let widgets = widget_api(client.clone(), "v1", "default");
    let w: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 3, "junk": true}, "status": {"ignored": true}
    }))?;
    let created = widgets.create(&PostParams::default(), &w).await?;
    // Defaulted, pruned, status dropped on create, generation 1.
    assert_eq!(created.data["spec"], json!({"size": 3, "color": "red"}));
    assert!(created.data.get("status").is_none());
    assert_eq!(created.metadata.generation, Some(1));

    // Status through /status only; generation follows spec only.
    let with_status = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}, "spec": {"size": 9}})),
        )
        .await?;
    assert_eq!(with_status.data["spec"]["size"], 3);
    assert_eq!(with_status.metadata.generation, Some(1));
    let respec = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 4}, "status": null})),
        )
        .await?;
    assert_eq!(respec.metadata.generation, Some(2));
    assert_eq!(respec.data["status"]["conditions"][0]["type"], "Ready");

    // Schema validation names the field.
    let invalid = api_error(
        widgets
            .patch(
                "w",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"size": 11}})),
            )
            .await
            .err()
            .context("an out-of-range size was accepted")?,
    )?;
    assert_eq!(invalid.code, 422);
    assert_eq!(
        invalid.details.context("details")?.causes[0].field,
        "spec.size"
    );

    // Strategic merge patch is refused for custom resources, as upstream.
    let smp = api_error(
        widgets
            .patch(
                "w",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"size": 5}})),
            )
            .await
            .err()
            .context("a strategic merge patch was accepted")?,
    )?;
    assert_eq!(
        (smp.code, smp.reason.as_str()),
        (415, "UnsupportedMediaType")
    );

    // The other served version reads the same object.
    let beta = widget_api(client.clone(), "v1beta1", "default")
        .get("w")
        .await?;
    assert_eq!(
        beta.types.map(|t| t.api_version),
        Some("example.com/v1beta1".into())
    );

    // Cluster-scoped kinds.
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Gadget");
    let gadgets: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, "gadgets"),
    );
    eventually(WAIT, || {
        let gadgets = gadgets.clone();
        async move { Ok(gadgets.list(&ListParams::default()).await.ok().map(|_| ())) }
    })
    .await?;
    let g: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "anything": {"goes": 1}
    }))?;
    gadgets.create(&PostParams::default(), &g).await?;
    assert_eq!(gadgets.get("g").await?.data["anything"]["goes"], 1);

    // Deleting the CRD removes its instances and stops serving the kind.
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await?;
    eventually(WAIT, || {
        let crds = crds.clone();
        async move {
            Ok(crds
                .get_opt("widgets.example.com")
                .await?
                .is_none()
                .then_some(()))
        }
    })
    .await?;
    let unserved = api_error(widgets.get("w").await.err().context("still served")?)?;
    assert_eq!(unserved.code, 404);
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_terminates_and_empties_it() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let client = hub.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "doomed"}}))?,
        )
        .await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    api.create(&PostParams::default(), &cm("inside", &[]))
        .await?;
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await?;
    let terminating = namespaces.get_opt("doomed").await?;
    if let Some(ns) = terminating {
        assert_eq!(ns.status.and_then(|s| s.phase), Some("Terminating".into()));
        // Nothing new may be created in it.
        if let Err(e) = api.create(&PostParams::default(), &cm("late", &[])).await {
            let status = api_error(e)?;
            assert!(status.code == 403 || status.code == 404, "{status:?}");
        }
    }
    eventually(WAIT, || {
        let namespaces = namespaces.clone();
        async move { Ok(namespaces.get_opt("doomed").await?.is_none().then_some(())) }
    })
    .await?;
    let all: Api<ConfigMap> = Api::all(client);
    let left = all
        .list(&ListParams::default().fields("metadata.namespace=doomed"))
        .await?;
    assert!(left.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn owner_references_are_garbage_collected() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(hub.client().await?, "default");
    for policy in ["Background", "Foreground", "Orphan"] {
        let owner_name = format!("owner-{}", policy.to_lowercase());
        let owner = api
            .create(&PostParams::default(), &cm(&owner_name, &[]))
            .await?;
        let mut dependent = cm(&format!("dep-{}", policy.to_lowercase()), &[]);
        dependent.metadata.owner_references = Some(vec![serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "name": owner_name,
            "uid": owner.metadata.uid, "blockOwnerDeletion": true
        }))?]);
        let dep_name = dependent.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &dependent).await?;
        let dp = match policy {
            "Foreground" => DeleteParams::foreground(),
            "Orphan" => DeleteParams::orphan(),
            _ => DeleteParams::background(),
        };
        api.delete(&owner_name, &dp).await?;
        eventually(WAIT, || {
            let api = api.clone();
            let owner_name = owner_name.clone();
            async move { Ok(api.get_opt(&owner_name).await?.is_none().then_some(())) }
        })
        .await?;
        if policy == "Orphan" {
            let dep = api.get(&dep_name).await?;
            assert!(dep.metadata.owner_references.unwrap_or_default().is_empty());
        } else {
            eventually(WAIT, || {
                let api = api.clone();
                let dep_name = dep_name.clone();
                async move { Ok(api.get_opt(&dep_name).await?.is_none().then_some(())) }
            })
            .await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_in_process_client_needs_no_network() -> anyhow::Result<()> {
    let server = atoll_apiserver::ApiServer::start(
        Arc::new(MemoryStore::new()),
        atoll_apiserver::ServerOptions::default(),
    )
    .await?;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &cm("local", &[("k", "v")]))
        .await?;
    assert_eq!(api.list(&ListParams::default()).await?.items.len(), 1);
    let version = server.client().apiserver_version().await?;
    assert_eq!(version.major, "1");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bodies_over_3_mib_are_refused_and_unknown_fields_warn() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let client = hub.client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let huge = "x".repeat(3 * 1024 * 1024 + 1);
    let too_large = api_error(
        api.create(&PostParams::default(), &cm("huge", &[("k", &huge)]))
            .await
            .err()
            .context("a body over 3 MiB was accepted")?,
    )?;
    assert_eq!(
        (too_large.code, too_large.reason.as_str()),
        (413, "RequestEntityTooLarge")
    );
    assert!(api.get_opt("huge").await?.is_none());

    // fieldValidation=Warn (the default) answers unknown fields of a custom resource with a
    // Warning header and drops them.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd())?,
    )
    .await?;
    let send = |path: &'static str| {
        let client = client.clone();
        async move {
            let body = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "warned"}, "spec": {"size": 1, "extra": true}});
            let req = http::Request::post(path)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&body)?))?;
            anyhow::Ok(client.send(req).await?)
        }
    };
    let resp = eventually(WAIT, || async {
        let resp = send("/apis/example.com/v1/namespaces/default/widgets").await?;
        Ok((resp.status() != 404).then_some(resp))
    })
    .await?;
    assert_eq!(resp.status(), 201);
    let warnings: Vec<&str> = resp
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(warnings, [r#"299 - "unknown field \"spec.extra\"""#]);
    let strict =
        send("/apis/example.com/v1/namespaces/default/widgets?fieldValidation=Strict").await?;
    assert_eq!(strict.status(), 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_runtime_controller_reconciles_against_it() -> anyhow::Result<()> {
    use kube::runtime::controller::{Action, Controller};

    let hub = TestHub::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(hub.client().await?, "default");
    let reconcile = |cm: Arc<ConfigMap>, api: Arc<Api<ConfigMap>>| async move {
        let name = cm.metadata.name.clone().unwrap_or_default();
        if cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("reconciled"))
            .is_none()
        {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"reconciled": "yes"}}})),
            )
            .await?;
        }
        Ok::<_, kube::Error>(Action::await_change())
    };
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _: &kube::Error, _| Action::requeue(Duration::from_secs(1)),
            Arc::new(api.clone()),
        )
        .for_each(|_| async {});
    let task = tokio::spawn(controller);
    for i in 0..3 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"), &[]))
            .await?;
    }
    let done = eventually(WAIT, || {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .all(|c| {
                    c.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("reconciled"))
                        .is_some()
                })
                .then_some(()))
        }
    })
    .await;
    task.abort();
    done
}

/// Concurrent patches that name no resourceVersion never conflict: each is applied to the
/// object as it is when it is written (kube-apiserver retries them), so none is lost; a patch
/// that names a stale resourceVersion is 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_without_a_resource_version_all_apply() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let client = hub.client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = api
        .create(&PostParams::default(), &cm("shared", &[]))
        .await?;
    let patches = (0..32).map(|i| {
        let api = api.clone();
        async move {
            let patch = json!({"metadata": {"labels": {format!("writer-{i}"): "yes"}}});
            api.patch("shared", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    });
    for result in futures::future::join_all(patches).await {
        result.context("a patch without a resourceVersion")?;
    }
    let labels = api.get("shared").await?.metadata.labels.unwrap_or_default();
    anyhow::ensure!(labels.len() == 32, "every patch applied: {labels:?}");
    let stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"late": "yes"}}});
    let err = api
        .patch("shared", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .err()
        .context("a stale resourceVersion is refused")?;
    anyhow::ensure!(api_error(err)?.code == 409);
    Ok(())
}
