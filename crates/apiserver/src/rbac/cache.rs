//! The parsed RBAC policy, kept between requests and rebuilt only after RBAC changed.
//!
//! The cache knows the highest store revision at which a key under [`PREFIX`] is known to have
//! changed (`changed_at`), and the policy knows the revision it was read at; a policy read at
//! or after `changed_at` is current. Two sources raise `changed_at`:
//! - [`TrackedStore`], the store every write of this server goes through, raises it to the
//!   revision of each write touching an RBAC key *before the write returns*, so a request that
//!   follows an acknowledged RBAC write always sees it (read-your-writes);
//! - [`follow_changes`] watches the prefix, for writers that bypass this server (another
//!   server sharing an etcd): eventually consistent, as upstream's informer-fed authorizer.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use atoll_store::{
    RangeRequest, RangeResponse, Revision, Store, StoreError, Txn, TxnResponse, WatchEvent,
    WatchStream, prefix_end,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::policy::{PREFIX, Policy};
use crate::error::ApiError;

/// The policy as last read, and how current it must be.
#[derive(Debug, Default)]
pub struct PolicyCache {
    /// The highest revision known to have changed an RBAC object.
    changed_at: AtomicI64,
    current: RwLock<Option<Arc<Policy>>>,
    /// One rebuild at a time: concurrent requests after a change wait for it and share it.
    rebuilding: tokio::sync::Mutex<()>,
}

impl PolicyCache {
    /// Records that RBAC changed at `revision`.
    pub fn changed(&self, revision: Revision) {
        self.changed_at.fetch_max(revision, Ordering::AcqRel);
    }

    /// Records that RBAC may have changed at a revision not known (a write whose outcome is
    /// unknown): the next request rebuilds.
    fn maybe_changed(&self) {
        let built = self.cached().map_or(0, |p| p.revision);
        self.changed(built + 1);
    }

    fn cached(&self) -> Option<Arc<Policy>> {
        self.current.read().ok().and_then(|p| p.clone())
    }

    fn fresh(&self) -> Option<Arc<Policy>> {
        let changed_at = self.changed_at.load(Ordering::Acquire);
        self.cached().filter(|p| p.revision >= changed_at)
    }

    /// The policy, current as of every RBAC write acknowledged so far.
    pub async fn get(&self, store: &dyn Store) -> Result<Arc<Policy>, ApiError> {
        if let Some(policy) = self.fresh() {
            return Ok(policy);
        }
        let _rebuilding = self.rebuilding.lock().await;
        if let Some(policy) = self.fresh() {
            return Ok(policy);
        }
        let resp = store
            .range(RangeRequest {
                start: PREFIX.to_string(),
                end: prefix_end(PREFIX),
                ..Default::default()
            })
            .await?;
        let previous = self.cached();
        let policy = Arc::new(Policy::from_objects(
            resp.revision,
            resp.kvs
                .iter()
                .map(|kv| (kv.key.as_str(), kv.mod_revision, kv.value.as_ref())),
            previous.as_deref(),
        ));
        if let Ok(mut current) = self.current.write() {
            *current = Some(policy.clone());
        }
        Ok(policy)
    }
}

/// A store that tells the cache of every write it makes under [`PREFIX`].
pub struct TrackedStore {
    inner: Arc<dyn Store>,
    cache: Arc<PolicyCache>,
}

impl TrackedStore {
    /// Wraps `inner`, telling `cache` of RBAC writes.
    pub fn new(inner: Arc<dyn Store>, cache: Arc<PolicyCache>) -> TrackedStore {
        TrackedStore { inner, cache }
    }
}

fn touches_rbac(txn: &Txn) -> bool {
    txn.success.iter().chain(&txn.failure).any(|op| match op {
        atoll_store::Op::Put { key, .. } | atoll_store::Op::Delete { key } => {
            key.starts_with(PREFIX)
        }
        atoll_store::Op::Get { .. } => false,
    })
}

#[async_trait]
impl Store for TrackedStore {
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.inner.range(request).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let rbac = touches_rbac(&txn);
        let result = self.inner.txn(txn).await;
        if rbac {
            match &result {
                Ok(resp) => self.cache.changed(resp.revision),
                Err(_) => self.cache.maybe_changed(),
            }
        }
        result
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
        progress_notify: bool,
    ) -> Result<WatchStream, StoreError> {
        self.inner
            .watch(prefix, start_revision, progress_notify)
            .await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }
}

/// Follows RBAC changes made by other writers of the store until `shutdown`.
pub async fn follow_changes(
    store: Arc<dyn Store>,
    cache: Arc<PolicyCache>,
    shutdown: CancellationToken,
) {
    crate::controllers::repeat_until_cancelled(
        &shutdown,
        Duration::from_secs(1),
        "RBAC change watch",
        || follow_once(&*store, &cache, &shutdown),
    )
    .await;
}

async fn follow_once(
    store: &dyn Store,
    cache: &PolicyCache,
    shutdown: &CancellationToken,
) -> Result<(), ApiError> {
    // Whatever happened before the watch starts counts as a change.
    let from = store.current_revision().await?;
    cache.changed(from);
    let mut events = store.watch(PREFIX, from + 1, false).await?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = events.next() => next,
        };
        match next {
            Some(Ok(WatchEvent::Progress { .. })) => {}
            Some(Ok(event)) => cache.changed(event.revision()),
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_store::memory::MemoryStore;
    use atoll_store::{Compare, Op};

    fn put(key: &str, value: &str) -> Txn {
        Txn {
            compares: Vec::<Compare>::new(),
            success: vec![Op::Put {
                key: key.into(),
                value: value.as_bytes().to_vec().into(),
            }],
            failure: vec![],
        }
    }

    #[tokio::test]
    async fn the_policy_is_rebuilt_only_after_rbac_writes() -> Result<(), Box<dyn std::error::Error>>
    {
        let cache = Arc::new(PolicyCache::default());
        let store = TrackedStore::new(Arc::new(MemoryStore::new()), cache.clone());
        let first = cache.get(&store).await?;
        assert!(Arc::ptr_eq(&first, &cache.get(&store).await?));
        // Other keys do not invalidate it.
        store
            .txn(put("/registry/core/configmaps/x/a", "{}"))
            .await?;
        assert!(Arc::ptr_eq(&first, &cache.get(&store).await?));
        // An RBAC write does, before it returns.
        let written = store
            .txn(put(
                "/registry/rbac.authorization.k8s.io/clusterroles/r",
                r#"{"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}"#,
            ))
            .await?;
        let second = cache.get(&store).await?;
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(second.revision >= written.revision);
        assert_eq!(second.cluster_role("r").map(<[_]>::len), Some(1));
        Ok(())
    }
}
