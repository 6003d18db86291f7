//! The Work applier against real kube-apiservers: applying any kind (a CRD and its CR in one
//! Work, cluster-scoped kinds), isolating a manifest the member rejects, recording uids in the
//! AppliedWork, and garbage collection that deletes exactly what was applied.

mod work_support;

use std::time::Duration;

use anyhow::{Result, ensure};
use atoll_api::conditions::{FALSE, TRUE};
use atoll_api::work::{
    AppliedWork, CONDITION_APPLIED, CONDITION_AVAILABLE, FINALIZER_WORK_CLEANUP, Work,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use work_support::*;

fn widget_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    })
}

#[tokio::test]
async fn a_work_applies_a_crd_with_its_cr_cluster_scoped_kinds_and_isolates_a_bad_manifest()
-> Result<()> {
    let fleet = fleet().await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    let manifests = vec![
        // The CR comes before its CRD and the Namespace before... nothing: order is Atoll's job.
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w1", "namespace": "shop"}, "spec": {"size": 3}}),
        configmap("settings", "shop", json!({"color": "blue"})),
        widget_crd(),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "shop-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        // The member rejects this name; the others must still be applied.
        configmap("Not_A_Valid_Name", "shop", json!({})),
    ];
    create(&fleet.works, &work("shop", manifests)).await?;

    let done = work_until(&fleet.works, "shop", "all valid manifests applied", |w| {
        (0..5)
            .all(|i| manifest_condition(w, i, CONDITION_APPLIED).is_some_and(|c| c.status == TRUE))
            && manifest_condition(w, 5, CONDITION_APPLIED).is_some_and(|c| c.status == FALSE)
    })
    .await?;
    let bad = manifest_condition(&done, 5, CONDITION_APPLIED)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default();
    ensure!(bad.0 == "ApplyFailed", "{bad:?}");
    ensure!(
        bad.1.contains("Not_A_Valid_Name") && bad.1.contains("RFC 1123"),
        "the member's own message is reported: {bad:?}"
    );
    let done = work_until(&fleet.works, "shop", "aggregated conditions", |w| {
        work_condition(w, CONDITION_APPLIED, FALSE)
            && work_condition(w, "Degraded", TRUE)
            && manifest_condition(w, 2, CONDITION_AVAILABLE)
                .is_some_and(|c| c.reason == "Established")
    })
    .await?;
    ensure!(
        done.finalizers()
            .iter()
            .any(|f| f == FINALIZER_WORK_CLEANUP)
    );
    let widget_id = manifest(&done, 0)
        .map(|m| m.identifier.clone())
        .unwrap_or_default();
    ensure!(
        (
            widget_id.group.as_str(),
            widget_id.version.as_str(),
            widget_id.resource.as_str(),
            widget_id.namespace.as_str()
        ) == ("example.com", "v1", "widgets", "shop"),
        "{widget_id:?}"
    );
    ensure!(
        manifest_condition(&done, 2, CONDITION_AVAILABLE)
            .is_some_and(|c| c.reason == "Established")
    );

    // In the member, with the uids the AppliedWork records.
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        fleet.member.clone(),
        "shop",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("example.com", "v1", "Widget"),
            "widgets",
        ),
    );
    let widget = widgets.get("w1").await?;
    ensure!(widget.data["spec"]["size"] == 3);
    let role = Api::<ClusterRole>::all(fleet.member.clone())
        .get("shop-reader")
        .await?;
    let settings = member_configmap(&fleet.member, "shop", "settings").await?;
    let record = Api::<AppliedWork>::all(fleet.member.clone())
        .get("shop")
        .await?;
    let mut recorded: Vec<String> = record
        .status
        .unwrap_or_default()
        .applied_resources
        .iter()
        .map(|r| r.uid.clone())
        .collect();
    recorded.sort();
    let namespace = Api::<Namespace>::all(fleet.member.clone())
        .get("shop")
        .await?;
    let mut expected = vec![
        uid(&widget),
        uid(&role),
        settings.as_ref().map(uid).unwrap_or_default(),
        uid(&namespace),
    ];
    let crd = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(fleet.member.clone())
        .get("widgets.example.com")
        .await?;
    expected.push(uid(&crd));
    expected.sort();
    ensure!(
        recorded == expected,
        "recorded {recorded:?}, expected {expected:?}"
    );
    ensure!(record.spec.work_namespace == NAMESPACE);
    Ok(())
}

