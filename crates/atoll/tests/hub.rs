//! End to end: `atoll hub` as a child process. kubectl and kube-rs use the admin kubeconfig it
//! writes, Atoll's own CRDs install, SIGTERM stops it cleanly, and a restart on the redb store
//! keeps every object.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use serde_json::json;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Starts `atoll hub` on a free port; returns the child once it printed its address.
fn start_hub(data_dir: &Path) -> Result<Child> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["hub", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().ok_or("hub exited before serving")??;
    assert!(
        first.starts_with("Atoll hub serving on https://127.0.0.1:"),
        "{first}"
    );
    let second = lines.next().ok_or("hub exited early")??;
    assert_eq!(
        second,
        format!(
            "Admin kubeconfig: {}",
            data_dir.join("admin.kubeconfig").display()
        )
    );
    // Keep draining so the hub never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok(child)
}

fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            return Err("the hub did not stop within 30s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn client(data_dir: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(data_dir.join("admin.kubeconfig"))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

fn kubectl(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(data_dir.join("admin.kubeconfig"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        std::io::Write::write_all(child.stdin.as_mut().ok_or("stdin")?, input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restarts_with_everything_and_stops_on_sigterm() -> Result {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("atoll-data");
    let mut hub = start_hub(&data_dir)?;

    // Atoll's own CRDs install as the README says.
    let crds = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .arg("crds")
        .output()?;
    assert!(crds.status.success());
    kubectl(
        &data_dir,
        &["apply", "-f", "-"],
        Some(&String::from_utf8(crds.stdout)?),
    )?;
    kubectl(
        &data_dir,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        None,
    )?;

    let client = client(&data_dir).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "kept"}}))?,
        )
        .await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "kept");
    let mut uids = Vec::new();
    for i in 0..20 {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}}),
        )?;
        uids.push(
            configmaps
                .create(&PostParams::default(), &cm)
                .await?
                .metadata
                .uid,
        );
    }
    let profiles_before = kubectl(&data_dir, &["get", "crd", "-o", "name"], None)?;

    let status = terminate(&mut hub)?;
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let mut hub = start_hub(&data_dir)?;
    let client = self::client(&data_dir).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "kept");
    for (i, uid) in uids.iter().enumerate() {
        let cm = configmaps.get(&format!("cm-{i}")).await?;
        assert_eq!(&cm.metadata.uid, uid);
    }
    assert_eq!(
        kubectl(&data_dir, &["get", "crd", "-o", "name"], None)?,
        profiles_before
    );
    // Atoll's kinds are served again at once after the restart.
    kubectl(&data_dir, &["get", "clusterprofiles", "-A"], None)?;
    let status = terminate(&mut hub)?;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    Ok(())
}

/// The crash test: SIGKILL in the middle of a write load; every acknowledged write survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigkill() -> Result {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("atoll-data");
    let mut hub = start_hub(&data_dir)?;
    let client = client(&data_dir).await?;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let cm: ConfigMap = match serde_json::from_value(
                    json!({"metadata": {"name": name}, "data": {"v": "x".repeat(1024)}}),
                ) {
                    Ok(cm) => cm,
                    Err(_) => return,
                };
                match api.create(&PostParams::default(), &cm).await {
                    Ok(created) => {
                        if let Ok(mut acked) = acknowledged.lock() {
                            acked.push((name, created.metadata.uid));
                        }
                    }
                    // The server is gone: stop writing.
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good number of writes are acknowledged (not after a fixed time).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().map(|a| a.len()).unwrap_or(0) < 300 {
        if std::time::Instant::now() > deadline {
            return Err("writes are not being acknowledged".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.kill()?;
    hub.wait()?;
    for writer in writers {
        let _ = writer.await;
    }
    let acked = acknowledged.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(acked.len() >= 300);

    let mut hub = start_hub(&data_dir)?;
    let client = self::client(&data_dir).await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let stored: std::collections::HashMap<String, Option<String>> = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|cm| cm.metadata.name.clone().map(|n| (n, cm.metadata.uid)))
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(name, uid)| stored.get(name) != Some(uid))
        .map(|(name, _)| name)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    let status = terminate(&mut hub)?;
    assert!(status.success());
    Ok(())
}
