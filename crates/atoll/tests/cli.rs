//! End to end: the `atoll` binary against real kube-apiservers (a hub and a member).

use std::process::{Command, Output};

use atoll_testbed::{Testbed, TestbedConfig};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn atoll(hub_kubeconfig: &std::path::Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(args)
        .env("KUBECONFIG", hub_kubeconfig)
        .env("RUST_LOG", "warn")
        .output()?)
}

fn ok(output: Output) -> Result<String> {
    if !output.status.success() {
        return Err(format!(
            "atoll failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// `atoll crds | kubectl apply -f -` (with `--validate=false`, which 1.20 needs), then waits
/// for the CRDs to be Established.
fn install_crds_as_the_readme_says(cluster: &atoll_testbed::Cluster) -> Result {
    install_crds_with(cluster.kubeconfig_path())
}

fn kubectl_with(kubeconfig: &std::path::Path) -> Command {
    let mut command = Command::new(atoll_testbed::kubectl_bin());
    command.arg(format!("--kubeconfig={}", kubeconfig.display()));
    command
}

fn install_crds_with(kubeconfig: &std::path::Path) -> Result {
    let crds = ok(atoll(kubeconfig, &["crds"])?)?;
    let mut apply = kubectl_with(kubeconfig)
        .args(["apply", "--validate=false", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(apply.stdin.as_mut().ok_or("stdin")?, crds.as_bytes())?;
    let applied = apply.wait_with_output()?;
    assert!(applied.status.success(), "{applied:?}");
    let established = kubectl_with(kubeconfig)
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ])
        .output()?;
    assert!(established.status.success(), "{established:?}");
    Ok(())
}

#[tokio::test]
async fn join_get_and_unjoin_from_the_command_line() -> Result {
    let testbed = Testbed::start(TestbedConfig::with_clusters(2)).await?;
    let (hub, member) = (&testbed.clusters()[0], &testbed.clusters()[1]);
    let hub_kubeconfig = hub.kubeconfig_path();

    install_crds_as_the_readme_says(hub)?;

    let member_kubeconfig = member.kubeconfig_path().to_string_lossy().into_owned();
    let joined = ok(atoll(
        hub_kubeconfig,
        &[
            "join",
            "member-1",
            "--cluster-kubeconfig",
            &member_kubeconfig,
            "--labels",
            "env=e2e,tier=gold",
            "--clusterset",
            "e2e",
            "--cluster-id",
            "member-one",
        ],
    )?)?;
    assert!(joined.contains("member-1 joined"), "{joined}");
    assert!(joined.contains("member-one"), "{joined}");

    let table = ok(atoll(hub_kubeconfig, &["get", "clusters"])?)?;
    let lines: Vec<_> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    let row = lines
        .iter()
        .find(|l| l.starts_with("member-1"))
        .ok_or("no row")?;
    for cell in ["True", "v1.20.2", "member-one", "e2e"] {
        assert!(row.contains(cell), "missing {cell}: {table}");
    }

    let json: serde_json::Value = serde_json::from_str(&ok(atoll(
        hub_kubeconfig,
        &["get", "clusters", "-o", "json"],
    )?)?)?;
    assert_eq!(json["items"][0]["metadata"]["labels"]["tier"], "gold");
    assert_eq!(json["items"][0]["spec"]["clusterManager"]["name"], "atoll");

    // Bad input gets a clear error and a failing exit status.
    let refused = atoll(
        hub_kubeconfig,
        &[
            "join",
            "Bad_Name",
            "--cluster-kubeconfig",
            &member_kubeconfig,
        ],
    )?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("lowercase letters"));

    let unjoined = ok(atoll(hub_kubeconfig, &["unjoin", "member-1"])?)?;
    assert!(unjoined.contains("unjoined"), "{unjoined}");
    let listed = atoll(hub_kubeconfig, &["get", "clusters"])?;
    assert!(listed.status.success(), "{listed:?}");
    assert!(listed.stdout.is_empty(), "no table is left: {listed:?}");
    assert_eq!(
        String::from_utf8_lossy(&listed.stderr),
        "No resources found in atoll-system namespace.\n"
    );
    Ok(())
}

#[tokio::test]
async fn atoll_dns_answers_from_a_cluster_and_stops_on_sigterm() -> Result {
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: false,
        ..TestbedConfig::with_clusters(1)
    })
    .await?;
    let cluster = &testbed.clusters()[0];
    let kubeconfig = cluster.kubeconfig_path();
    install_crds_as_the_readme_says(cluster)?;
    let import = r#"{"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
        "metadata": {"name": "myservice", "namespace": "default"},
        "spec": {"type": "ClusterSetIP", "ips": ["1.2.3.4"], "ports": [{"port": 80, "protocol": "TCP"}]}}"#;
    let mut create = cluster
        .kubectl()
        .args(["create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    std::io::Write::write_all(create.stdin.as_mut().ok_or("stdin")?, import.as_bytes())?;
    assert!(create.wait()?.success());

    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut dns = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["dns", "--listen", &format!("127.0.0.1:{port}")])
        .env("ATOLL_MEMBER_KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .spawn()?;
    // Generous: under a loaded machine the first answer once took over 30 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let answer = loop {
        let dig = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "+short",
                "+time=1",
                "+tries=1",
                "myservice.default.svc.clusterset.local",
                "A",
            ])
            .output()?;
        let text = String::from_utf8_lossy(&dig.stdout).trim().to_owned();
        if text == "1.2.3.4" || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let signalled = Command::new("kill")
        .args(["-TERM", &dns.id().to_string()])
        .status()?;
    assert!(signalled.success());
    let status = dns.wait()?;
    assert_eq!(answer, "1.2.3.4", "dig answered {answer:?}");
    assert!(
        status.success(),
        "atoll dns exited with {status:?} on SIGTERM"
    );
    Ok(())
}

