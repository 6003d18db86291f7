//! `atoll-bench`: benchmarks that print figures for BENCHMARKS.md.
//!
//! `work-latency`: Work delivery in push or pull mode to N members (see `work`).
//!
//! `inventory-health`: the hub-side cost of health checking and property watching for many
//! push-mode clusters, or of lease handling for many pull-mode clusters (`--mode pull`). A
//! real kube-apiserver (from the test bed) is the hub. In push mode one stub HTTPS server
//! stands in for every member; in pull mode the benchmark plays every agent, renewing each
//! cluster's Lease every 10 s as `atoll agent` does. Fleets of each size run one after the
//! other in one run, so the figures compare as ratios on a noisy machine.
//!
//! `store`: the hub's storage layer (`atoll-store`) on its own; see `store.rs`.

mod hub_api;
mod hub_rbac;
mod mcs;
mod store;
mod stub;
mod work;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atoll_api::cluster_profile::{
    ATOLL_CLUSTER_MANAGER, ClusterManager, ClusterProfile, ClusterProfileSpec,
    LABEL_CLUSTER_MANAGER, LABEL_MODE, MODE_PULL, MODE_PUSH,
};
use atoll_controllers::inventory::{
    self, MEMBER_KUBECONFIG_KEY, cluster_namespace, member_kubeconfig_secret, pull,
};
use base64::Engine;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::api::{Patch, PatchParams};
use tokio_util::task::AbortOnDropHandle;

