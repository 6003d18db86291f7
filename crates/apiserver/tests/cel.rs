//! CRD validation rules (`x-kubernetes-validations`, CEL) on the hub: Atoll's own ClusterProfile
//! rule and a custom CRD's rules, worded as current kube-apiserver words them. Kubernetes 1.20
//! has no CEL, so these are not part of the differential suite.

mod common;

use std::time::Duration;

use common::{TestHub, eventually};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn api_error(err: kube::Error) -> anyhow::Result<Box<kube::core::Status>> {
    match err {
        kube::Error::Api(status) => Ok(status),
        other => Err(anyhow::anyhow!("expected an API error, got {other}")),
    }
}

/// The causes of an Invalid status as (field, reason, message).
fn causes(status: &kube::core::Status) -> Vec<(String, String, String)> {
    status
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| (c.field.clone(), c.reason.clone(), c.message.clone()))
                .collect()
        })
        .unwrap_or_default()
}

async fn create_established(client: &kube::Client, crd: Value) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(crd)?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    crds.create(&PostParams::default(), &crd).await?;
    eventually(WAIT, || {
        let crds = crds.clone();
        let name = name.clone();
        async move {
            let crd = crds.get(&name).await?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            Ok(conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(()))
        }
    })
    .await
}

#[tokio::test]
async fn cluster_manager_is_immutable() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let client = hub.client().await?;
    let profile_crd = atoll_api::crd::crds()?
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some("clusterprofiles.multicluster.x-k8s.io"))
        .ok_or_else(|| anyhow::anyhow!("no ClusterProfile CRD"))?;
    create_established(&client, serde_json::to_value(profile_crd)?).await?;

    let gvk = GroupVersionKind::gvk("multicluster.x-k8s.io", "v1alpha1", "ClusterProfile");
    let profiles: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "clusterprofiles"),
    );
    let profile: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ClusterProfile",
        "metadata": {"name": "c1"},
        "spec": {"displayName": "one", "clusterManager": {"name": "atoll"}}
    }))?;
    // Transition rules do not run on create.
    let created = profiles.create(&PostParams::default(), &profile).await?;

    let err = profiles
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterManager": {"name": "other"}}})),
        )
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("changing clusterManager was accepted"))?;
    let status = api_error(err)?;
    assert_eq!(status.code, 422);
    assert_eq!(status.reason, "Invalid");
    assert_eq!(
        status.message,
        "ClusterProfile.multicluster.x-k8s.io \"c1\" is invalid: spec.clusterManager: Invalid value: \"object\": ClusterManager is immutable"
    );
    assert_eq!(
        causes(&status),
        vec![(
            "spec.clusterManager".to_string(),
            "FieldValueInvalid".to_string(),
            "Invalid value: \"object\": ClusterManager is immutable".to_string()
        )]
    );
    let unchanged = profiles.get("c1").await?;
    assert_eq!(unchanged.data["spec"], created.data["spec"]);
    assert_eq!(
        unchanged.metadata.resource_version,
        created.metadata.resource_version
    );

    // Any other change to spec passes the rule (clusterManager equals its old self).
    let renamed = profiles
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"displayName": "renamed"}})),
        )
        .await?;
    assert_eq!(renamed.data["spec"]["displayName"], "renamed");
    assert_eq!(renamed.data["spec"]["clusterManager"]["name"], "atoll");

    // Status writes run the rules too, and clusterManager is unchanged there.
    profiles
        .patch_status(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": []}})),
        )
        .await?;
    Ok(())
}

fn ranges_crd(rules: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "ranges.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "ranges", "singular": "range", "kind": "Range"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "x-kubernetes-validations": rules,
                            "properties": {
                                "low": {"type": "integer"},
                                "high": {"type": "integer"},
                                "a": {"type": "string"},
                                "b": {"type": "string"},
                                "name": {"type": "string"},
                                "tags": {"type": "array", "items": {"type": "string"},
                                    "x-kubernetes-validations": [
                                        {"rule": "self.size() < 3", "message": "at most two tags", "reason": "FieldValueForbidden"}
                                    ]}
                            }
                        },
                        "status": {
                            "type": "object",
                            "properties": {
                                "phase": {"type": "string", "x-kubernetes-validations": [
                                    {"rule": "self in ['Pending', 'Ready']", "messageExpression": "'phase ' + self + ' is unknown'"}
                                ]}
                            }
                        }
                    }
                }}
            }]
        }
    })
}

