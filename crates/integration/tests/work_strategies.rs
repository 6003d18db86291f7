//! Update strategies (ServerSideApply, Update, CreateOnly, ReadOnly), the take-over policy
//! (Never, IfNoDiff, Always), drift reverted through a member watch, fields Atoll does not
//! manage left alone, and ReportDiff.

mod work_support;

use std::time::Duration;

use anyhow::{Result, ensure};
use atoll_api::conditions::{FALSE, TRUE};
use atoll_api::work::{
    ApplyStrategy, ApplyStrategyType, CONDITION_APPLIED, FeedbackRule, FeedbackRuleType, JsonPath,
    Manifest, ManifestConfig, ResourceIdentifier, UpdateStrategy, UpdateStrategyType,
    WhenToTakeOver,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use work_support::*;

fn data(cm: Option<ConfigMap>) -> Vec<(String, String)> {
    cm.and_then(|c| c.data)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

async fn precreate(fleet: &Fleet, name: &str, color: &str) -> Result<ConfigMap> {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.data = Some([("color".to_owned(), color.to_owned())].into());
    Ok(
        Api::<ConfigMap>::namespaced(fleet.member.clone(), "default")
            .create(&PostParams::default(), &cm)
            .await?,
    )
}

fn applied_reason(work: &atoll_api::work::Work, ordinal: i64) -> Option<(String, String)> {
    manifest_condition(work, ordinal, CONDITION_APPLIED)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn take_over_follows_when_to_take_over() -> Result<()> {
    let fleet = fleet().await?;
    let existing = precreate(&fleet, "existing", "red").await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    create(
        &fleet.works,
        &work(
            "takeover",
            vec![configmap("existing", "default", json!({"color": "blue"}))],
        ),
    )
    .await?;
    // Never (the default): a condition, not an overwrite.
    let refused = work_until(&fleet.works, "takeover", "refused", |w| {
        applied_reason(w, 0) == Some((FALSE.into(), "TakeOverRefused".into()))
    })
    .await?;
    ensure!(work_condition(&refused, CONDITION_APPLIED, FALSE));
    ensure!(
        data(member_configmap(&fleet.member, "default", "existing").await?)
            == [("color".into(), "red".into())]
    );

    // IfNoDiff with a difference: still refused, and the difference is reported.
    edit(&fleet.works, "takeover", |spec| {
        spec.apply_strategy = Some(ApplyStrategy {
            type_: ApplyStrategyType::Apply,
            when_to_take_over: WhenToTakeOver::IfNoDiff,
        });
    })
    .await?;
    let refused = work_until(&fleet.works, "takeover", "refused with a diff", |w| {
        manifest(w, 0)
            .and_then(|m| m.diff_details.as_ref())
            .is_some_and(|d| d.observed_diffs.iter().any(|d| d.path == "/data/color"))
    })
    .await?;
    let diff = manifest(&refused, 0)
        .and_then(|m| m.diff_details.clone())
        .map(|d| d.observed_diffs)
        .unwrap_or_default();
    ensure!(
        diff[0].value_in_member.as_deref() == Some("\"red\"")
            && diff[0].value_in_hub.as_deref() == Some("\"blue\""),
        "{diff:?}"
    );
    ensure!(
        data(member_configmap(&fleet.member, "default", "existing").await?)
            == [("color".into(), "red".into())]
    );

    // IfNoDiff without a difference: taken over.
    precreate(&fleet, "same", "green").await?;
    edit(&fleet.works, "takeover", |spec| {
        spec.workload.manifests.push(Manifest(configmap(
            "same",
            "default",
            json!({"color": "green"}),
        )));
    })
    .await?;
    work_until(&fleet.works, "takeover", "same taken over", |w| {
        applied_reason(w, 1).is_some_and(|(s, _)| s == TRUE)
    })
    .await?;

    // Always: taken over and overwritten, keeping its uid (recorded for GC).
    edit(&fleet.works, "takeover", |spec| {
        spec.apply_strategy = Some(ApplyStrategy {
            type_: ApplyStrategyType::Apply,
            when_to_take_over: WhenToTakeOver::Always,
        });
    })
    .await?;
    work_until(&fleet.works, "takeover", "taken over", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
    })
    .await?;
    let now = member_configmap(&fleet.member, "default", "existing").await?;
    ensure!(now.as_ref().map(uid) == Some(uid(&existing)));
    ensure!(data(now) == [("color".into(), "blue".into())]);
    Ok(())
}

fn config(name: &str, type_: UpdateStrategyType) -> ManifestConfig {
    ManifestConfig {
        resource_identifier: ResourceIdentifier {
            group: String::new(),
            resource: "configmaps".into(),
            namespace: "default".into(),
            name: name.into(),
        },
        feedback_rules: Vec::new(),
        update_strategy: Some(UpdateStrategy {
            type_,
            server_side_apply: None,
        }),
    }
}

#[tokio::test]
async fn update_strategies_create_only_read_only_and_update() -> Result<()> {
    let fleet = fleet().await?;
    precreate(&fleet, "observed", "red").await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    let mut w = work(
        "strategies",
        vec![
            configmap("once", "default", json!({"v": "1"})),
            configmap("observed", "default", json!({"color": "ignored"})),
            configmap("replaced", "default", json!({"v": "1"})),
            configmap("absent", "default", json!({})),
        ],
    );
    let mut read_only = config("observed", UpdateStrategyType::ReadOnly);
    read_only.feedback_rules = vec![FeedbackRule {
        type_: FeedbackRuleType::JSONPaths,
        json_paths: vec![JsonPath {
            name: "color".into(),
            path: ".data.color".into(),
        }],
    }];
    w.spec.manifest_configs = vec![
        config("once", UpdateStrategyType::CreateOnly),
        read_only,
        config("replaced", UpdateStrategyType::Update),
        config("absent", UpdateStrategyType::ReadOnly),
    ];
    create(&fleet.works, &w).await?;
    let done = work_until(&fleet.works, "strategies", "settled", |w| {
        applied_reason(w, 0).is_some_and(|(s, _)| s == TRUE)
            && applied_reason(w, 1) == Some((TRUE.into(), "ReadOnly".into()))
            && applied_reason(w, 2).is_some_and(|(s, _)| s == TRUE)
            && applied_reason(w, 3) == Some((FALSE.into(), "NotFound".into()))
    })
    .await?;
    // ReadOnly reports the member's value through the JSONPath rule and writes nothing.
    let color = manifest(&done, 1)
        .and_then(|m| m.status_feedback.clone())
        .and_then(|f| f.values.into_iter().find(|v| v.name == "color"))
        .and_then(|v| v.field_value.string);
    ensure!(color.as_deref() == Some("red"), "{color:?}");
    ensure!(
        data(member_configmap(&fleet.member, "default", "observed").await?)
            == [("color".into(), "red".into())]
    );
    ensure!(
        member_configmap(&fleet.member, "default", "absent")
            .await?
            .is_none()
    );
    // Update replaces: a key the manifest drops is gone (not merged).
    edit(&fleet.works, "strategies", |spec| {
        spec.workload.manifests[0] = Manifest(configmap("once", "default", json!({"v": "2"})));
        spec.workload.manifests[2] = Manifest(configmap("replaced", "default", json!({"w": "2"})));
    })
    .await?;
    eventually(Duration::from_secs(30), "replaced updated", || async {
        let d = data(member_configmap(&fleet.member, "default", "replaced").await?);
        Ok((d == [("w".into(), "2".into())]).then_some(()))
    })
    .await?;
    // CreateOnly never changes what it created.
    ensure!(
        data(member_configmap(&fleet.member, "default", "once").await?)
            == [("v".into(), "1".into())]
    );
    Ok(())
}

#[tokio::test]
async fn drift_is_reverted_unmanaged_fields_stay_and_report_diff_only_reports() -> Result<()> {
    let fleet = fleet().await?;
    let members: Api<ConfigMap> = Api::namespaced(fleet.member.clone(), "default");
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    create(
        &fleet.works,
        &work(
            "drift",
            vec![configmap("drifty", "default", json!({"color": "blue"}))],
        ),
    )
    .await?;
    work_until(&fleet.works, "drift", "applied", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
    })
    .await?;

    // Someone else changes a field Atoll manages and adds one it does not.
    members
        .patch(
            "drifty",
            &PatchParams::apply("someone").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "drifty"}, "data": {"color": "red", "size": "L"}})),
        )
        .await?;
    eventually(Duration::from_secs(30), "drift reverted", || async {
        let d = data(members.get_opt("drifty").await?);
        Ok((d == [("color".into(), "blue".into()), ("size".into(), "L".into())]).then_some(()))
    })
    .await?;
    let reverted = work_until(&fleet.works, "drift", "reported revert", |w| {
        manifest_condition(w, 0, CONDITION_APPLIED)
            .is_some_and(|c| c.reason == "DriftReverted" || c.reason == "UpToDate")
    })
    .await?;
    ensure!(work_condition(&reverted, CONDITION_APPLIED, TRUE));
    // Deleted in the member: recreated.
    members.delete("drifty", &Default::default()).await?;
    eventually(Duration::from_secs(30), "recreated", || async {
        Ok(members
            .get_opt("drifty")
            .await?
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .map(|_| ()))
    })
    .await?;

    // ReportDiff: nothing is written, differences are reported.
    precreate(&fleet, "watched", "red").await?;
    let mut report = work(
        "report",
        vec![
            configmap("watched", "default", json!({"color": "blue"})),
            configmap("missing", "default", json!({"a": "1"})),
        ],
    );
    report.spec.apply_strategy = Some(ApplyStrategy {
        type_: ApplyStrategyType::ReportDiff,
        when_to_take_over: WhenToTakeOver::Never,
    });
    create(&fleet.works, &report).await?;
    let reported = work_until(&fleet.works, "report", "diffs", |w| {
        manifest(w, 0)
            .and_then(|m| m.diff_details.as_ref())
            .is_some_and(|d| !d.observed_diffs.is_empty())
            && manifest(w, 1)
                .and_then(|m| m.diff_details.as_ref())
                .is_some()
    })
    .await?;
    let diff = manifest(&reported, 0)
        .and_then(|m| m.diff_details.clone())
        .map(|d| d.observed_diffs)
        .unwrap_or_default();
    ensure!(
        diff.len() == 1
            && diff[0].path == "/data/color"
            && diff[0].value_in_member.as_deref() == Some("\"red\""),
        "{diff:?}"
    );
    ensure!(data(members.get_opt("watched").await?) == [("color".into(), "red".into())]);
    ensure!(members.get_opt("missing").await?.is_none());
    // A change in the member shows in the report.
    members
        .patch(
            "watched",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"color": "blue"}})),
        )
        .await?;
    work_until(&fleet.works, "report", "no diff", |w| {
        manifest(w, 0).is_some_and(|m| m.diff_details.is_none())
    })
    .await?;
    Ok(())
}
