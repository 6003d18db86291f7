//! Watched caches and idempotent writes shared by the member syncer and the hub aggregator.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use crate::FIELD_MANAGER;

/// A cache kept by a watch; every event wakes `changed`.
pub(crate) struct Cache<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub(crate) store: Store<K>,
    /// The watch, unless the cache is someone else's ([`Cache::shared`]).
    _task: Option<AbortOnDropHandle<()>>,
}

impl<K> Cache<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    /// Watches `api` (filtered by `config`).
    pub(crate) fn new(
        api: Api<K>,
        config: watcher::Config,
        what: &'static str,
        changed: Arc<Notify>,
    ) -> Self {
        Self::with_type(api, config, K::DynamicType::default(), what, changed)
    }
}

impl<K> Cache<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    /// Watches `api` of a dynamic type.
    pub(crate) fn with_type(
        api: Api<K>,
        config: watcher::Config,
        dyntype: K::DynamicType,
        what: &'static str,
        changed: Arc<Notify>,
    ) -> Self {
        let writer = Writer::new(dyntype);
        let store = writer.as_reader();
        // No managedFields in the cache: nothing reads them, and they are most of an object.
        let stream = watcher::watcher(api, config)
            .default_backoff()
            .modify(|object| object.managed_fields_mut().clear())
            .reflect(writer);
        // The caller's span (a member syncer's names its cluster) goes with the watch.
        let span = tracing::Span::current();
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut stream = std::pin::pin!(stream);
                // One warning per streak of failures with the same error, not one per retry.
                let mut failing: Option<String> = None;
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(_) => {
                            if failing.take().is_some() {
                                tracing::info!(what, "watch recovered");
                            }
                            changed.notify_one();
                        }
                        Err(error) => {
                            let text = error.to_string();
                            if failing.as_ref() == Some(&text) {
                                tracing::debug!(%error, what, "watch failed; retrying");
                            } else {
                                tracing::warn!(%error, what, "watch failed; retrying with backoff");
                                failing = Some(text);
                            }
                        }
                    }
                }
            },
            span,
        ));
        Cache {
            store,
            _task: Some(AbortOnDropHandle::new(task)),
        }
    }

    /// A cache kept by a watch elsewhere, which wakes `changed` itself.
    pub(crate) fn shared(store: Store<K>) -> Self {
        Cache { store, _task: None }
    }

    /// Resolves once the first list is in.
    pub(crate) async fn ready(&self) {
        // Fails only when the writer is dropped, i.e. never while the task runs.
        let _ = self.store.wait_until_ready().await;
    }

    /// Every cached object that is not being deleted.
    pub(crate) fn live(&self) -> Vec<Arc<K>> {
        self.store
            .state()
            .into_iter()
            .filter(|o| o.meta().deletion_timestamp.is_none())
            .collect()
    }

    /// Every cached object, by `(namespace, name)`.
    pub(crate) fn by_key(&self) -> BTreeMap<(String, String), Arc<K>> {
        self.store
            .state()
            .into_iter()
            .map(|o| ((o.namespace().unwrap_or_default(), o.name_any()), o))
            .collect()
    }
}

/// Counts failed writes of one reconcile; each is logged where it happens.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) writes: usize,
    pub(crate) failures: usize,
}

impl Outcome {
    pub(crate) fn record<T>(&mut self, what: &str, name: &str, result: Result<T, kube::Error>) {
        self.writes += 1;
        if let Err(error) = result {
            self.failures += 1;
            tracing::warn!(%error, what, name, "write failed; will retry");
        }
    }
}

/// Retry delay after failed writes (doubling up to a minute).
const RETRY: std::time::Duration = std::time::Duration::from_millis(500);
/// A full recomputation at least this often, whatever the watches say.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// Reconciles whenever `changed` is notified, at least every [`RESYNC`], and again after
/// failed writes (backing off from [`RETRY`] to a minute), until `shutdown` resolves. Both
/// the member syncer and the hub aggregator run in this loop: level-triggered, so a missed
/// notification costs at most one resync period.
pub(crate) async fn reconcile_until<F, Fut>(
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    changed: &Notify,
    mut reconcile: F,
    who: &str,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut delay: Option<std::time::Duration> = None;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    loop {
        let retry = async {
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = changed.notified() => {},
            () = retry => {},
            _ = resync.tick() => {},
        }
        let outcome = reconcile().await;
        delay = (outcome.failures > 0).then(|| {
            delay
                .map_or(RETRY, |d| d * 2)
                .min(std::time::Duration::from_secs(60))
        });
        if outcome.writes > 0 {
            tracing::debug!(
                who,
                writes = outcome.writes,
                failures = outcome.failures,
                "reconciled"
            );
        }
    }
}

/// Server-side apply of `object` as Atoll's MCS field manager.
pub(crate) async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// Merge-patches the status subresource.
pub(crate) async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    status: serde_json::Value,
) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
}

/// Deletes by name; gone already is fine.
pub(crate) async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Whether every `(key, value)` of `wanted` is in `actual`.
pub(crate) fn contains_all(
    actual: Option<&BTreeMap<String, String>>,
    wanted: &BTreeMap<String, String>,
) -> bool {
    wanted
        .iter()
        .all(|(k, v)| actual.and_then(|a| a.get(k)) == Some(v))
}
