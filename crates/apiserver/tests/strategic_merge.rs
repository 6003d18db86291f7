//! Strategic merge patch against kube-apiserver 1.20 (the test bed):
//! - through kubectl, on kinds the hub serves: client-side `kubectl apply` sequences,
//!   `kubectl patch --type strategic` with each directive, `kubectl label` and `kubectl edit`
//!   leave the same objects on both servers (apart from uids, times and resourceVersions),
//!   and bad directives get the same answers;
//! - at the engine, on kinds the hub does not serve yet (Deployment, Pod, from real-world
//!   manifests): each patch applied by `atoll-merge` with the generated table, then defaulted
//!   by 1.20 (a dry-run update), equals what 1.20's own strategic merge patch stores; and
//!   random sequences mixing every directive (refusals included) from fixed seeds.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::Context;
use atoll_testbed::{Testbed, TestbedConfig};
use common::TestHub;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

fn kubectl(
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
    editor: Option<&Path>,
) -> anyhow::Result<Output> {
    let mut command = Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(editor) = editor {
        command.env("KUBE_EDITOR", editor);
    }
    let mut child = command.spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::io::Write::write_all(&mut pipe, input.as_bytes())?;
    }
    drop(child.stdin.take());
    Ok(child.wait_with_output()?)
}

/// An object without what two servers fill differently.
fn normalize(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(field);
        }
    }
    object
}

fn normalize_text(text: &str) -> String {
    let uid =
        regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").ok();
    match uid {
        Some(re) => re.replace_all(text, "UID").into_owned(),
        None => text.to_string(),
    }
}

