//! README's pull mode, replayed with the real `atoll` binary as child processes: `atoll hub`
//! as the hub, `atoll hub --api-only` as the members. A bootstrap token is gone the moment
//! `atoll accept` returns, and replaying it from another member is a 401 that leaves that
//! member exactly as it was.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn atoll(kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
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

/// A child process killed when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `atoll hub` (with `--api-only`: a bare member API server) on a free port; returns it and its
/// admin kubeconfig once it serves.
fn start_hub(data_dir: &Path, api_only: bool) -> Result<(Reaped, PathBuf)> {
    use std::io::BufRead;
    let mut command = Command::new(env!("CARGO_BIN_EXE_atoll"));
    command
        .args([
            "hub",
            "--store",
            "memory",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    if api_only {
        command.arg("--api-only");
    }
    let mut child = Reaped(command.spawn()?);
    let stdout = child.0.stdout.take().ok_or("no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    loop {
        let line = lines.next().ok_or("atoll hub exited before serving")??;
        if line.contains("https://") {
            break;
        }
    }
    // Keep draining so the hub never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok((child, data_dir.join("admin.kubeconfig")))
}

/// Every object kind an agent could write in a member, with uids and resourceVersions: any
/// create, update or delete shows.
fn member_state(kubeconfig: &Path) -> Result<String> {
    let output = Command::new(atoll_testbed::kubectl_bin())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([
            "get",
            "namespaces,customresourcedefinitions,secrets,configmaps,serviceaccounts,clusterroles,clusterrolebindings,roles,rolebindings",
            "-A",
            "-o",
            r#"jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name} {.metadata.uid} {.metadata.resourceVersion}{"\n"}{end}"#,
        ])
        .output()?;
    if !output.status.success() {
        return Err(format!("kubectl: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// The printed `atoll agent ...` command's arguments, for the member at `kubeconfig`.
fn agent_args(printed: &str, kubeconfig: &Path) -> Vec<String> {
    printed
        .split_whitespace()
        .skip(1)
        .map(|a| {
            if a == "MEMBER_KUBECONFIG" {
                kubeconfig.display().to_string()
            } else {
                a.to_owned()
            }
        })
        .collect()
}

#[test]
fn pull_mode_as_the_readme_walks_it_a_used_token_is_gone_and_refused() -> Result {
    let dir = tempfile::tempdir()?;
    let (_hub, hub) = start_hub(&dir.path().join("hub"), false)?;
    let (_member, member) = start_hub(&dir.path().join("member"), true)?;
    let (_spare, spare) = start_hub(&dir.path().join("spare"), true)?;

    // `atoll token create` carries the ClusterSet and labels into the printed command.
    let printed = ok(atoll(
        &hub,
        &[
            "token",
            "create",
            "--ttl",
            "30m",
            "--cluster",
            "edge-1",
            "--clusterset",
            "prod",
            "--labels",
            "env=edge",
        ],
    )?)?;
    assert!(printed.starts_with("atoll agent "), "{printed}");
    assert!(printed.contains("--clusterset prod"), "{printed}");
    assert!(printed.contains("--labels env=edge"), "{printed}");
    let token = printed
        .split_whitespace()
        .skip_while(|a| *a != "--token")
        .nth(1)
        .ok_or("no --token")?
        .to_owned();
    let id = token.split('.').next().ok_or("no token id")?.to_owned();

    // `atoll token list`: a kubectl-like table, and never the secret.
    let listed = ok(atoll(&hub, &["token", "list"])?)?;
    let mut lines = listed.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("no header")?
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "CLUSTER", "EXPIRES", "STATE"], "{listed}");
    let row: Vec<&str> = lines.next().ok_or("no row")?.split_whitespace().collect();
    assert_eq!(row.first(), Some(&id.as_str()), "{listed}");
    assert_eq!(row.get(1), Some(&"edge-1"), "{listed}");
    assert_eq!(row.last(), Some(&"Active"), "{listed}");
    assert!(!listed.contains(&token), "the secret is never listed");

    // The agent registers and waits; `atoll accept` lists it, then accepts it.
    let agent = Reaped(
        Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(agent_args(&printed, &member))
            .args(["--lease-period", "1"])
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "warn")
            .spawn()?,
    );
    let waiting = wait_until(60, || {
        // A table: the NAME, CLUSTER-ID, ... header, then one row per waiting agent.
        Ok(ok(atoll(&hub, &["accept"])?)?
            .lines()
            .skip(1)
            .any(|row| row.split_whitespace().next() == Some("edge-1")))
    })?;
    assert!(waiting, "`atoll accept` lists the waiting agent");
    let accepted = ok(atoll(&hub, &["accept", "edge-1"])?)?;
    assert!(accepted.contains("accepted"), "{accepted}");

    // The token is gone the moment `atoll accept` returns.
    let after_accept = atoll(&hub, &["token", "list"])?;
    assert!(after_accept.status.success(), "{after_accept:?}");
    assert!(
        !String::from_utf8_lossy(&after_accept.stdout).contains(&id),
        "{after_accept:?}"
    );
    assert!(
        String::from_utf8_lossy(&after_accept.stderr).contains("No resources found"),
        "{after_accept:?}"
    );

    // The agent still got its certificate: the cluster is joined, healthy, in its ClusterSet.
    let mut last = String::new();
    let healthy = wait_until(60, || {
        last = ok(atoll(&hub, &["get", "clusters"])?)?;
        Ok(last.lines().any(|l| {
            l.starts_with("edge-1")
                && l.contains(" True ")
                && l.contains(" pull ")
                && l.contains(" prod ")
        }))
    })?;
    assert!(healthy, "edge-1 healthy in pull mode:\n{last}");

    // Replaying the used token from another member: a 401, and that member unchanged.
    let before = member_state(&spare)?;
    let replay = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(agent_args(&printed, &spare))
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "warn")
        .output()?;
    assert!(!replay.status.success(), "{replay:?}");
    let said = String::from_utf8_lossy(&replay.stderr);
    assert!(said.contains("401"), "{said}");
    assert!(!said.contains(&token), "the token is never printed: {said}");
    assert_eq!(member_state(&spare)?, before, "the member is as it was");

    // A member whose registration went stale is cleared with one command.
    drop(agent);
    let reset = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["agent", "--kubeconfig"])
        .arg(&member)
        .arg("--reset")
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "warn")
        .output()?;
    let said = ok(reset)?;
    assert!(said.contains("edge-1"), "{said}");
    assert!(
        !member_state(&member)?.contains("atoll-agent-hub"),
        "the stored credentials are gone"
    );
    // The namespace the agent created goes too (its deletion finishes in the background).
    let mut stored = String::new();
    let gone = wait_until(30, || {
        stored = member_state(&member)?;
        Ok(!stored.contains("Namespace//atoll-system "))
    })?;
    assert!(gone, "the agent's namespace is gone:\n{stored}");

    // `atoll token revoke --cluster`: a token made and revoked before any agent used it.
    ok(atoll(&hub, &["token", "create", "--cluster", "edge-2"])?)?;
    let revoked = ok(atoll(&hub, &["token", "revoke", "--cluster", "edge-2"])?)?;
    assert!(revoked.contains("1 bootstrap token"), "{revoked}");
    let empty = atoll(&hub, &["token", "list"])?;
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("No resources found"),
        "{empty:?}"
    );
    let again = atoll(&hub, &["token", "revoke", "--cluster", "edge-2"])?;
    assert!(!again.status.success(), "nothing left to revoke: {again:?}");
    Ok(())
}

