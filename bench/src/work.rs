//! `work-latency`: Work delivery to N member clusters, in push mode (`atoll controller`, a
//! release build, as a child process, applies Works to the members it holds credentials for)
//! or in pull mode (one agent per member registers through the real bootstrap-token and CSR
//! flow and applies its own cluster's Works).
//!
//! Members are real test-bed kube-apiservers (`--member-kind kube`) or `atoll hub` processes
//! (`--member-kind atoll`: a release build each, in-memory store, its own port), which stand in
//! for members where that many kube-apiservers would not fit on the machine. The hub is always a
//! test-bed kube-apiserver 1.20 with its controller manager (which signs the agents' CSRs).
//!
//! For each fleet size: the latency from creating a Work on the hub to its object existing in
//! the member (one Work at a time, each holding one ConfigMap; the member's own watch tells
//! when it exists), then the throughput of many Works created at once and spread over the
//! members, then resident memory. Also the latency from a change in a member to the hub's Work
//! status showing it (a JSONPath feedback value of a ReadOnly manifest).
//!
//! In pull mode the agents are tasks of this process (`atoll_agent::run` with the Work applier
//! as its one cluster task, as `atoll agent` runs it minus MCS), so they share its two cores
//! with the measuring; `atoll controller` still runs on the hub (status, renewals) but
//! applies nothing for pull clusters.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atoll_agent::{AgentOptions, ClusterTask, Connected, HubEndpoint};
use atoll_api::work::{Manifest, Work, WorkSpec, WorkloadTemplate};
use atoll_controllers::inventory::{
    self, DEFAULT_MANAGER_NAMESPACE, JoinOptions, MEMBER_NAMESPACE, MEMBER_SERVICE_ACCOUNT,
    MEMBER_TOKEN_SECRET, cluster_namespace, pull,
};
use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use crate::{Mode, rss_kib};

const NAMESPACE: &str = "bench";

/// On the Works a round creates (not the status probes), so the next round starts without them.
const ROUND_LABEL: &str = "atoll-bench/round";

/// Test-bed kube-apiservers (with controller managers) that fit beside the hub on this machine.
const MAX_KUBE_MEMBERS: usize = 10;

/// What stands in for a member cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum MemberKind {
    /// A test-bed kube-apiserver 1.20 with its controller manager.
    Kube,
    /// An `atoll hub` process (in-memory store).
    Atoll,
}

impl MemberKind {
    fn label(self) -> &'static str {
        match self {
            MemberKind::Kube => "kube-apiserver",
            MemberKind::Atoll => "atoll hub",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            MemberKind::Kube => "k",
            MemberKind::Atoll => "a",
        }
    }

    /// Sizes up to 10 fit as real kube-apiservers beside the hub; larger ones do not.
    fn for_size(size: usize) -> MemberKind {
        if size <= MAX_KUBE_MEMBERS {
            MemberKind::Kube
        } else {
            MemberKind::Atoll
        }
    }
}

pub struct Options {
    /// Fleet sizes, measured one after the other.
    pub sizes: Vec<usize>,
    /// Member kinds; each size is measured with each. Empty: by size (see [`MemberKind::for_size`]).
    pub kinds: Vec<MemberKind>,
    pub mode: Mode,
    pub samples: usize,
    /// Works created at once, per size (the last value repeats).
    pub works: Vec<usize>,
    pub atoll: PathBuf,
}

/// When each object (by name) was first seen in some member.
#[derive(Default)]
struct Seen {
    at: Mutex<HashMap<String, Instant>>,
    changed: Notify,
}

impl Seen {
    async fn wait(&self, name: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(at) = self.at.lock().ok().and_then(|m| m.get(name).copied()) {
                return Ok(at);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("{name} did not appear in a member within {timeout:?}");
            }
        }
    }
}

fn watch_member(member: Client, seen: Arc<Seen>) {
    tokio::spawn(async move {
        let api: Api<ConfigMap> = Api::namespaced(member, NAMESPACE);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            if let Ok(Event::Apply(cm) | Event::InitApply(cm)) = event {
                if let Ok(mut at) = seen.at.lock() {
                    at.entry(cm.name_any()).or_insert(now);
                }
                seen.changed.notify_waiters();
            }
        }
    });
}