#[tokio::test]
async fn atoll_controller_leads_and_releases_its_lease_on_sigterm() -> Result {
    let testbed = Testbed::start(TestbedConfig {
        controller_manager: false,
        ..TestbedConfig::with_clusters(1)
    })
    .await?;
    let hub = &testbed.clusters()[0];
    install_crds_as_the_readme_says(hub)?;
    let created = hub
        .kubectl()
        .args(["create", "namespace", "atoll-system"])
        .output()?;
    assert!(created.status.success(), "{created:?}");

    let mut controller = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["controller"])
        .env("KUBECONFIG", hub.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .spawn()?;
    let holder = || -> Result<String> {
        let output = hub
            .kubectl()
            .args([
                "get",
                "lease",
                "atoll-controller",
                "-n",
                "atoll-system",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let leader = loop {
        let leader = holder()?;
        if !leader.is_empty() || std::time::Instant::now() > deadline {
            break leader;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let signalled = Command::new("kill")
        .args(["-TERM", &controller.id().to_string()])
        .status()?;
    assert!(signalled.success());
    let status = controller.wait()?;
    assert!(
        leader.ends_with(&controller.id().to_string()),
        "the controller took the lease: holder {leader:?}"
    );
    assert!(
        status.success(),
        "atoll controller exited with {status:?} on SIGTERM"
    );
    assert_eq!(holder()?, "", "the lease is released on SIGTERM");
    Ok(())
}

/// Polls `check` every 200 ms until it returns true, for at most `seconds`.
fn wait_until(seconds: u64, mut check: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if check()? {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A child process that is killed if the test ends (or fails) before it stops it.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The hub of a command-line scenario: a test-bed cluster, or `atoll hub` as a child process
/// (redb store, its data directory in the test bed's directory).
enum CliHub<'a> {
    Cluster(&'a atoll_testbed::Cluster),
    Atoll {
        child: std::process::Child,
        kubeconfig: std::path::PathBuf,
    },
}

impl CliHub<'_> {
    fn start_atoll(data_dir: &std::path::Path) -> Result<CliHub<'static>> {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["hub", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().ok_or("atoll hub exited before serving")??;
        assert!(
            first.starts_with("Atoll hub serving on https://"),
            "{first}"
        );
        // Keep draining so the hub never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(CliHub::Atoll {
            child,
            kubeconfig: data_dir.join("admin.kubeconfig"),
        })
    }

    fn kubeconfig_path(&self) -> &std::path::Path {
        match self {
            CliHub::Cluster(cluster) => cluster.kubeconfig_path(),
            CliHub::Atoll { kubeconfig, .. } => kubeconfig,
        }
    }

    fn kubectl(&self) -> Command {
        kubectl_with(self.kubeconfig_path())
    }
}

impl Drop for CliHub<'_> {
    fn drop(&mut self) {
        if let CliHub::Atoll { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn pull_mode_from_the_command_line_token_agent_accept_and_sigterm() -> Result {
    let testbed = Testbed::start(TestbedConfig::with_clusters(2)).await?;
    let (hub, member) = (&testbed.clusters()[0], &testbed.clusters()[1]);
    pull_mode_from_the_command_line(&testbed, CliHub::Cluster(hub), member)
}

/// The same scenario with `atoll hub` as the hub: its TokenRequest tokens, CSR approval and
/// signer stand in for kube-apiserver's and kube-controller-manager's.
#[tokio::test]
async fn pull_mode_from_the_command_line_with_atoll_hub() -> Result {
    let testbed = Testbed::start(TestbedConfig::with_clusters(1)).await?;
    let hub = CliHub::start_atoll(&testbed.dir().join("atoll-hub"))?;
    pull_mode_from_the_command_line(&testbed, hub, &testbed.clusters()[0])
}

fn pull_mode_from_the_command_line(
    testbed: &Testbed,
    mut hub: CliHub<'_>,
    member: &atoll_testbed::Cluster,
) -> Result {
    // `atoll hub` installs Atoll's CRDs and runs the hub controllers itself; a Kubernetes hub
    // gets the CRDs from kubectl and the controllers from `atoll controller`.
    let in_hub_controllers = matches!(hub, CliHub::Atoll { .. });
    if !in_hub_controllers {
        install_crds_with(hub.kubeconfig_path())?;
    }

    // `atoll token create` prints the command to paste in the member.
    let printed = ok(atoll(
        hub.kubeconfig_path(),
        &["token", "create", "--ttl", "30m", "--cluster", "edge-1"],
    )?)?;
    let command: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(command.first(), Some(&"atoll"), "{printed}");
    assert!(command.contains(&"--token"), "{printed}");
    let member_kubeconfig = member.kubeconfig_path().to_string_lossy().into_owned();
    let args: Vec<&str> = command[1..]
        .iter()
        .map(|a| {
            if *a == "MEMBER_KUBECONFIG" {
                member_kubeconfig.as_str()
            } else {
                a
            }
        })
        .collect();
    let mut agent = Reaped(
        Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(&args)
            .args(["--lease-period", "1"])
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "warn")
            .spawn()?,
    );

    let waiting = wait_until(60, || {
        let listed = ok(atoll(hub.kubeconfig_path(), &["accept"])?)?;
        Ok(listed.starts_with("NAME ") && listed.lines().any(|l| l.starts_with("edge-1 ")))
    })?;
    assert!(waiting, "`atoll accept` lists the waiting agent");
    let accepted = ok(atoll(hub.kubeconfig_path(), &["accept", "edge-1"])?)?;
    assert!(accepted.contains("accepted"), "{accepted}");

    let mut controller = if in_hub_controllers {
        None
    } else {
        Some(Reaped(
            Command::new(env!("CARGO_BIN_EXE_atoll"))
                .args(["controller"])
                .env("KUBECONFIG", hub.kubeconfig_path())
                .env("RUST_LOG", "warn")
                .spawn()?,
        ))
    };
    let mut last = String::new();
    let healthy = wait_until(60, || {
        last = ok(atoll(hub.kubeconfig_path(), &["get", "clusters"])?)?;
        Ok(last
            .lines()
            .any(|l| l.starts_with("edge-1") && l.contains(" True ") && l.contains(" pull ")))
    })?;
    assert!(healthy, "edge-1 healthy in pull mode:\n{last}");

    // The agent runs the Work applier with its own confined credentials: a Work on the hub
    // reaches the member, which the hub never dials.
    let file = testbed.dir().join("edge.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-hub\n  namespace: default\ndata:\n  mode: pull\n",
    )?;
    let file = file.to_string_lossy().into_owned();
    ok(atoll(
        hub.kubeconfig_path(),
        &["apply-work", "edge-1", "-f", &file, "--name", "edge"],
    )?)?;
    let delivered = wait_until(60, || {
        let output = member
            .kubectl()
            .args([
                "get",
                "configmap",
                "from-hub",
                "-n",
                "default",
                "-o",
                "jsonpath={.data.mode}",
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).trim() == "pull")
    })?;
    assert!(delivered, "the pull agent applied the Work in its member");

    // And the MCS member syncer: an export in the member is published into the cluster's
    // hub namespace.
    install_crds_as_the_readme_says(member)?;
    let mut export = member
        .kubectl()
        .args(["apply", "--validate=false", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        export.stdin.as_mut().ok_or("stdin")?,
        b"apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  ports:\n  - name: http\n    port: 80\n---\napiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata:\n  name: web\n  namespace: default\n",
    )?;
    let exported = export.wait_with_output()?;
    assert!(exported.status.success(), "{exported:?}");
    let published = wait_until(90, || {
        let output = hub
            .kubectl()
            .args([
                "get",
                "serviceexports",
                "-n",
                "atoll-cluster-edge-1",
                "-o",
                "name",
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).contains("default.web"))
    })?;
    assert!(
        published,
        "the pull agent published the member's export to its hub namespace"
    );

    let hub_child = match &mut hub {
        CliHub::Atoll { child, .. } => Some(child),
        CliHub::Cluster(_) => None,
    };
    let children = [
        Some(&mut agent.0),
        controller.as_mut().map(|c| &mut c.0),
        hub_child,
    ];
    for child in children.into_iter().flatten() {
        let signalled = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        assert!(signalled.success());
        let status = child.wait()?;
        assert!(status.success(), "exited with {status:?} on SIGTERM");
    }
    Ok(())
}

#[tokio::test]
async fn apply_work_and_get_works_from_the_command_line() -> Result {
    let testbed = Testbed::start(TestbedConfig::with_clusters(2)).await?;
    let (hub, member) = (&testbed.clusters()[0], &testbed.clusters()[1]);
    let hub_kubeconfig = hub.kubeconfig_path();
    install_crds_as_the_readme_says(hub)?;
    let member_kubeconfig = member.kubeconfig_path().to_string_lossy().into_owned();
    ok(atoll(
        hub_kubeconfig,
        &[
            "join",
            "member-1",
            "--cluster-kubeconfig",
            &member_kubeconfig,
        ],
    )?)?;
    let mut controller = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["controller"])
        .env("KUBECONFIG", hub_kubeconfig)
        .env("RUST_LOG", "warn")
        .spawn()?;

    let file = testbed.dir().join("app.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: app\ndata:\n  color: blue\n",
    )?;
    let file = file.to_string_lossy().into_owned();
    let applied = ok(atoll(
        hub_kubeconfig,
        &["apply-work", "member-1", "-f", &file, "--name", "app"],
    )?)?;
    assert!(
        applied.contains("applied to cluster member-1 (2 manifests)"),
        "{applied}"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let table = loop {
        let table = ok(atoll(hub_kubeconfig, &["get", "works", "member-1"])?)?;
        let settled = table
            .lines()
            .filter(|l| l.starts_with("member-1") && l.contains(" True "))
            .count()
            == 2;
        if settled || std::time::Instant::now() > deadline {
            break table;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("CLUSTER")),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.contains("ConfigMap app/settings"))
        .ok_or_else(|| format!("no ConfigMap row: {table}"))?;
    assert!(row.contains("True"), "{table}");
    let in_member = member
        .kubectl()
        .args([
            "get",
            "configmap",
            "settings",
            "-n",
            "app",
            "-o",
            "jsonpath={.data.color}",
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&in_member.stdout), "blue");

    let json: serde_json::Value = serde_json::from_str(&ok(atoll(
        hub_kubeconfig,
        &["get", "works", "-o", "json"],
    )?)?)?;
    assert_eq!(json["items"][0]["metadata"]["name"], "app");
    assert_eq!(
        json["items"][0]["status"]["manifestConditions"][1]["identifier"]["resource"],
        "configmaps"
    );

    // A cluster that is not joined is a clear error.
    let refused = atoll(hub_kubeconfig, &["apply-work", "nowhere", "-f", &file])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no cluster named \"nowhere\""));

    let signalled = Command::new("kill")
        .args(["-TERM", &controller.id().to_string()])
        .status()?;
    assert!(signalled.success());
    assert!(controller.wait()?.success());
    Ok(())
}

/// README's unjoin, from the command line: what the cluster's Works applied leaves the member
/// with it, or stays (untracked, and said so) with `--keep-workloads`.
#[tokio::test]
async fn unjoin_removes_what_works_applied_unless_told_to_keep_it() -> Result {
    for keep in [false, true] {
        let testbed = Testbed::start(TestbedConfig::with_clusters(2)).await?;
        let (hub, member) = (&testbed.clusters()[0], &testbed.clusters()[1]);
        let hub_kubeconfig = hub.kubeconfig_path();
        install_crds_as_the_readme_says(hub)?;
        let member_kubeconfig = member.kubeconfig_path().to_string_lossy().into_owned();
        ok(atoll(
            hub_kubeconfig,
            &[
                "join",
                "member-1",
                "--cluster-kubeconfig",
                &member_kubeconfig,
            ],
        )?)?;
        let controller = Reaped(
            Command::new(env!("CARGO_BIN_EXE_atoll"))
                .args(["controller"])
                .env("KUBECONFIG", hub_kubeconfig)
                .env("RUST_LOG", "warn")
                .spawn()?,
        );
        let file = testbed.dir().join("app.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  color: blue\n",
        )?;
        let file = file.to_string_lossy().into_owned();
        ok(atoll(
            hub_kubeconfig,
            &["apply-work", "member-1", "-f", &file, "--name", "app"],
        )?)?;
        let in_member = || -> Result<bool> {
            Ok(member
                .kubectl()
                .args(["get", "configmap", "settings", "-n", "default"])
                .output()?
                .status
                .success())
        };
        assert!(
            wait_until(60, in_member)?,
            "the Work's ConfigMap reaches the member"
        );
        drop(controller);

        let mut args = vec!["unjoin", "member-1"];
        if keep {
            args.push("--keep-workloads");
        }
        let said = ok(atoll(hub_kubeconfig, &args)?)?;
        if keep {
            assert!(in_member()?, "--keep-workloads keeps the ConfigMap: {said}");
            assert!(
                said.contains("kept: 1 object(s) its Works applied"),
                "{said}"
            );
            assert!(!said.contains("nothing of Atoll's is left"), "{said}");
        } else {
            assert!(!in_member()?, "unjoin deletes the ConfigMap: {said}");
            assert!(said.contains("1 object(s) its Works applied"), "{said}");
        }
    }
    Ok(())
}
