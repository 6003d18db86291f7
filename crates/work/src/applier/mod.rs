//! The applier: a controller over the Works of one hub namespace that applies them to one
//! member, feeds status back, reverts drift and collects garbage.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use atoll_api::conditions::{FALSE, UNKNOWN};
use atoll_api::work::{AppliedWork, FINALIZER_WORK_CLEANUP, Work};
use futures::StreamExt;
use futures::channel::mpsc;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::discovery::ApiCapabilities;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::predicates;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::error::{Step, WorkError, on_hub};

mod apply;
mod publish;
mod record;

use apply::apply_work;
use publish::publish_failure;
pub(crate) use record::{Deletion, delete_exact_in};
use record::{clean_up, install_applied_work_crd};

/// The default field manager of server-side apply.
pub const FIELD_MANAGER: &str = "atoll";
/// Work condition reason: a request to the member failed; the Work is retried.
pub(crate) const REASON_MEMBER_ERROR: &str = "MemberError";
/// Work condition reason: the member could not be reached; the Work is retried.
pub(crate) const REASON_MEMBER_UNREACHABLE: &str = "MemberUnreachable";
/// Label on the AppliedWork CRD and the AppliedWorks the applier creates in a member.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "atoll");

/// How the applier runs.
#[derive(Debug, Clone)]
pub struct ApplierConfig {
    /// Field manager for server-side apply, unless a manifest config names another.
    pub field_manager: String,
    /// Every Work is reconciled at least this often, even without events.
    pub resync_period: Duration,
    /// How many Works are reconciled at once (never one Work twice at once).
    pub concurrency: u16,
    /// Install the AppliedWork CRD in the member when it is missing.
    pub install_applied_work_crd: bool,
    /// The longest wait between retries of a failing Work.
    pub max_backoff: Duration,
}