/// Joins the member at `member` to the hub at `hub` in pull mode, as the README walks it:
/// `atoll token create`, the printed `atoll agent` command, `atoll accept`. Returns the agent,
/// its stderr going to `stderr`.
fn join_pull(hub: &Path, member: &Path, name: &str, stderr: Stdio) -> Result<Reaped> {
    let printed = ok(atoll(hub, &["token", "create", "--cluster", name])?)?;
    let agent = Reaped(
        Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(agent_args(&printed, member))
            .args(["--lease-period", "1"])
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "warn")
            .stderr(stderr)
            .spawn()?,
    );
    let waiting = wait_until(60, || {
        Ok(ok(atoll(hub, &["accept"])?)?
            .lines()
            .skip(1)
            .any(|row| row.split_whitespace().next() == Some(name)))
    })?;
    assert!(waiting, "`atoll accept` lists {name}");
    ok(atoll(hub, &["accept", name])?)?;
    Ok(agent)
}

/// The uid of ConfigMap default/settings in the member, if it is there.
fn settings_uid(member: &Path) -> Result<Option<String>> {
    let output = Command::new(atoll_testbed::kubectl_bin())
        .arg(format!("--kubeconfig={}", member.display()))
        .args([
            "get",
            "configmap",
            "settings",
            "-n",
            "default",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .output()?;
    Ok(output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// Whether the member still serves AppliedWorks (the records that track what Works applied).
fn tracks_applied_works(member: &Path) -> Result<bool> {
    Ok(Command::new(atoll_testbed::kubectl_bin())
        .arg(format!("--kubeconfig={}", member.display()))
        .args(["get", "crd", "appliedworks.multicluster.x-k8s.io"])
        .output()?
        .status
        .success())
}

/// README's unjoin in pull mode: the agent removes what the cluster's Works applied, or, with
/// `atoll unjoin --keep-workloads`, leaves it (the same object, untracked), as push mode does.
#[test]
fn pull_mode_unjoin_removes_what_works_applied_unless_told_to_keep_it() -> Result {
    let dir = tempfile::tempdir()?;
    let (_hub, hub) = start_hub(&dir.path().join("hub"), false)?;
    let file = dir.path().join("app.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  color: blue\n",
    )?;
    let file = file.to_string_lossy().into_owned();
    for keep in [false, true] {
        let name = if keep { "edge-keep" } else { "edge-remove" };
        let (_member_hub, member) = start_hub(&dir.path().join(name), true)?;
        let mut agent = join_pull(&hub, &member, name, Stdio::inherit())?;
        ok(atoll(
            &hub,
            &["apply-work", name, "-f", &file, "--name", "app"],
        )?)?;
        let mut applied = None;
        assert!(
            wait_until(60, || {
                applied = settings_uid(&member)?;
                Ok(applied.is_some())
            })?,
            "{name}: the Work's ConfigMap reaches the member"
        );

        let mut args = vec!["unjoin", name];
        if keep {
            args.push("--keep-workloads");
        }
        let said = ok(atoll(&hub, &args)?)?;
        let mut exit = None;
        assert!(
            wait_until(60, || {
                exit = agent.0.try_wait()?;
                Ok(exit.is_some())
            })?,
            "{name}: the agent notices the unjoin and exits"
        );
        assert!(exit.is_some_and(|e| e.success()), "{name}: {exit:?}");
        assert!(
            !tracks_applied_works(&member)?,
            "{name}: the AppliedWork CRD is gone with the agent"
        );
        if keep {
            assert!(
                said.contains("keeps what the cluster's Works applied"),
                "{said}"
            );
            assert_eq!(
                settings_uid(&member)?,
                applied,
                "--keep-workloads keeps the very ConfigMap the Work applied"
            );
        } else {
            assert!(
                said.contains("removes what the cluster's Works applied"),
                "{said}"
            );
            assert_eq!(
                settings_uid(&member)?,
                None,
                "unjoin removes the ConfigMap the Work applied"
            );
        }
    }
    Ok(())
}

/// A member without the MCS CRDs, in pull mode as in push mode: its ClusterProfile says so
/// (`MultiClusterServicesReady=False`, reason `MCSCRDsMissing`, with the fix), the agent logs
/// it once rather than a flood, and once the CRDs are installed the condition turns True.
#[test]
fn a_pull_member_without_the_mcs_crds_gets_a_condition_not_a_log_flood() -> Result {
    let dir = tempfile::tempdir()?;
    let (_hub, hub) = start_hub(&dir.path().join("hub"), false)?;
    let (_member_hub, member) = start_hub(&dir.path().join("member"), true)?;
    let log = dir.path().join("agent.log");
    let _agent = join_pull(
        &hub,
        &member,
        "edge-mcs",
        Stdio::from(std::fs::File::create(&log)?),
    )?;
    let condition = |field: &str| -> Result<String> {
        let output = Command::new(atoll_testbed::kubectl_bin())
            .arg(format!("--kubeconfig={}", hub.display()))
            .args([
                "get",
                "clusterprofile",
                "edge-mcs",
                "-n",
                "atoll-system",
                "-o",
                &format!(
                    "jsonpath={{.status.conditions[?(@.type==\"MultiClusterServicesReady\")].{field}}}"
                ),
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    assert!(
        wait_until(60, || Ok(condition("status")? == "False"))?,
        "the profile says MCS is paused"
    );
    assert_eq!(condition("reason")?, "MCSCRDsMissing");
    let message = condition("message")?;
    assert!(
        message.contains("ServiceExport") && message.contains("atoll crds --only mcs"),
        "the condition names what is missing and the fix: {message}"
    );

    // Install the CRDs in the member; the agent's next check (within about a minute) sees them.
    let crds = dir.path().join("mcs.yaml");
    std::fs::write(&crds, ok(atoll(&member, &["crds", "--only", "mcs"])?)?)?;
    let applied = Command::new(atoll_testbed::kubectl_bin())
        .arg(format!("--kubeconfig={}", member.display()))
        .args(["apply", "-f"])
        .arg(&crds)
        .output()?;
    assert!(applied.status.success(), "{applied:?}");
    assert!(
        wait_until(120, || Ok(condition("status")? == "True"))?,
        "the profile says MCS runs once the member serves the CRDs"
    );
    assert_eq!(condition("reason")?, "MCSCRDsServed");
    // Over a minute of a member without the CRDs: a line when MCS paused, one when it started.
    let logged = std::fs::read_to_string(&log)?;
    let about_mcs = logged.lines().filter(|l| l.contains("MCS")).count();
    assert!(
        (1..=2).contains(&about_mcs),
        "a line when it changes, not a flood:\n{logged}"
    );
    Ok(())
}

/// `atoll unjoin --keep-workloads` of a pull cluster whose agent is not running cannot have
/// the keeping recorded in the member: it refuses, names `--force` and what that would mean,
/// and the cluster stays joined.
#[test]
fn pull_mode_unjoin_keep_workloads_without_the_agent_refuses_and_stays_joined() -> Result {
    let dir = tempfile::tempdir()?;
    let (_hub, hub) = start_hub(&dir.path().join("hub"), false)?;
    let (_member_hub, member) = start_hub(&dir.path().join("member"), true)?;
    let file = dir.path().join("app.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\n",
    )?;
    let agent = join_pull(&hub, &member, "edge-away", Stdio::inherit())?;
    ok(atoll(
        &hub,
        &[
            "apply-work",
            "edge-away",
            "-f",
            &file.to_string_lossy(),
            "--name",
            "app",
        ],
    )?)?;
    assert!(
        wait_until(60, || Ok(settings_uid(&member)?.is_some()))?,
        "the Work's ConfigMap reaches the member"
    );
    drop(agent);

    let refused = atoll(&hub, &["unjoin", "edge-away", "--keep-workloads"])?;
    assert!(!refused.status.success(), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("stays joined"), "{said}");
    assert!(said.contains("--keep-workloads --force"), "{said}");
    let clusters = ok(atoll(&hub, &["get", "clusters"])?)?;
    assert!(
        clusters.lines().any(|l| l.starts_with("edge-away")),
        "still joined:\n{clusters}"
    );
    Ok(())
}
