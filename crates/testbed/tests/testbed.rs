//! The test bed against real processes: etcd, kube-apiserver and
//! kube-controller-manager from `hack/testbed.sh`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use atoll_testbed::{Cluster, Error, NodeSimulator, Testbed, TestbedConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Secret, Service};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::json;

/// Logs to the test's output; `RUST_LOG=atoll_testbed=debug` shows startup.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it yields a value or `timeout` passes.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let output = cluster
        .kubectl()
        .args(args)
        .output()
        .context("running kubectl")?;
    ensure!(
        output.status.success(),
        "kubectl {args:?} on {} failed: {}",
        cluster.name(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// A process is gone once `/proc/<pid>` is, or only a zombie is left (the
/// process is dead; its new parent has not reaped it yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[tokio::test]
async fn clusters_share_etcd_but_not_data() -> Result<()> {
    init_tracing();
    let testbed = Testbed::start(TestbedConfig {
        clusters: 2,
        controller_manager: false,
        ..TestbedConfig::default()
    })
    .await?;
    let [one, two] = testbed.clusters() else {
        bail!("expected two clusters");
    };
    ensure!(one.port() != two.port());
    ensure!(one.url() == format!("https://127.0.0.1:{}", one.port()));
    ensure!(one.service_cidr() == "10.96.0.0/16" && two.service_cidr() == "10.97.0.0/16");

    for cluster in [one, two] {
        ensure!(kubectl(cluster, &["get", "--raw", "/readyz"])?.trim() == "ok");
        let namespaces = kubectl(cluster, &["get", "ns", "-o", "name"])?;
        ensure!(
            namespaces.lines().any(|l| l == "namespace/default"),
            "{namespaces}"
        );
    }

    create_namespace(&one.client().await?, "only-in-one").await?;
    ensure!(kubectl(one, &["get", "ns", "-o", "name"])?.contains("namespace/only-in-one"));
    ensure!(!kubectl(two, &["get", "ns", "-o", "name"])?.contains("namespace/only-in-one"));
    let in_two: Api<Namespace> = Api::all(two.client().await?);
    ensure!(in_two.get_opt("only-in-one").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn rbac_confines_unbound_users() -> Result<()> {
    init_tracing();
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: false,
        ..TestbedConfig::default()
    })
    .await?;
    let cluster = &testbed.clusters()[0];

    let nobody: Api<Secret> = Api::namespaced(
        cluster
            .client_for_user("nobody", &["atoll:testers"])
            .await?,
        "default",
    );
    match nobody.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => bail!("expected 403 Forbidden, got {other:?}"),
    }

    // The same user with a second group (a second O attribute), via kubectl.
    let kubeconfig = cluster.kubeconfig_for_user("nobody", &["atoll:testers", "second-group"])?;
    let output = std::process::Command::new(atoll_testbed::kubectl_bin())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["auth", "can-i", "list", "secrets", "-n", "default"])
        .output()?;
    ensure!(String::from_utf8_lossy(&output.stdout).trim() == "no");

    // Let the second group list pods in `default` (a plain Role: the
    // aggregated `view` role needs the controller manager to get its rules).
    kubectl(
        cluster,
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=list",
            "--resource=pods",
            "-n",
            "default",
        ],
    )?;
    kubectl(
        cluster,
        &[
            "create",
            "rolebinding",
            "testers-read-pods",
            "--role=pod-reader",
            "--group=second-group",
            "-n",
            "default",
        ],
    )?;
    let client = client_from_kubeconfig(&kubeconfig).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    eventually(
        "the rolebinding to take effect",
        Duration::from_secs(10),
        || {
            let pods = pods.clone();
            async move { Ok(pods.list(&ListParams::default()).await.map(|_| Some(()))?) }
        },
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        other => bail!("expected 403 Forbidden for secrets, got {other:?}"),
    }
}

async fn client_from_kubeconfig(kubeconfig: &Path) -> Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

