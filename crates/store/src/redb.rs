//! The default backend: an embedded [redb](https://docs.rs/redb) file with MVCC history and
//! group commit.
//!
//! Layout (one redb file):
//! - `history`: `(key, revision) -> version`, every version of every key since the compacted
//!   revision plus the one current at it; a delete writes a tombstone. Ranges at any revision
//!   read it, taking per key the newest version at or before the revision.
//! - `log`: `revision -> [(put|delete, key)]`, which keys each revision wrote; watches replay it
//!   (values and previous values come from `history`).
//! - `meta`: the current and the compacted revision, written in the same redb transaction as
//!   the data, so a reopened store resumes exactly where the last acknowledged write left it.
//!
//! **Group commit.** One writer thread owns every redb write transaction. It takes all the
//! store transactions queued while the previous commit was syncing, runs them one after the
//! other inside a single redb write transaction (each sees the writes of the ones before it,
//! so compares behave exactly as in serial execution and each gets its own revision), and
//! commits once: one fsync for the whole group. Only then are callers answered and the events
//! published to watchers. If the commit fails, every transaction of the group fails and none
//! is visible.
//!
//! **Write-ahead log** (`write_ahead_log`, off by default; see `wal.rs`): each group is
//! appended to `<file>.wal` and synced before its redb commit, which then skips its own sync;
//! redb is made durable every `checkpoint_bytes` of log and on shutdown, and the log is
//! replayed on open. An append syncs one sequential write instead of redb's scattered pages.
//!
//! **Compaction.** Every `compaction.interval` the writer compacts to the revision that was
//! current one interval earlier (kube-apiserver's policy), so at least one interval of history
//! stays watchable; `retain_revisions` additionally caps history by count.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod wal;

use ::redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::watch::{Batch, History, Hub};
use crate::{
    Compare, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Revision, Store, StoreError, Txn,
    TxnResponse, WatchEvent, WatchOptions, WatchStream, validate_txn,
};

const HISTORY: TableDefinition<'_, (&str, i64), &[u8]> = TableDefinition::new("history");
const LOG: TableDefinition<'_, i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

const LIVE: u8 = 1;
const TOMBSTONE: u8 = 0;
const LOG_PUT: u8 = 1;
const LOG_DELETE: u8 = 2;

/// When history is compacted.
#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// Compact every interval to the revision current one interval earlier; `None` disables
    /// periodic compaction.
    pub interval: Option<Duration>,
    /// Also keep at most about this many revisions (compacting when twice as many pile up).
    pub retain_revisions: Option<u64>,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        // kube-apiserver compacts etcd every 5 minutes.
        CompactionPolicy {
            interval: Some(Duration::from_secs(300)),
            retain_revisions: None,
        }
    }
}

/// The default size of redb's page cache: the B-tree's inner pages and the recently written
/// and read leaves of a hub's working set (BENCHMARKS.md, "Hub API server").
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Options of [`RedbStore`].
#[derive(Debug, Clone)]
pub struct RedbOptions {
    pub watch: WatchOptions,
    pub compaction: CompactionPolicy,
    /// At most this many store transactions share one redb commit.
    pub max_group: usize,
    /// Sync each group to a write-ahead log and commit redb without syncing (see above).
    /// Off by default: on our shared disks its gain was within the noise (BENCHMARKS.md), and
    /// redb's own synced commit is the simpler path to durability.
    pub write_ahead_log: bool,
    /// Make redb durable and empty the log once it holds this many bytes.
    pub checkpoint_bytes: u64,
    /// redb's page cache (read cache plus write buffer), in bytes. redb's own default is
    /// 1 GiB, which ends up holding nearly the whole file in the process's memory; pages
    /// outside a smaller cache are read through the kernel's page cache instead, which the
    /// process does not pay for.
    pub cache_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            watch: WatchOptions::default(),
            compaction: CompactionPolicy::default(),
            max_group: 512,
            write_ahead_log: false,
            checkpoint_bytes: 64 * 1024 * 1024,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// The redb [`Store`]. Clones share one store; dropping the last clone stops its writer and
/// closes the file (watch streams then end).
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

/// Counters of the writer, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedbStats {
    /// Store transactions committed (or failed together with their group).
    pub txns: u64,
    /// redb commits (fsyncs) that carried them.
    pub groups: u64,
}