#[derive(Parser)]
enum Bench {
    /// Hub CPU and memory of `atoll controller` health-checking N clusters.
    InventoryHealth {
        /// Fleet sizes, measured one after the other in this run.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        clusters: Vec<usize>,
        /// Seconds of steady state to measure, after every cluster is healthy.
        #[arg(long, default_value_t = 60)]
        steady_seconds: u64,
        /// Seconds between health probes (KubeFed's default is 10).
        #[arg(long, default_value_t = 10)]
        health_period: u64,
        /// The atoll binary to measure (build it with `cargo build --release -p atoll`).
        #[arg(long, default_value = "target/release/atoll")]
        atoll: PathBuf,
        /// push: the hub probes members; pull: agents renew Leases on the hub.
        #[arg(long, value_enum, default_value_t = Mode::Push)]
        mode: Mode,
    },
    /// MCS: latency from an endpoint change in one member to the updated slices in all others.
    McsPropagation {
        /// Members (real test-bed clusters; cluster 0 is also the hub).
        #[arg(long, default_value_t = 3)]
        members: usize,
        /// Endpoint changes to measure, one after the other.
        #[arg(long, default_value_t = 200)]
        changes: usize,
    },
    /// DNS: `atoll dns` and NSD (same records, static zone) under dnsperf, side by side.
    DnsQps {
        /// The atoll binary (build it with `cargo build --release -p atoll`).
        #[arg(long, default_value = "target/release/atoll")]
        atoll: PathBuf,
        /// ClusterSetIP services.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Headless services.
        #[arg(long, default_value_t = 100)]
        headless: usize,
        /// Endpoints per headless service.
        #[arg(long, default_value_t = 3)]
        endpoints: usize,
        /// Seconds per dnsperf run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Rounds (each measures atoll dns, then NSD).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// dnsperf clients.
        #[arg(long, default_value_t = 4)]
        clients: u32,
        /// NSD server processes.
        #[arg(long, default_value_t = 2)]
        nsd_servers: usize,
    },
    /// Work delivery in push or pull mode: hub-to-member latency (p50/p99), throughput and
    /// memory with N members (test-bed kube-apiservers or `atoll hub` processes).
    WorkLatency {
        /// Fleet sizes (members), measured one after the other in this run.
        #[arg(long, value_delimiter = ',', default_value = "1,10")]
        members: Vec<usize>,
        /// Works created one at a time per size, for the latency percentiles.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Works created at once, for the throughput: one value per size (the last repeats).
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        works: Vec<usize>,
        /// The atoll binary to measure (build it with `cargo build --release -p atoll`).
        #[arg(long, default_value = "target/release/atoll")]
        atoll: PathBuf,
        /// push: `atoll controller` applies Works; pull: each member's agent does.
        #[arg(long, value_enum, default_value_t = Mode::Push)]
        mode: Mode,
        /// What stands in for members (each size is run with each kind); by default test-bed
        /// kube-apiservers up to 10 members, `atoll hub` processes beyond.
        #[arg(long, value_enum, value_delimiter = ',')]
        member_kind: Vec<work::MemberKind>,
    },
    /// Atoll's API server against kube-apiserver 1.20 + etcd: create throughput, list and
    /// watch latency, memory.
    HubApi {
        /// ConfigMaps created for each throughput figure.
        #[arg(long, default_value_t = 2000)]
        creates: usize,
        /// Objects listed (and held while memory is read).
        #[arg(long, default_value_t = 10000)]
        objects: usize,
        /// Concurrent watchers.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// The atoll binary to measure (build it with `cargo build --release -p atoll`).
        #[arg(long, default_value = "target/release/atoll")]
        atoll: PathBuf,
        /// An earlier atoll binary measured in the same run (before/after comparisons).
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// RBAC authorization cost on `atoll hub`: latency of a non-admin GET with N pull-mode
    /// agents' ClusterRoles and ClusterRoleBindings stored, steady and right after RBAC writes.
    HubRbac {
        /// Agents (one ClusterRole and one ClusterRoleBinding each).
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// GETs timed (one client, one after the other).
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// The atoll binary to measure (build it with `cargo build --release -p atoll`).
        #[arg(long, default_value = "target/release/atoll")]
        atoll: PathBuf,
        /// An earlier atoll binary measured in the same run (before/after comparisons).
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// Txn throughput, range latency and watch fan-out of the storage backends.
    Store {
        /// Backends, measured one after the other in this run.
        #[arg(long, value_delimiter = ',', default_value = "memory,redb")]
        backends: Vec<String>,
        /// Concurrent writer counts for the throughput table.
        #[arg(long, value_delimiter = ',', default_value = "1,32")]
        writers: Vec<usize>,
        /// Seconds per throughput cell.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Value size in bytes (a small Kubernetes object is about 1 KiB).
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
        /// Keys for the range table.
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        /// Watchers for the fan-out table.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Writes observed by every watcher.
        #[arg(long, default_value_t = 200)]
        events: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Push,
    Pull,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Bench::parse() {
        Bench::InventoryHealth {
            clusters,
            steady_seconds,
            health_period,
            atoll,
            mode,
        } => inventory_health(clusters, steady_seconds, health_period, atoll, mode).await,
        Bench::McsPropagation { members, changes } => mcs::propagation(members, changes).await,
        Bench::DnsQps {
            atoll,
            services,
            headless,
            endpoints,
            seconds,
            rounds,
            clients,
            nsd_servers,
        } => {
            mcs::dns(
                atoll,
                services,
                headless,
                endpoints,
                seconds,
                rounds,
                clients,
                nsd_servers,
            )
            .await
        }
        Bench::WorkLatency {
            members,
            samples,
            works,
            atoll,
            mode,
            member_kind,
        } => {
            work::work_latency(work::Options {
                sizes: members,
                kinds: member_kind,
                mode,
                samples,
                works,
                atoll,
            })
            .await
        }
        Bench::HubApi {
            creates,
            objects,
            watchers,
            atoll,
            baseline,
        } => {
            hub_api::run(hub_api::Options {
                creates,
                objects,
                watchers,
                atoll,
                baseline,
            })
            .await
        }
        Bench::HubRbac {
            agents,
            requests,
            atoll,
            baseline,
        } => {
            hub_rbac::run(hub_rbac::Options {
                agents,
                requests,
                atoll,
                baseline,
            })
            .await
        }
        Bench::Store {
            backends,
            writers,
            seconds,
            value_bytes,
            keys,
            watchers,
            events,
        } => {
            store::run(store::StoreBenchArgs {
                backends,
                writers,
                seconds,
                value_bytes,
                keys,
                watchers,
                events,
            })
            .await
        }
    }
}

struct Figures {
    clusters: usize,
    all_healthy: Duration,
    cpu_percent: f64,
    rss_mib: f64,
}

async fn inventory_health(
    sizes: Vec<usize>,
    steady_seconds: u64,
    health_period: u64,
    atoll: PathBuf,
    mode: Mode,
) -> anyhow::Result<()> {
    if !atoll.exists() {
        bail!(
            "{} not found: run `cargo build --release -p atoll` first",
            atoll.display()
        );
    }
    eprintln!("starting a test-bed hub and a stub member");
    let testbed = atoll_testbed::Testbed::start(atoll_testbed::TestbedConfig {
        controller_manager: false,
        ..atoll_testbed::TestbedConfig::with_clusters(1)
    })
    .await?;
    let hub_cluster = &testbed.clusters()[0];
    let hub = hub_cluster.client().await?;
    install_crds(&hub).await?;
    let stub = stub::start().await?;

    let mut results = Vec::new();
    let mut registered = 0;
    let mut agents = Vec::new();
    for size in sizes {
        eprintln!("registering clusters {registered}..{size}");
        futures::stream::iter(registered..size)
            .map(|i| register(hub.clone(), i, &stub, mode))
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        if mode == Mode::Pull {
            agents.extend(
                (registered..size)
                    .map(|i| AbortOnDropHandle::new(tokio::spawn(play_agent(hub.clone(), i)))),
            );
        }
        registered = registered.max(size);
        results.push(
            measure(
                &hub,
                hub_cluster,
                &atoll,
                size,
                steady_seconds,
                health_period,
            )
            .await?,
        );
    }

    println!(
        "| clusters | all healthy after | controller CPU (% of one core) | controller RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|");
    for f in &results {
        println!(
            "| {} | {:.1} s | {:.2} % | {:.1} |",
            f.clusters,
            f.all_healthy.as_secs_f64(),
            f.cpu_percent,
            f.rss_mib
        );
    }
    if let (Some(first), Some(last)) = (results.first(), results.last())
        && results.len() > 1
    {
        println!(
            "\n{}x the clusters cost {:.2}x the CPU and {:.2}x the memory.",
            last.clusters / first.clusters.max(1),
            last.cpu_percent / first.cpu_percent.max(f64::EPSILON),
            last.rss_mib / first.rss_mib.max(f64::EPSILON)
        );
    }
    Ok(())
}

async fn install_crds(hub: &kube::Client) -> anyhow::Result<()> {
    atoll_testbed::install_crds(hub, atoll_api::crds()?).await?;
    let namespaces: Api<Namespace> = Api::all(hub.clone());
    let manager = Namespace {
        metadata: ObjectMeta {
            name: Some(inventory::DEFAULT_MANAGER_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &manager).await {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Plays the agent of pull-mode cluster `index`: its status report once, then a Lease renewal
/// every 10 s, starting at a random offset as independent agents would.
async fn play_agent(hub: kube::Client, index: usize) {
    let name = format!("stub-{index:04}");
    let namespace = cluster_namespace(&name);
    let labels = BTreeMap::from([(inventory::LABEL_CLUSTER_NAME.to_owned(), name.clone())]);
    let report = ConfigMap {
        metadata: ObjectMeta {
            name: Some(pull::AGENT_STATUS_CONFIGMAP.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (pull::STATUS_KEY_VERSION.to_owned(), "v1.20.2".to_owned()),
            (pull::STATUS_KEY_READY.to_owned(), "ok".to_owned()),
            (
                pull::STATUS_KEY_PROPERTIES.to_owned(),
                r#"{"region.example.com":"eu"}"#.to_owned(),
            ),
        ])),
        ..Default::default()
    };
    let _ = Api::<ConfigMap>::namespaced(hub.clone(), &namespace)
        .create(&PostParams::default(), &report)
        .await;
    let leases: Api<Lease> = Api::namespaced(hub, &namespace);
    tokio::time::sleep(Duration::from_millis((index as u64 * 7919) % 10_000)).await;
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        ticker.tick().await;
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(pull::AGENT_LEASE.into()),
                labels: Some(labels.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.clone()),
                renew_time: Some(now),
                ..Default::default()
            }),
        };
        let _ = leases
            .patch(
                pull::AGENT_LEASE,
                &PatchParams::apply("bench-agent").force(),
                &Patch::Apply(&lease),
            )
            .await;
    }
}

/// What `atoll join` (push) or `atoll accept` (pull) leaves on the hub for one cluster; in
/// push mode pointing at the stub.
async fn register(
    hub: kube::Client,
    index: usize,
    stub: &stub::Stub,
    mode: Mode,
) -> anyhow::Result<()> {
    let name = format!("stub-{index:04}");
    let namespace = cluster_namespace(&name);
    Api::<Namespace>::all(hub.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {
            "server": format!("https://{}", stub.addr),
            "certificate-authority-data":
                base64::engine::general_purpose::STANDARD.encode(&stub.ca_pem)}}],
        "users": [{"name": "stub", "user": {"token": "stub"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
    });
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(member_kubeconfig_secret(&name)),
            namespace: Some(inventory::DEFAULT_MANAGER_NAMESPACE.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            MEMBER_KUBECONFIG_KEY.to_owned(),
            ByteString(serde_saphyr::to_string(&kubeconfig)?.into_bytes()),
        )])),
        ..Default::default()
    };
    if mode == Mode::Push {
        Api::<Secret>::namespaced(hub.clone(), inventory::DEFAULT_MANAGER_NAMESPACE)
            .create(&PostParams::default(), &secret)
            .await?;
    }
    let mut profile = ClusterProfile::new(
        &name,
        ClusterProfileSpec {
            display_name: None,
            cluster_manager: ClusterManager {
                name: ATOLL_CLUSTER_MANAGER.into(),
            },
            taints: Vec::new(),
        },
    );
    profile.metadata.labels = Some(BTreeMap::from([
        (
            LABEL_CLUSTER_MANAGER.to_owned(),
            ATOLL_CLUSTER_MANAGER.to_owned(),
        ),
        (
            LABEL_MODE.to_owned(),
            match mode {
                Mode::Push => MODE_PUSH,
                Mode::Pull => MODE_PULL,
            }
            .to_owned(),
        ),
    ]));
    Api::<ClusterProfile>::namespaced(hub, inventory::DEFAULT_MANAGER_NAMESPACE)
        .create(&PostParams::default(), &profile)
        .await?;
    Ok(())
}

