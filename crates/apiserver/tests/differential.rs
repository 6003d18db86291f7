//! The differential suite: one scenario of raw API requests against a real kube-apiserver 1.20
//! (from the test bed) and against Atoll's API server; status codes, reasons, messages, field
//! causes and object shapes (apart from uids, timestamps and resourceVersions) must agree.
//!
//! Where 1.20 differs from current Kubernetes, Atoll follows current Kubernetes; such steps say
//! so and compare only what both agree on.

mod common;

use std::time::Duration;

use atoll_testbed::{Testbed, TestbedConfig};
use common::{TestHub, eventually, widget_crd};
use http_body_util::BodyExt;
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Compare {
    /// Status code and reason.
    Code,
    /// Code, reason, message and causes (errors) or the normalized object (successes).
    Full,
}

struct Step {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Option<Value>,
    compare: Compare,
}

fn step(name: &'static str, method: &'static str, path: &'static str, body: Option<Value>) -> Step {
    Step {
        name,
        method,
        path,
        content_type: "application/json",
        body,
        compare: Compare::Full,
    }
}

impl Step {
    fn content_type(mut self, ct: &'static str) -> Step {
        self.content_type = ct;
        self
    }
    fn code_only(mut self) -> Step {
        self.compare = Compare::Code;
        self
    }
}

