//! `work-latency`: push-mode Work delivery by `atoll controller` (a release build, as a child
//! process) to real member kube-apiservers from the test bed.
//!
//! For each fleet size: the latency from creating a Work on the hub to its object existing in
//! the member (one Work at a time, each holding one ConfigMap; the member's own watch tells
//! when it exists), then the throughput of many Works created at once and spread over the
//! members, then the controller's resident memory. Also the latency from a change in a member
//! to the hub's Work status showing it (a JSONPath feedback value of a ReadOnly manifest).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atoll_api::work::{Manifest, Work, WorkSpec, WorkloadTemplate};
use atoll_controllers::inventory::{self, JoinOptions, cluster_namespace};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use crate::rss_kib;

const NAMESPACE: &str = "bench";

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
fn watch_hub_feedback(works: Api<Work>, cluster: usize, seen: Arc<Seen>) {
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

struct Figures {
    members: usize,
    status_p50: Duration,
    status_p99: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    works: usize,
    throughput_elapsed: Duration,
    rss_mib: f64,
}

pub async fn work_latency(
    sizes: Vec<usize>,
    samples: usize,
    throughput_works: usize,
    atoll: PathBuf,
) -> anyhow::Result<()> {
    if !atoll.exists() {
        bail!(
            "{} not found: run `cargo build --release -p atoll` first",
            atoll.display()
        );
    }
    let largest = sizes.iter().copied().max().unwrap_or(1);
    eprintln!("starting a test-bed hub and {largest} member kube-apiservers");
    let testbed = atoll_testbed::Testbed::start(atoll_testbed::TestbedConfig {
        startup_timeout: Duration::from_secs(300),
        ..atoll_testbed::TestbedConfig::with_clusters(largest + 1)
    })
    .await?;
    let hub_cluster = &testbed.clusters()[0];
    let hub = hub_cluster.client().await?;
    atoll_testbed::install_crds(&hub, atoll_api::crds()?).await?;
    let seen = Arc::new(Seen::default());
    let mut joined = 0;
    let mut figures = Vec::new();
    for (round, &size) in sizes.iter().enumerate() {
        while joined < size {
            joined += 1;
            let member_cluster = &testbed.clusters()[joined];
            let member = member_cluster.client().await?;
            let mut ns = Namespace::default();
            ns.metadata.name = Some(NAMESPACE.into());
            Api::<Namespace>::all(member.clone())
                .create(&PostParams::default(), &ns)
                .await?;
            inventory::join(
                &hub,
                &JoinOptions {
                    name: format!("m{joined}"),
                    member_kubeconfig: Kubeconfig::read_from(member_cluster.kubeconfig_path())?,
                    member_context: None,
                    labels: Default::default(),
                    cluster_set: "bench".into(),
                    cluster_id: None,
                    manager_namespace: inventory::DEFAULT_MANAGER_NAMESPACE.into(),
                    token_timeout: Duration::from_secs(120),
                },
            )
            .await
            .with_context(|| format!("joining member {joined}"))?;
            let mut probe = ConfigMap::default();
            probe.metadata.name = Some("status-probe".into());
            probe.data = Some([("v".to_owned(), "start".to_owned())].into());
            Api::<ConfigMap>::namespaced(member.clone(), NAMESPACE)
                .create(&PostParams::default(), &probe)
                .await?;
            let works: Api<Work> =
                Api::namespaced(hub.clone(), &cluster_namespace(&format!("m{joined}")));
            works
                .create(&PostParams::default(), &status_probe())
                .await?;
            watch_hub_feedback(works, joined, seen.clone());
            watch_member(member, seen.clone());
        }
        eprintln!("measuring {size} member(s)");
        let mut controller = std::process::Command::new(&atoll)
            .args(["controller"])
            .env("KUBECONFIG", hub_cluster.kubeconfig_path())
            .env("RUST_LOG", "warn")
            .spawn()
            .context("starting atoll controller")?;
        let pid = controller.id();
        let works = |member: usize| -> Api<Work> {
            Api::namespaced(hub.clone(), &cluster_namespace(&format!("m{member}")))
        };
        // Warm up: every member's applier is running (and its watches are open).
        for member in 1..=size {
            let name = format!("warm-{round}-{member}");
            works(member)
                .create(&PostParams::default(), &work(&name))
                .await?;
            seen.wait(&name, Duration::from_secs(120)).await?;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;

        let mut latencies = Vec::with_capacity(samples);
        for i in 0..samples {
            let name = format!("lat-{round}-{i}");
            let member = 1 + i % size;
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
            let member = 1 + i % size;
            let client = testbed.clusters()[member].client().await?;
            let value = format!("r{round}-{i}");
            let started = Instant::now();
            Api::<ConfigMap>::namespaced(client, NAMESPACE)
                .patch(
                    "status-probe",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(serde_json::json!({"data": {"v": value}})),
                )
                .await?;
            let at = seen
                .wait(&format!("status-{member}-{value}"), Duration::from_secs(60))
                .await?;
            status_latencies.push(at.saturating_duration_since(started));
        }
        status_latencies.sort();

        let started = Instant::now();
        let names: Vec<(usize, String)> = (0..throughput_works)
            .map(|i| (1 + i % size, format!("tp-{round}-{i}")))
            .collect();
        futures::stream::iter(names.iter().cloned())
            .map(|(member, name)| {
                let api = works(member);
                async move { api.create(&PostParams::default(), &work(&name)).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let mut last = started;
        for (_, name) in &names {
            last = last.max(seen.wait(name, Duration::from_secs(600)).await?);
        }
        let throughput_elapsed = last.saturating_duration_since(started);
        let rss_mib = rss_kib(pid)? as f64 / 1024.0;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        controller.wait()?;
        figures.push(Figures {
            members: size,
            status_p50: percentile(&status_latencies, 50.0),
            status_p99: percentile(&status_latencies, 99.0),
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or_default(),
            works: throughput_works,
            throughput_elapsed,
            rss_mib,
        });
    }
    println!(
        "| members | create→exists p50 | p99 | max | member change→hub status p50 | p99 | Works at once | all delivered after | Works/s | controller RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in &figures {
        println!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} | {:.1} s | {:.0} | {:.1} |",
            f.members,
            f.p50.as_secs_f64() * 1000.0,
            f.p99.as_secs_f64() * 1000.0,
            f.max.as_secs_f64() * 1000.0,
            f.status_p50.as_secs_f64() * 1000.0,
            f.status_p99.as_secs_f64() * 1000.0,
            f.works,
            f.throughput_elapsed.as_secs_f64(),
            f.works as f64 / f.throughput_elapsed.as_secs_f64().max(f64::EPSILON),
            f.rss_mib,
        );
    }
    println!("({samples} latency samples per size, one Work at a time, each member in turn)");
    Ok(())
}
