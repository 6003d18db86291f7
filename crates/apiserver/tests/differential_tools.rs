//! The differential suite, through the tools users drive a hub with: the same kubectl commands
//! and the same kube-rs calls against a real kube-apiserver 1.20 (from the test bed) and
//! against Atoll's API server, comparing exit codes, what kubectl prints (objects, tables,
//! messages) and what kube-rs returns, apart from uids, timestamps, resourceVersions and ages.
//! `differential.rs` does the same with raw requests, for codes, reasons and causes.
//!
//! Known differences that are normalized away, each because Atoll follows current Kubernetes
//! or does not implement a 1.20 feature: `metadata.managedFields` (Atoll records no
//! server-side-apply field managers), and the layout of `kubectl explain`, which kubectl
//! renders from OpenAPI v3 for Atoll and from v2 for 1.20 (which serves no v3): its words are
//! compared.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use atoll_testbed::{Testbed, TestbedConfig};
use common::{TestHub, eventually};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

/// One kubectl invocation and what it printed, normalized.
#[derive(Debug, PartialEq)]
struct Printed {
    success: bool,
    stdout: String,
    stderr: String,
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    Ok(child.wait_with_output()?)
}

/// Drops what legitimately differs between two servers from kubectl's text: uids,
/// timestamps, resourceVersions, ages, the server's address, and column padding (which
/// follows the widest value).
fn normalize_text(text: &str) -> String {
    let replacements = [
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "UID",
        ),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "TIME"),
        (r#"resourceVersion: "?\d+"?"#, "resourceVersion: RV"),
        (r"https://127\.0\.0\.1:\d+", "SERVER"),
    ];
    let mut text = text.to_owned();
    for (pattern, with) in replacements {
        if let Ok(re) = regex::Regex::new(pattern) {
            text = re.replace_all(&text, with).into_owned();
        }
    }
    let age = regex::Regex::new(r"^(\d+(s|m|h|d))+$|^<unknown>$").ok();
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .map(|word| match &age {
                    Some(age) if age.is_match(word) => "AGE",
                    _ => word,
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An object printed as JSON or YAML, without the fields the two servers fill differently.
fn normalize_object(mut object: Value) -> Value {
    if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            *item = normalize_object(item.take());
        }
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
        ] {
            meta.remove(field);
        }
    }
    object
}

fn printed(output: &Output, structured: Option<&str>) -> Printed {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stdout = match structured {
        Some("json") => serde_json::from_str::<Value>(&stdout)
            .map(|v| normalize_object(v).to_string())
            .unwrap_or_else(|_| normalize_text(&stdout)),
        // Prose (kubectl explain): kubectl renders OpenAPI v2 and v3 with different line
        // wrapping and spacing, so only the words are compared.
        Some("words") => stdout.split_whitespace().collect::<Vec<_>>().join(" "),
        Some(_) => serde_saphyr::from_str::<Value>(&stdout)
            .map(|v| normalize_object(v).to_string())
            .unwrap_or_else(|_| normalize_text(&stdout)),
        None => normalize_text(&stdout),
    };
    Printed {
        success: output.status.success(),
        stdout,
        stderr: normalize_text(&String::from_utf8_lossy(&output.stderr)),
    }
}

const SETTINGS: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\n  labels: {app: demo}\ndata:\n  mode: fast\n";
const APPLIED: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: default\ndata:\n  a: \"1\"\n";
const APPLIED_CHANGED: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: default\ndata:\n  a: \"2\"\n  b: \"3\"\n";

/// One kubectl step: its name, its arguments (split at spaces), stdin, and how stdout is
/// compared (`json`, `yaml`, `words`, or as text).
type KubectlStep = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