/// Drops what differs between any two servers: identities, times, revisions, field managers.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for key in [
                "uid",
                "creationTimestamp",
                "resourceVersion",
                "managedFields",
                "selfLink",
                "continue",
                "lastTransitionTime",
            ] {
                map.remove(key);
            }
            if map.contains_key("generateName") {
                map.remove("name");
            }
            for child in map.values_mut() {
                normalize(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

async fn run(client: &kube::Client, step: &Step) -> anyhow::Result<(u16, Value)> {
    let body = step
        .body
        .as_ref()
        .map(|b| match b {
            Value::String(s) => s.clone().into_bytes(),
            other => serde_json::to_vec(other).unwrap_or_default(),
        })
        .unwrap_or_default();
    let req = http::Request::builder()
        .method(step.method)
        .uri(step.path)
        .header("content-type", step.content_type)
        .header("accept", "application/json")
        .body(kube::client::Body::from(body))?;
    let resp = client.send(req).await?;
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((code, value))
}

/// Messages may quote uids, which differ between servers.
fn without_uids(message: &Value) -> Value {
    let uid = regex::Regex::new("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}");
    match (message.as_str(), uid) {
        (Some(text), Ok(uid)) => json!(uid.replace_all(text, "<uid>")),
        _ => message.clone(),
    }
}

fn outcome(compare: Compare, code: u16, mut body: Value) -> Value {
    if body["kind"] == "Status" && body["status"] == "Failure" {
        return match compare {
            Compare::Code => json!({"code": code, "reason": body["reason"]}),
            Compare::Full => json!({
                "code": code,
                "reason": body["reason"],
                "message": without_uids(&body["message"]),
                "causes": body["details"]["causes"],
            }),
        };
    }
    match compare {
        Compare::Code => json!({"code": code}),
        Compare::Full => {
            normalize(&mut body);
            json!({"code": code, "body": body})
        }
    }
}

fn scenario() -> (Vec<Step>, Vec<Step>) {
    let built_in = vec![
        step(
            "create namespace",
            "POST",
            "/api/v1/namespaces",
            Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "diff"}})),
        ),
        step(
            "create configmap",
            "POST",
            "/api/v1/namespaces/diff/configmaps",
            Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one", "labels": {"app": "x"}}, "data": {"a": "1"}}),
            ),
        ),
        step(
            "create it again",
            "POST",
            "/api/v1/namespaces/diff/configmaps",
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one"}})),
        ),
        step(
            "invalid name",
            "POST",
            "/api/v1/namespaces/diff/configmaps",
            Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}}),
            ),
        ),
        step(
            "invalid namespace name",
            "POST",
            "/api/v1/namespaces",
            Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}})),
        ),
        step(
            "get missing",
            "GET",
            "/api/v1/namespaces/diff/configmaps/missing",
            None,
        ),
        step(
            "stale update",
            "PUT",
            "/api/v1/namespaces/diff/configmaps/one",
            Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one", "resourceVersion": "1"}}),
            ),
        ),
        step(
            "merge patch",
            "PATCH",
            "/api/v1/namespaces/diff/configmaps/one",
            Some(json!({"data": {"b": "2"}})),
        )
        .content_type("application/merge-patch+json"),
        step(
            "failing json patch test",
            "PATCH",
            "/api/v1/namespaces/diff/configmaps/one",
            Some(json!([{"op": "test", "path": "/data/a", "value": "nope"}])),
        )
        .content_type("application/json-patch+json"),
        step(
            "strategic merge patch",
            "PATCH",
            "/api/v1/namespaces/diff/configmaps/one",
            Some(json!({"data": {"c": "3"}})),
        )
        .content_type("application/strategic-merge-patch+json"),
        step(
            "unknown patch type",
            "PATCH",
            "/api/v1/namespaces/diff/configmaps/one",
            Some(json!({})),
        )
        .content_type("text/plain"),
        step(
            "list with limit",
            "GET",
            "/api/v1/namespaces/diff/configmaps?limit=1",
            None,
        ),
        step(
            "label selector",
            "GET",
            "/api/v1/namespaces/diff/configmaps?labelSelector=app%20in%20(x,y)",
            None,
        ),
        step(
            "bad label selector",
            "GET",
            "/api/v1/namespaces/diff/configmaps?labelSelector=a%20in%20b",
            None,
        ),
        step(
            "unsupported field selector",
            "GET",
            "/api/v1/namespaces/diff/configmaps?fieldSelector=spec.x%3D1",
            None,
        ),
        step(
            "delete with a wrong uid",
            "DELETE",
            "/api/v1/namespaces/diff/configmaps/one",
            Some(
                json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "nope"}}),
            ),
        ),
        step(
            "create in a missing namespace",
            "POST",
            "/api/v1/namespaces/nowhere/configmaps",
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})),
        ),
        step(
            "generateName",
            "POST",
            "/api/v1/namespaces/diff/configmaps",
            Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}}),
            ),
        ),
        step(
            "secret defaults to Opaque",
            "POST",
            "/api/v1/namespaces/diff/secrets",
            Some(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}),
            ),
        ),
        step(
            "role binding without roleRef kind",
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/diff/rolebindings",
            Some(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "name": "r"}}),
            ),
        ),
        step(
            "role binding with a foreign roleRef apiGroup",
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/diff/rolebindings",
            Some(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb"}, "roleRef": {"apiGroup": "example.com", "kind": "ClusterRole", "name": "../view"}}),
            ),
        ),
        step(
            "role binding without roleRef apiGroup is defaulted",
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/diff/rolebindings",
            Some(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb-default"}, "roleRef": {"kind": "ClusterRole", "name": "view"}}),
            ),
        ),
        step(
            "CRD in a group without a dot",
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "configmaps.core"},
                    "spec": {"group": "core", "scope": "Namespaced", "names": {"plural": "configmaps", "kind": "ConfigMap"},
                        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
            ),
        ),
        step(
            "CRD in a protected group without approval",
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.apps.k8s.io"},
                    "spec": {"group": "apps.k8s.io", "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
                        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
            ),
        ),
        step(
            "CRD in a protected group with an invalid approval",
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.apps.k8s.io", "annotations": {"api-approved.kubernetes.io": "/just/a/path"}},
                    "spec": {"group": "apps.k8s.io", "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
                        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
            ),
        ),
        // Unknown fields are dropped (1.20 has no fieldValidation; current Kubernetes warns by
        // default and drops them too).
        step(
            "unknown fields are dropped",
            "POST",
            "/api/v1/namespaces/diff/configmaps",
            Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extra", "bogus": 1}, "spec": {"x": 1}, "data": {"k": "v"}}),
            ),
        ),
        step(
            "dry-run create",
            "POST",
            "/api/v1/namespaces/diff/configmaps?dryRun=All",
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dry"}})),
        ),
        step(
            "dry run stored nothing",
            "GET",
            "/api/v1/namespaces/diff/configmaps/dry",
            None,
        ),
        step(
            "delete",
            "DELETE",
            "/api/v1/namespaces/diff/configmaps/one",
            None,
        ),
        step(
            "unknown resource",
            "GET",
            "/api/v1/namespaces/diff/nothings",
            None,
        )
        .code_only(),
        step(
            "lease",
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/diff/leases",
            Some(
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}}),
            ),
        ),
    ];
    let custom = vec![
        step(
            "create widget",
            "POST",
            "/apis/example.com/v1/namespaces/diff/widgets",
            Some(
                json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}),
            ),
        ),
        step(
            "widget out of range",
            "POST",
            "/apis/example.com/v1/namespaces/diff/widgets",
            Some(
                json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 11}}),
            ),
        ),
        step(
            "widget without size",
            "POST",
            "/apis/example.com/v1/namespaces/diff/widgets",
            Some(
                json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w3"}, "spec": {}}),
            ),
        ),
        step(
            "strategic merge patch on a custom resource",
            "PATCH",
            "/apis/example.com/v1/namespaces/diff/widgets/w",
            Some(json!({"spec": {"size": 4}})),
        )
        .content_type("application/strategic-merge-patch+json"),
        step(
            "status subresource",
            "PATCH",
            "/apis/example.com/v1/namespaces/diff/widgets/w/status",
            Some(json!({"status": {"phase": "Ready"}, "spec": {"size": 9}})),
        )
        .content_type("application/merge-patch+json"),
        step(
            "spec change bumps generation",
            "PATCH",
            "/apis/example.com/v1/namespaces/diff/widgets/w",
            Some(json!({"spec": {"size": 5}})),
        )
        .content_type("application/merge-patch+json"),
        step(
            "other version",
            "GET",
            "/apis/example.com/v1beta1/namespaces/diff/widgets/w",
            None,
        ),
        step(
            "delete widget",
            "DELETE",
            "/apis/example.com/v1/namespaces/diff/widgets/w",
            None,
        ),
    ];
    (built_in, custom)
}

