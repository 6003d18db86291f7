//! Availability per kind and status feedback from a real rollout: a Deployment turns
//! Available once its pods are Ready (the node simulator plays the kubelet), well-known values
//! and JSONPath rules follow the member through its watch, a Job is reported as running, and a
//! field the manifest leaves out (replicas, as an HPA would set them) is not fought over.

mod work_support;

use std::time::Duration;

use anyhow::{Result, ensure};
use atoll_api::conditions::{FALSE, TRUE};
use atoll_api::work::{
    CONDITION_APPLIED, CONDITION_AVAILABLE, CONDITION_PROGRESSING, FeedbackRule, FeedbackRuleType,
    JsonPath, ManifestConfig, ResourceIdentifier, Work,
};
use atoll_testbed::NodeSimulator;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use work_support::*;

fn deployment(replicas: Option<i64>) -> serde_json::Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}}
        }
    });
    if let Some(r) = replicas {
        d["spec"]["replicas"] = json!(r);
    }
    d
}

fn value(work: &Work, ordinal: i64, name: &str) -> Option<serde_json::Value> {
    let v = manifest(work, ordinal)?
        .status_feedback
        .as_ref()?
        .values
        .iter()
        .find(|v| v.name == name)?
        .field_value
        .clone();
    v.integer
        .map(serde_json::Value::from)
        .or(v.string.map(serde_json::Value::from))
}

#[tokio::test]
async fn availability_and_feedback_follow_a_rollout() -> Result<()> {
    let fleet = fleet().await?;
    let _applier = Applier::start(fleet.works.clone(), fleet.member.clone());
    let mut w = work(
        "web",
        vec![
            deployment(Some(2)),
            json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "once", "namespace": "default"},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox"}]}}}}),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "db", "namespace": "default"},
                "spec": {"serviceName": "db", "replicas": 1,
                    "selector": {"matchLabels": {"app": "db"}},
                    "template": {"metadata": {"labels": {"app": "db"}},
                        "spec": {"containers": [{"name": "db", "image": "postgres"}]}}}}),
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "agent", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"app": "agent"}},
                    "template": {"metadata": {"labels": {"app": "agent"}},
                        "spec": {"containers": [{"name": "agent", "image": "busybox"}]}}}}),
        ],
    );
    let rules = |group: &str, resource: &str, name: &str| ManifestConfig {
        resource_identifier: ResourceIdentifier {
            group: group.into(),
            resource: resource.into(),
            namespace: "default".into(),
            name: name.into(),
        },
        feedback_rules: vec![
            FeedbackRule {
                type_: FeedbackRuleType::WellKnownStatus,
                json_paths: vec![],
            },
            FeedbackRule {
                type_: FeedbackRuleType::JSONPaths,
                json_paths: vec![JsonPath {
                    name: "image".into(),
                    path: ".spec.template.spec.containers[0].image".into(),
                }],
            },
        ],
        update_strategy: None,
    };
    w.spec.manifest_configs = vec![
        rules("apps", "deployments", "web"),
        rules("batch", "jobs", "once"),
        rules("apps", "statefulsets", "db"),
        rules("apps", "daemonsets", "agent"),
    ];
    create(&fleet.works, &w).await?;

    // No node yet: applied, not available, rolling out.
    let pending = work_until(&fleet.works, "web", "applied, not available", |w| {
        work_condition(w, CONDITION_APPLIED, TRUE)
            && manifest_condition(w, 0, CONDITION_AVAILABLE).is_some_and(|c| c.status == FALSE)
    })
    .await?;
    ensure!(work_condition(&pending, CONDITION_AVAILABLE, FALSE));
    ensure!(value(&pending, 0, "image") == Some(json!("nginx:1.25")));

    let _node = NodeSimulator::start(fleet.member.clone(), "node-1").await?;
    let ready = work_until(&fleet.works, "web", "deployment available", |w| {
        manifest_condition(w, 0, CONDITION_AVAILABLE).is_some_and(|c| c.status == TRUE)
            && value(w, 0, "readyReplicas") == Some(json!(2))
            && value(w, 1, "active") == Some(json!(1))
    })
    .await?;
    ensure!(value(&ready, 0, "availableReplicas") == Some(json!(2)));
    // StatefulSet and DaemonSet: available per their own counters, reported as well-known values.
    let workloads = work_until(
        &fleet.works,
        "web",
        "statefulset and daemonset available",
        |w| {
            value(w, 2, "readyReplicas") == Some(json!(1))
                && value(w, 3, "numberAvailable") == Some(json!(1))
                && manifest_condition(w, 2, CONDITION_AVAILABLE).is_some_and(|c| c.status == TRUE)
                && manifest_condition(w, 3, CONDITION_AVAILABLE).is_some_and(|c| c.status == TRUE)
        },
    )
    .await?;
    ensure!(value(&workloads, 3, "desiredNumberScheduled") == Some(json!(1)));
    // The Job's pod never finishes under the simulator: running, so the Work is progressing.
    ensure!(
        manifest_condition(&ready, 1, CONDITION_AVAILABLE).is_some_and(|c| c.reason == "Running")
    );
    ensure!(work_condition(&ready, CONDITION_PROGRESSING, TRUE));

    // Scaling through the Work shows up in the feedback.
    edit(&fleet.works, "web", |spec| {
        spec.workload.manifests[0] = atoll_api::work::Manifest(deployment(Some(3)));
    })
    .await?;
    work_until(&fleet.works, "web", "three ready", |w| {
        value(w, 0, "readyReplicas") == Some(json!(3))
            && manifest_condition(w, 0, CONDITION_AVAILABLE).is_some_and(|c| c.status == TRUE)
    })
    .await?;

    // Without replicas in the manifest, replicas belong to whoever sets them in the member.
    edit(&fleet.works, "web", |spec| {
        spec.workload.manifests[0] = atoll_api::work::Manifest(deployment(None));
    })
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(fleet.member.clone(), "default");
    eventually(Duration::from_secs(30), "replicas released", || async {
        let d = deployments.get("web").await?;
        let owned_by_atoll = d
            .metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|m| {
                m.manager.as_deref() == Some("atoll")
                    && m.fields_v1
                        .as_ref()
                        .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
            });
        Ok((!owned_by_atoll).then_some(()))
    })
    .await?;
    deployments
        .patch(
            "web",
            &PatchParams::apply("autoscaler").force(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"}, "spec": {"replicas": 4}})),
        )
        .await?;
    work_until(&fleet.works, "web", "four ready", |w| {
        value(w, 0, "readyReplicas") == Some(json!(4))
    })
    .await?;
    ensure!(
        deployments.get("web").await?.spec.replicas == Some(4),
        "not fought over"
    );
    Ok(())
}