/// The kubectl scenario.
#[rustfmt::skip]
const KUBECTL_SCENARIO: &[KubectlStep] = &[
    ("create", "create -f -", Some(SETTINGS), None),
    ("create again", "create -f -", Some(SETTINGS), None),
    ("get -o json", "get configmap settings -n default -o json", None, Some("json")),
    ("get -o yaml", "get configmap settings -n default -o yaml", None, Some("yaml")),
    ("get table", "get configmaps settings -n default", None, None),
    ("get missing", "get configmap nope -n default", None, None),
    ("label", "label configmap settings -n default tier=web", None, None),
    ("label clash", "label configmap settings -n default tier=db", None, None),
    ("annotate", "annotate configmap settings -n default note=kept", None, None),
    ("patch merge", r#"patch configmap settings -n default --type merge -p {"data":{"mode":"slow"}}"#, None, None),
    ("patch json", r#"patch configmap settings -n default --type json -p [{"op":"replace","path":"/data/mode","value":"fast"}]"#, None, None),
    ("patch json failing test", r#"patch configmap settings -n default --type json -p [{"op":"test","path":"/data/mode","value":"slow"}]"#, None, None),
    ("get after patches", "get configmap settings -n default -o json", None, Some("json")),
    ("show labels", "get configmaps -n default -l app=demo --show-labels", None, None),
    ("apply create", "apply -f -", Some(APPLIED), None),
    ("apply unchanged", "apply -f -", Some(APPLIED), None),
    ("apply configure", "apply -f -", Some(APPLIED_CHANGED), None),
    ("get applied", "get configmap applied -n default -o json", None, Some("json")),
    ("wait for jsonpath", "wait configmap/settings -n default --for=jsonpath={.data.mode}=fast --timeout=20s", None, None),
    ("api-resources rbac", "api-resources --api-group=rbac.authorization.k8s.io", None, None),
    ("api-resources coordination", "api-resources --api-group=coordination.k8s.io", None, None),
    ("explain", "explain configmap.data", None, Some("words")),
    ("delete", "delete configmap applied -n default", None, None),
    ("delete missing", "delete configmap applied -n default", None, None),
    ("wait for delete", "wait configmap/applied -n default --for=delete --timeout=20s", None, None),
    ("list after delete", "get configmaps -n default -l app=demo -o json", None, Some("json")),
];

/// `kubectl get -w` prints the object's current value, then the value after a patch made
/// while it watches.
fn watch_with_kubectl(kubeconfig: &Path) -> anyhow::Result<Vec<String>> {
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "get",
            "configmap",
            "settings",
            "-n",
            "default",
            "-w",
            "-o",
            "jsonpath={.data.mode}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = watch
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let first = lines.recv_timeout(Duration::from_secs(30));
    seen.extend(first.ok());
    let patched = kubectl(
        kubeconfig,
        &[
            "patch",
            "configmap",
            "settings",
            "-n",
            "default",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"mode":"watched"}}"#,
        ],
        None,
    )?;
    anyhow::ensure!(patched.status.success(), "{patched:?}");
    seen.extend(lines.recv_timeout(Duration::from_secs(30)).ok());
    let _ = watch.kill();
    let _ = watch.wait();
    Ok(seen)
}

fn run_kubectl_scenario(kubeconfig: &Path) -> anyhow::Result<Vec<(&'static str, Printed)>> {
    let mut results = Vec::new();
    for &(name, args, stdin, structured) in KUBECTL_SCENARIO {
        let args: Vec<&str> = args.split(' ').collect();
        let output = kubectl(kubeconfig, &args, stdin)?;
        results.push((name, printed(&output, structured)));
    }
    let watched = watch_with_kubectl(kubeconfig)?;
    results.push((
        "get -w",
        Printed {
            success: true,
            stdout: watched.join("\n"),
            stderr: String::new(),
        },
    ));
    Ok(results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_prints_the_same_against_both_servers() -> anyhow::Result<()> {
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: false,
        ..Default::default()
    })
    .await?;
    let kube_kubeconfig = testbed.clusters()[0].kubeconfig_path().to_path_buf();
    let hub = TestHub::start().await?;
    let atoll_kubeconfig = hub.kubeconfig().to_path_buf();
    let (expected, actual) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            run_kubectl_scenario(&kube_kubeconfig)?,
            run_kubectl_scenario(&atoll_kubeconfig)?,
        ))
    })
    .await??;

    // The scenario exercises successes and failures, and what it reads is not empty.
    let failures = expected.iter().filter(|(_, p)| !p.success).count();
    assert!(
        failures >= 4,
        "expected refusals in the scenario: {expected:#?}"
    );
    let (_, watched) = expected
        .iter()
        .find(|(name, _)| *name == "get -w")
        .ok_or_else(|| anyhow::anyhow!("no watch step"))?;
    assert_eq!(watched.stdout, "fast\nwatched", "kube-apiserver's watch");

    assert_same_steps(&expected, &actual);
    Ok(())
}

