//! The hub API server driven by the real kubectl: create, apply, get (-o yaml, tables, -w),
//! label, annotate, patch, delete, wait, api-resources, explain, CRDs and their printer columns.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{TestHub, eventually, widget_crd};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_manages_built_in_kinds() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let manifest = hub.dir.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels: {app: demo}\ndata:\n  mode: fast\n",
    )?;
    let path = manifest.to_string_lossy().to_string();
    assert_eq!(
        hub.kubectl_ok(&["create", "-f", &path])?.trim(),
        "configmap/settings created"
    );
    let yaml = hub.kubectl_ok(&["get", "configmap", "settings", "-o", "yaml"])?;
    assert!(
        yaml.contains("mode: fast") && yaml.contains("uid:"),
        "{yaml}"
    );
    // The default table has kube-apiserver's columns.
    let table = hub.kubectl_ok(&["get", "configmaps"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "DATA", "AGE"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("settings ") && l.split_whitespace().nth(1) == Some("1"))
    );

    // kubectl validates strictly by default: unknown fields are refused.
    let bogus = hub.dir.path().join("bogus.yaml");
    std::fs::write(
        &bogus,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bogus\nspec:\n  x: 1\n",
    )?;
    let out = hub.kubectl(&["create", "-f", &bogus.to_string_lossy()])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"strict decoding error: unknown field "spec""#),
        "{stderr}"
    );

    hub.kubectl_ok(&["label", "configmap", "settings", "tier=web"])?;
    hub.kubectl_ok(&["annotate", "configmap", "settings", "note=hello"])?;
    hub.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"extra":"1"}}"#,
    ])?;
    hub.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/data/mode","value":"slow"}]"#,
    ])?;
    let selected = hub.kubectl_ok(&[
        "get",
        "cm",
        "-l",
        "tier=web,app in (demo)",
        "-o",
        "jsonpath={.items[*].data.mode}",
    ])?;
    assert_eq!(selected, "slow");
    // apply over an existing object (strategic merge patch for a built-in kind).
    let applied = hub.kubectl_ok(&["apply", "-f", &path])?;
    assert!(
        applied.contains("configmap/settings configured"),
        "{applied}"
    );
    assert_eq!(
        hub.kubectl_ok(&["get", "cm", "settings", "-o", "jsonpath={.data.mode}"])?,
        "fast"
    );

    // get -w sees a change.
    let mut watch = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(hub.kubeconfig())
        .args(["get", "cm", "settings", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = watch
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = |rx: &std::sync::mpsc::Receiver<String>| {
        rx.recv_timeout(WAIT)
            .map_err(|e| anyhow::anyhow!("no watch output: {e}"))
    };
    // The watch prints the current state first; only then change it.
    let first = next_line(&lines_rx);
    let second = match &first {
        Ok(_) => hub
            .kubectl_ok(&["label", "configmap", "settings", "seen=yes"])
            .and_then(|_| next_line(&lines_rx)),
        Err(_) => Err(anyhow::anyhow!("no first line")),
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        [first?, second?],
        ["configmap/settings", "configmap/settings"]
    );

    assert_eq!(
        hub.kubectl_ok(&["delete", "cm", "settings"])?.trim(),
        r#"configmap "settings" deleted"#
    );
    let out = hub.kubectl(&["get", "cm", "settings"])?;
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        r#"Error from server (NotFound): configmaps "settings" not found"#
    );
    Ok(())
}

/// `kubectl create <kind>` uses client-go's typed clients, which send protobuf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_generators_send_protobuf() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    hub.kubectl_ok(&["create", "namespace", "team"])?;
    hub.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "configmap",
        "cfg",
        "--from-literal=k=v",
    ])?;
    hub.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "secret",
        "generic",
        "s",
        "--from-literal=password=hunter2",
    ])?;
    hub.kubectl_ok(&["-n", "team", "create", "serviceaccount", "robot"])?;
    hub.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=configmaps",
    ])?;
    hub.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "robot-reads",
        "--role=reader",
        "--serviceaccount=team:robot",
    ])?;
    assert_eq!(
        hub.kubectl_ok(&["-n", "team", "get", "cm", "cfg", "-o", "jsonpath={.data.k}"])?,
        "v"
    );
    assert_eq!(
        hub.kubectl_ok(&[
            "-n",
            "team",
            "get",
            "secret",
            "s",
            "-o",
            "jsonpath={.type} {.data.password}"
        ])?,
        "Opaque aHVudGVyMg=="
    );
    assert_eq!(
        hub.kubectl_ok(&[
            "-n",
            "team",
            "get",
            "role",
            "reader",
            "-o",
            "jsonpath={.rules[0].verbs}"
        ])?,
        r#"["get","list"]"#
    );
    assert_eq!(
        hub.kubectl_ok(&[
            "-n",
            "team",
            "get",
            "rolebinding",
            "robot-reads",
            "-o",
            "jsonpath={.subjects[0].name}"
        ])?,
        "robot"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_installs_and_uses_a_crd() -> anyhow::Result<()> {
    let hub = TestHub::start().await?;
    let crd = hub.dir.path().join("crd.json");
    std::fs::write(&crd, serde_json::to_vec(&widget_crd())?)?;
    hub.kubectl_ok(&["apply", "-f", &crd.to_string_lossy()])?;
    hub.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ])?;
    let resources = eventually(WAIT, || {
        let out = hub.kubectl_ok(&["api-resources", "--api-group=example.com"]);
        async move { Ok(out.ok().filter(|o| o.contains("widgets"))) }
    })
    .await?;
    assert!(
        resources.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols == ["widgets", "wd", "example.com/v1", "true", "Widget"]
        }),
        "{resources}"
    );

    let widget = hub.dir.path().join("w.yaml");
    std::fs::write(
        &widget,
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n",
    )?;
    hub.kubectl_ok(&["apply", "-f", &widget.to_string_lossy()])?;
    // Printer columns.
    let table = hub.kubectl_ok(&["get", "widgets"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "SIZE", "READY"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["w1", "3"])),
        "{table}"
    );
    // Schema validation through kubectl, with the field named.
    let out = hub.kubectl(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"size":20}}"#,
    ])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.size"), "{stderr}");
    // Unknown fields are refused with kubectl's default strict validation.
    std::fs::write(
        &widget,
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w2\nspec:\n  size: 3\n  bogus: 1\n",
    )?;
    let out = hub.kubectl(&["create", "-f", &widget.to_string_lossy()])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"unknown field "spec.bogus""#));
    let explained = hub.kubectl_ok(&["explain", "widgets.spec"])?;
    assert!(explained.contains("size"), "{explained}");
    hub.kubectl_ok(&["delete", "widget", "w1"])?;
    hub.kubectl_ok(&["delete", "crd", "widgets.example.com"])?;
    Ok(())
}