#[tokio::test]
async fn simulated_node_makes_deployments_ready_and_services_routable() -> Result<()> {
    init_tracing();
    let testbed = Testbed::start(TestbedConfig::default()).await?;
    let cluster = &testbed.clusters()[0];
    let client = cluster.client().await?;
    let node = NodeSimulator::start(client.clone(), "sim-0").await?;

    create_namespace(&client, "app").await?;
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "app"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{
                    "name": "web",
                    "image": "registry.invalid/web:1",
                    "ports": [{"containerPort": 8080}],
                }]},
            },
        },
    }))?;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "app"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "app");
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    Api::<Service>::namespaced(client.clone(), "app")
        .create(&PostParams::default(), &service)
        .await?;

    eventually("2 ready replicas", Duration::from_secs(60), || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("web").await?;
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            Ok((ready == 2).then_some(()))
        }
    })
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    for pod in pods.list(&ListParams::default()).await? {
        let spec = pod.spec.context("pod spec")?;
        let status = pod.status.context("pod status")?;
        ensure!(spec.node_name.as_deref() == Some("sim-0"));
        ensure!(status.host_ip == Some(node.node_ip().to_string()));
        ensure!(
            status
                .pod_ip
                .as_deref()
                .is_some_and(|ip| ip.starts_with(node.pod_cidr().trim_end_matches("0/24")))
        );
    }

    // The node lifecycle controller sees a healthy node: it lifts the
    // not-ready taint the API server put on the new node.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    eventually(
        "the node to lose its not-ready taint",
        Duration::from_secs(30),
        || {
            let nodes = nodes.clone();
            async move {
                let node = nodes.get("sim-0").await?;
                let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
                Ok(taints.is_empty().then_some(()))
            }
        },
    )
    .await?;

    // 1.20 serves EndpointSlices as discovery.k8s.io/v1beta1 only.
    let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
    let slices: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "app",
        &ApiResource::from_gvk_with_plural(&gvk, "endpointslices"),
    );
    eventually(
        "an EndpointSlice with 2 ready endpoints",
        Duration::from_secs(30),
        || {
            let slices = slices.clone();
            async move {
                let list = slices
                    .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                    .await?;
                let ready = list
                    .items
                    .iter()
                    .flat_map(|s| s.data["endpoints"].as_array().cloned().unwrap_or_default())
                    .filter(|e| e["conditions"]["ready"] == json!(true))
                    .count();
                Ok((ready == 2).then_some(()))
            }
        },
    )
    .await?;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "app");
    eventually(
        "Endpoints with 2 ready addresses",
        Duration::from_secs(30),
        || {
            let endpoints = endpoints.clone();
            async move {
                let e = endpoints.get("web").await?;
                let ready: usize = e
                    .subsets
                    .iter()
                    .flatten()
                    .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                    .sum();
                Ok((ready == 2).then_some(()))
            }
        },
    )
    .await?;

    // Scaling down deletes a pod gracefully; the simulator completes it.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    eventually("one pod left", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move { Ok((pods.list(&ListParams::default()).await?.items.len() == 1).then_some(())) }
    })
    .await?;

    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn drop_kills_every_process_and_removes_the_directory() -> Result<()> {
    init_tracing();
    let testbed = Testbed::start(TestbedConfig::default()).await?;
    let pids = testbed.pids();
    let dir = testbed.dir().to_path_buf();
    ensure!(
        pids.len() == 3,
        "etcd, kube-apiserver, kube-controller-manager: {pids:?}"
    );
    ensure!(pids.iter().all(|pid| !process_gone(*pid)));
    drop(testbed);
    for pid in &pids {
        ensure!(process_gone(*pid), "process {pid} survived the test bed");
    }
    ensure!(!dir.exists(), "{} survived the test bed", dir.display());
    Ok(())
}

#[tokio::test]
async fn missing_binaries_name_the_build_script() -> Result<()> {
    let empty = tempfile::tempdir()?;
    let result = Testbed::start(TestbedConfig {
        bin_dir: Some(empty.path().to_path_buf()),
        ..TestbedConfig::default()
    })
    .await;
    match result {
        Err(e @ Error::MissingBinary { .. }) => {
            ensure!(e.to_string().contains("hack/testbed.sh"), "{e}");
            Ok(())
        }
        other => bail!("expected MissingBinary, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_api_server_is_reported_with_its_log() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    init_tracing();
    let bin = tempfile::tempdir()?;
    let fake = bin.path().join("kube-apiserver");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'simulated failure: bad flag' >&2\nexit 3\n",
    )?;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    let result = Testbed::start(TestbedConfig {
        bin_dir: Some(bin.path().to_path_buf()),
        controller_manager: false,
        startup_timeout: Duration::from_secs(30),
        ..TestbedConfig::default()
    })
    .await;
    match result {
        Err(Error::Startup {
            component, tail, ..
        }) => {
            ensure!(component == "kube-apiserver (cluster-0)", "{component}");
            ensure!(tail.contains("simulated failure: bad flag"), "{tail}");
            Ok(())
        }
        other => bail!("expected a startup error, got {other:?}"),
    }
}

const CHILD_ENV: &str = "ATOLL_TESTBED_KILLED_PARENT_CHILD";

/// Starts a test bed in a separate process and SIGKILLs that process: no
/// destructor runs, and the kernel's parent-death signal must still take
/// every test-bed process down.
#[tokio::test]
async fn killing_the_test_process_kills_the_test_bed() -> Result<()> {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "killed_parent_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let report = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest prints `test killed_parent_child ... ` before it.
            .find_map(|line| line.split_once("TESTBED ").map(|(_, r)| r.to_owned()))
    })
    .await?;
    let Some(report) = report else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the child process never reported a running test bed");
    };
    let (dir, pids) = report.split_once(' ').context("report")?;
    let pids: Vec<u32> = pids.split(',').map(str::parse).collect::<Result<_, _>>()?;
    ensure!(pids.iter().all(|pid| !process_gone(*pid)));

    child.kill()?;
    child.wait()?;
    let all_gone = eventually("test-bed processes to die", Duration::from_secs(10), || {
        let pids = pids.clone();
        async move { Ok(pids.iter().all(|pid| process_gone(*pid)).then_some(())) }
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
    all_gone
}

/// The child half of the test above; does nothing unless run by it.
#[tokio::test]
#[ignore = "run by killing_the_test_process_kills_the_test_bed"]
async fn killed_parent_child() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    init_tracing();
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: true,
        ..TestbedConfig::default()
    })
    .await?;
    let pids: Vec<String> = testbed.pids().iter().map(u32::to_string).collect();
    println!("TESTBED {} {}", testbed.dir().display(), pids.join(","));
    tokio::time::sleep(Duration::from_secs(120)).await;
    Ok(())
}