const SETTINGS_V1: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\n  labels: {app: demo, tier: web}\n  annotations: {note: first}\ndata:\n  a: \"1\"\n  b: \"2\"\n";
const SETTINGS_V2: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\n  labels: {app: demo}\ndata:\n  a: \"10\"\n  c: \"3\"\n";
const ROBOT_V1: &str = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: robot\n  namespace: default\nsecrets:\n- name: one\n- name: two\nimagePullSecrets:\n- name: pull\n";
const ROBOT_V2: &str = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: robot\n  namespace: default\nsecrets:\n- name: two\n- name: three\nimagePullSecrets:\n- name: pull\n";
const LEASE_V1: &str = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: holder\n  namespace: default\n  finalizers: [example.com/a, example.com/b]\nspec:\n  holderIdentity: one\n";
const LEASE_V2: &str = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: holder\n  namespace: default\n  finalizers: [example.com/b]\nspec:\n  holderIdentity: two\n";
const TEAM: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n  labels: {owner: a, stage: dev}\n";
const READER: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader\n  namespace: default\nrules:\n- apiGroups: [\"\"]\n  resources: [configmaps]\n  verbs: [get, list]\n";
const READER_V2: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader\n  namespace: default\nrules:\n- apiGroups: [\"\"]\n  resources: [configmaps, secrets]\n  verbs: [get]\n";

/// A kubectl step: its name, its arguments, stdin, and the object to compare afterwards.
type Step = (
    &'static str,
    Vec<String>,
    Option<&'static str>,
    (&'static str, &'static str),
);

fn strategic(kind: &str, name: &str, patch: Value) -> Vec<String> {
    [
        "patch",
        kind,
        name,
        "-n",
        "default",
        "--type",
        "strategic",
        "-p",
    ]
    .into_iter()
    .map(str::to_string)
    .chain([patch.to_string()])
    .collect()
}

fn strategic_cluster(kind: &str, name: &str, patch: Value) -> Vec<String> {
    ["patch", kind, name, "--type", "strategic", "-p"]
        .into_iter()
        .map(str::to_string)
        .chain([patch.to_string()])
        .collect()
}

fn args(text: &str) -> Vec<String> {
    text.split(' ').map(str::to_string).collect()
}

fn steps() -> Vec<Step> {
    const CM: (&str, &str) = ("configmap", "settings");
    const SA: (&str, &str) = ("serviceaccount", "robot");
    const ROLE: (&str, &str) = ("role", "reader");
    const LEASE: (&str, &str) = ("lease", "holder");
    const NS: (&str, &str) = ("namespace", "team");
    vec![
        ("apply create", args("apply -f -"), Some(SETTINGS_V1), CM),
        ("apply configure", args("apply -f -"), Some(SETTINGS_V2), CM),
        (
            "finalizer",
            strategic(
                "configmap",
                "settings",
                json!({"metadata": {"finalizers": ["example.com/one"]}}),
            ),
            None,
            CM,
        ),
        (
            "second finalizer appends",
            strategic(
                "configmap",
                "settings",
                json!({"metadata": {"finalizers": ["example.com/two"]}}),
            ),
            None,
            CM,
        ),
        (
            "setElementOrder",
            strategic(
                "configmap",
                "settings",
                json!({"metadata": {"$setElementOrder/finalizers": ["example.com/two", "example.com/one"]}}),
            ),
            None,
            CM,
        ),
        (
            "deleteFromPrimitiveList",
            strategic(
                "configmap",
                "settings",
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/one"]}}),
            ),
            None,
            CM,
        ),
        (
            "patch replace on a map",
            strategic(
                "configmap",
                "settings",
                json!({"data": {"$patch": "replace", "only": "this"}}),
            ),
            None,
            CM,
        ),
        (
            "null removes",
            strategic(
                "configmap",
                "settings",
                json!({"metadata": {"labels": {"app": null, "new": "yes"}}}),
            ),
            None,
            CM,
        ),
        (
            "bad primitive list directive",
            strategic(
                "configmap",
                "settings",
                json!({"metadata": {"$deleteFromPrimitiveListfinalizers": ["a"]}}),
            ),
            None,
            CM,
        ),
        (
            "bad setElementOrder",
            strategic(
                "configmap",
                "settings",
                json!({"metadata": {"$setElementOrder/finalizers": ["zzz"], "finalizers": ["example.com/three"]}}),
            ),
            None,
            CM,
        ),
        (
            "label",
            args("label configmap settings -n default tier=db"),
            None,
            CM,
        ),
        ("edit", args("edit configmap settings -n default"), None, CM),
        (
            "drop finalizers",
            strategic(
                "configmap",
                "settings",
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/two"]}}),
            ),
            None,
            CM,
        ),
        (
            "apply service account",
            args("apply -f -"),
            Some(ROBOT_V1),
            SA,
        ),
        (
            "apply service account again",
            args("apply -f -"),
            Some(ROBOT_V2),
            SA,
        ),
        (
            "service account secret appends",
            strategic(
                "serviceaccount",
                "robot",
                json!({"secrets": [{"name": "four"}]}),
            ),
            None,
            SA,
        ),
        (
            "patch delete in a list",
            strategic(
                "serviceaccount",
                "robot",
                json!({"secrets": [{"name": "two", "$patch": "delete"}]}),
            ),
            None,
            SA,
        ),
        (
            "patch merge in a list is refused",
            strategic(
                "serviceaccount",
                "robot",
                json!({"secrets": [{"name": "x", "$patch": "merge"}]}),
            ),
            None,
            SA,
        ),
        (
            "missing merge key",
            strategic(
                "serviceaccount",
                "robot",
                json!({"secrets": [{"namespace": "no-name"}]}),
            ),
            None,
            SA,
        ),
        (
            "setElementOrder on a keyed list",
            strategic(
                "serviceaccount",
                "robot",
                json!({"$setElementOrder/secrets": [{"name": "four"}, {"name": "three"}]}),
            ),
            None,
            SA,
        ),
        (
            "patch delete on a map",
            strategic(
                "configmap",
                "settings",
                json!({"metadata": {"annotations": {"$patch": "delete"}}}),
            ),
            None,
            CM,
        ),
        ("apply lease", args("apply -f -"), Some(LEASE_V1), LEASE),
        (
            "apply lease again",
            args("apply -f -"),
            Some(LEASE_V2),
            LEASE,
        ),
        (
            "lease finalizer appends",
            strategic(
                "lease",
                "holder",
                json!({"metadata": {"finalizers": ["example.com/c"]}, "spec": {"leaseDurationSeconds": 30}}),
            ),
            None,
            LEASE,
        ),
        (
            "lease finalizers cleared",
            strategic("lease", "holder", json!({"metadata": {"finalizers": null}})),
            None,
            LEASE,
        ),
        ("apply namespace", args("apply -f -"), Some(TEAM), NS),
        (
            "namespace finalizer appends",
            strategic_cluster(
                "namespace",
                "team",
                json!({"metadata": {"finalizers": ["example.com/ns"]}, "spec": {"finalizers": ["kubernetes", "example.com/spec"]}}),
            ),
            None,
            NS,
        ),
        (
            "namespace labels replaced",
            strategic_cluster(
                "namespace",
                "team",
                json!({"metadata": {"labels": {"$patch": "replace", "owner": "b"}}}),
            ),
            None,
            NS,
        ),
        (
            "namespace finalizers cleared",
            strategic_cluster(
                "namespace",
                "team",
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/ns"]}}),
            ),
            None,
            NS,
        ),
        ("apply role", args("apply -f -"), Some(READER), ROLE),
        (
            "apply role again",
            args("apply -f -"),
            Some(READER_V2),
            ROLE,
        ),
        (
            "role rules replace",
            strategic(
                "role",
                "reader",
                json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
            ),
            None,
            ROLE,
        ),
    ]
}

fn run_steps(
    kubeconfig: &Path,
    editor: &Path,
) -> anyhow::Result<Vec<(&'static str, bool, String, Value)>> {
    let mut seen = Vec::new();
    for (name, args, stdin, (kind, object)) in steps() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = kubectl(kubeconfig, &args, stdin, Some(editor))?;
        let got = kubectl(
            kubeconfig,
            &["get", kind, object, "-n", "default", "-o", "json"],
            None,
            None,
        )?;
        let object: Value = serde_json::from_slice(&got.stdout)
            .with_context(|| format!("{name}: {}", String::from_utf8_lossy(&got.stderr)))?;
        seen.push((
            name,
            out.status.success(),
            normalize_text(&String::from_utf8_lossy(&out.stderr)),
            normalize(object),
        ));
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_leaves_the_same_objects_on_both_servers() -> anyhow::Result<()> {
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: false,
        ..Default::default()
    })
    .await?;
    let hub = TestHub::start().await?;
    let dir = tempfile::tempdir()?;
    let editor = dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/only: this/only: edited/' \"$1\"\n",
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755))?;
    }
    let kube = run_steps(testbed.clusters()[0].kubeconfig_path(), &editor)?;
    let atoll = run_steps(hub.kubeconfig(), &editor)?;
    for (k, a) in kube.iter().zip(&atoll) {
        assert_eq!(k, a, "step {:?}", k.0);
    }
    // The sequence did what it says on kube-apiserver, so the comparison compares something.
    let appended = &kube[3].3["metadata"]["finalizers"];
    assert_eq!(appended.as_array().map(Vec::len), Some(2), "{appended}");
    let step = |name: &str| kube.iter().find(|s| s.0 == name);
    assert!(step("patch merge in a list is refused").is_some_and(|s| !s.1));
    assert!(step("edit").is_some_and(|s| s.3["data"]["only"] == "edited"));
    assert!(
        step("patch delete in a list")
            .is_some_and(|s| s.3["secrets"].as_array().map(Vec::len) == Some(2))
    );
    Ok(())
}