/// Fails, naming every differing step, unless kube-apiserver (`expected`) and atoll (`actual`)
/// printed the same for each kubectl step.
fn assert_same_steps(expected: &[(&str, Printed)], actual: &[(&str, Printed)]) {
    let mismatches: Vec<String> = expected
        .iter()
        .zip(actual)
        .filter(|((_, k), (_, a))| k != a)
        .map(|((name, k), (_, a))| {
            format!("{name}:\n  kube-apiserver: {k:?}\n  atoll:          {a:?}")
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} kubectl steps differ:\n{}",
        mismatches.len(),
        expected.len(),
        mismatches.join("\n")
    );
}

/// The outcome of a kube-rs call, as comparable text: the object's normalized data, or the
/// error's code, reason and message.
fn outcome<T: serde::Serialize>(result: Result<T, kube::Error>) -> String {
    match result {
        Ok(object) => serde_json::to_value(object)
            .map(normalize_object)
            .map(|v| format!("ok {v}"))
            .unwrap_or_else(|e| format!("unserializable {e}")),
        Err(kube::Error::Api(status)) => format!(
            "error {} {} {}",
            status.code,
            status.reason,
            normalize_text(&status.message)
        ),
        Err(other) => format!("client error {other}"),
    }
}

fn config_map(name: &str, mode: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("diff".to_owned(), "kube-rs".to_owned())].into()),
            ..Default::default()
        },
        data: Some([("mode".to_owned(), mode.to_owned())].into()),
        ..Default::default()
    }
}

/// kube-rs `Api` CRUD, then a `watcher` with bookmarks over a create, an update and a delete.
async fn kube_rs_scenario(client: kube::Client) -> anyhow::Result<Vec<String>> {
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut seen = Vec::new();
    let created = api
        .create(&PostParams::default(), &config_map("crud", "a"))
        .await;
    let stale = created.as_ref().ok().cloned();
    seen.push(outcome(created));
    seen.push(outcome(
        api.create(&PostParams::default(), &config_map("crud", "a"))
            .await,
    ));
    seen.push(outcome(api.get("crud").await));
    seen.push(outcome(
        api.patch(
            "crud",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"mode": "b"}})),
        )
        .await,
    ));
    // A replace carrying the resourceVersion from before the patch: 409.
    if let Some(stale) = stale {
        seen.push(outcome(
            api.replace("crud", &PostParams::default(), &stale).await,
        ));
    }
    let mut fresh = api.get("crud").await?;
    fresh.data = Some([("mode".to_owned(), "c".to_owned())].into());
    seen.push(outcome(
        api.replace("crud", &PostParams::default(), &fresh).await,
    ));
    seen.push(outcome(api.get_opt("missing").await));
    seen.push(outcome(
        api.delete("crud", &DeleteParams::default())
            .await
            .map(|either| either.is_right()),
    ));
    seen.push(outcome(api.get("crud").await));

    // The watcher: an initial list of one object, then three changes, with bookmarks asked for.
    api.create(&PostParams::default(), &config_map("watched", "1"))
        .await?;
    // kube-rs asks for bookmarks by default (allowWatchBookmarks=true).
    let config = watcher::Config::default().labels("diff=kube-rs");
    let mut events = watcher(api.clone(), config).boxed();
    let describe = |event: watcher::Event<ConfigMap>| -> String {
        let data = |cm: &ConfigMap| {
            format!(
                "{} {:?}",
                cm.metadata.name.clone().unwrap_or_default(),
                cm.data.clone().unwrap_or_default()
            )
        };
        match event {
            watcher::Event::Init => "init".to_owned(),
            watcher::Event::InitApply(cm) => format!("init-apply {}", data(&cm)),
            watcher::Event::InitDone => "init-done".to_owned(),
            watcher::Event::Apply(cm) => format!("apply {}", data(&cm)),
            watcher::Event::Delete(cm) => format!("delete {}", data(&cm)),
        }
    };
    let mut watched = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), events.next()).await? {
        let done = matches!(event, Ok(watcher::Event::InitDone));
        watched.push(event.map(describe)?);
        if done {
            break;
        }
    }
    api.create(&PostParams::default(), &config_map("second", "2"))
        .await?;
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"mode": "3"}})),
    )
    .await?;
    api.delete("second", &DeleteParams::default()).await?;
    while watched.len() < 6 {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await? {
            Some(event) => watched.push(event.map(describe)?),
            None => break,
        }
    }
    seen.extend(watched);
    api.delete("watched", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(30), || async {
        Ok(api.get_opt("watched").await?.is_none().then_some(()))
    })
    .await?;
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_sees_the_same_against_both_servers() -> anyhow::Result<()> {
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: false,
        ..Default::default()
    })
    .await?;
    let hub = TestHub::start().await?;
    let expected = kube_rs_scenario(testbed.clusters()[0].client().await?).await?;
    let actual = kube_rs_scenario(hub.client().await?).await?;
    assert!(
        expected.iter().any(|o| o.starts_with("error 409 Conflict"))
            && expected.iter().any(|o| o.starts_with("error 404 NotFound"))
            && expected.iter().any(|o| o.starts_with("delete second")),
        "the scenario covers conflicts, absence and watch deletes: {expected:#?}"
    );
    assert_eq!(expected, actual, "kube-apiserver (left) and atoll (right)");
    Ok(())
}

