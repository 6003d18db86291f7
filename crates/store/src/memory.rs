//! The in-memory backend: full MVCC history in a B-tree, for tests and simulated members.
//!
//! Every key keeps its versions (a tombstone marks a delete) until compaction, so ranges at
//! old revisions and watches from old revisions work exactly as on the durable backends.
//! Nothing survives the process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::watch::{Batch, History, Hub, event_key};
use crate::{
    Compare, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Revision, Store, StoreError, Txn,
    TxnResponse, WatchEvent, WatchOptions, WatchStream, validate_txn,
};

/// Options of [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Watch fan-out tuning.
    pub watch: WatchOptions,
    /// Compact automatically so that about this many revisions of history are kept (it
    /// compacts when twice as many pile up); `None` keeps history until [`Store::compact`].
    pub retain_revisions: Option<u64>,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            watch: WatchOptions::default(),
            retain_revisions: Some(100_000),
        }
    }
}

/// The in-memory [`Store`]. Clones share one store.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    hub: Arc<Hub>,
    retain_revisions: Option<u64>,
}

struct State {
    revision: Revision,
    compacted: Revision,
    /// Each key's versions in revision order; `None` is a delete.
    keys: BTreeMap<String, Vec<(Revision, Option<KeyValue>)>>,
    /// Each revision's events, for watches that start in the past.
    log: BTreeMap<Revision, Vec<WatchEvent>>,
}

impl State {
    fn latest(&self, key: &str) -> Option<&KeyValue> {
        self.keys
            .get(key)
            .and_then(|versions| versions.last())
            .and_then(|(_, kv)| kv.as_ref())
    }

    fn compare(&self, compare: &Compare) -> bool {
        match compare {
            Compare::ModRevision { key, revision } => {
                self.latest(key).map_or(0, |kv| kv.mod_revision) == *revision
            }
            Compare::Value { key, value } => self.latest(key).is_some_and(|kv| kv.value == *value),
        }
    }

    fn compact(&mut self, revision: Revision) {
        if revision <= self.compacted {
            return;
        }
        self.keys.retain(|_, versions| {
            // Keep every version after `revision` and the one that was current at it.
            let current_at = versions.partition_point(|(at, _)| *at <= revision);
            let keep_from = current_at.saturating_sub(1);
            versions.drain(..keep_from);
            if let Some((at, None)) = versions.first()
                && *at <= revision
            {
                versions.remove(0);
            }
            !versions.is_empty()
        });
        self.log = self.log.split_off(&(revision + 1));
        self.compacted = revision;
    }
}

struct MemoryHistory(Arc<Mutex<State>>);