#[derive(Default)]
struct Counters {
    txns: AtomicU64,
    groups: AtomicU64,
}

struct Inner {
    db: Arc<Database>,
    hub: Arc<Hub>,
    counters: Arc<Counters>,
    requests: Option<std_mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer after its current group; wait for it, so the file
        // is closed (and may be reopened) once the store is gone.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResponse, StoreError>>),
    Compact(Revision, oneshot::Sender<Result<(), StoreError>>),
}

fn backend(error: impl Into<::redb::Error>) -> StoreError {
    StoreError::Backend(error.into().to_string())
}

impl RedbStore {
    /// Opens the store in the redb file at `path`, creating it when absent.
    pub fn open(path: impl AsRef<Path>, options: RedbOptions) -> Result<RedbStore, StoreError> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(path.as_ref())
            .map_err(backend)?;
        let mut wal_path = path.as_ref().as_os_str().to_owned();
        wal_path.push(".wal");
        let wal_path = std::path::PathBuf::from(wal_path);
        // Whatever the log holds beyond redb's durable state was acknowledged: replay it.
        let replayed = wal::replay(&wal_path)?;
        let write = db.begin_write().map_err(backend)?;
        let (revision, compacted) = {
            let mut meta = write.open_table(META).map_err(backend)?;
            let mut history = write.open_table(HISTORY).map_err(backend)?;
            let mut log = write.open_table(LOG).map_err(backend)?;
            let mut revision = read_meta(&meta, META_REVISION)?.unwrap_or(1);
            let compacted = read_meta(&meta, META_COMPACTED)?.unwrap_or(0);
            for record in replayed {
                if record.revision <= revision {
                    continue;
                }
                if record.revision != revision + 1 {
                    return Err(StoreError::Backend(format!(
                        "write-ahead log: revision {} follows {revision}",
                        record.revision
                    )));
                }
                let mut entries = Vec::with_capacity(record.writes.len());
                for (key, state) in &record.writes {
                    history
                        .insert(
                            (key.as_str(), record.revision),
                            encode_version(state.as_ref()).as_slice(),
                        )
                        .map_err(backend)?;
                    let kind = if state.is_some() { LOG_PUT } else { LOG_DELETE };
                    entries.push((kind, key.as_str()));
                }
                log.insert(record.revision, encode_log(&entries).as_slice())
                    .map_err(backend)?;
                revision = record.revision;
            }
            meta.insert(META_REVISION, revision).map_err(backend)?;
            meta.insert(META_COMPACTED, compacted).map_err(backend)?;
            (revision, compacted)
        };
        write.commit().map_err(backend)?;
        // redb now holds everything durably: start the log afresh.
        let wal = if options.write_ahead_log {
            let mut wal = wal::Wal::open(&wal_path)?;
            wal.truncate()?;
            Some(wal)
        } else {
            match std::fs::remove_file(&wal_path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Backend(format!(
                        "removing the write-ahead log: {error}"
                    )));
                }
                _ => None,
            }
        };

        let db = Arc::new(db);
        let hub = Arc::new(Hub::new(revision, compacted, options.watch.clone()));
        let (requests, queue) = std_mpsc::channel();
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            db: db.clone(),
            hub: hub.clone(),
            counters: counters.clone(),
            wal,
            failed: None,
            queue,
            options,
            previous_tick_revision: None,
        };
        let writer = std::thread::Builder::new()
            .name("atoll-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|error| StoreError::Backend(format!("starting the writer: {error}")))?;
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                hub,
                counters,
                requests: Some(requests),
                writer: Some(writer),
            }),
        })
    }

    /// How many txns the writer committed, in how many groups (fsyncs).
    pub fn stats(&self) -> RedbStats {
        RedbStats {
            txns: self.inner.counters.txns.load(Ordering::Relaxed),
            groups: self.inner.counters.groups.load(Ordering::Relaxed),
        }
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(make(reply))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let transaction = db.begin_read().map_err(backend)?;
            read(&transaction)
        })
        .await
        .map_err(|error| StoreError::Backend(error.to_string()))?
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.read(move |transaction| range(transaction, &request))
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        validate_txn(&txn)?;
        self.request(|reply| Request::Txn(txn, reply)).await
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
        progress_notify: bool,
    ) -> Result<WatchStream, StoreError> {
        let history = Arc::new(RedbHistory(Arc::downgrade(&self.inner.db)));
        self.inner
            .hub
            .watch(history, prefix, start_revision, progress_notify)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.request(|reply| Request::Compact(revision, reply))
            .await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.read(|transaction| Ok(meta_of(transaction)?.0)).await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.read(|transaction| Ok(meta_of(transaction)?.1)).await
    }
}