fn work(name: &str) -> Work {
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {"payload": "x"},
    });
    Work::new(
        name,
        WorkSpec {
            workload: WorkloadTemplate {
                manifests: vec![Manifest(manifest)],
            },
            delete_option: None,
            manifest_configs: Vec::new(),
            apply_strategy: None,
        },
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A Work that only reads `bench/status-probe` in its member and feeds back `.data.v`.
fn status_probe() -> Work {
    let mut probe = work("status-probe");
    probe.spec.manifest_configs = vec![atoll_api::work::ManifestConfig {
        resource_identifier: atoll_api::work::ResourceIdentifier {
            group: String::new(),
            resource: "configmaps".into(),
            namespace: NAMESPACE.into(),
            name: "status-probe".into(),
        },
        feedback_rules: vec![atoll_api::work::FeedbackRule {
            type_: atoll_api::work::FeedbackRuleType::JSONPaths,
            json_paths: vec![atoll_api::work::JsonPath {
                name: "v".into(),
                path: ".data.v".into(),
            }],
        }],
        update_strategy: Some(atoll_api::work::UpdateStrategy {
            type_: atoll_api::work::UpdateStrategyType::ReadOnly,
            server_side_apply: None,
        }),
    }];
    probe
}

/// Records when each fed-back value of a cluster's status probe is first seen on the hub.
fn watch_hub_feedback(works: Api<Work>, cluster: String, seen: Arc<Seen>) {
    tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=status-probe");
        let mut stream = watcher::watcher(works, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            if let Ok(Event::Apply(w) | Event::InitApply(w)) = event {
                let value = w
                    .status
                    .as_ref()
                    .and_then(|s| s.manifest_conditions.first())
                    .and_then(|m| m.status_feedback.as_ref())
                    .and_then(|f| f.values.first())
                    .and_then(|v| v.field_value.string.clone());
                if let (Some(value), Ok(mut at)) = (value, seen.at.lock()) {
                    at.entry(format!("status-{cluster}-{value}")).or_insert(now);
                }
                seen.changed.notify_waiters();
            }
        }
    });
}

/// An `atoll hub` process standing in for a member; killed (it is ours) and its directory
/// removed when dropped.
struct AtollMember {
    child: Child,
    dir: PathBuf,
    /// The bearer token of `atoll-system/atoll-hub`, which this process accepts statically.
    service_account_token: String,
}

impl Drop for AtollMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn random_hex() -> String {
    let state = std::collections::hash_map::RandomState::new();
    format!(
        "{:016x}{:016x}",
        state.hash_one(std::process::id()),
        state.hash_one(Instant::now())
    )
}