impl History for MemoryHistory {
    fn read(
        &self,
        prefix: &str,
        from: Revision,
        to: Revision,
        max_revisions: usize,
    ) -> Result<(Vec<WatchEvent>, Revision), StoreError> {
        let state = lock(&self.0);
        if from <= state.compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted: state.compacted,
            });
        }
        let mut events = Vec::new();
        let mut covered = to;
        for (count, (revision, batch)) in state.log.range(from..=to).enumerate() {
            if count == max_revisions {
                covered = revision - 1;
                break;
            }
            events.extend(
                batch
                    .iter()
                    .filter(|event| event_key(event).starts_with(prefix))
                    .cloned(),
            );
        }
        Ok((events, covered))
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store at revision 1, with default options.
    pub fn new() -> MemoryStore {
        MemoryStore::with_options(MemoryOptions::default())
    }

    /// An empty store at revision 1.
    pub fn with_options(options: MemoryOptions) -> MemoryStore {
        MemoryStore {
            state: Arc::new(Mutex::new(State {
                revision: 1,
                compacted: 0,
                keys: BTreeMap::new(),
                log: BTreeMap::new(),
            })),
            hub: Arc::new(Hub::new(1, 0, options.watch)),
            retain_revisions: options.retain_revisions,
        }
    }

    fn check_revision(state: &State, revision: Revision) -> Result<Revision, StoreError> {
        if revision <= 0 {
            return Ok(state.revision);
        }
        if revision > state.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: state.revision,
            });
        }
        if revision < state.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: state.compacted,
            });
        }
        Ok(revision)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, StoreError> {
        let state = lock(&self.state);
        let at = Self::check_revision(&state, request.revision)?;
        let mut response = RangeResponse {
            revision: at,
            ..RangeResponse::default()
        };
        let upper = if request.end.is_empty() {
            std::ops::Bound::Included(request.start.clone())
        } else if request.end <= request.start {
            return Ok(response);
        } else {
            std::ops::Bound::Excluded(request.end.clone())
        };
        let range = state
            .keys
            .range((std::ops::Bound::Included(request.start.clone()), upper));
        for (_, versions) in range {
            let current_at = versions.partition_point(|(revision, _)| *revision <= at);
            let Some((_, Some(kv))) = current_at.checked_sub(1).map(|index| &versions[index])
            else {
                continue;
            };
            response.count += 1;
            if request.count_only {
                continue;
            }
            if request.limit > 0 && response.kvs.len() == request.limit {
                response.more = true;
                if request.stop_at_limit {
                    break;
                }
            } else {
                response.kvs.push(kv.clone());
            }
        }
        Ok(response)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        validate_txn(&txn)?;
        let mut state = lock(&self.state);
        let succeeded = txn.compares.iter().all(|compare| state.compare(compare));
        let ops = if succeeded { txn.success } else { txn.failure };
        let revision = state.revision + 1;
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    let prev = state.latest(&key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: prev.as_ref().map_or(revision, |kv| kv.create_revision),
                        mod_revision: revision,
                        version: prev.as_ref().map_or(1, |kv| kv.version + 1),
                    };
                    state
                        .keys
                        .entry(key)
                        .or_default()
                        .push((revision, Some(kv.clone())));
                    events.push(WatchEvent::Put {
                        kv: kv.clone(),
                        prev: prev.clone(),
                    });
                    results.push(OpResult::Put { kv, prev });
                }
                Op::Delete { key } => {
                    let prev = state.latest(&key).cloned();
                    if let Some(prev) = &prev {
                        state.keys.entry(key).or_default().push((revision, None));
                        events.push(WatchEvent::Delete {
                            prev: prev.clone(),
                            revision,
                        });
                    }
                    results.push(OpResult::Delete { prev });
                }
                Op::Get { key } => results.push(OpResult::Get {
                    kv: state.latest(&key).cloned(),
                }),
            }
        }
        if !events.is_empty() {
            state.revision = revision;
            state.log.insert(revision, events.clone());
            // Published under the state lock, so watchers see revisions in order and history
            // always holds whatever the ring announced.
            self.hub.publish([Batch { revision, events }]);
            if let Some(retain) = self.retain_revisions {
                // In steps of `retain`, not on every write: compaction visits every key.
                let retain = i64::try_from(retain).unwrap_or(i64::MAX);
                if revision - state.compacted >= retain.saturating_mul(2) {
                    let target = revision - retain;
                    state.compact(target);
                    self.hub.set_compacted(target);
                }
            }
        }
        Ok(TxnResponse {
            succeeded,
            revision: state.revision,
            results,
        })
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
        progress_notify: bool,
    ) -> Result<WatchStream, StoreError> {
        let history = Arc::new(MemoryHistory(self.state.clone()));
        self.hub
            .watch(history, prefix, start_revision, progress_notify)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        if revision > state.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: state.revision,
            });
        }
        // Compacting to an already compacted revision is a no-op, so callers may repeat it.
        state.compact(revision);
        self.hub.set_compacted(state.compacted);
        Ok(())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(lock(&self.state).revision)
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(lock(&self.state).compacted)
    }
}
