//! `atoll-bench store`: the hub's storage layer on its own, every backend side by side.
//!
//! - txn throughput: create-if-absent txns (compare `mod_revision == 0`, put a value), as the
//!   API server's create does, from 1 and from N concurrent writers for a fixed time; the
//!   N/1 ratio on redb is the group-commit gain (one fsync per group).
//! - range latency over K keys: a full list, a 500-key page, and a single-key get.
//! - watch fan-out latency: W watchers on one prefix; each write carries its start time, and
//!   every watcher records the delay from the start of the txn to its event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atoll_store::memory::MemoryStore;
use atoll_store::redb::{RedbOptions, RedbStore};
use atoll_store::{Compare, Op, RangeRequest, Store, Txn, WatchEvent, prefix_end};
use bytes::Bytes;
use futures::StreamExt;

pub struct StoreBenchArgs {
    pub backends: Vec<String>,
    pub writers: Vec<usize>,
    pub seconds: u64,
    pub value_bytes: usize,
    pub keys: usize,
    pub watchers: usize,
    pub events: usize,
}

/// A fresh store of `backend`, and what keeps it alive (and reports group commits).
type Opened = (
    Arc<dyn Store>,
    Option<(tempfile::TempDir, RedbStore)>,
    Option<Keepalive>,
);

/// Whatever else must outlive a store (an etcd process).
type Keepalive = Box<dyn std::any::Any + Send>;

async fn open(backend: &str) -> anyhow::Result<Opened> {
    match backend {
        #[cfg(feature = "etcd")]
        "etcd" => {
            let (store, etcd) = etcd::start().await?;
            Ok((Arc::new(store), None, Some(Box::new(etcd))))
        }
        "memory" => Ok((Arc::new(MemoryStore::new()), None, None)),
        "redb" => {
            let dir = tempfile::tempdir()?;
            let store = RedbStore::open(dir.path().join("store.redb"), RedbOptions::default())?;
            Ok((Arc::new(store.clone()), Some((dir, store)), None))
        }
        other => bail!("unknown backend {other:?} (memory, redb, and etcd with --features etcd)"),
    }
}

fn create(key: String, value: Bytes) -> Txn {
    Txn {
        compares: vec![Compare::ModRevision {
            key: key.clone(),
            revision: 0,
        }],
        success: vec![Op::Put { key, value }],
        failure: vec![],
    }
}

pub async fn run(args: StoreBenchArgs) -> anyhow::Result<()> {
    let value = Bytes::from(vec![b'x'; args.value_bytes]);
    println!(
        "## txn throughput ({} B values, create-if-absent, {} s per cell)\n",
        args.value_bytes, args.seconds
    );
    let header: Vec<String> = args
        .writers
        .iter()
        .map(|w| format!("{w} writers"))
        .collect();
    println!("| backend | {} | ratio |", header.join(" | "));
    println!("|---|{}---:|", "---:|".repeat(args.writers.len()));
    for backend in &args.backends {
        let mut rates = Vec::new();
        let mut cells = Vec::new();
        for &writers in &args.writers {
            let (store, redb, _etcd) = open(backend).await?;
            let rate = throughput(store, writers, args.seconds, &value).await?;
            rates.push(rate);
            cells.push(match redb {
                Some((_, redb)) => {
                    let stats = redb.stats();
                    format!(
                        "{rate:.0} txn/s ({:.1} txns per fsync)",
                        stats.txns as f64 / stats.groups.max(1) as f64
                    )
                }
                None => format!("{rate:.0} txn/s"),
            });
        }
        let ratio = match (rates.first(), rates.last()) {
            (Some(first), Some(last)) if *first > 0.0 => format!("{:.1}x", last / first),
            _ => "-".into(),
        };
        println!("| {backend} | {} | {ratio} |", cells.join(" | "));
    }

    println!(
        "\n## range latency at {} keys ({} B values)\n",
        args.keys, args.value_bytes
    );
    println!("| backend | full list p50 | full list p99 | 500-key page p50 | get p50 | get p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for backend in &args.backends {
        let (store, _dir, _etcd) = open(backend).await?;
        fill(&*store, args.keys, &value).await?;
        let full = latencies(20, || async {
            let response = store
                .range(RangeRequest {
                    start: "/bench/list/".into(),
                    end: prefix_end("/bench/list/"),
                    ..RangeRequest::default()
                })
                .await?;
            anyhow::ensure!(response.kvs.len() == args.keys);
            Ok(())
        })
        .await?;
        let page = latencies(50, || async {
            let response = store
                .range(RangeRequest {
                    start: "/bench/list/".into(),
                    end: prefix_end("/bench/list/"),
                    limit: 500,
                    ..RangeRequest::default()
                })
                .await?;
            anyhow::ensure!(response.kvs.len() == 500.min(args.keys));
            Ok(())
        })
        .await?;
        let mut i = 0usize;
        let get = latencies(500, || {
            i = (i + 7919) % args.keys.max(1);
            let key = format!("/bench/list/{i:08}");
            let store = store.clone();
            async move {
                let response = store
                    .range(RangeRequest {
                        start: key,
                        ..RangeRequest::default()
                    })
                    .await?;
                anyhow::ensure!(response.kvs.len() == 1);
                Ok(())
            }
        })
        .await?;
        println!(
            "| {backend} | {} | {} | {} | {} | {} |",
            ms(percentile(&full, 50)),
            ms(percentile(&full, 99)),
            ms(percentile(&page, 50)),
            ms(percentile(&get, 50)),
            ms(percentile(&get, 99)),
        );
    }

    println!(
        "\n## watch fan-out to {} watchers ({} writes, one at a time, txn start to event)\n",
        args.watchers, args.events
    );
    println!(
        "| backend | p50 | p99 | max | events delivered | the txn itself p50 | the txn itself p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for backend in &args.backends {
        let (store, _dir, _etcd) = open(backend).await?;
        let (mut delays, mut txns) = fan_out(store, args.watchers, args.events).await?;
        delays.sort();
        txns.sort();
        println!(
            "| {backend} | {} | {} | {} | {} | {} | {} |",
            ms(percentile(&delays, 50)),
            ms(percentile(&delays, 99)),
            ms(delays.last().copied().unwrap_or_default()),
            delays.len(),
            ms(percentile(&txns, 50)),
            ms(percentile(&txns, 99)),
        );
    }
    Ok(())
}

