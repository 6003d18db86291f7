//! `hub-api`: Atoll's API server (`atoll hub`, release build, redb store) against a test-bed
//! kube-apiserver 1.20 with its etcd, side by side in one run: create throughput of 1 KiB
//! ConfigMaps with 1 and 32 clients, list latency at N objects, watch delivery latency to many
//! watchers, and resident memory (the hub process; kube-apiserver plus etcd).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

pub struct Options {
    pub creates: usize,
    pub objects: usize,
    pub watchers: usize,
    pub atoll: PathBuf,
    /// Another atoll binary (an earlier build) measured in the same run, for before/after.
    pub baseline: Option<PathBuf>,
}

struct Figures {
    create_1: f64,
    create_32: f64,
    list_ms: f64,
    watch_p50_ms: f64,
    watch_p99_ms: f64,
    rss_mib: f64,
    /// Resident memory once the objects are stored, before any list.
    rss_filled_mib: f64,
}

fn configmap(name: &str) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "data": {"payload": "x".repeat(1024)},
    }))?)
}

pub(crate) async fn ensure_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates `count` ConfigMaps named `<prefix>-<i>` with `clients` concurrent writers; creates/s.
async fn create_rate(
    client: &kube::Client,
    ns: &str,
    prefix: &str,
    count: usize,
    clients: usize,
) -> anyhow::Result<f64> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let api = api.clone();
        let next = next.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                api.create(
                    &PostParams::default(),
                    &configmap(&format!("{prefix}-{i}"))?,
                )
                .await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