/// Starts `atoll hub` on a free loopback port with an in-memory store. It has no service
/// account token controller, so it is given a static token for the identity `atoll join`
/// creates (`atoll-system/atoll-hub`), and [`play_token_controller`] puts that token where the
/// token controller would.
async fn start_atoll_member(
    atoll: &Path,
    dir: PathBuf,
) -> anyhow::Result<(AtollMember, Kubeconfig)> {
    std::fs::create_dir_all(&dir)?;
    let token = random_hex();
    let user = format!("system:serviceaccount:{MEMBER_NAMESPACE}:{MEMBER_SERVICE_ACCOUNT}");
    let tokens = dir.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!(
            "{token},{user},{user},\"system:serviceaccounts,system:serviceaccounts:{MEMBER_NAMESPACE}\"\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("hub.log"))?;
    let child = Command::new(atoll)
        .args([
            "hub",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            // A member: the Kubernetes API only, no Atoll CRDs or controllers of its own.
            "--api-only",
            "--data-dir",
        ])
        .arg(&dir)
        .arg("--token-auth-file")
        .arg(&tokens)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} hub", atoll.display()))?;
    let mut member = AtollMember {
        child,
        dir: dir.clone(),
        service_account_token: token,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(dir.join("hub.log")).unwrap_or_default();
        if log.contains("Admin kubeconfig:") {
            break;
        }
        if let Some(status) = member.child.try_wait()? {
            bail!("atoll hub in {} exited ({status}): {log}", dir.display());
        }
        if Instant::now() > deadline {
            bail!("atoll hub in {} did not start within 60 s", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kubeconfig = Kubeconfig::read_from(dir.join("admin.kubeconfig"))?;
    Ok((member, kubeconfig))
}

/// Plays kube-controller-manager's token controller for the one token `atoll join` asks for:
/// once the join creates the token Secret, writes the token the member accepts into it.
async fn play_token_controller(member: Client, token: String) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(member, MEMBER_NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if secrets.get_opt(MEMBER_TOKEN_SECRET).await?.is_some() {
            let data = base64::engine::general_purpose::STANDARD.encode(token.as_bytes());
            secrets
                .patch(
                    MEMBER_TOKEN_SECRET,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"data": {"token": data}})),
                )
                .await?;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the join never asked for a token");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One member of the fleet.
struct Member {
    /// Its cluster name on the hub.
    name: String,
    /// An admin client for it.
    client: Client,
    /// Its agent, in pull mode (stopped before its member).
    _agent: Option<AbortOnDropHandle<()>>,
    /// Its `atoll hub` process, for atoll members.
    process: Option<AtollMember>,
}

/// The agent's cluster task: the Work applier, as `atoll agent` runs it.
fn work_task() -> ClusterTask {
    Arc::new(|connected: Connected| {
        Box::pin(atoll_work::run(
            Api::namespaced(connected.hub, &connected.namespace),
            connected.member,
            atoll_work::ApplierConfig::default(),
            std::future::pending(),
        ))
    })
}

struct Fleet<'a> {
    opts: &'a Options,
    hub_cluster: &'a atoll_testbed::Cluster,
    hub: Client,
    testbed: &'a atoll_testbed::Testbed,
    seen: Arc<Seen>,
    dir: PathBuf,
    members: HashMap<MemberKind, Vec<Member>>,
}

impl Fleet<'_> {
    /// Adds the next member of `kind`: starts it (atoll) or takes the next test-bed cluster
    /// (kube), joins it in push mode or registers its agent in pull mode, then sets up the
    /// status probe and the watch that says when objects exist in it.
    async fn add(&mut self, kind: MemberKind) -> anyhow::Result<()> {
        let index = self.members.get(&kind).map_or(0, Vec::len) + 1;
        let name = format!("{}{index}", kind.prefix());
        let (process, kubeconfig) = match kind {
            MemberKind::Kube => {
                let cluster = self
                    .testbed
                    .clusters()
                    .get(index)
                    .context("not enough test-bed members")?;
                (None, Kubeconfig::read_from(cluster.kubeconfig_path())?)
            }
            MemberKind::Atoll => {
                let (process, kubeconfig) =
                    start_atoll_member(&self.opts.atoll, self.dir.join(&name)).await?;
                (Some(process), kubeconfig)
            }
        };
        let client = Client::try_from(
            kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &Default::default()).await?,
        )?;
        let mut ns = Namespace::default();
        ns.metadata.name = Some(NAMESPACE.into());
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {NAMESPACE} in {name}"))?;
        let agent = match self.opts.mode {
            Mode::Push => {
                self.join(&name, kubeconfig, &client, process.as_ref())
                    .await?;
                None
            }
            Mode::Pull => Some(self.register(&name, &client).await?),
        };
        let mut probe = ConfigMap::default();
        probe.metadata.name = Some("status-probe".into());
        probe.data = Some([("v".to_owned(), "start".to_owned())].into());
        Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
            .create(&PostParams::default(), &probe)
            .await?;
        let works: Api<Work> = Api::namespaced(self.hub.clone(), &cluster_namespace(&name));
        works
            .create(&PostParams::default(), &status_probe())
            .await?;
        watch_hub_feedback(works, name.clone(), self.seen.clone());
        watch_member(client.clone(), self.seen.clone());
        self.members.entry(kind).or_default().push(Member {
            name,
            client,
            _agent: agent,
            process,
        });
        Ok(())
    }

    async fn join(
        &self,
        name: &str,
        kubeconfig: Kubeconfig,
        member: &Client,
        process: Option<&AtollMember>,
    ) -> anyhow::Result<()> {
        let options = JoinOptions {
            name: name.to_owned(),
            member_kubeconfig: kubeconfig,
            member_context: None,
            labels: Default::default(),
            cluster_set: "bench".into(),
            cluster_id: None,
            manager_namespace: DEFAULT_MANAGER_NAMESPACE.into(),
            token_timeout: Duration::from_secs(120),
        };
        let joining = inventory::join(&self.hub, &options);
        match process {
            None => {
                joining.await.with_context(|| format!("joining {name}"))?;
            }
            Some(process) => {
                let token =
                    play_token_controller(member.clone(), process.service_account_token.clone());
                let (joined, token) = tokio::join!(joining, token);
                token.with_context(|| format!("the token for {name}"))?;
                joined.with_context(|| format!("joining {name}"))?;
            }
        }
        Ok(())
    }

    /// Registers `name` as `atoll agent` would: a bootstrap token, the agent (a task of this
    /// process) sends its CSR, the bench accepts it as `atoll accept` does.
    async fn register(&self, name: &str, member: &Client) -> anyhow::Result<AbortOnDropHandle<()>> {
        let token = pull::create_bootstrap_token(
            &self.hub,
            DEFAULT_MANAGER_NAMESPACE,
            Duration::from_secs(3600),
        )
        .await?;
        let mut options = AgentOptions::new(name, member.clone());
        options.hub = Some(HubEndpoint {
            server: self.hub_cluster.url(),
            ca_pem: self.hub_cluster.ca_cert_pem().into_bytes(),
        });
        options.bootstrap_token = Some(token.token);
        options.cluster_set = "bench".into();
        let cluster = name.to_owned();
        let agent = AbortOnDropHandle::new(tokio::spawn(async move {
            match atoll_agent::run(options, vec![work_task()], std::future::pending()).await {
                Ok(exit) => eprintln!("agent of {cluster} ended: {exit:?}"),
                Err(error) => eprintln!("agent of {cluster} failed: {error}"),
            }
        }));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match pull::accept(&self.hub, DEFAULT_MANAGER_NAMESPACE, name).await {
                Ok(_) => break,
                Err(pull::PullError::NoRequest { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(error).with_context(|| format!("accepting {name}")),
            }
        }
        Ok(agent)
    }
}