#[tokio::test]
async fn removing_a_manifest_or_the_work_deletes_exactly_the_applied_uids() -> Result<()> {
    let fleet = fleet().await?;
    let member_cms: Api<ConfigMap> = Api::namespaced(fleet.member.clone(), "default");
    let applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    create(
        &fleet.works,
        &work(
            "gc",
            vec![
                configmap("keep", "default", json!({"a": "1"})),
                configmap("drop", "default", json!({"a": "2"})),
                configmap("replaced", "default", json!({"a": "3"})),
            ],
        ),
    )
    .await?;
    work_until(&fleet.works, "gc", "applied", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
    })
    .await?;

    // A manifest Atoll cannot read (no name) deletes nothing: what it named before is unknown.
    edit(&fleet.works, "gc", |spec| {
        spec.workload.manifests[0].0["metadata"] =
            json!({"generateName": "keep-", "namespace": "default"});
    })
    .await?;
    work_until(&fleet.works, "gc", "unreadable manifest reported", |w| {
        manifest_condition(w, 0, CONDITION_APPLIED).is_some_and(|c| c.reason == "InvalidManifest")
    })
    .await?;
    ensure!(
        member_configmap(&fleet.member, "default", "keep")
            .await?
            .is_some()
    );
    edit(&fleet.works, "gc", |spec| {
        spec.workload.manifests[0] =
            atoll_api::work::Manifest(configmap("keep", "default", json!({"a": "1"})));
    })
    .await?;

    // Removing a manifest deletes its object.
    edit(&fleet.works, "gc", |spec| {
        spec.workload.manifests.remove(1);
    })
    .await?;
    eventually(Duration::from_secs(30), "drop deleted", || async {
        Ok(member_configmap(&fleet.member, "default", "drop")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    ensure!(
        member_configmap(&fleet.member, "default", "keep")
            .await?
            .is_some()
    );

    // While the applier is down, someone replaces "replaced" with an unrelated object of the
    // same name; then the manifest goes. The unrelated object (another uid) must survive.
    applier.stop().await?;
    member_cms
        .delete("replaced", &DeleteParams::default())
        .await?;
    let mut unrelated = ConfigMap::default();
    unrelated.metadata.name = Some("replaced".into());
    unrelated.data = Some([("owner".to_owned(), "someone-else".to_owned())].into());
    let unrelated = eventually(Duration::from_secs(30), "recreate", || {
        let api = member_cms.clone();
        let cm = unrelated.clone();
        async move { Ok(Some(api.create(&PostParams::default(), &cm).await?)) }
    })
    .await?;
    edit(&fleet.works, "gc", |spec| {
        spec.workload.manifests.truncate(1);
    })
    .await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    let work = work_until(&fleet.works, "gc", "one manifest left", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
            && w.status
                .as_ref()
                .is_some_and(|s| s.manifest_conditions.len() == 1)
    })
    .await?;
    eventually(
        Duration::from_secs(30),
        "record holds only keep",
        || async {
            let record = Api::<AppliedWork>::all(fleet.member.clone())
                .get("gc")
                .await?;
            let names: Vec<String> = record
                .status
                .unwrap_or_default()
                .applied_resources
                .into_iter()
                .map(|r| r.identifier.name)
                .collect();
            Ok((names == ["keep"]).then_some(()))
        },
    )
    .await?;
    let survivor = member_configmap(&fleet.member, "default", "replaced").await?;
    ensure!(
        survivor.as_ref().map(uid) == Some(uid(&unrelated)),
        "the unrelated object with the same name survives"
    );
    ensure!(work.status.is_some());

    // Deleting the Work deletes what it applied, then the record, then releases the Work.
    fleet.works.delete("gc", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(60), "Work gone", || async {
        Ok(fleet.works.get_opt("gc").await?.is_none().then_some(()))
    })
    .await?;
    ensure!(
        member_configmap(&fleet.member, "default", "keep")
            .await?
            .is_none()
    );
    ensure!(
        Api::<AppliedWork>::all(fleet.member.clone())
            .get_opt("gc")
            .await?
            .is_none()
    );
    ensure!(
        member_configmap(&fleet.member, "default", "replaced")
            .await?
            .map(|c| uid(&c))
            == Some(uid(&unrelated))
    );
    Ok(())
}

#[tokio::test]
async fn delete_options_orphan_all_or_the_listed_resources() -> Result<()> {
    use atoll_api::work::{
        DeleteOption, DeletePropagationPolicy, ResourceIdentifier, SelectivelyOrphan,
    };
    let fleet = fleet().await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    let mut orphan = work("orphan", vec![configmap("o1", "default", json!({}))]);
    orphan.spec.delete_option = Some(DeleteOption {
        propagation_policy: DeletePropagationPolicy::Orphan,
        selectively_orphans: None,
    });
    let mut selective = work(
        "selective",
        vec![
            configmap("s-keep", "default", json!({})),
            configmap("s-delete", "default", json!({})),
        ],
    );
    selective.spec.delete_option = Some(DeleteOption {
        propagation_policy: DeletePropagationPolicy::SelectivelyOrphan,
        selectively_orphans: Some(SelectivelyOrphan {
            orphaning_rules: vec![ResourceIdentifier {
                group: String::new(),
                resource: "configmaps".into(),
                namespace: "default".into(),
                name: "s-keep".into(),
            }],
        }),
    });
    for w in [&orphan, &selective] {
        create(&fleet.works, w).await?;
        work_until(&fleet.works, &w.name_any(), "applied", |w| {
            work_condition(w, CONDITION_APPLIED, TRUE)
        })
        .await?;
    }
    for name in ["orphan", "selective"] {
        fleet.works.delete(name, &DeleteParams::default()).await?;
    }
    eventually(Duration::from_secs(60), "both Works gone", || async {
        Ok((fleet
            .works
            .list(&Default::default())
            .await?
            .items
            .is_empty())
        .then_some(()))
    })
    .await?;
    ensure!(
        member_configmap(&fleet.member, "default", "o1")
            .await?
            .is_some(),
        "Orphan leaves everything"
    );
    ensure!(
        member_configmap(&fleet.member, "default", "s-keep")
            .await?
            .is_some(),
        "listed: orphaned"
    );
    ensure!(
        member_configmap(&fleet.member, "default", "s-delete")
            .await?
            .is_none(),
        "unlisted: deleted"
    );
    let records = Api::<AppliedWork>::all(fleet.member.clone())
        .list(&Default::default())
        .await?;
    ensure!(records.items.is_empty(), "records go with their Works");
    let _: Option<Work> = None;
    Ok(())
}

#[tokio::test]
async fn a_work_deleted_without_its_finalizer_is_still_collected() -> Result<()> {
    let fleet = fleet().await?;
    let applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    create(
        &fleet.works,
        &work("vanish", vec![configmap("v1", "default", json!({}))]),
    )
    .await?;
    work_until(&fleet.works, "vanish", "applied", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
    })
    .await?;
    // While the applier is away, the Work goes without its finalizer running.
    applier.stop().await?;
    fleet
        .works
        .patch(
            "vanish",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    fleet
        .works
        .delete("vanish", &DeleteParams::default())
        .await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    eventually(
        Duration::from_secs(60),
        "the vanished Work's objects collected",
        || async {
            let gone = member_configmap(&fleet.member, "default", "v1")
                .await?
                .is_none()
                && Api::<AppliedWork>::all(fleet.member.clone())
                    .get_opt("vanish")
                    .await?
                    .is_none();
            Ok(gone.then_some(()))
        },
    )
    .await?;
    Ok(())
}

fn orphaning(name: &str) -> atoll_api::work::DeleteOption {
    use atoll_api::work::{DeleteOption, DeletePropagationPolicy, ResourceIdentifier};
    DeleteOption {
        propagation_policy: DeletePropagationPolicy::SelectivelyOrphan,
        selectively_orphans: Some(atoll_api::work::SelectivelyOrphan {
            orphaning_rules: vec![ResourceIdentifier {
                group: String::new(),
                resource: "configmaps".into(),
                namespace: "default".into(),
                name: name.into(),
            }],
        }),
    }
}

/// As OCM's work agent: a manifest dropped from a Work goes from the member unless the Work's
/// deleteOption orphans it, and then it stays, untracked.
#[tokio::test]
async fn a_dropped_manifest_goes_unless_the_delete_option_orphans_it() -> Result<()> {
    let fleet = fleet().await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    let mut dropping = work(
        "dropping",
        vec![
            configmap("d-keep", "default", json!({})),
            configmap("d-delete", "default", json!({})),
            configmap("d-stay", "default", json!({})),
        ],
    );
    dropping.spec.delete_option = Some(orphaning("d-keep"));
    create(&fleet.works, &dropping).await?;
    work_until(&fleet.works, "dropping", "applied", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
    })
    .await?;
    let kept = member_configmap(&fleet.member, "default", "d-keep")
        .await?
        .ok_or_else(|| anyhow::anyhow!("d-keep not applied"))?;
    edit(&fleet.works, "dropping", |spec| {
        spec.workload.manifests.truncate(0);
        spec.workload
            .manifests
            .push(atoll_api::work::Manifest(configmap(
                "d-stay",
                "default",
                json!({}),
            )));
    })
    .await?;
    let records: Api<AppliedWork> = Api::all(fleet.member.clone());
    eventually(
        Duration::from_secs(60),
        "the dropped manifests leave the record",
        || async {
            let listed = records
                .get("dropping")
                .await?
                .status
                .unwrap_or_default()
                .applied_resources;
            Ok((listed.len() == 1 && listed[0].identifier.name == "d-stay").then_some(()))
        },
    )
    .await?;
    ensure!(
        member_configmap(&fleet.member, "default", "d-delete")
            .await?
            .is_none(),
        "a dropped manifest the delete option does not orphan is deleted"
    );
    ensure!(
        member_configmap(&fleet.member, "default", "d-keep")
            .await?
            .map(|c| uid(&c))
            == Some(uid(&kept)),
        "a dropped manifest the delete option orphans stays, the same object"
    );
    ensure!(
        member_configmap(&fleet.member, "default", "d-stay")
            .await?
            .is_some()
    );
    Ok(())
}

