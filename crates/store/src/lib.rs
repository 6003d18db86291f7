//! Storage for the hub API server: versioned key-value data with watch, behind one interface
//! whose semantics mirror etcd's v3 API, so that an etcd backend fits behind it unchanged.
//!
//! - Every successful write transaction advances the store's **revision** by exactly one; the
//!   API server uses it as `resourceVersion`. Revisions start at 1 for an empty store.
//! - Each key carries `create_revision` (the revision that created it), `mod_revision` (the
//!   last revision that wrote it) and `version` (writes since creation, 1 after creation).
//! - [`Store::txn`] is compare-and-swap: every compare is checked against the current state,
//!   then the success or failure ops run, atomically. Optimistic concurrency (409 Conflict on a
//!   stale resourceVersion) is a compare on `mod_revision`.
//! - [`Store::range`] reads a key range at the current revision or at an older one that has not
//!   been compacted: a consistent snapshot for paginated lists.
//! - [`Store::watch`] streams every change under a prefix from a start revision, with no gaps
//!   and no duplicates, in revision order. History is bounded: starting before the compacted
//!   revision fails with [`StoreError::Compacted`] (the API server's 410 Gone).
//! - An acknowledged write is durable on durable backends.
//!
//! - Within one transaction a key is written (put or deleted) at most once, as in etcd;
//!   otherwise the transaction fails with [`StoreError::InvalidTxn`]. Ops run in order, so a
//!   `Get` after a `Put` of the same key sees the new value.
//! - A transaction whose ops change nothing (only reads, or deletes of absent keys) does not
//!   advance the revision.
//! - After `compact(c)`, ranges at revisions `>= c` still work; watches must start after `c`.
//!
//! Backends:
//! - [`memory::MemoryStore`]: in-memory MVCC, for tests and simulated members.
//! - [`redb::RedbStore`]: the default, one embedded redb file; durable, with group commit
//!   (concurrent txns share one fsync) and periodic compaction.
//! - `etcd::EtcdStore` (feature `etcd`): an etcd v3 cluster, keys under a prefix.
//!
//! One test suite (`testsuite`, feature `testsuite`) runs unchanged against every backend.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod memory;
pub mod redb;
mod watch;

#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use watch::{WatchOptions, buffered_bytes as watch_buffered_bytes};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// A store revision. 0 means "none" or "current", as in etcd.
pub type Revision = i64;

/// A stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, such as `/registry/configmaps/default/settings`.
    pub key: String,
    /// The value, opaque to the store.
    pub value: Bytes,
    /// The revision that created the key.
    pub create_revision: Revision,
    /// The revision that last wrote the key.
    pub mod_revision: Revision,
    /// Number of writes since creation; 1 after creation.
    pub version: i64,
}

/// A condition checked by [`Store::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals the given one; 0 means the key does not exist.
    ModRevision { key: String, revision: Revision },
    /// The key's value equals the given bytes (false when the key does not exist).
    Value { key: String, value: Bytes },
}

/// A write or read inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or overwrite a key.
    Put { key: String, value: Bytes },
    /// Delete a key (no-op when absent).
    Delete { key: String },
    /// Read a key at the transaction's revision.
    Get { key: String },
}

/// The result of one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// The key as written, and what it held before.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// What the deleted key held; `None` when it did not exist.
    Delete { prev: Option<KeyValue> },
    /// The key as read; `None` when it does not exist.
    Get { kv: Option<KeyValue> },
}

/// A compare-and-swap transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Every compare must hold for `success` to run; otherwise `failure` runs.
    pub compares: Vec<Compare>,
    /// Ops run when every compare holds.
    pub success: Vec<Op>,
    /// Ops run otherwise.
    pub failure: Vec<Op>,
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction: advanced by one if it wrote anything.
    pub revision: Revision,
    /// One result per op that ran, in order.
    pub results: Vec<OpResult>,
}

