//! The etcd backend (feature `etcd`): the same [`Store`] over an etcd v3 cluster, for a hub that
//! outgrows one machine.
//!
//! Every key is stored under a fixed prefix, so several stores (or tests) share one etcd.
//! Revisions are etcd's, and therefore shared by everything in that etcd.
//!
//! etcd does not report its compacted revision, so [`EtcdStore::compact`] records it under
//! `<prefix>\u{0}compacted` before compacting (as kube-apiserver keeps `compact_rev_key`);
//! that bookkeeping write is itself a revision. A watch at or before the recorded compacted
//! revision fails with [`StoreError::Compacted`], as on the embedded backends (etcd itself
//! still serves a watch starting exactly at it).

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare as EtcdCompare, CompareOp, DeleteOptions, EventType,
    GetOptions, PutOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse, WatchOptions as EtcdWatchOptions,
};
use futures::StreamExt;

use crate::{
    Compare, KeyValue, Op, OpResult, RangeRequest, RangeResponse, Revision, Store, StoreError, Txn,
    TxnResponse, WatchEvent, WatchStream, validate_txn,
};

/// etcd's own limit on what it sends (its gRPC default, `math.MaxInt32`).
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// The etcd [`Store`]. Clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
}

fn backend(error: etcd_client::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (such as `http://127.0.0.1:2379`); every key lives
    /// under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore, StoreError> {
        let client = Client::connect(endpoints, None).await.map_err(backend)?;
        Ok(EtcdStore {
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// A KV client that accepts responses as large as etcd sends (a list of 10k 1 KiB objects
    /// is 10 MiB; tonic's default limit is 4 MiB).
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn compacted_key(&self) -> String {
        format!("{}\u{0}compacted", self.prefix)
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let key = kv.key_str().map_err(backend)?;
        let key = key.strip_prefix(&self.prefix).unwrap_or(key);
        Ok(KeyValue {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        })
    }

    async fn recorded_compaction(&self) -> Result<Revision, StoreError> {
        let response = self
            .kv()
            .get(self.compacted_key(), None)
            .await
            .map_err(backend)?;
        let Some(kv) = response.kvs().first() else {
            return Ok(0);
        };
        std::str::from_utf8(kv.value())
            .ok()
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| StoreError::Backend("corrupt compacted revision record".into()))
    }

    /// Maps etcd's revision errors onto [`StoreError`]s.
    async fn revision_error(&self, error: etcd_client::Error, requested: Revision) -> StoreError {
        let message = error.to_string();
        if message.contains("required revision has been compacted") {
            let compacted = self.recorded_compaction().await.unwrap_or(0);
            StoreError::Compacted {
                requested,
                compacted,
            }
        } else if message.contains("required revision is a future revision") {
            let current = self.current_revision().await.unwrap_or(0);
            StoreError::FutureRevision { requested, current }
        } else {
            backend(error)
        }
    }
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |header| header.revision())
}