impl Default for ApplierConfig {
    fn default() -> Self {
        ApplierConfig {
            field_manager: FIELD_MANAGER.to_owned(),
            resync_period: Duration::from_secs(300),
            concurrency: 16,
            install_applied_work_crd: true,
            max_backoff: Duration::from_secs(15),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// (group, plural, namespace, name) of an object in the member.
type ObjectKey = (String, String, String, String);

/// Which Works care about which member objects, so a change in the member wakes exactly them.
#[derive(Default)]
struct Interest {
    by_object: HashMap<ObjectKey, BTreeSet<String>>,
    by_work: HashMap<String, Vec<ObjectKey>>,
}

impl Interest {
    fn set(&mut self, work: &str, keys: Vec<ObjectKey>) {
        for key in self.by_work.remove(work).unwrap_or_default() {
            if let Some(works) = self.by_object.get_mut(&key) {
                works.remove(work);
                if works.is_empty() {
                    self.by_object.remove(&key);
                }
            }
        }
        for key in &keys {
            self.by_object
                .entry(key.clone())
                .or_default()
                .insert(work.to_owned());
        }
        if !keys.is_empty() {
            self.by_work.insert(work.to_owned(), keys);
        }
    }

    fn works(&self, key: &ObjectKey) -> Vec<String> {
        self.by_object
            .get(key)
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default()
    }
}

struct Ctx {
    works: Api<Work>,
    namespace: String,
    member: Client,
    config: ApplierConfig,
    kinds: Mutex<HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>>,
    interest: Arc<Mutex<Interest>>,
    /// The member watches, aborted when dropped: they end with the applier.
    watches: Mutex<HashMap<String, AbortOnDropHandle<()>>>,
    trigger: mpsc::UnboundedSender<ObjectRef<Work>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Ctx {
    /// The next retry delay for a Work: doubling from 250 ms up to `max_backoff`.
    fn backoff(&self, work: &str) -> Duration {
        let mut failures = lock(&self.failures);
        let n = failures.entry(work.to_owned()).or_insert(0);
        let delay = Duration::from_millis(250)
            .saturating_mul(1u32 << (*n).min(16))
            .min(self.config.max_backoff);
        *n += 1;
        delay
    }

    fn succeeded(&self, work: &str) {
        lock(&self.failures).remove(work);
    }

    fn forget(&self, work: &str) {
        self.succeeded(work);
        lock(&self.interest).set(work, Vec::new());
    }

    /// The resource serving a kind, by discovery of its group version only. `None` while the
    /// member does not serve it (a CRD not yet established): asked again on every attempt.
    async fn resolve(
        &self,
        gvk: &GroupVersionKind,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, kube::Error> {
        if let Some(found) = lock(&self.kinds).get(gvk).cloned() {
            return Ok(Some(found));
        }
        match kube::discovery::pinned_kind(&self.member, gvk).await {
            Ok(found) => {
                lock(&self.kinds).insert(gvk.clone(), found.clone());
                Ok(Some(found))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn evict(&self, gvk: &GroupVersionKind) {
        lock(&self.kinds).remove(gvk);
    }

    /// Starts a metadata watch on a resource in the member, once.
    fn watch(&self, resource: &ApiResource) {
        let key = format!(
            "{}/{}/{}",
            resource.group, resource.version, resource.plural
        );
        let mut watches = lock(&self.watches);
        if watches.contains_key(&key) {
            return;
        }
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.member.clone(), resource);
        let interest = self.interest.clone();
        let trigger = self.trigger.clone();
        let namespace = self.namespace.clone();
        let (group, plural) = (resource.group.clone(), resource.plural.clone());
        debug!(resource = %key, "watching in the member");
        let task = tokio::spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let object = match event {
                    Ok(Event::Apply(o) | Event::InitApply(o) | Event::Delete(o)) => o,
                    Ok(_) => continue,
                    Err(error) => {
                        debug!(%error, "member watch");
                        continue;
                    }
                };
                let key = (
                    group.clone(),
                    plural.clone(),
                    object.namespace().unwrap_or_default(),
                    object.name_any(),
                );
                let works = lock(&interest).works(&key);
                for work in works {
                    let _ = trigger.unbounded_send(ObjectRef::new(&work).within(&namespace));
                }
            }
        });
        watches.insert(key, AbortOnDropHandle::new(task));
    }
}

/// Applies the Works of one hub namespace to one member until `shutdown` resolves.
///
/// `hub_works` must be namespaced to the cluster's namespace on the hub
/// (`atoll-cluster-<name>`): the applier reads, watches and patches Works (with their status
/// and finalizers) there and touches nothing else on the hub, so in pull mode the agent's hub
/// credentials need only `get, list, watch, patch, update` on `works` and `works/status` in
/// that namespace. In the member it needs whatever the manifests need, plus AppliedWorks (and
/// their CRD, unless `install_applied_work_crd` is off and it is installed already).
pub async fn run(
    hub_works: Api<Work>,
    member: Client,
    config: ApplierConfig,
    shutdown: impl Future<Output = ()>,
) {
    let namespace = hub_works.namespace().unwrap_or_default().to_owned();
    tokio::pin!(shutdown);
    if config.install_applied_work_crd {
        let mut delay = Duration::from_millis(500);
        loop {
            match install_applied_work_crd(&member).await {
                Ok(()) => break,
                Err(error) => {
                    warn!(%namespace, %error, "installing the AppliedWork CRD in the member")
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(config.max_backoff);
        }
    }
    let (trigger, triggers) = mpsc::unbounded();
    let ctx = Arc::new(Ctx {
        works: hub_works.clone(),
        namespace: namespace.clone(),
        member,
        config,
        kinds: Mutex::new(HashMap::new()),
        interest: Arc::new(Mutex::new(Interest::default())),
        watches: Mutex::new(HashMap::new()),
        trigger,
        failures: Mutex::new(HashMap::new()),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Only spec changes and deletion (both bump the generation) need the member; the
    // applier's own writes (finalizer, status) then wake nothing, and member changes arrive
    // through the member watches.
    let (store, writer) = reflector::store();
    let works = watcher::watcher(hub_works, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let controller = Controller::for_stream(works, store.clone())
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency));
    let controller = controller
        .reconcile_on(triggers)
        .graceful_shutdown_on(async move {
            let _ = stopped.await;
        })
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(error) = result {
                debug!(%error, "work controller");
            }
            futures::future::ready(())
        });
    let sweeper = sweep(ctx.clone(), store);
    tokio::pin!(controller);
    tokio::pin!(sweeper);
    info!(%namespace, "applying Works");
    tokio::select! {
        () = &mut controller => {}
        () = &mut sweeper => {}
        () = &mut shutdown => {
            let _ = stop.send(());
            controller.await;
        }
    }
    info!(%namespace, "stopped applying Works");
}

fn error_policy(work: Arc<Work>, error: &WorkError, ctx: Arc<Ctx>) -> Action {
    let name = work.name_any();
    let delay = ctx.backoff(&name);
    warn!(namespace = %ctx.namespace, work = %name, %error, retry_in = ?delay, "reconciling Work");
    Action::requeue(delay)
}

async fn reconcile(work: Arc<Work>, ctx: Arc<Ctx>) -> Result<Action, WorkError> {
    let name = work.name_any();
    let finalized = work
        .finalizers()
        .iter()
        .any(|f| f == FINALIZER_WORK_CLEANUP);
    if work.metadata.deletion_timestamp.is_some() {
        if !finalized {
            ctx.forget(&name);
            return Ok(Action::await_change());
        }
        if !clean_up(&work, &ctx).await? {
            // Foreground deletion in progress; the member watch wakes us when it ends.
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        set_finalizer(&ctx.works, &work, false).await?;
        ctx.forget(&name);
        info!(namespace = %ctx.namespace, work = %name, "cleaned up the member; released the Work");
        return Ok(Action::await_change());
    }
    if !finalized {
        set_finalizer(&ctx.works, &work, true).await?;
    }
    let retry = match apply_work(&work, &ctx).await {
        Ok(retry) => retry,
        Err(error) => {
            // Say so on the hub, rather than leave the last observed state standing.
            let verdict = match &error {
                WorkError::Member {
                    source: kube::Error::Api(_),
                    ..
                } => Some((UNKNOWN, REASON_MEMBER_ERROR)),
                WorkError::Member { .. } => Some((UNKNOWN, REASON_MEMBER_UNREACHABLE)),
                WorkError::RecordConflict { .. } => Some((FALSE, "AppliedWorkConflict")),
                WorkError::Hub { .. } => None,
            };
            if let Some((status, reason)) = verdict
                && let Err(status_error) =
                    publish_failure(&work, &ctx, status, reason, &error).await
            {
                debug!(%status_error, "writing the Work's status");
            }
            return Err(error);
        }
    };
    Ok(if retry {
        Action::requeue(ctx.backoff(&name))
    } else {
        ctx.succeeded(&name);
        Action::requeue(ctx.config.resync_period)
    })
}

async fn set_finalizer(works: &Api<Work>, work: &Work, present: bool) -> Result<(), WorkError> {
    let mut finalizers: Vec<String> = work.finalizers().to_vec();
    finalizers.retain(|f| f != FINALIZER_WORK_CLEANUP);
    if present {
        finalizers.push(FINALIZER_WORK_CLEANUP.to_owned());
    }
    // The resourceVersion makes this a compare-and-swap: a concurrent edit of the finalizers
    // fails it (and the retry reads them again) instead of being overwritten.
    works
        .patch(
            &work.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "finalizers": finalizers,
                "resourceVersion": work.resource_version(),
            }})),
        )
        .await
        .map_err(on_hub(Step::UpdateFinalizers))?;
    Ok(())
}

/// Removes the cleanup finalizer from every Work `works` holds, so that they (and a namespace
/// being deleted around them) go without waiting for a member that is gone: what unjoining a
/// cluster does. Returns how many Works were released. A hub without the Work CRD has none.
pub async fn release_finalizers(works: &Api<Work>) -> Result<usize, kube::Error> {
    let mut released = 0;
    // A Work written concurrently (by a still-running applier) conflicts: read again.
    for _ in 0..5 {
        let list = match works.list(&Default::default()).await {
            Ok(list) => list,
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(released),
            Err(e) => return Err(e),
        };
        let mut conflicts = false;
        for work in list.items {
            if !work
                .finalizers()
                .iter()
                .any(|f| f == FINALIZER_WORK_CLEANUP)
            {
                continue;
            }
            match set_finalizer(works, &work, false).await {
                Ok(()) => released += 1,
                Err(WorkError::Hub {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 404 => {}
                Err(WorkError::Hub {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 409 => conflicts = true,
                Err(WorkError::Hub { source, .. }) => return Err(source),
                Err(_) => {}
            }
        }
        if !conflicts {
            break;
        }
    }
    Ok(released)
}

/// Cleans up after Works that disappeared without their finalizer running (deleted while
/// the applier was not running and the finalizer was released): their AppliedWorks in the
/// member are collected like a deleted Work's, as the delete option the record carries says.
/// Runs once the Work cache is complete, then at every resync.
async fn sweep(ctx: Arc<Ctx>, store: Store<Work>) {
    if store.wait_until_ready().await.is_err() {
        return futures::future::pending().await;
    }
    let records: Api<AppliedWork> = Api::all(ctx.member.clone());
    loop {
        let mut pending = false;
        match records.list(&Default::default()).await {
            Ok(list) => {
                for record in list.items {
                    if record.spec.work_namespace != ctx.namespace {
                        continue;
                    }
                    let key = ObjectRef::new(&record.spec.work_name).within(&ctx.namespace);
                    if store.get(&key).is_some() {
                        continue;
                    }
                    // A stand-in for the vanished Work, with the delete option it last had.
                    let mut gone = Work::new(&record.spec.work_name, Default::default());
                    gone.metadata.namespace = Some(ctx.namespace.clone());
                    gone.spec.delete_option = record.spec.delete_option.clone();
                    match clean_up(&gone, &ctx).await {
                        Ok(true) => {
                            info!(work = %record.spec.work_name, "collected the member resources of a vanished Work")
                        }
                        Ok(false) => pending = true,
                        Err(error) => debug!(%error, "sweeping AppliedWorks"),
                    }
                }
            }
            Err(error) => debug!(%error, "listing AppliedWorks"),
        }
        // Foreground deletions in progress are looked at again soon.
        let pause = if pending {
            Duration::from_secs(2)
        } else {
            ctx.config.resync_period.min(Duration::from_secs(60))
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_follows_the_latest_set_of_each_work() {
        let key = |name: &str| {
            (
                "".to_owned(),
                "configmaps".to_owned(),
                "default".to_owned(),
                name.to_owned(),
            )
        };
        let mut interest = Interest::default();
        interest.set("w1", vec![key("a"), key("b")]);
        interest.set("w2", vec![key("b")]);
        assert_eq!(interest.works(&key("b")), ["w1", "w2"]);
        interest.set("w1", vec![key("a")]);
        assert_eq!(interest.works(&key("b")), ["w2"]);
        interest.set("w2", vec![]);
        assert!(interest.works(&key("b")).is_empty());
        assert_eq!(interest.works(&key("a")), ["w1"]);
    }
}