async fn measure(
    hub: &kube::Client,
    hub_cluster: &atoll_testbed::Cluster,
    atoll: &std::path::Path,
    clusters: usize,
    steady_seconds: u64,
    health_period: u64,
) -> anyhow::Result<Figures> {
    eprintln!("measuring {clusters} clusters");
    let started = Instant::now();
    let mut controller = std::process::Command::new(atoll)
        .args(["controller", "--health-period", &health_period.to_string()])
        .env("KUBECONFIG", hub_cluster.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting atoll controller")?;
    let pid = controller.id();
    let profiles: Api<ClusterProfile> =
        Api::namespaced(hub.clone(), inventory::DEFAULT_MANAGER_NAMESPACE);
    let all_healthy = loop {
        let healthy = profiles
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    atoll_api::conditions::is_true(&s.conditions, "ControlPlaneHealthy")
                })
            })
            .count();
        if healthy >= clusters {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {healthy} of {clusters} clusters healthy after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let before = cpu_ticks(pid)?;
    // The resident set over the window, on stderr, to tell a leak (steady growth) from an
    // allocator settling (growth that levels off).
    let steady = Instant::now();
    let window = Duration::from_secs(steady_seconds);
    while steady.elapsed() < window {
        let step = Duration::from_secs(10).min(window - steady.elapsed());
        tokio::time::sleep(step).await;
        eprintln!(
            "  steady {:>4} s: {}",
            steady.elapsed().as_secs(),
            memory_breakdown(pid).unwrap_or_default()
        );
    }
    let after = cpu_ticks(pid)?;
    let rss_mib = rss_kib(pid)? as f64 / 1024.0;
    // 100 ticks per second on Linux.
    let cpu_percent = (after - before) as f64 / steady_seconds as f64;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    controller.wait()?;
    Ok(Figures {
        clusters,
        all_healthy,
        cpu_percent,
        rss_mib,
    })
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// `VmRSS`, `RssAnon` and `RssFile` of `pid`, in MiB.
fn memory_breakdown(pid: u32) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mib = |field: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0) as f64
            / 1024.0
    };
    Ok(format!(
        "RSS {:.1} MiB = anonymous {:.1} + file {:.1}",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:")
    ))
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}
