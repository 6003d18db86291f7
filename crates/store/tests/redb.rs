//! The shared storage suite on the redb backend, plus what only a durable store promises:
//! reopening keeps everything, and a SIGKILL loses no acknowledged write.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atoll_store::redb::{CompactionPolicy, RedbOptions, RedbStore};
use atoll_store::testsuite::Fixture;
use atoll_store::{Op, RangeRequest, Store, Txn, WatchEvent, WatchOptions, prefix_end};
use bytes::Bytes;
use futures::StreamExt;

fn options() -> RedbOptions {
    RedbOptions {
        watch: WatchOptions {
            progress_interval: Duration::from_millis(200),
            // Tiny, so slow watchers really fall behind and catch up from the log on disk.
            ring_capacity: 16,
            watcher_buffer: 8,
            history_chunk: 64,
            ..WatchOptions::default()
        },
        compaction: CompactionPolicy {
            interval: None,
            retain_revisions: None,
        },
        ..RedbOptions::default()
    }
}

async fn fresh() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let store = RedbStore::open(dir.path().join("store.redb"), options())?;
    Ok(Fixture::new(Arc::new(store), dir))
}

atoll_store::store_testsuite!(fresh());

fn put(key: &str, value: &str) -> Txn {
    Txn {
        success: vec![Op::Put {
            key: key.to_owned(),
            value: Bytes::from(value.to_owned()),
        }],
        ..Txn::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopening_keeps_data_revision_and_history() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.redb");
    let (first, last, compacted) = {
        let store = RedbStore::open(&path, options())?;
        let first = store.txn(put("/re/a", "1")).await?.revision;
        store.txn(put("/re/b", "1")).await?;
        store.txn(put("/re/a", "2")).await?;
        store.compact(first).await?;
        let last = store.txn(put("/re/c", "1")).await?.revision;
        (first, last, store.compacted_revision().await?)
    };
    let store = RedbStore::open(&path, options())?;
    ensure!(store.current_revision().await? == last);
    ensure!(store.compacted_revision().await? == compacted && compacted == first);
    let listed = store
        .range(RangeRequest {
            start: "/re/".into(),
            end: prefix_end("/re/"),
            ..RangeRequest::default()
        })
        .await?;
    let kvs: Vec<_> = listed
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.version, kv.value.clone()))
        .collect();
    ensure!(
        kvs == [
            ("/re/a", 2, Bytes::from("2")),
            ("/re/b", 1, Bytes::from("1")),
            ("/re/c", 1, Bytes::from("1"))
        ],
        "{kvs:?}"
    );
    // History survives too: a watch from just after the compaction replays from disk.
    let mut watch = store.watch("/re/", first + 1, false).await?;
    let mut revisions = Vec::new();
    while revisions.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(60), watch.next()).await? {
            Some(Ok(WatchEvent::Put { kv, .. })) => revisions.push(kv.mod_revision),
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(revisions == [first + 1, first + 2, last]);
    let next = store.txn(put("/re/d", "1")).await?.revision;
    ensure!(next == last + 1, "revisions continue after reopening");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_compaction_keeps_one_interval_of_history() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = options();
    options.compaction.interval = Some(Duration::from_millis(100));
    let store = RedbStore::open(dir.path().join("store.redb"), options)?;
    let written = store.txn(put("/periodic/k", "1")).await?.revision;
    store.txn(put("/periodic/k", "2")).await?;
    // The first tick remembers the revision, a later one compacts to it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.compacted_revision().await? < written {
        ensure!(Instant::now() < deadline, "no periodic compaction");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let current = store
        .range(RangeRequest {
            start: "/periodic/k".into(),
            ..RangeRequest::default()
        })
        .await?;
    ensure!(current.kvs.len() == 1 && current.kvs[0].value == "2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_by_revision_count() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = options();
    options.compaction.retain_revisions = Some(10);
    let store = RedbStore::open(dir.path().join("store.redb"), options)?;
    for i in 0..50 {
        store.txn(put("/count/k", &i.to_string())).await?;
    }
    let current = store.current_revision().await?;
    let compacted = store.compacted_revision().await?;
    ensure!(
        compacted > 0 && current - compacted < 20,
        "{compacted} of {current}"
    );
    Ok(())
}

/// The durability modes the crash test kills: the write-ahead log with rare checkpoints (acked
/// writes live only in the log), with a checkpoint every few KiB, and no log at all.
const CRASH_MODES: [&str; 3] = ["wal", "wal-frequent-checkpoints", "no-wal"];

fn crash_mode_options(mode: &str) -> anyhow::Result<RedbOptions> {
    let defaults = RedbOptions::default();
    Ok(match mode {
        "wal" => RedbOptions {
            write_ahead_log: true,
            ..defaults
        },
        "wal-frequent-checkpoints" => RedbOptions {
            write_ahead_log: true,
            checkpoint_bytes: 4096,
            ..defaults
        },
        "no-wal" => RedbOptions {
            write_ahead_log: false,
            ..defaults
        },
        other => bail!("unknown crash mode {other}"),
    })
}

/// The child half of the crash test: writes until killed, printing each acknowledged write.
/// Runs only when the crash test starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "started by sigkill_loses_no_acknowledged_write"]
async fn crash_child_writer() -> anyhow::Result<()> {
    let path = std::env::var("ATOLL_STORE_CRASH_PATH").context("ATOLL_STORE_CRASH_PATH")?;
    let mode = std::env::var("ATOLL_STORE_CRASH_MODE").context("ATOLL_STORE_CRASH_MODE")?;
    let store = Arc::new(RedbStore::open(path, crash_mode_options(&mode)?)?);
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<String>();
    for writer in 0..16 {
        let store = store.clone();
        let acks = acks.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/crash/{writer}/{i}");
                let revision = store.txn(put(&key, &key)).await?.revision;
                acks.send(format!("ack {revision} {key}"))?;
            }
            anyhow::Ok(())
        });
    }
    drop(acks);
    let mut stdout = std::io::stdout().lock();
    while let Some(line) = acked.recv().await {
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.redb");
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    for (round, mode) in CRASH_MODES.iter().enumerate() {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["crash_child_writer", "--exact", "--ignored", "--nocapture"])
            .env("ATOLL_STORE_CRASH_PATH", &path)
            .env("ATOLL_STORE_CRASH_MODE", mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let before = acked.len();
        // Kill it mid-load, after a round-dependent number of acknowledgements.
        let kill_after = 300 + round * 700;
        let mut killed = false;
        while let Some(line) = lines.next().transpose()? {
            if let Some(rest) = line.strip_prefix("ack ") {
                let (revision, key) = rest.split_once(' ').context("ack line")?;
                acked.insert(key.to_owned(), revision.parse()?);
                if !killed && acked.len() - before >= kill_after {
                    child.kill()?; // SIGKILL
                    killed = true;
                }
            }
        }
        child.wait()?;
        ensure!(
            killed,
            "the child stopped on its own after {} acks",
            acked.len() - before
        );

        let store = RedbStore::open(&path, RedbOptions::default())?;
        let listed = store
            .range(RangeRequest {
                start: "/crash/".into(),
                end: prefix_end("/crash/"),
                ..RangeRequest::default()
            })
            .await?;
        let stored: BTreeMap<_, _> = listed
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.mod_revision))
            .collect();
        for (key, revision) in &acked {
            ensure!(
                stored.get(key) == Some(revision),
                "acknowledged {key}@{revision} lost after SIGKILL (round {round}, {mode})"
            );
        }
        let max_acked = acked.values().copied().max().unwrap_or(0);
        ensure!(store.current_revision().await? >= max_acked);
        // Every stored key was written by the child: nothing half-written appears.
        ensure!(listed.kvs.iter().all(|kv| kv.value == kv.key.as_bytes()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_txns_share_commits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(RedbStore::open(dir.path().join("store.redb"), options())?);
    let mut tasks = Vec::new();
    for writer in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                store.txn(put(&format!("/group/{writer}/{i}"), "v")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let stats = store.stats();
    ensure!(stats.txns == 32 * 20, "{stats:?}");
    // 32 writers waiting on one fsync at a time: their txns must have shared commits.
    ensure!(stats.groups < stats.txns, "no group commit: {stats:?}");
    Ok(())
}