async fn install_crd(client: &kube::Client) -> anyhow::Result<()> {
    let (code, body) = run(
        client,
        &step(
            "create crd",
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(widget_crd()),
        ),
    )
    .await?;
    anyhow::ensure!(code == 201, "CRD create: {code} {body}");
    eventually(Duration::from_secs(60), || async {
        let (code, _) = run(
            client,
            &step("list widgets", "GET", "/apis/example.com/v1/widgets", None),
        )
        .await?;
        Ok((code == 200).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atoll_answers_as_kube_apiserver_does() -> anyhow::Result<()> {
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: false,
        ..Default::default()
    })
    .await?;
    let kube_apiserver = testbed.clusters()[0].client().await?;
    let hub = TestHub::start().await?;
    let atoll = hub.client().await?;
    let (built_in, custom) = scenario();
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for (steps, crd) in [(built_in, false), (custom, true)] {
        if crd {
            install_crd(&kube_apiserver).await?;
            install_crd(&atoll).await?;
        }
        for step in &steps {
            let (code_k, body_k) = run(&kube_apiserver, step).await?;
            let (code_a, body_a) = run(&atoll, step).await?;
            let expected = outcome(step.compare, code_k, body_k);
            let actual = outcome(step.compare, code_a, body_a);
            compared += 1;
            if expected != actual {
                mismatches.push(format!(
                    "{}:\n  kube-apiserver: {expected}\n  atoll:          {actual}",
                    step.name
                ));
            }
        }
    }
    assert!(compared > 30);
    assert!(
        mismatches.is_empty(),
        "{} of {compared} steps differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    Ok(())
}