/// RBAC privilege-escalation prevention: a user who administers a namespace (the bootstrap
/// `admin` role) cannot grant more than it holds there, by Role or by RoleBinding.
#[rustfmt::skip]
const ESCALATION_SCENARIO: &[(&str, &str)] = &[
    ("namespace", "create namespace escalation"),
    ("grant admin", "create rolebinding dev-admin -n escalation --clusterrole=admin --user=dev"),
    ("role beyond the writer's rights", "create role broad -n escalation --verb=* --resource=secrets --as=dev"),
    ("binding to cluster-admin", "create rolebinding dev-cluster-admin -n escalation --clusterrole=cluster-admin --user=dev --as=dev"),
    ("binding to a missing role", "create rolebinding dev-nothing -n escalation --role=nothing --user=dev --as=dev"),
    ("role within the writer's rights", "create role reader -n escalation --verb=get,list --resource=configmaps --as=dev"),
    ("binding within the writer's rights", "create rolebinding someone-reads -n escalation --role=reader --user=someone --as=dev"),
];

fn run_escalation_scenario(kubeconfig: &Path) -> anyhow::Result<Vec<(&'static str, Printed)>> {
    let mut results = Vec::new();
    for &(name, args) in ESCALATION_SCENARIO {
        let args: Vec<&str> = args.split(' ').collect();
        results.push((name, printed(&kubectl(kubeconfig, &args, None)?, None)));
        if name == "grant admin" {
            // kube-apiserver's authorizer reads RBAC from an informer: wait until it sees the
            // grant.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let can_i = [
                "auth",
                "can-i",
                "create",
                "roles",
                "-n",
                "escalation",
                "--as=dev",
            ];
            while !kubectl(kubeconfig, &can_i, None)?.status.success() {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "dev never got the admin role"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    Ok(results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_refusals_match_kube_apiserver() -> anyhow::Result<()> {
    // The controller manager fills in the aggregated `admin` ClusterRole.
    let testbed = Testbed::start(TestbedConfig::default()).await?;
    let kube_kubeconfig = testbed.clusters()[0].kubeconfig_path().to_path_buf();
    let hub = TestHub::start().await?;
    let atoll_kubeconfig = hub.kubeconfig().to_path_buf();
    let (expected, actual) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            run_escalation_scenario(&kube_kubeconfig)?,
            run_escalation_scenario(&atoll_kubeconfig)?,
        ))
    })
    .await??;
    let refused: Vec<&str> = expected
        .iter()
        .filter(|(_, p)| !p.success)
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(
        refused,
        [
            "role beyond the writer's rights",
            "binding to cluster-admin",
            "binding to a missing role"
        ],
        "kube-apiserver: {expected:#?}"
    );
    assert_same_steps(&expected, &actual);
    Ok(())
}

