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