/// A range read: every key in `[start, end)`, in key order. An empty `end` reads the single
/// key `start`, as in etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key (inclusive).
    pub start: String,
    /// End key (exclusive); [`prefix_end`] turns a prefix into a range.
    pub end: String,
    /// At most this many keys; 0 is unlimited.
    pub limit: usize,
    /// Read as of this revision; 0 reads the current one. Older than the compacted revision
    /// fails with [`StoreError::Compacted`]; newer than the current one fails with
    /// [`StoreError::FutureRevision`].
    pub revision: Revision,
    /// Count matching keys only; `kvs` stays empty.
    pub count_only: bool,
    /// Stop at the first key past `limit` instead of counting the rest of the range: `more`
    /// is still exact, but `count` then covers only the keys read. For reading a large range
    /// in pages without visiting the whole remainder for every page (etcd counts from its
    /// in-memory index, so it may ignore this).
    pub stop_at_limit: bool,
}

/// The result of a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` cut the result short.
    pub more: bool,
    /// How many keys the range holds in all (ignoring `limit`).
    pub count: usize,
    /// The revision the range was read at.
    pub revision: Revision,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed: its new state, and its state before when it existed.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A key was deleted at `revision`; `prev` is its last state.
    Delete { prev: KeyValue, revision: Revision },
    /// Nothing under the prefix changed up to this revision (etcd's progress notification;
    /// the API server's bookmark).
    Progress { revision: Revision },
}

impl WatchEvent {
    /// The revision this event happened at.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } | WatchEvent::Progress { revision } => *revision,
        }
    }
}

/// A stream of changes in revision order. It ends with an error when the watcher fell too far
/// behind to be served without gaps, and ends when the store shuts down.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// Errors of every backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The revision asked for has been compacted away.
    #[error("required revision {requested} has been compacted (compacted revision is {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The revision asked for is newer than the store's.
    #[error("required revision {requested} is a future revision (current revision is {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The watcher could not keep up and was dropped; it must re-list and watch again.
    #[error("watcher fell behind and was dropped")]
    WatcherLagged,
    /// The backend failed (I/O, corruption, lost connection).
    #[error("storage backend: {0}")]
    Backend(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// The transaction is malformed (for example, it writes one key twice).
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
}

/// The storage interface of the API server. Implementations are cheap to share (`Arc`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads a key range.
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, StoreError>;
    /// Runs a compare-and-swap transaction atomically; durable once it returns.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;
    /// Streams changes to keys starting with `prefix`, beginning with revision
    /// `start_revision` (inclusive; 0 means after the current revision). With
    /// `progress_notify`, sends [`WatchEvent::Progress`] when idle, so bookmarks can be sent.
    async fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
        progress_notify: bool,
    ) -> Result<WatchStream, StoreError>;
    /// Forgets history before `revision`: older revisions can no longer be read or watched.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
    /// The current revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;
    /// The compacted revision (0 when nothing was compacted).
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;
}

/// Checks that a transaction writes each key at most once in each branch (etcd's rule).
pub(crate) fn validate_txn(txn: &Txn) -> Result<(), StoreError> {
    for ops in [&txn.success, &txn.failure] {
        let mut written = std::collections::HashSet::new();
        for op in ops {
            let key = match op {
                Op::Put { key, .. } | Op::Delete { key } => key,
                Op::Get { .. } => continue,
            };
            if !written.insert(key.as_str()) {
                return Err(StoreError::InvalidTxn(format!(
                    "duplicate key given in txn request: {key}"
                )));
            }
        }
    }
    Ok(())
}

/// The end of the key range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0x7f {
            end.push(last + 1);
            // Keys are ASCII paths, so the result stays valid UTF-8.
            return String::from_utf8_lossy(&end).into_owned();
        }
    }
    // Every byte was at the top of the range: the range is unbounded.
    "\u{7f}".repeat(prefix.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end("/registry/pods/"), "/registry/pods0");
        assert_eq!(prefix_end("a"), "b");
        assert!("/registry/pods/x" < prefix_end("/registry/pods/").as_str());
        assert!("/registry/pods0" >= prefix_end("/registry/pods/").as_str());
    }
}
