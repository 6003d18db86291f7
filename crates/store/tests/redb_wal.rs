//! The shared storage suite on the redb backend with its opt-in write-ahead log, checkpointing
//! every few KiB so that checkpoints happen inside the tests. (The SIGKILL test in `redb.rs`
//! kills this mode too.)

use std::sync::Arc;
use std::time::Duration;

use atoll_store::WatchOptions;
use atoll_store::redb::{CompactionPolicy, RedbOptions, RedbStore};
use atoll_store::testsuite::Fixture;

async fn fresh() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let options = RedbOptions {
        watch: WatchOptions {
            progress_interval: Duration::from_millis(200),
            ring_capacity: 16,
            watcher_buffer: 8,
            history_chunk: 64,
            ..WatchOptions::default()
        },
        compaction: CompactionPolicy {
            interval: None,
            retain_revisions: None,
        },
        write_ahead_log: true,
        checkpoint_bytes: 16 * 1024,
        ..RedbOptions::default()
    };
    let store = RedbStore::open(dir.path().join("store.redb"), options)?;
    Ok(Fixture::new(Arc::new(store), dir))
}

atoll_store::store_testsuite!(fresh());