fn resource(gvk: GroupVersionKind, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

fn yaml_fixture(name: &str) -> anyhow::Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Ok(serde_saphyr::from_str(&std::fs::read_to_string(path)?)?)
}

/// An outcome as comparable text.
fn outcome(result: Result<DynamicObject, kube::Error>) -> anyhow::Result<Value> {
    Ok(match result {
        Ok(object) => {
            let mut v = normalize(serde_json::to_value(object)?);
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                // 1.20 bumps generation on a dry-run update as on the patch.
                meta.remove("generation");
            }
            v
        }
        Err(kube::Error::Api(status)) => json!({"code": status.code, "message": status.message}),
        Err(other) => return Err(other.into()),
    })
}

/// Each patch in turn: `atoll-merge`'s result, defaulted by 1.20 through a dry-run update,
/// against 1.20's own strategic merge patch (or refusal). Answers how many were applied.
async fn compare_patches(
    api: &Api<DynamicObject>,
    name: &str,
    api_version: &str,
    kind: &str,
    patches: &[Value],
) -> anyhow::Result<usize> {
    let schema = atoll_merge::Schema::builtin()?;
    let root = schema
        .root(api_version, kind)
        .with_context(|| format!("{kind} has no root"))?;
    let mut compared = 0;
    for patch in patches {
        let current = serde_json::to_value(api.get(name).await?)?;
        let by_engine = match atoll_merge::apply(&current, patch, root) {
            Ok(merged) => {
                let object: DynamicObject = serde_json::from_value(merged)?;
                let dry = PostParams {
                    dry_run: true,
                    ..Default::default()
                };
                outcome(api.replace(name, &dry, &object).await)?
            }
            Err(e) => json!({"code": match e.class() {
                atoll_merge::ErrorClass::BadRequest => 400,
                atoll_merge::ErrorClass::Unprocessable => 422,
                atoll_merge::ErrorClass::TooLarge => 413,
                _ => 500,
            }, "message": e.to_string()}),
        };
        let by_kube = outcome(
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Strategic(patch.clone()),
            )
            .await,
        )?;
        assert_eq!(by_kube, by_engine, "patch {patch}");
        // Counted when applied, so that a run where both refuse everything fails below.
        if by_kube.get("code").is_none() {
            compared += 1;
        }
    }
    Ok(compared)
}