#[tokio::test]
async fn custom_rules_validate_spec_and_status() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let client = hub.client().await?;
    create_established(
        &client,
        ranges_crd(json!([
            {"rule": "self.low <= self.high", "message": "low must not exceed high"},
            {"rule": "!has(self.a) || has(self.b)", "message": "b is required with a", "fieldPath": ".b", "reason": "FieldValueRequired"},
            {"rule": "!has(self.name) || (self.name.startsWith('r-') && self.name.lowerAscii() == self.name)",
             "messageExpression": "'name ' + self.name + ' must start with r- and be lower case'"}
        ])),
    )
    .await?;
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Range");
    let ranges: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "ranges"),
    );
    let range = |name: &str, spec: Value| -> anyhow::Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "example.com/v1", "kind": "Range",
            "metadata": {"name": name}, "spec": spec
        }))?)
    };

    ranges
        .create(
            &PostParams::default(),
            &range("ok", json!({"low": 1, "high": 2, "a": "x", "b": "y", "name": "r-one", "tags": ["t1", "t2"]}))?,
        )
        .await?;

    let err = ranges
        .create(
            &PostParams::default(),
            &range(
                "bad",
                json!({"low": 3, "high": 2, "a": "x", "name": "r-ONE", "tags": ["1", "2", "3"]}),
            )?,
        )
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an object breaking every rule was accepted"))?;
    let status = api_error(err)?;
    assert_eq!(status.code, 422);
    assert_eq!(
        causes(&status),
        vec![
            (
                "spec".to_string(),
                "FieldValueInvalid".to_string(),
                "Invalid value: \"object\": low must not exceed high".to_string()
            ),
            (
                "spec.b".to_string(),
                "FieldValueRequired".to_string(),
                "Required value: b is required with a".to_string()
            ),
            (
                "spec".to_string(),
                "FieldValueInvalid".to_string(),
                "Invalid value: \"object\": name r-ONE must start with r- and be lower case"
                    .to_string()
            ),
            (
                "spec.tags".to_string(),
                "FieldValueForbidden".to_string(),
                "Forbidden: at most two tags".to_string()
            ),
        ]
    );
    assert!(
        ranges.get_opt("bad").await?.is_none(),
        "a refused object was stored"
    );

    // Status paths are checked on the status subresource.
    let err = ranges
        .patch_status(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Lost"}})),
        )
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an unknown phase was accepted"))?;
    let status = api_error(err)?;
    assert_eq!(
        status.message,
        "Range.example.com \"ok\" is invalid: status.phase: Invalid value: \"string\": phase Lost is unknown"
    );
    let ready = ranges
        .patch_status(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}})),
        )
        .await?;
    assert_eq!(ready.data["status"]["phase"], "Ready");

    // Rules on absent values do not run: no tags, no name, no a.
    ranges
        .create(
            &PostParams::default(),
            &range("bare", json!({"low": 1, "high": 1}))?,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_rule_that_does_not_compile_refuses_the_crd() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let client = hub.client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition =
        serde_json::from_value(ranges_crd(json!([{"rule": "self.low <"}])))?;
    let status = api_error(
        crds.create(&PostParams::default(), &crd)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a CRD with a broken rule was accepted"))?,
    )?;
    assert_eq!(status.code, 422);
    let found = causes(&status);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].0,
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"
    );
    assert!(
        found[0].2.contains("compilation failed: ERROR: <input>:1:"),
        "{}",
        found[0].2
    );
    assert!(crds.get_opt("ranges.example.com").await?.is_none());

    // An undeclared variable does not compile either.
    let crd: CustomResourceDefinition =
        serde_json::from_value(ranges_crd(json!([{"rule": "spec.low < 3"}])))?;
    let status = api_error(
        crds.create(&PostParams::default(), &crd)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a CRD with an undeclared reference was accepted"))?,
    )?;
    assert!(
        status.message.contains("undeclared reference to 'spec'"),
        "{}",
        status.message
    );
    Ok(())
}