struct Figures {
    kind: MemberKind,
    members: usize,
    status_p50: Duration,
    status_p99: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    works: usize,
    throughput_elapsed: Duration,
    controller_mib: f64,
    hub_apiserver_mib: f64,
    /// This process: the agents in pull mode, plus the bench's own watches.
    bench_mib: f64,
    /// The mean of the `atoll hub` members' RSS.
    atoll_member_mib: Option<f64>,
}

impl Figures {
    /// This size's row of the printed table.
    fn row(&self, mode: &str) -> String {
        let f = self;
        format!(
            "| {mode} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} | {:.1} s | {:.0} | {:.1} | {:.0} | {:.0} | {} |",
            f.members,
            f.kind.label(),
            f.p50.as_secs_f64() * 1000.0,
            f.p99.as_secs_f64() * 1000.0,
            f.max.as_secs_f64() * 1000.0,
            f.status_p50.as_secs_f64() * 1000.0,
            f.status_p99.as_secs_f64() * 1000.0,
            f.works,
            f.throughput_elapsed.as_secs_f64(),
            f.works as f64 / f.throughput_elapsed.as_secs_f64().max(f64::EPSILON),
            f.controller_mib,
            f.hub_apiserver_mib,
            f.bench_mib,
            f.atoll_member_mib
                .map_or("-".to_owned(), |m| format!("{m:.1}")),
        )
    }
}