fn containers(containers: Value) -> Value {
    json!({"spec": {"template": {"spec": {"containers": containers}}}})
}

fn deployment_patches() -> Vec<Value> {
    vec![
        containers(
            json!([{"name": "nginx", "env": [{"name": "MODE", "value": "fast"}, {"name": "LEVEL", "value": "1"}]}]),
        ),
        containers(json!([{"name": "nginx", "env": [{"name": "LEVEL", "value": "2"}]}])),
        containers(json!([{"name": "nginx", "env": [{"name": "MODE", "$patch": "delete"}]}])),
        containers(
            json!([{"name": "nginx", "ports": [{"containerPort": 80}, {"containerPort": 443, "name": "https"}]}]),
        ),
        containers(json!([{"name": "nginx", "ports": [{"containerPort": 8080, "name": "alt"}]}])),
        json!({"spec": {"template": {"spec": {
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cache", "emptyDir": {"medium": "Memory"}}],
            "containers": [{"name": "nginx", "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "cache", "mountPath": "/cache"}]}]
        }}}}),
        containers(json!([{"name": "sidecar", "image": "busybox", "args": ["sleep", "3600"]}])),
        json!({"spec": {"template": {"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}]}}}}),
        json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "nginx"}]}}}}),
        json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}], "containers": [{"name": "sidecar", "image": "busybox:1.33"}]}}}}),
        json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        json!({"spec": {"template": {"spec": {"volumes": [{"name": "data", "$retainKeys": ["name", "configMap"], "configMap": {"name": "cfg"}}]}}}}),
        containers(
            json!([{"name": "nginx", "volumeMounts": [{"mountPath": "/cache", "$patch": "delete"}]}]),
        ),
        json!({"spec": {"template": {"spec": {"tolerations": null}}}}),
        json!({"metadata": {"finalizers": ["example.com/a", "example.com/b"], "labels": {"app": "nginx", "tier": "web"}}}),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a"], "$setElementOrder/finalizers": ["example.com/b"]}}),
        containers(json!([{"name": "nginx", "image": "nginx:1.19"}, {"$patch": "replace"}])),
        // Refusals: the same code and wording.
        containers(json!([{"name": "nginx", "$patch": "merge"}])),
        containers(json!([{"image": "no-name"}])),
        json!({"metadata": {"$deleteFromPrimitiveListfinalizers": ["x"]}}),
        json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}}),
        json!({"metadata": {"finalizers": null}}),
    ]
}

