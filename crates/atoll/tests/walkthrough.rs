//! The README walkthrough without surprises: the real `atoll` binary as a child process, its
//! output read as a user (or a script) reads it. No colour when piped, `NO_COLOR` honoured,
//! one-shot commands print results without INFO logs, errors worded as kubectl's, the server
//! named when it is down, "No resources found", completions, the kubectl plugin, `crds --only`,
//! and member-side commands that refuse to guess their cluster.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const ESC: char = '\u{1b}';

/// Marks the end of a child's collected stderr.
const STDERR_CLOSED: &str = "\n(stderr closed)\n";

/// `atoll ARGS` with no inherited kubeconfig, logging or colour settings.
fn atoll() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_atoll"));
    for var in [
        "KUBECONFIG",
        "RUST_LOG",
        "NO_COLOR",
        "ATOLL_MEMBER_KUBECONFIG",
        "ATOLL_BOOTSTRAP_TOKEN",
    ] {
        command.env_remove(var);
    }
    command
}

fn run(command: &mut Command) -> Result<(bool, String, String)> {
    let Output {
        status,
        stdout,
        stderr,
    } = command.stdin(Stdio::null()).output()?;
    Ok((
        status.success(),
        String::from_utf8(stdout)?,
        String::from_utf8(stderr)?,
    ))
}