async fn throughput(
    store: Arc<dyn Store>,
    writers: usize,
    seconds: u64,
    value: &Bytes,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let key = format!("/bench/txn/{writer}/{done}");
                let response = store.txn(create(key, value.clone())).await?;
                anyhow::ensure!(response.succeeded, "create failed");
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn fill(store: &dyn Store, keys: usize, value: &Bytes) -> anyhow::Result<()> {
    let indices: Vec<usize> = (0..keys).collect();
    for chunk in indices.chunks(100) {
        let success = chunk
            .iter()
            .map(|i| Op::Put {
                key: format!("/bench/list/{i:08}"),
                value: value.clone(),
            })
            .collect();
        store
            .txn(Txn {
                success,
                ..Txn::default()
            })
            .await?;
    }
    Ok(())
}

async fn latencies<F, Fut>(runs: usize, mut op: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    op().await?; // warm-up
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        op().await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok(samples)
}

async fn fan_out(
    store: Arc<dyn Store>,
    watchers: usize,
    events: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let epoch = Instant::now();
    let start = store.current_revision().await? + 1;
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut stream = store.watch("/bench/watch/", start, false).await?;
        tasks.push(tokio::spawn(async move {
            let mut delays = Vec::with_capacity(events);
            while delays.len() < events {
                let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
                    .await
                    .context("watch stalled")?
                    .context("watch ended")??;
                if let WatchEvent::Put { kv, .. } = event {
                    let sent: u64 = std::str::from_utf8(&kv.value)?.parse()?;
                    let now = epoch.elapsed();
                    delays.push(now.saturating_sub(Duration::from_nanos(sent)));
                }
            }
            anyhow::Ok(delays)
        }));
    }
    let mut txns = Vec::with_capacity(events);
    for i in 0..events {
        let started = epoch.elapsed();
        let sent = started.as_nanos().to_string();
        store
            .txn(Txn {
                success: vec![Op::Put {
                    key: format!("/bench/watch/{}", i % 10),
                    value: Bytes::from(sent),
                }],
                ..Txn::default()
            })
            .await?;
        txns.push(epoch.elapsed().saturating_sub(started));
        // One write at a time, spaced, so the figure is delivery latency, not queueing.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut all = Vec::with_capacity(watchers * events);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, txns))
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[index]
}

fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

/// A throwaway etcd for the `etcd` backend: Debian's `/usr/bin/etcd` (or `ATOLL_ETCD`) on free
/// loopback ports in a temporary directory, with its default fsync-per-commit durability.
#[cfg(feature = "etcd")]
mod etcd {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use atoll_store::Store;
    use atoll_store::etcd::EtcdStore;

    pub struct Etcd {
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> anyhow::Result<u16> {
        Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    }

    pub async fn start() -> anyhow::Result<(EtcdStore, Etcd)> {
        let binary = std::env::var("ATOLL_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into());
        let dir = tempfile::tempdir()?;
        let client_url = format!("http://127.0.0.1:{}", free_port()?);
        let peer_url = format!("http://127.0.0.1:{}", free_port()?);
        let child = Command::new(&binary)
            .args([
                "--name=default",
                &format!("--data-dir={}", dir.path().join("data").display()),
                &format!("--listen-client-urls={client_url}"),
                &format!("--advertise-client-urls={client_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--log-level=error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let etcd = Etcd { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = async {
                let store = EtcdStore::connect(std::slice::from_ref(&client_url), "/bench").await?;
                store.current_revision().await?;
                anyhow::Ok(store)
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(store)) => return Ok((store, etcd)),
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => bail!("etcd at {client_url} did not come up"),
            }
        }
    }
}