/// Long lists (past the 20 elements of Go's insertion-sort blocks), in orders that differ
/// between the server, the patch and `$setElementOrder`, so that the merged order depends on
/// upstream's sort step for step.
fn long_list_patches() -> Vec<Value> {
    let env = |names: &mut dyn Iterator<Item = usize>| -> Vec<Value> {
        names
            .map(|i| json!({"name": format!("E{i:02}"), "value": format!("{i}")}))
            .collect()
    };
    let order = |names: &mut dyn Iterator<Item = usize>| -> Vec<Value> {
        names.map(|i| json!({"name": format!("E{i:02}")})).collect()
    };
    let finalizers = |names: &mut dyn Iterator<Item = usize>| -> Vec<String> {
        names.map(|i| format!("example.com/f{i:02}")).collect()
    };
    vec![
        containers(json!([{"name": "nginx", "env": env(&mut (0..30))}])),
        // New elements in an order of their own, among existing ones the patch names.
        containers(
            json!([{"name": "nginx", "env": env(&mut (0..45).map(|i| (i * 7) % 45).filter(|i| i % 3 != 0))}]),
        ),
        containers(json!([{"name": "nginx",
            "$setElementOrder/env": order(&mut (0..45).rev().filter(|i| i % 4 != 0)),
            "env": env(&mut (0..45).rev().filter(|i| i % 8 == 1))}])),
        json!({"metadata": {"finalizers": finalizers(&mut (0..30).map(|i| (i * 11) % 30))}}),
        json!({"metadata": {"finalizers": finalizers(&mut (20..50).rev())}}),
        json!({"metadata": {
            "$setElementOrder/finalizers": finalizers(&mut (0..50).map(|i| (i * 13) % 50).filter(|i| i % 5 != 0)),
            "$deleteFromPrimitiveList/finalizers": finalizers(&mut (0..50).filter(|i| i % 5 == 0)),
        }}),
        json!({"metadata": {"finalizers": null}}),
    ]
}