#[async_trait]
impl Store for EtcdStore {
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, StoreError> {
        let mut options = GetOptions::new();
        if !request.end.is_empty() {
            if request.end <= request.start {
                let revision = if request.revision > 0 {
                    request.revision
                } else {
                    self.current_revision().await?
                };
                return Ok(RangeResponse {
                    revision,
                    ..RangeResponse::default()
                });
            }
            options = options.with_range(self.full(&request.end));
        }
        if request.limit > 0 {
            options = options.with_limit(i64::try_from(request.limit).unwrap_or(i64::MAX));
        }
        if request.revision > 0 {
            options = options.with_revision(request.revision);
        }
        if request.count_only {
            options = options.with_count_only();
        }
        let response = match self
            .kv()
            .get(self.full(&request.start), Some(options))
            .await
        {
            Ok(response) => response,
            Err(error) => return Err(self.revision_error(error, request.revision).await),
        };
        let kvs = response
            .kvs()
            .iter()
            .map(|kv| self.convert(kv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RangeResponse {
            kvs,
            more: response.more(),
            count: usize::try_from(response.count()).unwrap_or(0),
            revision: if request.revision > 0 {
                request.revision
            } else {
                revision_of(response.header())
            },
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        validate_txn(&txn)?;
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|compare| match compare {
                Compare::ModRevision { key, revision } => {
                    EtcdCompare::mod_revision(self.full(key), CompareOp::Equal, *revision)
                }
                Compare::Value { key, value } => {
                    EtcdCompare::value(self.full(key), CompareOp::Equal, value.to_vec())
                }
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<TxnOp> {
            ops.iter()
                .map(|op| match op {
                    Op::Put { key, value } => TxnOp::put(
                        self.full(key),
                        value.to_vec(),
                        Some(PutOptions::new().with_prev_key()),
                    ),
                    Op::Delete { key } => {
                        TxnOp::delete(self.full(key), Some(DeleteOptions::new().with_prev_key()))
                    }
                    Op::Get { key } => TxnOp::get(self.full(key), None),
                })
                .collect()
        };
        let request = EtcdTxn::new()
            .when(compares)
            .and_then(ops(&txn.success))
            .or_else(ops(&txn.failure));
        let response = self.kv().txn(request).await.map_err(backend)?;
        let succeeded = response.succeeded();
        let revision = revision_of(response.header());
        let ran = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut results = Vec::with_capacity(ran.len());
        for (op, op_response) in ran.iter().zip(response.op_responses()) {
            results.push(match (op, op_response) {
                (Op::Put { key, value }, TxnOpResponse::Put(put)) => {
                    let prev = put.prev_key().map(|kv| self.convert(kv)).transpose()?;
                    // etcd answers a put with the previous state only; the new one follows.
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(revision, |kv| kv.create_revision),
                        mod_revision: revision,
                        version: prev.as_ref().map_or(1, |kv| kv.version + 1),
                    };
                    OpResult::Put { kv, prev }
                }
                (Op::Delete { .. }, TxnOpResponse::Delete(delete)) => OpResult::Delete {
                    prev: delete
                        .prev_kvs()
                        .first()
                        .map(|kv| self.convert(kv))
                        .transpose()?,
                },
                (Op::Get { .. }, TxnOpResponse::Get(get)) => OpResult::Get {
                    kv: get.kvs().first().map(|kv| self.convert(kv)).transpose()?,
                },
                (op, other) => {
                    return Err(StoreError::Backend(format!(
                        "etcd answered {op:?} with {other:?}"
                    )));
                }
            });
        }
        Ok(TxnResponse {
            succeeded,
            revision,
            results,
        })
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
        progress_notify: bool,
    ) -> Result<WatchStream, StoreError> {
        let start = if start_revision > 0 {
            let compacted = self.recorded_compaction().await?;
            if start_revision <= compacted {
                return Err(StoreError::Compacted {
                    requested: start_revision,
                    compacted,
                });
            }
            start_revision
        } else {
            self.current_revision().await? + 1
        };
        let mut options = EtcdWatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(start);
        if progress_notify {
            options = options.with_progress_notify();
        }
        let stream = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .watch(self.full(prefix), Some(options))
            .await
            .map_err(backend)?;
        let store = self.clone();
        let events = futures::stream::unfold(Some(stream), move |stream| {
            let store = store.clone();
            async move {
                let mut stream = stream?;
                loop {
                    let response = match stream.message().await {
                        Ok(Some(response)) => response,
                        Ok(None) => return None,
                        Err(error) => return Some((vec![Err(backend(error))], None)),
                    };
                    if response.canceled() {
                        let error = if response.compact_revision() > 0 {
                            StoreError::Compacted {
                                requested: start,
                                compacted: response.compact_revision(),
                            }
                        } else {
                            StoreError::Backend(format!(
                                "etcd canceled the watch: {}",
                                response.cancel_reason()
                            ))
                        };
                        return Some((vec![Err(error)], None));
                    }
                    if response.created() && response.events().is_empty() {
                        continue;
                    }
                    if response.events().is_empty() {
                        let revision = revision_of(response.header());
                        return Some((vec![Ok(WatchEvent::Progress { revision })], Some(stream)));
                    }
                    let events = response
                        .events()
                        .iter()
                        .map(|event| store.convert_event(event))
                        .collect();
                    return Some((events, Some(stream)));
                }
            }
        })
        .flat_map(futures::stream::iter);
        Ok(events.boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.current_revision().await?;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        let recorded = self.recorded_compaction().await?;
        if revision <= recorded {
            return Ok(());
        }
        // Record first: a watch must never start in history that is being removed.
        let key = self.compacted_key();
        self.kv()
            .put(key, revision.to_string(), None)
            .await
            .map_err(backend)?;
        match self
            .kv()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
        {
            Ok(_) => Ok(()),
            // Someone else compacted further already: the revision is gone either way.
            Err(error) if error.to_string().contains("has been compacted") => Ok(()),
            Err(error) => Err(self.revision_error(error, revision).await),
        }
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let response = self
            .kv()
            .get(
                self.compacted_key(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(backend)?;
        Ok(revision_of(response.header()))
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.recorded_compaction().await
    }
}

impl EtcdStore {
    fn convert_event(&self, event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
        let kv = event
            .kv()
            .ok_or_else(|| StoreError::Backend("etcd event without a key".into()))?;
        let prev = event.prev_kv().map(|kv| self.convert(kv)).transpose()?;
        match event.event_type() {
            EventType::Put => Ok(WatchEvent::Put {
                kv: self.convert(kv)?,
                prev,
            }),
            EventType::Delete => {
                let revision = kv.mod_revision();
                // Without a previous state (compacted away) the event still names the key.
                let prev = match prev {
                    Some(prev) => prev,
                    None => KeyValue {
                        value: Bytes::new(),
                        ..self.convert(kv)?
                    },
                };
                Ok(WatchEvent::Delete { prev, revision })
            }
        }
    }
}
