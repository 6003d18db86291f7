//! The shared storage suite on the in-memory backend. The fan-out ring is tiny so that slow
//! watchers really fall behind it and must catch up from history.

use std::sync::Arc;
use std::time::Duration;

use atoll_store::WatchOptions;
use atoll_store::memory::{MemoryOptions, MemoryStore};
use atoll_store::testsuite::Fixture;

async fn fresh() -> anyhow::Result<Fixture> {
    let store = MemoryStore::with_options(MemoryOptions {
        watch: WatchOptions {
            progress_interval: Duration::from_millis(200),
            ring_capacity: 16,
            watcher_buffer: 8,
            history_chunk: 64,
            ..WatchOptions::default()
        },
        retain_revisions: None,
    });
    Ok(Fixture::new(Arc::new(store), ()))
}

atoll_store::store_testsuite!(fresh());

#[tokio::test]
async fn history_is_bounded_by_revision_count() -> anyhow::Result<()> {
    use atoll_store::{Op, Store, Txn};
    let store = MemoryStore::with_options(MemoryOptions {
        retain_revisions: Some(10),
        ..MemoryOptions::default()
    });
    for i in 0..50 {
        store
            .txn(Txn {
                success: vec![Op::Put {
                    key: "/bounded/k".into(),
                    value: i.to_string().into(),
                }],
                ..Txn::default()
            })
            .await?;
    }
    let current = store.current_revision().await?;
    let compacted = store.compacted_revision().await?;
    anyhow::ensure!(
        compacted > 0 && current - compacted < 20,
        "{compacted} of {current}"
    );
    Ok(())
}

/// A watcher that fell behind the ring while the history it needs was compacted away must be
/// told so (WatcherLagged), after the events it did get, never skip silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_past_compaction_gets_watcher_lagged() -> anyhow::Result<()> {
    use atoll_store::{Op, Store, StoreError, Txn, WatchEvent};
    use futures::StreamExt;
    let store = MemoryStore::with_options(MemoryOptions {
        watch: WatchOptions {
            ring_capacity: 4,
            watcher_buffer: 4,
            ..WatchOptions::default()
        },
        retain_revisions: None,
    });
    let start = store.current_revision().await? + 1;
    let mut watch = store.watch("/lag/", start, false).await?;
    for i in 0..100 {
        store
            .txn(Txn {
                success: vec![Op::Put {
                    key: format!("/lag/{i}"),
                    value: "v".into(),
                }],
                ..Txn::default()
            })
            .await?;
    }
    store.compact(store.current_revision().await?).await?;
    let mut expected = start;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), watch.next()).await? {
            Some(Ok(WatchEvent::Put { kv, .. })) => {
                anyhow::ensure!(kv.mod_revision == expected, "gap before {kv:?}");
                expected += 1;
            }
            Some(Err(StoreError::WatcherLagged)) => break,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    anyhow::ensure!(
        expected < start + 100,
        "everything arrived despite the compaction"
    );
    anyhow::ensure!(
        watch.next().await.is_none(),
        "the stream ends after WatcherLagged"
    );
    Ok(())
}

/// A consumer that stops reading while large values are written pins at most its byte budget,
/// then is dropped: its queue is freed and its stream ends with WatcherLagged after the events
/// it was given, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_pins_its_byte_budget_then_is_dropped() -> anyhow::Result<()> {
    use atoll_store::{Op, Store, StoreError, Txn, WatchEvent};
    use futures::StreamExt;
    const BUDGET: usize = 256 * 1024;
    let store = MemoryStore::with_options(MemoryOptions {
        watch: WatchOptions {
            watcher_buffer_bytes: BUDGET,
            lag_timeout: Duration::from_millis(300),
            ..WatchOptions::default()
        },
        retain_revisions: None,
    });
    let start = store.current_revision().await? + 1;
    let mut watch = store.watch("/big/", start, false).await?;
    let value = bytes::Bytes::from(vec![b'v'; 64 * 1024]);
    let mut peak = 0;
    for i in 0..64 {
        store
            .txn(Txn {
                success: vec![Op::Put {
                    key: format!("/big/{i}"),
                    value: value.clone(),
                }],
                ..Txn::default()
            })
            .await?;
        peak = peak.max(atoll_store::watch_buffered_bytes());
    }
    // On a loaded machine the watcher's task may first run after the writes: wait until it
    // has filled its queue (it then holds it for the lag timeout) before waiting for the drop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while peak == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the watcher never buffered anything"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        peak = peak.max(atoll_store::watch_buffered_bytes());
    }
    anyhow::ensure!(
        peak <= BUDGET,
        "{peak} bytes buffered for one stalled watcher"
    );
    // Dropped after the lag timeout: nothing stays buffered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while atoll_store::watch_buffered_bytes() > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the queue was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut expected = start;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), watch.next()).await? {
            Some(Ok(WatchEvent::Put { kv, .. })) => {
                anyhow::ensure!(kv.mod_revision == expected, "gap before {kv:?}");
                expected += 1;
            }
            Some(Err(StoreError::WatcherLagged)) => break,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    anyhow::ensure!(
        expected < start + 64,
        "every event arrived to a stalled watcher"
    );
    anyhow::ensure!(
        watch.next().await.is_none(),
        "the stream ends after WatcherLagged"
    );
    Ok(())
}