/// Polls `check` every 100 ms until it holds, for at most `seconds`.
fn wait_until(seconds: u64, mut check: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `atoll hub` on an in-memory store, its stderr (INFO logs: it runs until stopped) collected.
struct Hub {
    child: Child,
    kubeconfig: PathBuf,
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Hub {
    fn start() -> Result<Hub> {
        Hub::start_with(&[])
    }

    /// `atoll hub --api-only`: a bare Kubernetes API, as a lightweight member.
    fn start_member() -> Result<Hub> {
        Hub::start_with(&["--api-only"])
    }

    fn start_with(extra: &[&str]) -> Result<Hub> {
        let api_only = extra.contains(&"--api-only");
        let dir = tempfile::tempdir()?;
        let mut child = atoll()
            .args(["hub", "--store", "memory", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let logs = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut logs) = sink.lock() {
                    logs.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut ready = false;
        for line in lines.by_ref() {
            let line = line?;
            if line.starts_with("Atoll CRDs installed")
                || (api_only && line.starts_with("  export KUBECONFIG="))
            {
                ready = true;
                break;
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let hub = Hub {
            child,
            kubeconfig,
            logs,
            _dir: dir,
        };
        assert!(ready, "atoll hub stopped before installing its CRDs");
        Ok(hub)
    }

    fn kubectl(&self, args: &[&str]) -> Result<(bool, String, String)> {
        run(Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args))
    }

    fn logs(&self) -> Result<String> {
        Ok(self.logs.lock().map_err(|_| "poisoned")?.clone())
    }

    /// `atoll ARGS` against this hub, through KUBECONFIG as the README sets it.
    fn atoll(&self, args: &[&str]) -> Result<(bool, String, String)> {
        run(atoll().args(args).env("KUBECONFIG", &self.kubeconfig))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_plain(what: &str, text: &str) {
    assert!(!text.contains(ESC), "{what} has ANSI codes: {text:?}");
}

#[test]
fn one_shot_commands_print_results_and_kubectl_worded_errors() -> Result {
    let hub = Hub::start()?;

    // Empty lists read as kubectl's, on stderr, with nothing else there.
    let (ok, out, err) = hub.atoll(&["get", "clusters"])?;
    assert!(ok, "{err}");
    assert_eq!(out, "");
    assert_eq!(err, "No resources found in atoll-system namespace.\n");
    let (ok, out, err) = hub.atoll(&["get", "works"])?;
    assert!(ok, "{err}");
    assert_eq!((out.as_str(), err.as_str()), ("", "No resources found\n"));
    let (ok, out, err) = hub.atoll(&["accept"])?;
    assert!(ok, "{err}");
    assert_eq!((out.as_str(), err.as_str()), ("", "No resources found\n"));

    // -v shows INFO logs; still no colour on a pipe, and the result is unchanged.
    let (ok, out, err) = hub.atoll(&["-v", "get", "clusters", "-o", "json"])?;
    assert!(ok, "{err}");
    assert!(out.contains("\"items\""), "{out}");
    assert_plain("-v stderr", &err);

    // An API error reads like kubectl's, not a Rust structure.
    let namespace = run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&hub.kubeconfig)
        .args(["create", "namespace", "atoll-cluster-demo"]))?;
    assert!(namespace.0, "{namespace:?}");
    let manifest = hub._dir.path().join("app.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: default\n",
    )?;
    let manifest_arg = manifest.to_string_lossy().into_owned();
    let (ok, out, err) = hub.atoll(&[
        "apply-work",
        "demo",
        "-f",
        &manifest_arg,
        "--name",
        "Not_A_Name",
    ])?;
    assert!(!ok);
    assert_eq!(out, "");
    assert!(
        err.starts_with("Error from server (Invalid): "),
        "kubectl's wording: {err}"
    );
    for rust in ["ApiError", "Status {", "Caused by", "Error: "] {
        assert!(!err.contains(rust), "{rust:?} in {err}");
    }
    let (ok, _, err) = hub.atoll(&["rotate-credentials", "nowhere"])?;
    assert!(!ok);
    assert!(
        err.starts_with("Error from server (NotFound): "),
        "kubectl's wording: {err}"
    );

    // A missing file is named without quotes.
    let (ok, _, err) = hub.atoll(&["apply-work", "demo", "-f", "/nonexistent/app.yaml"])?;
    assert!(!ok);
    assert!(
        err.starts_with("error: reading /nonexistent/app.yaml: "),
        "{err}"
    );

    // A long-running command logs at INFO, uncoloured on a pipe.
    let logs = hub.logs.lock().map_err(|_| "poisoned")?.clone();
    assert!(logs.contains("INFO"), "atoll hub logs at INFO: {logs}");
    assert_plain("atoll hub's logs", &logs);
    Ok(())
}

#[test]
fn a_down_hub_is_named() -> Result {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("down.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: down\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: me\n  user:\n    token: abc\ncontexts:\n- name: down\n  context:\n    cluster: down\n    user: me\ncurrent-context: down\n"
        ),
    )?;
    let (ok, out, err) = run(atoll()
        .args(["get", "clusters"])
        .env("KUBECONFIG", &kubeconfig))?;
    assert!(!ok);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "The connection to the server 127.0.0.1:{port} was refused - did you specify the right host or port?\n"
        )
    );
    Ok(())
}

#[test]
fn member_commands_refuse_to_guess_their_cluster() -> Result {
    let dir = tempfile::tempdir()?;
    let hub_kubeconfig = dir.path().join("hub.kubeconfig");
    std::fs::write(&hub_kubeconfig, "apiVersion: v1\nkind: Config\n")?;
    for args in [
        &["dns", "--listen", "127.0.0.1:0"][..],
        &["agent", "--name", "edge-1"][..],
    ] {
        // KUBECONFIG points at the hub, as the Quickstart leaves it.
        let (ok, out, err) = run(atoll().args(args).env("KUBECONFIG", &hub_kubeconfig))?;
        assert!(!ok, "atoll {args:?} ran without a member kubeconfig");
        assert_eq!(out, "");
        assert!(
            err.contains("--kubeconfig") && err.contains("ATOLL_MEMBER_KUBECONFIG"),
            "the refusal says how to name the member: {err}"
        );
        assert!(err.contains("KUBECONFIG is not used"), "{err}");
        assert_plain("the refusal", &err);
    }
    Ok(())
}

#[test]
fn member_commands_refuse_an_atoll_hub() -> Result {
    let hub = Hub::start()?;
    // The hub's controllers take their Lease once they lead.
    let leading = wait_until(60, || {
        let out = run(Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&hub.kubeconfig)
            .args([
                "get",
                "lease",
                "-n",
                "atoll-system",
                "atoll-controller",
                "-o",
                "name",
            ]))?;
        Ok(out.0)
    })?;
    assert!(leading, "atoll hub's controllers lead");
    let (ok, _, err) = run(atoll()
        .args(["dns", "--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&hub.kubeconfig))?;
    assert!(!ok, "atoll dns served the hub");
    assert!(
        err.contains("looks like an Atoll hub") && err.contains("--allow-hub"),
        "{err}"
    );
    Ok(())
}

#[test]
fn no_color_is_honoured_on_a_terminal() -> Result {
    // `script` gives the command a terminal; -vv makes the client log.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("down.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: down\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: me\n  user: {{}}\ncontexts:\n- name: down\n  context:\n    cluster: down\n    user: me\ncurrent-context: down\n"
        ),
    )?;
    let line = format!(
        "{} -vv get clusters --kubeconfig {}",
        env!("CARGO_BIN_EXE_atoll"),
        kubeconfig.display()
    );
    let on_terminal = |no_color: bool| -> Result<String> {
        let mut command = Command::new("script");
        command
            .args(["-qec", &line, "/dev/null"])
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR");
        if no_color {
            command.env("NO_COLOR", "1");
        }
        let (_, out, _) = run(&mut command)?;
        Ok(out)
    };
    let coloured = on_terminal(false)?;
    assert!(
        coloured.contains("DEBUG") && coloured.contains(ESC),
        "logs are coloured on a terminal: {coloured:?}"
    );
    let plain = on_terminal(true)?;
    assert!(plain.contains("DEBUG"), "{plain:?}");
    assert_plain("NO_COLOR output", &plain);
    Ok(())
}

/// README's Quickstart says `atoll up` starts the hub: `--help` shows it, and it is the hub's
/// command (its own help is the hub's).
#[test]
fn atoll_up_is_listed_in_help_as_the_hub() -> Result {
    let (ok, out, err) = run(atoll().arg("--help"))?;
    assert!(ok, "{err}");
    let hub_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("hub "))
        .ok_or_else(|| format!("no hub command in --help: {out}"))?;
    assert!(hub_line.contains("[alias: up]"), "{hub_line}");
    let (ok, up, err) = run(atoll().args(["up", "--help"]))?;
    assert!(ok, "{err}");
    let (_, hub, _) = run(atoll().args(["hub", "--help"]))?;
    assert_eq!(up, hub);
    Ok(())
}

#[test]
fn completions_generate() -> Result {
    for (shell, mark) in [
        ("bash", "_atoll()"),
        ("zsh", "#compdef atoll"),
        ("fish", "complete -c atoll"),
    ] {
        let (ok, out, err) = run(atoll().args(["completion", shell]))?;
        assert!(ok, "{shell}: {err}");
        assert!(out.contains(mark), "{shell}: {out}");
        assert!(out.contains("apply-work"), "{shell} completes subcommands");
        assert_eq!(err, "");
    }
    Ok(())
}

fn crd_names(yaml: &str) -> Vec<&str> {
    let mut names: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.strip_prefix("  name: "))
        .filter(|n| n.contains('.'))
        .collect();
    names.sort_unstable();
    names
}

