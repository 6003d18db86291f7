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