async fn list_ms(client: &kube::Client, ns: &str, expect: usize) -> anyhow::Result<f64> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let list = api.list(&ListParams::default()).await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            list.items.len() == expect,
            "listed {} of {expect}",
            list.items.len()
        );
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Latency from just before each create to each watcher's receipt of its ADDED event.
async fn watch_latency(
    client: &kube::Client,
    ns: &str,
    watchers: usize,
    events: usize,
) -> anyhow::Result<(f64, f64)> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let rv = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("resourceVersion")?;
    let sent: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let api = api.clone();
        let rv = rv.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = api
                .watch(&WatchParams::default().timeout(120), &rv)
                .await?
                .boxed();
            let mut latencies = Vec::new();
            while latencies.len() < events {
                match stream.try_next().await? {
                    Some(WatchEvent::Added(cm)) => {
                        let now = Instant::now();
                        let name = cm.metadata.name.unwrap_or_default();
                        let at = sent.lock().ok().and_then(|s| s.get(&name).copied());
                        if let Some(at) = at {
                            latencies.push(now.duration_since(at).as_secs_f64() * 1000.0);
                        }
                    }
                    Some(_) => {}
                    None => anyhow::bail!("watch ended"),
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    // Let every watch be established before writing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..events {
        let name = format!("watched-{i}");
        if let Ok(mut s) = sent.lock() {
            s.insert(name.clone(), Instant::now());
        }
        api.create(&PostParams::default(), &configmap(&name)?)
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| all[((all.len() as f64 - 1.0) * q) as usize];
    Ok((pick(0.5), pick(0.99)))
}

async fn measure(client: &kube::Client, pids: &[u32], opts: &Options) -> anyhow::Result<Figures> {
    ensure_namespace(client, "bench-create").await?;
    ensure_namespace(client, "bench-fill").await?;
    ensure_namespace(client, "bench-watch").await?;
    // Warm up connections and caches.
    create_rate(client, "bench-create", "warm", 50, 8).await?;
    let create_1 = create_rate(client, "bench-create", "one", opts.creates, 1).await?;
    let create_32 = create_rate(client, "bench-create", "many", opts.creates, 32).await?;
    create_rate(client, "bench-fill", "fill", opts.objects, 32).await?;
    let rss_filled_mib = rss_mib(pids);
    let list_ms = list_ms(client, "bench-fill", opts.objects).await?;
    let (watch_p50_ms, watch_p99_ms) =
        watch_latency(client, "bench-watch", opts.watchers, 20).await?;
    Ok(Figures {
        create_1,
        create_32,
        list_ms,
        watch_p50_ms,
        watch_p99_ms,
        rss_mib: rss_mib(pids),
        rss_filled_mib,
    })
}

fn rss_mib(pids: &[u32]) -> f64 {
    let kib: u64 = pids
        .iter()
        .map(|pid| crate::rss_kib(*pid).unwrap_or(0))
        .sum();
    kib as f64 / 1024.0
}

pub(crate) fn start_hub(atoll: &Path, data_dir: &Path) -> anyhow::Result<Child> {
    start_hub_with(atoll, data_dir, &[])
}

/// [`start_hub`] with more `atoll hub` arguments.
pub(crate) fn start_hub_with(
    atoll: &Path,
    data_dir: &Path,
    extra_args: &[&std::ffi::OsStr],
) -> anyhow::Result<Child> {
    // The API server alone, as kube-apiserver is measured alone: builds that run Atoll's
    // controllers inside the hub are told not to (earlier baseline builds have no such flag
    // and no such controllers).
    let api_only = Command::new(atoll)
        .args(["hub", "--help"])
        .output()
        .is_ok_and(|help| String::from_utf8_lossy(&help.stdout).contains("--api-only"));
    let mut child = Command::new(atoll)
        .args(["hub", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(api_only.then_some("--api-only"))
        .args(extra_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (cargo build --release -p atoll)",
                atoll.display()
            )
        })?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    lines.next().context("hub exited")??;
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok(child)
}

pub(crate) async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let testbed = atoll_testbed::Testbed::start(atoll_testbed::TestbedConfig {
        controller_manager: false,
        ..Default::default()
    })
    .await?;
    let kube_client = testbed.clusters()[0].client().await?;
    let kube = measure(&kube_client, &testbed.pids(), &opts).await?;
    drop(testbed);

    let mut hubs = Vec::new();
    if let Some(baseline) = &opts.baseline {
        hubs.push((
            "atoll hub (redb), baseline build",
            measure_hub(baseline, &opts).await?,
        ));
    }
    hubs.push(("atoll hub (redb)", measure_hub(&opts.atoll, &opts).await?));

    println!(
        "| server | creates/s, 1 client | creates/s, 32 clients | list {} (ms) | watch p50 / p99 to {} watchers (ms) | RSS at {} objects, before lists (MiB) | RSS at {} objects (MiB) |",
        opts.objects,
        opts.watchers,
        opts.objects + 2 * opts.creates,
        opts.objects + 2 * opts.creates
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let all = std::iter::once(("kube-apiserver 1.20 + etcd", &kube))
        .chain(hubs.iter().map(|(name, f)| (*name, f)));
    for (name, f) in all {
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} | {:.1} / {:.1} | {:.1} | {:.1} |",
            f.create_1,
            f.create_32,
            f.list_ms,
            f.watch_p50_ms,
            f.watch_p99_ms,
            f.rss_filled_mib,
            f.rss_mib
        );
    }
    for (name, atoll) in &hubs {
        println!(
            "{name} / kube: create x{:.2} (1 client), x{:.2} (32 clients); memory {:.2} of kube-apiserver+etcd",
            atoll.create_1 / kube.create_1,
            atoll.create_32 / kube.create_32,
            atoll.rss_mib / kube.rss_mib
        );
    }
    Ok(())
}

/// Starts `atoll hub` from `binary` on a fresh data directory and measures it.
async fn measure_hub(binary: &Path, opts: &Options) -> anyhow::Result<Figures> {
    let dir = tempfile_dir()?;
    let mut hub = start_hub(binary, &dir)?;
    let result = async {
        let client = client_from(&dir.join("admin.kubeconfig")).await?;
        measure(&client, &[hub.id()], opts).await
    }
    .await;
    let _ = hub.kill();
    let _ = hub.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("atoll-bench-hub-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