/// A Work that vanished while no applier ran is swept as the delete option its record carries
/// says: orphaned objects stay, the others go (Foreground when it had none), and the record
/// follows the Work's latest option, not the one it was created with.
#[tokio::test]
async fn a_vanished_work_is_swept_as_its_recorded_delete_option_says() -> Result<()> {
    let fleet = fleet().await?;
    let applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    create(
        &fleet.works,
        &work(
            "orphans",
            vec![
                configmap("v-keep", "default", json!({})),
                configmap("v-delete", "default", json!({})),
            ],
        ),
    )
    .await?;
    create(
        &fleet.works,
        &work("plain", vec![configmap("v-plain", "default", json!({}))]),
    )
    .await?;
    for name in ["orphans", "plain"] {
        work_until(&fleet.works, name, "applied", |w| {
            work_condition(w, CONDITION_APPLIED, TRUE)
        })
        .await?;
    }
    // Set after the Work was first applied: the record must follow.
    edit(&fleet.works, "orphans", |spec| {
        spec.delete_option = Some(orphaning("v-keep"));
    })
    .await?;
    let records: Api<AppliedWork> = Api::all(fleet.member.clone());
    eventually(
        Duration::from_secs(60),
        "the record carries the Work's delete option",
        || async {
            let record = records.get("orphans").await?;
            Ok((record.spec.delete_option == Some(orphaning("v-keep"))).then_some(()))
        },
    )
    .await?;
    // While the applier is away, both Works go without their finalizer running.
    applier.stop().await?;
    for name in ["orphans", "plain"] {
        fleet
            .works
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await?;
        fleet.works.delete(name, &DeleteParams::default()).await?;
    }
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    eventually(Duration::from_secs(60), "both records swept", || async {
        Ok(records
            .list(&Default::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    for (name, stays) in [("v-keep", true), ("v-delete", false), ("v-plain", false)] {
        ensure!(
            member_configmap(&fleet.member, "default", name)
                .await?
                .is_some()
                == stays,
            "{name}: expected to {}",
            if stays { "stay" } else { "go" }
        );
    }
    Ok(())
}

/// A member whose AppliedWork CRD an earlier Atoll installed (its schema without
/// `spec.deleteOption`, so the API server would prune it) has it brought up to date by the
/// applier, and the record keeps the Work's delete option.
#[tokio::test]
async fn an_older_applied_work_crd_atoll_installed_is_brought_up_to_date() -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    let fleet = fleet().await?;
    let mut older = serde_json::to_value(AppliedWork::crd())?;
    older
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
        .and_then(serde_json::Value::as_object_mut)
        .and_then(|properties| properties.remove("deleteOption"))
        .ok_or_else(|| anyhow::anyhow!("the CRD has no spec.deleteOption to remove"))?;
    older["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "atoll"});
    let crds: Api<CustomResourceDefinition> = Api::all(fleet.member.clone());
    crds.create(&PostParams::default(), &serde_json::from_value(older)?)
        .await?;

    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    let mut orphaned = work("kept", vec![configmap("k1", "default", json!({}))]);
    orphaned.spec.delete_option = Some(orphaning("k1"));
    create(&fleet.works, &orphaned).await?;
    work_until(&fleet.works, "kept", "applied", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
    })
    .await?;
    let record = Api::<AppliedWork>::all(fleet.member.clone())
        .get("kept")
        .await?;
    ensure!(
        record.spec.delete_option == Some(orphaning("k1")),
        "the record keeps the delete option: {:?}",
        record.spec
    );
    Ok(())
}

/// What a pull-mode agent does once unjoined, its Works gone from the hub and no applier
/// running: `remove_applied` without the Works' options follows the option each record
/// carries, deletes the rest, and removes the records.
#[tokio::test]
async fn removal_without_the_works_follows_the_options_the_records_carry() -> Result<()> {
    use atoll_api::work::{DeleteOption, DeletePropagationPolicy};
    let fleet = fleet().await?;
    let applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    let mut orphans = work("r-orphan", vec![configmap("r-keep", "default", json!({}))]);
    orphans.spec.delete_option = Some(DeleteOption {
        propagation_policy: DeletePropagationPolicy::Orphan,
        selectively_orphans: None,
    });
    create(&fleet.works, &orphans).await?;
    create(
        &fleet.works,
        &work("r-plain", vec![configmap("r-delete", "default", json!({}))]),
    )
    .await?;
    for name in ["r-orphan", "r-plain"] {
        work_until(&fleet.works, name, "applied", |w| {
            work_condition(w, CONDITION_APPLIED, TRUE)
        })
        .await?;
    }
    applier.stop().await?;
    // The hub forgets the Works (as unjoin's namespace deletion does, finalizers released).
    atoll_work::release_finalizers(&fleet.works).await?;
    for name in ["r-orphan", "r-plain"] {
        fleet.works.delete(name, &DeleteParams::default()).await?;
    }

    let records = atoll_work::removal::applied_records(&fleet.member, NAMESPACE).await?;
    ensure!(records.len() == 2, "both records are there: {records:?}");
    let removed = atoll_work::remove_applied(
        &fleet.member,
        &atoll_work::Removal {
            namespace: NAMESPACE.into(),
            keep_all: false,
            timeout: Duration::from_secs(60),
        },
        &Default::default(),
        records,
    )
    .await?;
    ensure!(
        removed.kept.iter().collect::<Vec<_>>() == ["ConfigMap default/r-keep"],
        "{removed:?}"
    );
    ensure!(
        removed.deleted.iter().collect::<Vec<_>>() == ["ConfigMap default/r-delete"],
        "{removed:?}"
    );
    ensure!(
        member_configmap(&fleet.member, "default", "r-keep")
            .await?
            .is_some()
    );
    ensure!(
        member_configmap(&fleet.member, "default", "r-delete")
            .await?
            .is_none()
    );
    ensure!(
        atoll_work::removal::applied_records(&fleet.member, NAMESPACE)
            .await?
            .is_empty(),
        "the records go"
    );
    Ok(())
}