// ---- encoding ----

fn encode_version(kv: Option<&KeyValue>) -> Vec<u8> {
    match kv {
        None => vec![TOMBSTONE],
        Some(kv) => {
            let mut out = Vec::with_capacity(17 + kv.value.len());
            out.push(LIVE);
            out.extend_from_slice(&kv.create_revision.to_le_bytes());
            out.extend_from_slice(&kv.version.to_le_bytes());
            out.extend_from_slice(&kv.value);
            out
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt {what} record"))
}

fn decode_version(
    key: &str,
    revision: Revision,
    bytes: &[u8],
) -> Result<Option<KeyValue>, StoreError> {
    match bytes.split_first() {
        Some((&TOMBSTONE, _)) => Ok(None),
        Some((&LIVE, rest)) if rest.len() >= 16 => {
            let (create, rest) = rest.split_at(8);
            let (version, value) = rest.split_at(8);
            let int = |bytes: &[u8]| {
                <[u8; 8]>::try_from(bytes)
                    .map(i64::from_le_bytes)
                    .map_err(|_| corrupt("history"))
            };
            Ok(Some(KeyValue {
                key: key.to_owned(),
                value: Bytes::copy_from_slice(value),
                create_revision: int(create)?,
                mod_revision: revision,
                version: int(version)?,
            }))
        }
        _ => Err(corrupt("history")),
    }
}

fn encode_log(entries: &[(u8, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, key) in entries {
        out.push(*kind);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
    }
    out
}

fn decode_log(mut bytes: &[u8]) -> Result<Vec<(u8, String)>, StoreError> {
    let mut entries = Vec::new();
    while let Some((&kind, rest)) = bytes.split_first() {
        if rest.len() < 4 {
            return Err(corrupt("log"));
        }
        let (len, rest) = rest.split_at(4);
        let len = <[u8; 4]>::try_from(len).map_err(|_| corrupt("log"))?;
        let len = u32::from_le_bytes(len) as usize;
        if rest.len() < len {
            return Err(corrupt("log"));
        }
        let (key, rest) = rest.split_at(len);
        let key = std::str::from_utf8(key).map_err(|_| corrupt("log"))?;
        entries.push((kind, key.to_owned()));
        bytes = rest;
    }
    Ok(entries)
}

// ---- reads ----

fn read_meta(
    meta: &impl ReadableTable<&'static str, i64>,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(meta.get(name).map_err(backend)?.map(|value| value.value()))
}

/// The current and the compacted revision.
fn meta_of(transaction: &ReadTransaction) -> Result<(Revision, Revision), StoreError> {
    let meta = transaction.open_table(META).map_err(backend)?;
    Ok((
        read_meta(&meta, META_REVISION)?.unwrap_or(1),
        read_meta(&meta, META_COMPACTED)?.unwrap_or(0),
    ))
}

/// The newest version of `key` written strictly before `before`, if it is live.
fn version_before(
    history: &impl ReadableTable<(&'static str, i64), &'static [u8]>,
    key: &str,
    before: Revision,
) -> Result<Option<KeyValue>, StoreError> {
    let mut versions = history
        .range((key, i64::MIN)..(key, before))
        .map_err(backend)?;
    match versions.next_back() {
        None => Ok(None),
        Some(entry) => {
            let (stored, bytes) = entry.map_err(backend)?;
            decode_version(key, stored.value().1, bytes.value())
        }
    }
}

fn range(
    transaction: &ReadTransaction,
    request: &RangeRequest,
) -> Result<RangeResponse, StoreError> {
    let (current, compacted) = meta_of(transaction)?;
    let at = if request.revision <= 0 {
        current
    } else if request.revision > current {
        return Err(StoreError::FutureRevision {
            requested: request.revision,
            current,
        });
    } else if request.revision < compacted {
        return Err(StoreError::Compacted {
            requested: request.revision,
            compacted,
        });
    } else {
        request.revision
    };
    let mut response = RangeResponse {
        revision: at,
        ..RangeResponse::default()
    };
    let history = transaction.open_table(HISTORY).map_err(backend)?;
    let start = request.start.as_str();
    let versions = if request.end.is_empty() {
        history.range((start, i64::MIN)..=(start, i64::MAX))
    } else if request.end.as_str() <= start {
        return Ok(response);
    } else {
        history.range((start, i64::MIN)..(request.end.as_str(), i64::MIN))
    }
    .map_err(backend)?;

    // Versions come grouped by key, oldest first: keep the newest at or before `at`. Values
    // are decoded only while the page still has room; past it, liveness is all that counts.
    let mut held: Option<(String, Held)> = None;
    let flush = |held: Option<(String, Held)>, response: &mut RangeResponse| match held {
        None | Some((_, Held::Absent)) => {}
        Some((_, Held::Live(kv))) => {
            response.count += 1;
            response.kvs.push(kv);
        }
        Some((_, Held::Counted)) => {
            response.count += 1;
            response.more |= !request.count_only;
        }
    };
    for entry in versions {
        let (stored, bytes) = entry.map_err(backend)?;
        let (key, revision) = stored.value();
        let key = match held.take() {
            Some((held_key, state)) if held_key == key => {
                if revision > at {
                    held = Some((held_key, state));
                    continue;
                }
                held_key
            }
            other => {
                flush(other, &mut response);
                if request.stop_at_limit && response.more {
                    return Ok(response);
                }
                key.to_owned()
            }
        };
        let bytes = bytes.value();
        let state = if revision > at || bytes.first() == Some(&TOMBSTONE) {
            // Not created yet at `at`, or deleted.
            Held::Absent
        } else if request.count_only || (request.limit > 0 && response.kvs.len() >= request.limit) {
            Held::Counted
        } else {
            match decode_version(&key, revision, bytes)? {
                Some(kv) => Held::Live(kv),
                None => Held::Absent,
            }
        };
        held = Some((key, state));
    }
    flush(held, &mut response);
    Ok(response)
}

/// What a range holds for the key it is looking at.
enum Held {
    Absent,
    /// Live at the revision, beyond the page: counted only.
    Counted,
    Live(KeyValue),
}

struct RedbHistory(Weak<Database>);

impl History for RedbHistory {
    fn read(
        &self,
        prefix: &str,
        from: Revision,
        to: Revision,
        max_revisions: usize,
    ) -> Result<(Vec<WatchEvent>, Revision), StoreError> {
        let db = self.0.upgrade().ok_or(StoreError::Closed)?;
        let transaction = db.begin_read().map_err(backend)?;
        let (_, compacted) = meta_of(&transaction)?;
        if from <= compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let log = transaction.open_table(LOG).map_err(backend)?;
        let history = transaction.open_table(HISTORY).map_err(backend)?;
        let mut events = Vec::new();
        let mut covered = to;
        for (count, entry) in log.range(from..=to).map_err(backend)?.enumerate() {
            let (revision, entries) = entry.map_err(backend)?;
            let revision = revision.value();
            if count == max_revisions {
                covered = revision - 1;
                break;
            }
            for (kind, key) in decode_log(entries.value())? {
                if !key.starts_with(prefix) {
                    continue;
                }
                let prev = version_before(&history, &key, revision)?;
                let event = if kind == LOG_DELETE {
                    let prev = prev.ok_or_else(|| corrupt("log"))?;
                    WatchEvent::Delete { prev, revision }
                } else {
                    let stored = history
                        .get((key.as_str(), revision))
                        .map_err(backend)?
                        .ok_or_else(|| corrupt("log"))?;
                    let kv = decode_version(&key, revision, stored.value())?
                        .ok_or_else(|| corrupt("log"))?;
                    WatchEvent::Put { kv, prev }
                };
                events.push(event);
            }
        }
        Ok((events, covered))
    }
}

// ---- the writer ----

struct Writer {
    db: Arc<Database>,
    hub: Arc<Hub>,
    counters: Arc<Counters>,
    wal: Option<wal::Wal>,
    /// Set when the log and redb may disagree (a failure between appending and committing):
    /// every later txn fails until the store is reopened, which replays the log.
    failed: Option<String>,
    queue: std_mpsc::Receiver<Request>,
    options: RedbOptions,
    /// The revision at the previous compaction tick: the next tick compacts to it.
    previous_tick_revision: Option<Revision>,
}

impl Writer {
    fn run(mut self) {
        let interval = self.options.compaction.interval;
        let mut next_tick = interval.map(|interval| Instant::now() + interval);
        loop {
            let wait = next_tick.map_or(Duration::from_secs(3600), |tick| {
                tick.saturating_duration_since(Instant::now())
            });
            let first = match self.queue.recv_timeout(wait) {
                Ok(request) => Some(request),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    // A clean shutdown leaves redb durable and the log empty.
                    self.checkpoint();
                    return;
                }
            };
            if let Some(first) = first {
                // Everything queued while the previous commit synced shares this one.
                let mut group = vec![first];
                while group.len() < self.options.max_group.max(1) {
                    match self.queue.try_recv() {
                        Ok(request) => group.push(request),
                        Err(_) => break,
                    }
                }
                self.serve(group);
            }
            if let (Some(tick), Some(interval)) = (next_tick, interval)
                && Instant::now() >= tick
            {
                self.periodic_compaction();
                next_tick = Some(Instant::now() + interval);
            }
        }
    }

    fn serve(&mut self, group: Vec<Request>) {
        let mut txns = Vec::new();
        for request in group {
            match request {
                Request::Txn(txn, reply) => txns.push((txn, reply)),
                Request::Compact(revision, reply) => {
                    let _ = reply.send(self.compact(revision));
                }
            }
        }
        if txns.is_empty() {
            return;
        }
        if let Some(failed) = &self.failed {
            for (_, reply) in txns {
                let _ = reply.send(Err(StoreError::Backend(failed.clone())));
            }
            return;
        }
        let (txns, replies): (Vec<_>, Vec<_>) = txns.into_iter().unzip();
        self.counters
            .txns
            .fetch_add(txns.len() as u64, Ordering::Relaxed);
        self.counters.groups.fetch_add(1, Ordering::Relaxed);
        match self.commit_group(txns) {
            Ok((responses, batches)) => {
                // Publish before answering: a caller that saw its write acknowledged and then
                // watches from "now" must not get that write again.
                self.hub.publish(batches);
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok(response));
                }
                if self
                    .wal
                    .as_ref()
                    .is_some_and(|wal| wal.bytes() >= self.options.checkpoint_bytes)
                {
                    self.checkpoint();
                }
                self.compact_by_count();
            }
            Err(error) => {
                tracing::error!(%error, "store commit failed; the whole group is rejected");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(error.to_string())));
                }
            }
        }
    }

    /// Runs every txn in order in one redb transaction and commits it once.
    fn commit_group(
        &mut self,
        txns: Vec<Txn>,
    ) -> Result<(Vec<TxnResponse>, Vec<Batch>), StoreError> {
        let mut write = self.db.begin_write().map_err(backend)?;
        if self.wal.is_some() {
            // The log's sync makes this group durable; redb's comes at the next checkpoint.
            write.set_durability(Durability::None).map_err(backend)?;
        }
        let mut responses = Vec::with_capacity(txns.len());
        let mut batches = Vec::new();
        {
            let mut meta = write.open_table(META).map_err(backend)?;
            let mut history = write.open_table(HISTORY).map_err(backend)?;
            let mut log = write.open_table(LOG).map_err(backend)?;
            let mut revision = read_meta(&meta, META_REVISION)?.unwrap_or(1);
            for txn in txns {
                let (response, batch) = apply(&mut history, &mut log, revision, txn)?;
                revision = response.revision;
                responses.push(response);
                batches.extend(batch);
            }
            meta.insert(META_REVISION, revision).map_err(backend)?;
        }
        if batches.is_empty() {
            // Nothing written (only reads or failed compares): nothing to log or commit.
            return Ok((responses, batches));
        }
        if let Some(wal) = &mut self.wal
            && let Err(error) = wal.append(&batches)
        {
            // The log may hold part of a record; never append after it.
            self.failed = Some(error.to_string());
            return Err(error);
        }
        if let Err(error) = write.commit() {
            let error = backend(error);
            if self.wal.is_some() {
                // The group is in the log, so it will reappear on reopening: its callers get an
                // error whose outcome is unknown, as with etcd's timeouts.
                self.failed = Some(error.to_string());
            }
            return Err(error);
        }
        Ok((responses, batches))
    }

    /// Makes redb durable with one synced commit, then empties the log.
    fn checkpoint(&mut self) {
        let Some(wal) = &mut self.wal else { return };
        if wal.bytes() == 0 || self.failed.is_some() {
            return;
        }
        let outcome = self
            .db
            .begin_write()
            .map_err(backend)
            .and_then(|write| write.commit().map_err(backend))
            .and_then(|()| wal.truncate());
        if let Err(error) = outcome {
            tracing::warn!(%error, "store checkpoint failed; the write-ahead log keeps growing");
        }
    }

    fn compact(&mut self, target: Revision) -> Result<(), StoreError> {
        let write = self.db.begin_write().map_err(backend)?;
        let compacted = compact_in(&write, target)?;
        write.commit().map_err(backend)?;
        self.hub.set_compacted(compacted);
        Ok(())
    }

    fn current(&self) -> Result<(Revision, Revision), StoreError> {
        meta_of(&self.db.begin_read().map_err(backend)?)
    }

    fn periodic_compaction(&mut self) {
        let outcome = self.current().and_then(|(current, compacted)| {
            if let Some(target) = self.previous_tick_revision
                && target > compacted
            {
                self.compact(target)?;
                tracing::debug!(revision = target, "store compacted");
            }
            self.previous_tick_revision = Some(current);
            Ok(())
        });
        if let Err(error) = outcome {
            tracing::warn!(%error, "periodic store compaction failed");
        }
    }

    fn compact_by_count(&mut self) {
        let Some(retain) = self.options.compaction.retain_revisions else {
            return;
        };
        let retain = i64::try_from(retain).unwrap_or(i64::MAX);
        let outcome = self.current().and_then(|(current, compacted)| {
            // Compact in steps of `retain`, not on every commit: each compaction scans history.
            if current - compacted >= retain.saturating_mul(2) {
                self.compact(current - retain)?;
            }
            Ok(())
        });
        if let Err(error) = outcome {
            tracing::warn!(%error, "store compaction failed");
        }
    }
}

