//! The applier as the pull-mode agent will run it: with hub credentials confined to the
//! cluster's one namespace (works and works/status there, nothing else on the hub).

mod work_support;

use anyhow::{Result, bail, ensure};
use atoll_api::conditions::TRUE;
use atoll_api::work::{CONDITION_APPLIED, Work};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, PostParams};
use serde_json::json;
use work_support::*;

#[tokio::test]
async fn the_applier_needs_only_works_in_its_own_hub_namespace() -> Result<()> {
    let fleet = fleet().await?;
    let mut role = Role::default();
    role.metadata.name = Some("agent".into());
    role.rules = Some(vec![PolicyRule {
        api_groups: Some(vec!["multicluster.x-k8s.io".into()]),
        resources: Some(vec!["works".into(), "works/status".into()]),
        verbs: ["get", "list", "watch", "patch", "update"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    }]);
    Api::<Role>::namespaced(fleet.hub.clone(), NAMESPACE)
        .create(&PostParams::default(), &role)
        .await?;
    let mut binding = RoleBinding::default();
    binding.metadata.name = Some("agent".into());
    binding.role_ref = RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "Role".into(),
        name: "agent".into(),
    };
    binding.subjects = Some(vec![Subject {
        kind: "User".into(),
        name: "agent-member".into(),
        ..Default::default()
    }]);
    Api::<RoleBinding>::namespaced(fleet.hub.clone(), NAMESPACE)
        .create(&PostParams::default(), &binding)
        .await?;
    let confined = fleet.testbed.clusters()[0]
        .client_for_user("agent-member", &[])
        .await?;
    match Api::<Work>::namespaced(confined.clone(), "default")
        .list(&Default::default())
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => bail!("the confined identity reaches another namespace: {other:?}"),
    }

    let _applier = Applier::start(Api::namespaced(confined, NAMESPACE), fleet.member.clone());
    create(
        &fleet.works,
        &work(
            "scoped",
            vec![configmap("scoped", "default", json!({"a": "1"}))],
        ),
    )
    .await?;
    let applied = work_until(&fleet.works, "scoped", "applied", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
    })
    .await?;
    ensure!(
        member_configmap(&fleet.member, "default", "scoped")
            .await?
            .is_some()
    );
    ensure!(applied.metadata.finalizers.unwrap_or_default().len() == 1);
    Ok(())
}