#[test]
fn crds_only_prints_the_chosen_apis() -> Result {
    let (ok, out, err) = run(atoll().args(["crds", "--only", "mcs"]))?;
    assert!(ok, "{err}");
    assert_eq!(
        crd_names(&out),
        [
            "serviceexports.multicluster.x-k8s.io",
            "serviceimports.multicluster.x-k8s.io"
        ]
    );
    let (ok, comma, _) = run(atoll().args(["crds", "--only", "about,work"]))?;
    let (_, repeated, _) = run(atoll().args(["crds", "--only", "about", "--only", "work"]))?;
    assert!(ok);
    assert_eq!(comma, repeated);
    assert_eq!(
        crd_names(&comma),
        [
            "appliedworks.multicluster.x-k8s.io",
            "clusterproperties.about.k8s.io",
            "works.multicluster.x-k8s.io"
        ]
    );
    let (ok, inventory, _) = run(atoll().args(["crds", "--only", "inventory"]))?;
    assert!(ok);
    assert_eq!(
        crd_names(&inventory),
        ["clusterprofiles.multicluster.x-k8s.io"]
    );
    let (_, all, _) = run(atoll().arg("crds"))?;
    assert_eq!(crd_names(&all).len(), 6);
    let (ok, _, err) = run(atoll().args(["crds", "--only", "federation"]))?;
    assert!(!ok);
    assert!(err.contains("federation"), "{err}");
    Ok(())
}