type HistoryTable<'txn> = Table<'txn, (&'static str, i64), &'static [u8]>;
type LogTable<'txn> = Table<'txn, i64, &'static [u8]>;

fn latest(history: &HistoryTable<'_>, key: &str) -> Result<Option<KeyValue>, StoreError> {
    version_before(history, key, i64::MAX)
}

fn holds(history: &HistoryTable<'_>, compare: &Compare) -> Result<bool, StoreError> {
    Ok(match compare {
        Compare::ModRevision { key, revision } => {
            latest(history, key)?.map_or(0, |kv| kv.mod_revision) == *revision
        }
        Compare::Value { key, value } => latest(history, key)?.is_some_and(|kv| kv.value == *value),
    })
}

/// Applies one txn on top of `revision`; returns its response and, if it wrote, its events.
fn apply(
    history: &mut HistoryTable<'_>,
    log: &mut LogTable<'_>,
    revision: Revision,
    txn: Txn,
) -> Result<(TxnResponse, Option<Batch>), StoreError> {
    let mut succeeded = true;
    for compare in &txn.compares {
        if !holds(history, compare)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { txn.success } else { txn.failure };
    let next = revision + 1;
    let mut events = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put { key, value } => {
                let prev = latest(history, &key)?;
                let kv = KeyValue {
                    key,
                    value,
                    create_revision: prev.as_ref().map_or(next, |kv| kv.create_revision),
                    mod_revision: next,
                    version: prev.as_ref().map_or(1, |kv| kv.version + 1),
                };
                history
                    .insert(
                        (kv.key.as_str(), next),
                        encode_version(Some(&kv)).as_slice(),
                    )
                    .map_err(backend)?;
                events.push(WatchEvent::Put {
                    kv: kv.clone(),
                    prev: prev.clone(),
                });
                results.push(OpResult::Put { kv, prev });
            }
            Op::Delete { key } => {
                let prev = latest(history, &key)?;
                if let Some(prev) = &prev {
                    history
                        .insert((key.as_str(), next), encode_version(None).as_slice())
                        .map_err(backend)?;
                    events.push(WatchEvent::Delete {
                        prev: prev.clone(),
                        revision: next,
                    });
                }
                results.push(OpResult::Delete { prev });
            }
            Op::Get { key } => results.push(OpResult::Get {
                kv: latest(history, &key)?,
            }),
        }
    }
    if events.is_empty() {
        let response = TxnResponse {
            succeeded,
            revision,
            results,
        };
        return Ok((response, None));
    }
    let entries: Vec<(u8, &str)> = events
        .iter()
        .map(|event| match event {
            WatchEvent::Delete { prev, .. } => (LOG_DELETE, prev.key.as_str()),
            WatchEvent::Put { kv, .. } => (LOG_PUT, kv.key.as_str()),
            WatchEvent::Progress { .. } => (LOG_PUT, ""),
        })
        .collect();
    log.insert(next, encode_log(&entries).as_slice())
        .map_err(backend)?;
    let response = TxnResponse {
        succeeded,
        revision: next,
        results,
    };
    Ok((
        response,
        Some(Batch {
            revision: next,
            events,
        }),
    ))
}

