//! Faults: the member down for a minute while its Work is edited, the hub restarted, the
//! applier restarted. Each must converge with no lost, duplicated or stale objects.

mod work_support;

use std::time::Duration;

use anyhow::{Result, ensure};
use atoll_api::conditions::TRUE;
use atoll_api::work::{AppliedWork, CONDITION_APPLIED, Manifest};
use kube::api::Api;
use serde_json::json;
use work_support::*;

/// The names the member's record holds for a Work, sorted.
async fn recorded(fleet: &Fleet, work: &str) -> Result<Vec<String>> {
    let record = Api::<AppliedWork>::all(fleet.member.clone())
        .get(work)
        .await?;
    let mut names: Vec<String> = record
        .status
        .unwrap_or_default()
        .applied_resources
        .into_iter()
        .map(|r| r.identifier.name)
        .collect();
    names.sort();
    Ok(names)
}

async fn converged(fleet: &Fleet, work: &str, expected: &[(&str, &str)]) -> Result<()> {
    let names: Vec<String> = expected.iter().map(|(n, _)| (*n).to_owned()).collect();
    eventually(
        Duration::from_secs(90),
        "the member to converge",
        || async {
            for (name, value) in expected {
                let cm = member_configmap(&fleet.member, "default", name).await?;
                let v = cm.and_then(|c| c.data).and_then(|d| d.get("v").cloned());
                if v.as_deref() != Some(*value) {
                    return Ok(None);
                }
            }
            Ok((recorded(fleet, work).await? == names).then_some(()))
        },
    )
    .await?;
    work_until(&fleet.works, work, "status of the latest generation", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
            && w.status
                .as_ref()
                .is_some_and(|s| s.manifest_conditions.len() == expected.len())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_work_edited_while_the_member_is_down_for_a_minute_converges() -> Result<()> {
    let fleet = fleet().await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    create(
        &fleet.works,
        &work(
            "app",
            vec![
                configmap("a", "default", json!({"v": "1"})),
                configmap("b", "default", json!({"v": "1"})),
            ],
        ),
    )
    .await?;
    converged(&fleet, "app", &[("a", "1"), ("b", "1")]).await?;

    let member = &fleet.testbed.clusters()[1];
    member.kill_apiserver();
    edit(&fleet.works, "app", |spec| {
        spec.workload.manifests = vec![
            Manifest(configmap("a", "default", json!({"v": "2"}))),
            Manifest(configmap("c", "default", json!({"v": "1"}))),
        ];
    })
    .await?;
    // The fault itself: the member stays down for a minute while the applier keeps trying,
    // and the hub says the member's state is unknown rather than repeating the old state.
    let down_since = tokio::time::Instant::now();
    let unknown = work_until(&fleet.works, "app", "member unreachable", |w| {
        work_condition(w, CONDITION_APPLIED, "Unknown")
    })
    .await?;
    ensure!(
        unknown
            .status
            .as_ref()
            .and_then(|s| atoll_api::conditions::find(&s.conditions, CONDITION_APPLIED))
            .is_some_and(|c| c.reason == "MemberUnreachable"),
        "{:?}",
        unknown.status
    );
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(down_since.elapsed())).await;
    member.restart_apiserver().await?;
    wait_ready(&fleet.member).await?;

    converged(&fleet, "app", &[("a", "2"), ("c", "1")]).await?;
    ensure!(
        member_configmap(&fleet.member, "default", "b")
            .await?
            .is_none(),
        "b was removed from the Work"
    );
    Ok(())
}

#[tokio::test]
async fn hub_and_applier_restarts_converge_without_duplicates() -> Result<()> {
    let fleet = fleet().await?;
    let applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    create(
        &fleet.works,
        &work("app", vec![configmap("a", "default", json!({"v": "1"}))]),
    )
    .await?;
    converged(&fleet, "app", &[("a", "1")]).await?;

    // The hub restarts; meanwhile the member drifts. The applier reconnects and repairs.
    let hub = &fleet.testbed.clusters()[0];
    hub.kill_apiserver();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(fleet.member.clone(), "default")
        .delete("a", &Default::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    hub.restart_apiserver().await?;
    wait_ready(&fleet.hub).await?;
    converged(&fleet, "app", &[("a", "1")]).await?;

    // The applier restarts, with edits made while it was away.
    applier.stop().await?;
    edit(&fleet.works, "app", |spec| {
        spec.workload.manifests = vec![
            Manifest(configmap("a", "default", json!({"v": "3"}))),
            Manifest(configmap("d", "default", json!({"v": "1"}))),
        ];
    })
    .await?;
    let restarted = Applier::start(fleet.works.clone(), fleet.member.clone());
    converged(&fleet, "app", &[("a", "3"), ("d", "1")]).await?;
    // Once more, stopping mid-flight right after an edit.
    edit(&fleet.works, "app", |spec| {
        spec.workload
            .manifests
            .push(Manifest(configmap("e", "default", json!({"v": "1"}))));
    })
    .await?;
    restarted.stop().await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    converged(&fleet, "app", &[("a", "3"), ("d", "1"), ("e", "1")]).await?;
    Ok(())
}