pub async fn work_latency(opts: Options) -> anyhow::Result<()> {
    if !opts.atoll.exists() {
        bail!(
            "{} not found: run `cargo build --release -p atoll` first",
            opts.atoll.display()
        );
    }
    let mut rounds: Vec<Round> = Vec::new();
    for (i, &size) in opts.sizes.iter().enumerate() {
        let works = opts
            .works
            .get(i)
            .or(opts.works.last())
            .copied()
            .unwrap_or(1000);
        let kinds = if opts.kinds.is_empty() {
            vec![MemberKind::for_size(size)]
        } else {
            opts.kinds.clone()
        };
        for kind in kinds {
            if kind == MemberKind::Kube && size > MAX_KUBE_MEMBERS {
                eprintln!(
                    "skipping {size} kube-apiserver members: more than {MAX_KUBE_MEMBERS} do not fit"
                );
                continue;
            }
            rounds.push(Round { kind, size, works });
        }
    }
    let kube_members = rounds
        .iter()
        .filter(|r| r.kind == MemberKind::Kube)
        .map(|r| r.size)
        .max()
        .unwrap_or(0);
    eprintln!("starting a test-bed hub and {kube_members} member kube-apiserver(s)");
    let testbed = atoll_testbed::Testbed::start(atoll_testbed::TestbedConfig {
        startup_timeout: Duration::from_secs(300),
        ..atoll_testbed::TestbedConfig::with_clusters(kube_members + 1)
    })
    .await?;
    let hub_cluster = &testbed.clusters()[0];
    let hub = hub_cluster.client().await?;
    atoll_testbed::install_crds(&hub, atoll_api::crds()?).await?;
    let hub_apiserver_pid = hub_cluster.pids()[0];
    let dir = std::env::temp_dir().join(format!("atoll-bench-work-{}", std::process::id()));
    let mut fleet = Fleet {
        opts: &opts,
        hub_cluster,
        hub: hub.clone(),
        testbed: &testbed,
        seen: Arc::new(Seen::default()),
        dir: dir.clone(),
        members: HashMap::new(),
    };
    let result = measure_rounds(&mut fleet, &rounds, hub_apiserver_pid).await;
    // Agents first (they talk to the members), then the member processes.
    fleet.members.clear();
    let figures = match result {
        Ok(figures) => {
            let _ = std::fs::remove_dir_all(&dir);
            figures
        }
        Err(error) => {
            return Err(error.context(format!(
                "the controller's logs are kept in {}",
                dir.display()
            )));
        }
    };
    let mode = match opts.mode {
        Mode::Push => "push",
        Mode::Pull => "pull",
    };
    println!(
        "| mode | members | member kind | create→exists p50 | p99 | max | member change→hub status p50 | p99 | Works at once | all delivered after | Works/s | controller RSS (MiB) | hub kube-apiserver RSS (MiB) | bench process RSS (MiB) | atoll member RSS, mean (MiB) |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in &figures {
        println!("{}", f.row(mode));
    }
    println!(
        "({} latency samples per size, one Work at a time, each member in turn)",
        opts.samples
    );
    Ok(())
}

struct Round {
    kind: MemberKind,
    size: usize,
    /// Works created at once.
    works: usize,
}

async fn measure_rounds(
    fleet: &mut Fleet<'_>,
    rounds: &[Round],
    hub_apiserver_pid: u32,
) -> anyhow::Result<Vec<Figures>> {
    let opts = fleet.opts;
    let hub = fleet.hub.clone();
    let seen = fleet.seen.clone();
    let mut figures = Vec::new();
    for (round, &Round { kind, size, works }) in rounds.iter().enumerate() {
        let joined = fleet.members.get(&kind).map_or(0, Vec::len);
        if joined < size {
            eprintln!(
                "adding {} {} member(s) ({:?} mode)",
                size - joined,
                kind.label(),
                mode_name(opts.mode)
            );
        }
        for _ in joined..size {
            fleet.add(kind).await?;
        }
        let members: Vec<(String, Client)> = fleet.members[&kind][..size]
            .iter()
            .map(|m| (m.name.clone(), m.client.clone()))
            .collect();
        eprintln!("measuring {size} {} member(s)", kind.label());
        // Its warnings (MCS retrying on members that serve no EndpointSlices, for one) go to
        // a log file, not between the figures.
        std::fs::create_dir_all(&fleet.dir)?;
        let log = std::fs::File::create(fleet.dir.join(format!("controller-{round}.log")))?;
        let mut controller = Command::new(&opts.atoll)
            .args(["controller"])
            .env("KUBECONFIG", fleet.hub_cluster.kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting atoll controller")?;
        let pid = controller.id();
        let result = measure(&hub, &members, &seen, round, opts.samples, works).await;
        let controller_mib = rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
        let hub_apiserver_mib = rss_kib(hub_apiserver_pid).unwrap_or(0) as f64 / 1024.0;
        let bench_mib = rss_kib(std::process::id()).unwrap_or(0) as f64 / 1024.0;
        if result.is_ok() && round + 1 < rounds.len() {
            eprintln!("deleting this round's Works");
            if let Err(error) = delete_round(&hub, &members, round).await {
                eprintln!("deleting round {round}'s Works: {error:#}");
            }
        }
        // SIGTERM, so that it shuts down as it would in production.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = controller.wait();
        let (latencies, status_latencies, throughput_elapsed) = result?;
        let atoll_pids: Vec<u32> = fleet.members[&kind][..size]
            .iter()
            .filter_map(|m| m.process.as_ref().map(|p| p.child.id()))
            .collect();
        let atoll_member_mib = (!atoll_pids.is_empty()).then(|| {
            atoll_pids
                .iter()
                .map(|pid| rss_kib(*pid).unwrap_or(0) as f64 / 1024.0)
                .sum::<f64>()
                / atoll_pids.len() as f64
        });
        figures.push(Figures {
            kind,
            members: size,
            status_p50: percentile(&status_latencies, 50.0),
            status_p99: percentile(&status_latencies, 99.0),
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or_default(),
            works,
            throughput_elapsed,
            controller_mib,
            hub_apiserver_mib,
            bench_mib,
            atoll_member_mib,
        });
        if let Some(f) = figures.last() {
            // As it comes, so that an interrupted run still leaves its figures.
            eprintln!("{}", f.row(mode_name(opts.mode)));
        }
    }
    Ok(figures)
}

/// Deletes the Works of `round` (the members' objects go with them, as the applier deletes
/// what it applied) and waits until they are gone, so the next round starts with only the
/// status probes on the hub.
async fn delete_round(
    hub: &Client,
    members: &[(String, Client)],
    round: usize,
) -> anyhow::Result<()> {
    let selector = format!("{ROUND_LABEL}={round}");
    for (name, _) in members {
        let works: Api<Work> = Api::namespaced(hub.clone(), &cluster_namespace(name));
        let _ = works
            .delete_collection(
                &kube::api::DeleteParams::default(),
                &kube::api::ListParams::default().labels(&selector),
            )
            .await?;
    }
    let all: Api<Work> = Api::all(hub.clone());
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let left = all
            .list_metadata(&kube::api::ListParams::default().labels(&selector))
            .await?
            .items
            .len();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} Works still there after 900 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Push => "push",
        Mode::Pull => "pull",
    }
}