#[test]
fn atoll_works_as_a_kubectl_plugin() -> Result {
    let dir = tempfile::tempdir()?;
    let plugin = dir.path().join("kubectl-atoll");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_atoll"), &plugin)?;
    let path = std::env::join_paths(std::iter::once(dir.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let (ok, out, err) = run(Command::new("kubectl")
        .args(["atoll", "crds", "--only", "about"])
        .env("PATH", &path))?;
    assert!(ok, "kubectl atoll: {err}");
    assert_eq!(crd_names(&out), ["clusterproperties.about.k8s.io"]);
    let (ok, help, _) = run(Command::new("kubectl")
        .args(["atoll", "--help"])
        .env("PATH", &path))?;
    assert!(ok);
    assert!(help.contains("Usage: kubectl atoll"), "{help}");
    Ok(())
}

/// A member without the MCS CRDs is a condition on its ClusterProfile, with the fix, and one
/// log line, not a flood of watch retries; once the CRDs are installed the condition turns
/// True at the next check.
#[test]
fn a_member_without_mcs_crds_is_a_condition_not_a_log_flood() -> Result {
    let hub = Hub::start()?;
    let member = Hub::start_member()?;
    let member_kubeconfig = member.kubeconfig.to_string_lossy().into_owned();
    let (ok, _, err) = hub.atoll(&[
        "join",
        "member-1",
        "--cluster-kubeconfig",
        &member_kubeconfig,
    ])?;
    assert!(ok, "join: {err}");
    let condition = |field: &str| -> Result<String> {
        let (_, out, _) = hub.kubectl(&[
            "get",
            "clusterprofile",
            "member-1",
            "-n",
            "atoll-system",
            "-o",
            &format!(
                "jsonpath={{.status.conditions[?(@.type==\"MultiClusterServicesReady\")].{field}}}"
            ),
        ])?;
        Ok(out)
    };
    let paused = wait_until(90, || Ok(condition("status")? == "False"))?;
    assert!(paused, "the profile says MCS is paused: {}", hub.logs()?);
    assert_eq!(condition("reason")?, "MCSCRDsMissing");
    let message = condition("message")?;
    assert!(
        message.contains("ServiceExport") && message.contains("atoll crds --only mcs"),
        "the condition names what is missing and the fix: {message}"
    );

    // Install the CRDs in the member; the next check (within about a minute) sees them.
    let (ok, crds, _) = run(atoll().args(["crds", "--only", "mcs"]))?;
    assert!(ok);
    let yaml = member._dir.path().join("mcs.yaml");
    std::fs::write(&yaml, crds)?;
    let (ok, _, err) = member.kubectl(&["apply", "-f", &yaml.to_string_lossy()])?;
    assert!(ok, "{err}");
    let ready = wait_until(120, || Ok(condition("status")? == "True"))?;
    assert!(
        ready,
        "MCS resumes once the CRDs are there: {}",
        hub.logs()?
    );
    assert_eq!(condition("reason")?, "MCSCRDsServed");

    // Over that minute and more, the hub said so once.
    let logs = hub.logs()?;
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(
        logs.matches("MCS paused for this cluster").count(),
        1,
        "{logs}"
    );
    assert!(
        warnings.len() <= 3,
        "a few warnings at most, not a flood: {warnings:#?}"
    );
    // `atoll hub --api-only` serves no Services, so one watch of the syncer keeps failing:
    // said once, not on every retry.
    assert!(logs.matches("watch failed").count() <= 1, "{logs}");
    Ok(())
}

/// Pull mode end to end on two `atoll hub` processes (the member bare): when the cluster is
/// unjoined, the agent notices within seconds, cleans up and exits without a flood of 403
/// warnings.
#[test]
fn an_unjoined_agent_stops_quietly() -> Result {
    let hub = Hub::start()?;
    let member = Hub::start_member()?;
    let (ok, printed, err) =
        hub.atoll(&["token", "create", "--ttl", "30m", "--cluster", "edge-1"])?;
    assert!(ok, "{err}");
    let member_kubeconfig = member.kubeconfig.to_string_lossy().into_owned();
    let args: Vec<&str> = printed
        .split_whitespace()
        .skip(1)
        .map(|a| {
            if a == "MEMBER_KUBECONFIG" {
                member_kubeconfig.as_str()
            } else {
                a
            }
        })
        .collect();
    // KUBECONFIG still names the hub, as in the README's shell: the agent ignores it.
    let mut agent = atoll()
        .args(&args)
        .env("KUBECONFIG", &hub.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let logs = Arc::new(Mutex::new(String::new()));
    let mut stderr = agent.stderr.take().ok_or("no stderr")?;
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        if let Ok(mut logs) = sink.lock() {
            logs.push_str(&text);
            logs.push_str(STDERR_CLOSED);
        }
    });
    let agent_logs = || -> String { logs.lock().map(|l| l.clone()).unwrap_or_default() };
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut agent = Kill(agent);

    let waiting = wait_until(60, || Ok(hub.atoll(&["accept"])?.1.contains("edge-1")))?;
    assert!(waiting, "the agent registers");
    let (ok, _, err) = hub.atoll(&["accept", "edge-1"])?;
    assert!(ok, "{err}");
    let healthy = wait_until(90, || {
        let (_, table, _) = hub.atoll(&["get", "clusters"])?;
        Ok(table
            .lines()
            .any(|l| l.starts_with("edge-1") && l.contains(" True ")))
    })?;
    assert!(healthy, "edge-1 turns healthy");

    let (ok, _, err) = hub.atoll(&["unjoin", "edge-1"])?;
    assert!(ok, "{err}");
    let mut status = None;
    let exited = wait_until(60, || {
        status = agent.0.try_wait()?;
        Ok(status.is_some())
    })?;
    assert!(exited, "the agent exits after the unjoin");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let stdout = {
        let mut text = String::new();
        if let Some(mut out) = agent.0.stdout.take() {
            out.read_to_string(&mut text)?;
        }
        text
    };
    assert!(stdout.contains("was unjoined"), "{stdout}");
    // The reader thread has the whole stderr once the pipe closes.
    let complete = wait_until(10, || Ok(agent_logs().contains(STDERR_CLOSED)))?;
    let logs = agent_logs();
    assert!(complete, "{logs}");
    // The member lacks the MCS CRDs: said once. The refusals after the unjoin: a few lines
    // (kube-runtime's watcher warns once per failed relist) before the agent stops.
    assert_eq!(logs.matches("MCS paused").count(), 1, "{logs}");
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && (l.contains("403") || l.contains("orbidden")))
        .collect();
    assert!(
        refusals.len() <= 3,
        "a few refusal warnings at most around the unjoin: {refusals:#?}"
    );
    Ok(())
}