/// Forgets history before `target` inside `write`; returns the compacted revision.
fn compact_in(write: &WriteTransaction, target: Revision) -> Result<Revision, StoreError> {
    let mut meta = write.open_table(META).map_err(backend)?;
    let current = read_meta(&meta, META_REVISION)?.unwrap_or(1);
    let compacted = read_meta(&meta, META_COMPACTED)?.unwrap_or(0);
    if target > current {
        return Err(StoreError::FutureRevision {
            requested: target,
            current,
        });
    }
    // Repeating a compaction is a no-op.
    if target <= compacted {
        return Ok(compacted);
    }
    let mut history = write.open_table(HISTORY).map_err(backend)?;
    // Per key: drop every version at or before `target` except the newest, and that one too
    // when it is a tombstone.
    let mut doomed: Vec<(String, Revision)> = Vec::new();
    let mut previous: Option<(String, Revision, bool)> = None;
    for entry in history.iter().map_err(backend)? {
        let (stored, bytes) = entry.map_err(backend)?;
        let (key, revision) = stored.value();
        if revision > target {
            continue;
        }
        let tombstone = bytes.value().first() == Some(&TOMBSTONE);
        if let Some((held, held_revision, held_tombstone)) = previous.take()
            && (held == key || held_tombstone)
        {
            doomed.push((held, held_revision));
        }
        previous = Some((key.to_owned(), revision, tombstone));
    }
    if let Some((held, held_revision, true)) = previous {
        doomed.push((held, held_revision));
    }
    for (key, revision) in &doomed {
        history.remove((key.as_str(), *revision)).map_err(backend)?;
    }
    let mut log = write.open_table(LOG).map_err(backend)?;
    log.retain_in(i64::MIN..=target, |_, _| false)
        .map_err(backend)?;
    meta.insert(META_COMPACTED, target).map_err(backend)?;
    Ok(target)
}