/// One size: latencies (sorted), status latencies (sorted), time to deliver the burst.
async fn measure(
    hub: &Client,
    members: &[(String, Client)],
    seen: &Seen,
    round: usize,
    samples: usize,
    throughput_works: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Duration)> {
    let works = |member: usize| -> Api<Work> {
        Api::namespaced(hub.clone(), &cluster_namespace(&members[member].0))
    };
    let work = move |name: &str| -> Work {
        let mut work = work(name);
        work.metadata.labels = Some([(ROUND_LABEL.to_owned(), round.to_string())].into());
        work
    };
    // Warm up: every member's applier is running (and its watches are open).
    for member in 0..members.len() {
        let name = format!("warm-{round}-{member}");
        works(member)
            .create(&PostParams::default(), &work(&name))
            .await?;
        seen.wait(&name, Duration::from_secs(180)).await?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("lat-{round}-{i}");
        let member = i % members.len();
        let started = Instant::now();
        works(member)
            .create(&PostParams::default(), &work(&name))
            .await?;
        let at = seen.wait(&name, Duration::from_secs(60)).await?;
        latencies.push(at.saturating_duration_since(started));
    }
    latencies.sort();

    // Member change -> hub status: a value changed in the member, fed back by JSONPath.
    let mut status_latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let (cluster, client) = &members[i % members.len()];
        let value = format!("r{round}-{i}");
        let started = Instant::now();
        Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
            .patch(
                "status-probe",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"v": value}})),
            )
            .await?;
        let at = seen
            .wait(
                &format!("status-{cluster}-{value}"),
                Duration::from_secs(60),
            )
            .await?;
        status_latencies.push(at.saturating_duration_since(started));
    }
    status_latencies.sort();

    let started = Instant::now();
    let names: Vec<(usize, String)> = (0..throughput_works)
        .map(|i| (i % members.len(), format!("tp-{round}-{i}")))
        .collect();
    futures::stream::iter(names.iter().cloned())
        .map(|(member, name)| {
            let api = works(member);
            async move { create_retrying(&api, &work(&name)).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut last = started;
    for (_, name) in &names {
        last = last.max(seen.wait(name, Duration::from_secs(900)).await?);
    }
    Ok((
        latencies,
        status_latencies,
        last.saturating_duration_since(started),
    ))
}

/// Creates `work`, again after the hub answers that it is overloaded (kube-apiserver 1.20
/// under 32 concurrent creates sometimes says `500 resource quota evaluation timed out`, or
/// 429); 409 means an earlier attempt landed after all.
async fn create_retrying(api: &Api<Work>, work: &Work) -> Result<(), kube::Error> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match api.create(&PostParams::default(), work).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt > 1 => return Ok(()),
            Err(kube::Error::Api(status))
                if (status.code == 429 || status.code >= 500) && attempt < 10 =>
            {
                eprintln!(
                    "  create refused ({}: {}); again",
                    status.code, status.message
                );
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(error) => return Err(error),
        }
    }
}
