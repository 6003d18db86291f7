//! Idempotent writes and small helpers over kube clients.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Label on every object Atoll creates: `app.kubernetes.io/managed-by: atoll`. Atoll deletes
/// nothing that lacks it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "atoll");

/// Whether Atoll created this object.
pub fn is_managed<K: Resource>(object: &K) -> bool {
    is_managed_meta(object.meta())
}

/// Whether Atoll created the object with this metadata.
pub fn is_managed_meta(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

/// Adds [`MANAGED_BY`] (and `extra`) to an object's labels.
pub fn mark_managed<K: Resource>(object: &mut K, extra: &BTreeMap<String, String>) {
    let labels = object.meta_mut().labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
}

/// What [`ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The object did not exist; this call created it.
    Created,
    /// The object already existed and was left as it was.
    Existed,
}

/// Creates `object` unless an object of that name exists; returns the object as stored.
pub async fn ensure<K>(api: &Api<K>, object: &K) -> Result<(K, Ensured), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(created) => Ok((created, Ensured::Created)),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Ok((api.get(&object.name_any()).await?, Ensured::Existed))
        }
        Err(e) => Err(e),
    }
}

/// [`ensure`] for a namespace, waiting out (up to `wait`) one that is still terminating, as an
/// earlier unjoin or a rolled-back join leaves it: nothing can be created in it until it is
/// gone.
pub async fn ensure_namespace(
    api: &Api<k8s_openapi::api::core::v1::Namespace>,
    namespace: &k8s_openapi::api::core::v1::Namespace,
    wait: std::time::Duration,
) -> Result<(k8s_openapi::api::core::v1::Namespace, Ensured), kube::Error> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match api.get_opt(&namespace.name_any()).await? {
            Some(existing)
                if existing.metadata.deletion_timestamp.is_some()
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            _ => return ensure(api, namespace).await,
        }
    }
}

/// Deletes by name; an object that is already gone is not an error.
pub async fn delete_if_exists<K>(api: &Api<K>, name: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gets by name; `None` when it does not exist.
pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name).await
}