/// A small deterministic generator (no seed from the environment: a failure replays).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n.max(1)
    }

    fn subset(&mut self, pool: &[&'static str]) -> Vec<&'static str> {
        let mut picked: Vec<&'static str> = pool
            .iter()
            .copied()
            .filter(|_| self.below(2) == 0)
            .collect();
        // A random order, by swaps.
        for i in (1..picked.len()).rev() {
            let j = self.below(i + 1);
            picked.swap(i, j);
        }
        picked
    }
}

/// Random strategic merge patches over env, ports, volumes, finalizers and labels, mixing
/// every directive (some contradict each other or the object: both servers must refuse
/// those alike).
fn random_patches(seed: u64, count: usize) -> Vec<Value> {
    const ENV: &[&str] = &["A", "B", "C", "D", "E", "F", "G", "H"];
    const FINALIZERS: &[&str] = &[
        "example.com/a",
        "example.com/b",
        "example.com/c",
        "example.com/d",
        "example.com/e",
    ];
    const VOLUMES: &[&str] = &["v1", "v2", "v3", "v4"];
    let mut rng = Lcg(seed);
    let mut patches = Vec::new();
    for _ in 0..count {
        let patch = match rng.below(9) {
            0 => {
                let env: Vec<Value> = rng
                    .subset(ENV)
                    .into_iter()
                    .map(|n| json!({"name": n, "value": format!("{}", rng.below(100))}))
                    .collect();
                containers(json!([{"name": "nginx", "env": env}]))
            }
            1 => {
                let env: Vec<Value> = rng
                    .subset(ENV)
                    .into_iter()
                    .map(|n| json!({"name": n, "$patch": "delete"}))
                    .collect();
                containers(json!([{"name": "nginx", "env": env}]))
            }
            2 => {
                let order: Vec<Value> = rng
                    .subset(ENV)
                    .into_iter()
                    .map(|n| json!({"name": n}))
                    .collect();
                let env: Vec<Value> = rng
                    .subset(ENV)
                    .into_iter()
                    .take(2)
                    .map(|n| json!({"name": n, "value": "set"}))
                    .collect();
                containers(json!([{"name": "nginx", "$setElementOrder/env": order, "env": env}]))
            }
            3 => {
                let ports: Vec<Value> = (0..rng.below(4))
                    .map(|_| json!({"containerPort": 8000 + rng.below(6), "protocol": "TCP"}))
                    .collect();
                containers(json!([{"name": "nginx", "ports": ports}]))
            }
            4 => json!({"metadata": {"finalizers": rng.subset(FINALIZERS)}}),
            5 => json!({"metadata": {
                "$deleteFromPrimitiveList/finalizers": rng.subset(FINALIZERS),
                "$setElementOrder/finalizers": rng.subset(FINALIZERS),
            }}),
            6 => {
                let volumes: Vec<Value> = rng.subset(VOLUMES).into_iter().map(|n| match rng.below(3) {
                    0 => json!({"name": n, "$patch": "delete"}),
                    1 => json!({"name": n, "$retainKeys": ["name", "configMap"], "configMap": {"name": format!("cfg-{n}")}}),
                    _ => json!({"name": n, "emptyDir": {}}),
                }).collect();
                json!({"spec": {"template": {"spec": {"volumes": volumes}}}})
            }
            7 => {
                let mut labels = serde_json::Map::new();
                for key in rng.subset(&["x", "y", "z"]) {
                    labels.insert(
                        key.into(),
                        if rng.below(2) == 0 {
                            Value::Null
                        } else {
                            json!("v")
                        },
                    );
                }
                json!({"metadata": {"labels": labels}})
            }
            _ => {
                let order: Vec<Value> = rng
                    .subset(&["nginx", "sidecar"])
                    .into_iter()
                    .map(|n| json!({"name": n}))
                    .collect();
                json!({"spec": {"template": {"spec": {"$setElementOrder/containers": order}}}})
            }
        };
        patches.push(patch);
    }
    patches
}

fn pod_patches() -> Vec<Value> {
    vec![
        json!({"spec": {"containers": [{"name": "sentinel", "image": "gcr.io/kubernetes-e2e-test-images/redis:1.1"}]}}),
        json!({"spec": {"tolerations": [{"key": "example.com/spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]}}),
        json!({"metadata": {"labels": {"role": null, "stage": "test"}, "finalizers": ["example.com/keep"]}}),
        json!({"spec": {"$setElementOrder/containers": [{"name": "master"}, {"name": "sentinel"}], "containers": [{"name": "master", "image": "gcr.io/kubernetes-e2e-test-images/redis:1.1"}]}}),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/keep"]}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_patches_deployments_and_pods_as_kube_apiserver_does() -> anyhow::Result<()> {
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: false,
        ..Default::default()
    })
    .await?;
    let client = testbed.clusters()[0].client().await?;
    let deployments: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &resource(
            GroupVersionKind::gvk("apps", "v1", "Deployment"),
            "deployments",
        ),
    );
    let deployment: DynamicObject =
        serde_json::from_value(yaml_fixture("karmada-nginx-deployment.yaml")?)?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let mut patches = deployment_patches();
    patches.extend(long_list_patches());
    let compared =
        compare_patches(&deployments, "nginx", "apps/v1", "Deployment", &patches).await?;
    // All but the four refusals in `deployment_patches` apply.
    assert_eq!(compared, patches.len() - 4);

    // Random sequences, compared step by step (refusals included).
    for seed in [20_201_202, 7, 1_234_567] {
        let name = format!("random-{seed}");
        let mut random = deployment.clone();
        random.metadata.name = Some(name.clone());
        deployments.create(&PostParams::default(), &random).await?;
        let patches = random_patches(seed, 80);
        let applied =
            compare_patches(&deployments, &name, "apps/v1", "Deployment", &patches).await?;
        assert!(
            applied > patches.len() / 2,
            "only {applied} of the random patches applied"
        );
    }

    let pods: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &resource(GroupVersionKind::gvk("", "v1", "Pod"), "pods"),
    );
    // No controller manager makes the default ServiceAccount that Pod admission looks up.
    let accounts: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &resource(
            GroupVersionKind::gvk("", "v1", "ServiceAccount"),
            "serviceaccounts",
        ),
    );
    let account: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )?;
    accounts.create(&PostParams::default(), &account).await?;
    // Nor the token Secret that admission would mount.
    let mut pod = yaml_fixture("redis-master-pod.yaml")?;
    pod["spec"]["automountServiceAccountToken"] = json!(false);
    let pod: DynamicObject = serde_json::from_value(pod)?;
    pods.create(&PostParams::default(), &pod).await?;
    let patches = pod_patches();
    let compared = compare_patches(&pods, "redis-master", "v1", "Pod", &patches).await?;
    assert_eq!(compared, patches.len());
    Ok(())
}