/// A CRD whose printer columns use every JSONPath form upstream's CRD table convertor reads:
/// the ClusterProfile's escaped-dot label keys, `['key']`, indexes (negative too), slices,
/// unions, `..`, filters, and cells of each type (a value of another type prints empty).
const PRINTED_CRD: &str = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
 "metadata": {"name": "gadgets.printer.example.com"},
 "spec": {"group": "printer.example.com", "scope": "Namespaced",
  "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "listKind": "GadgetList"},
  "versions": [{"name": "v1", "served": true, "storage": true,
   "schema": {"openAPIV3Schema": {"type": "object", "properties": {
     "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
     "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
   "additionalPrinterColumns": [
    {"name": "ClusterSet", "type": "string", "jsonPath": ".metadata.labels.multicluster\\.x-k8s\\.io/clusterset"},
    {"name": "Mode", "type": "string", "jsonPath": ".metadata.labels.atoll\\.io/mode"},
    {"name": "Bracket", "type": "string", "jsonPath": ".metadata.labels['atoll\\.io/mode']"},
    {"name": "Second", "type": "string", "jsonPath": ".spec.items[1].name"},
    {"name": "Last", "type": "string", "jsonPath": ".spec.items[-1].name"},
    {"name": "Slice", "type": "string", "jsonPath": ".spec.items[1:3].name"},
    {"name": "Union", "type": "string", "jsonPath": ".spec.items[2,0].name"},
    {"name": "Every", "type": "string", "jsonPath": ".spec.items[*].name"},
    {"name": "Deep", "type": "string", "jsonPath": ".spec.items..name"},
    {"name": "Whole", "type": "string", "jsonPath": ".spec.items[0]"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
    {"name": "Big", "type": "string", "jsonPath": ".status.conditions[?(@.weight>2)].type"},
    {"name": "Count", "type": "integer", "jsonPath": ".spec.count"},
    {"name": "Ratio", "type": "number", "jsonPath": ".spec.ratio"},
    {"name": "RatioText", "type": "string", "jsonPath": ".spec.ratio"},
    {"name": "Flag", "type": "boolean", "jsonPath": ".spec.flag"},
    {"name": "Mistyped", "type": "integer", "jsonPath": ".spec.items[0].name"},
    {"name": "Missing", "type": "string", "jsonPath": ".spec.nothing.here"},
    {"name": "OutOfRange", "type": "string", "jsonPath": ".spec.items[7].name"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]}]}}"#;

const PRINTED_GADGET: &str = r#"{"apiVersion": "printer.example.com/v1", "kind": "Gadget",
 "metadata": {"name": "g1", "namespace": "default",
  "labels": {"multicluster.x-k8s.io/clusterset": "prod", "atoll.io/mode": "push"}},
 "spec": {"items": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "count": 7, "ratio": 1.5, "flag": true},
 "status": {"conditions": [{"type": "Healthy", "status": "False", "weight": 1},
  {"type": "Ready", "status": "True", "weight": 5}]}}"#;

fn run_printer_scenario(kubeconfig: &Path) -> anyhow::Result<Vec<(&'static str, Printed)>> {
    let steps: [(&'static str, &[&str], Option<&str>); 5] = [
        ("create crd", &["create", "-f", "-"], Some(PRINTED_CRD)),
        (
            "established",
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/gadgets.printer.example.com",
            ],
            None,
        ),
        (
            "create gadget",
            &["create", "-f", "-"],
            Some(PRINTED_GADGET),
        ),
        ("get table", &["get", "gadgets", "-n", "default"], None),
        (
            "get wide",
            &["get", "gadget", "g1", "-n", "default", "-o", "wide"],
            None,
        ),
    ];
    let mut results = Vec::new();
    for (name, args, stdin) in steps {
        // The CRD may be Established a moment before its kind is served.
        let output = if name == "create gadget" {
            let mut attempt = 0;
            loop {
                let output = kubectl(kubeconfig, args, stdin)?;
                attempt += 1;
                if output.status.success() || attempt >= 50 {
                    break output;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            kubectl(kubeconfig, args, stdin)?
        };
        results.push((name, printed(&output, None)));
    }
    Ok(results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printer_columns_print_the_same_against_both_servers() -> anyhow::Result<()> {
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: false,
        ..Default::default()
    })
    .await?;
    let kube_kubeconfig = testbed.clusters()[0].kubeconfig_path().to_path_buf();
    let hub = TestHub::start().await?;
    let atoll_kubeconfig = hub.kubeconfig().to_path_buf();
    let (expected, actual) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            run_printer_scenario(&kube_kubeconfig)?,
            run_printer_scenario(&atoll_kubeconfig)?,
        ))
    })
    .await??;
    // What kube-apiserver prints is what the columns are for: the labels' values show.
    let (_, table) = expected
        .iter()
        .find(|(name, _)| *name == "get table")
        .ok_or_else(|| anyhow::anyhow!("no table step"))?;
    assert!(table.success, "{table:?}");
    assert!(
        table.stdout.contains("prod push push"),
        "kube-apiserver prints the label columns: {table:?}"
    );
    assert_same_steps(&expected, &actual);
    Ok(())
}
