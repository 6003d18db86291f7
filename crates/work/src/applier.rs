//! The applier: a controller over the Works of one hub namespace that applies them to one
//! member, feeds status back, reverts drift and collects garbage.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use atoll_api::conditions::{self, FALSE, TRUE, UNKNOWN};
use atoll_api::work::{
    AppliedResourceMeta, AppliedWork, AppliedWorkSpec, ApplyStrategy, ApplyStrategyType,
    CONDITION_APPLIED, CONDITION_AVAILABLE, CONDITION_DEGRADED, CONDITION_PROGRESSING, DiffDetails,
    FINALIZER_WORK_CLEANUP, FieldDifference, ManifestCondition, StatusFeedback, UpdateStrategyType,
    WhenToTakeOver, Work, WorkResourceIdentifier,
};
use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
    PropagationPolicy,
};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::discovery::{ApiCapabilities, Scope};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::predicates;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::wait::{await_condition, conditions as wait_conditions};
use kube::runtime::watcher::{self, Event};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::diff::diff;
use crate::manifest::{self, ANNOTATION_APPLIED_BY, ANNOTATION_MANIFEST_HASH, Parsed};
use crate::status::{self, CONDITION_DIFF_REPORTED, Health};

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

/// Why a Work could not be reconciled this time (it is retried with backoff). Per-manifest
/// failures are not errors: they are conditions in the Work's status.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// A request to the hub failed.
    #[error("hub: {action}: {source}")]
    Hub {
        /// What was being done.
        action: String,
        /// What happened.
        source: kube::Error,
    },
    /// A request to the member failed.
    #[error("member: {action}: {source}")]
    Member {
        /// What was being done.
        action: String,
        /// What happened.
        source: kube::Error,
    },
    /// The member's AppliedWork of this name belongs to a Work in another hub namespace.
    #[error(
        "the member's AppliedWork {name} belongs to Work {owner}; Work names must be unique per member"
    )]
    RecordConflict {
        /// The AppliedWork's name.
        name: String,
        /// `namespace/name` of the Work it belongs to.
        owner: String,
    },
}

pub(crate) fn on_hub(action: impl Into<String>) -> impl FnOnce(kube::Error) -> WorkError {
    let action = action.into();
    move |source| WorkError::Hub { action, source }
}

pub(crate) fn on_member(action: impl Into<String>) -> impl FnOnce(kube::Error) -> WorkError {
    let action = action.into();
    move |source| WorkError::Member { action, source }
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

/// Creates the AppliedWork CRD in the member unless it exists (bringing the versions of one
/// Atoll installed up to date, so that no recorded field is pruned), and waits until it is
/// served.
async fn install_applied_work_crd(member: &Client) -> Result<(), WorkError> {
    let crds: Api<CustomResourceDefinition> = Api::all(member.clone());
    let mut crd = AppliedWork::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let existing = crds
        .get_opt(&name)
        .await
        .map_err(on_member("reading the AppliedWork CRD"))?;
    if let Some(existing) = &existing
        && existing.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
        && existing.spec.versions != crd.spec.versions
    {
        crds.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"versions": crd.spec.versions}})),
        )
        .await
        .map_err(on_member("updating the AppliedWork CRD"))?;
        info!("updated the AppliedWork CRD in the member");
    }
    if existing.is_none() {
        crd.metadata
            .labels
            .get_or_insert_default()
            .insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => info!("installed the AppliedWork CRD in the member"),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(on_member("creating the AppliedWork CRD")(e)),
        }
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, wait_conditions::is_crd_established()),
    )
    .await
    .ok()
    .transpose()
    .map_err(|e| WorkError::Member {
        action: "waiting for the AppliedWork CRD".into(),
        source: kube::Error::Service(Box::new(e)),
    })?;
    Ok(())
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
        .map_err(on_hub("updating the Work's finalizers"))?;
    Ok(())
}

/// The outcome of one manifest.
struct ManifestResult {
    identifier: WorkResourceIdentifier,
    applied: (&'static str, &'static str, String),
    health: Option<Health>,
    feedback: Option<StatusFeedback>,
    diff: Option<Vec<FieldDifference>>,
    report_diff: bool,
    /// The uid to record as applied by this Work.
    owned_uid: Option<String>,
    /// Nothing could be learned about the object: keep what the record says about it.
    unknown: bool,
    /// Try again soon.
    retry: bool,
    watch: Option<ApiResource>,
}

impl ManifestResult {
    fn new(identifier: WorkResourceIdentifier) -> Self {
        ManifestResult {
            identifier,
            applied: (UNKNOWN, "Pending", String::new()),
            health: None,
            feedback: None,
            diff: None,
            report_diff: false,
            owned_uid: None,
            unknown: false,
            retry: false,
            watch: None,
        }
    }

    fn fail(mut self, reason: &'static str, message: impl Into<String>) -> Self {
        self.applied = (FALSE, reason, message.into());
        self
    }

    fn ok(&mut self, reason: &'static str, message: impl Into<String>) {
        self.applied = (TRUE, reason, message.into());
    }

    fn observe(&mut self, object: &Value, rules: &[atoll_api::work::FeedbackRule]) {
        self.health = Some(status::health(
            &self.identifier.group,
            &self.identifier.kind,
            object,
        ));
        let (feedback, errors) =
            status::feedback(&self.identifier.group, &self.identifier.kind, rules, object);
        self.feedback = feedback;
        if !errors.is_empty() {
            self.applied.2 = format!("{}; status feedback: {}", self.applied.2, errors.join("; "));
        }
    }
}

fn member_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// Whether retrying without a change could help.
fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 409 || status.code == 429 || status.code >= 500,
        _ => true,
    }
}

struct ApplyCtx<'a> {
    ctx: &'a Ctx,
    work: &'a Work,
    strategy: ApplyStrategy,
    recorded_uids: HashSet<&'a str>,
    applied_by: String,
}

async fn apply_manifest(a: &ApplyCtx<'_>, parsed: &Parsed) -> ManifestResult {
    let mut result = ManifestResult::new(parsed.identifier());
    let (resource, caps) = match a.ctx.resolve(&parsed.gvk).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            result.unknown = true;
            result.retry = true;
            let api_version = parsed.object["apiVersion"].as_str().unwrap_or_default();
            return result.fail(
                "KindNotServed",
                format!(
                    "the member does not serve kind {} in {api_version} (yet); retrying with backoff",
                    parsed.gvk.kind
                ),
            );
        }
        Err(e) => {
            result.unknown = true;
            result.retry = true;
            return result.fail("DiscoveryFailed", member_message(&e));
        }
    };
    let namespace = match caps.scope {
        Scope::Namespaced if parsed.namespace.is_empty() => Some("default"),
        Scope::Namespaced => Some(parsed.namespace.as_str()),
        Scope::Cluster => None,
    };
    result.identifier.resource = resource.plural.clone();
    result.identifier.namespace = namespace.unwrap_or_default().to_owned();
    result.watch = Some(resource.clone());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(a.ctx.member.clone(), ns, &resource),
        None => Api::all_with(a.ctx.member.clone(), &resource),
    };
    let config = manifest::config_for(&a.work.spec, &result.identifier);
    let rules = config
        .map(|c| c.feedback_rules.as_slice())
        .unwrap_or_default();
    let update = config
        .and_then(|c| c.update_strategy.clone())
        .unwrap_or_default();
    let live = match api.get_opt(&parsed.name).await {
        Ok(live) => live.and_then(|o| serde_json::to_value(o).ok()),
        Err(e) => {
            result.unknown = true;
            result.retry = transient(&e);
            return result.fail("MemberError", member_message(&e));
        }
    };
    let live_uid = live
        .as_ref()
        .and_then(|l| l.pointer("/metadata/uid"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let ours = live.as_ref().is_some_and(|l| {
        live_uid
            .as_deref()
            .is_some_and(|uid| a.recorded_uids.contains(uid))
            || manifest::annotation(l, ANNOTATION_APPLIED_BY) == Some(a.applied_by.as_str())
    });
    if ours {
        result.owned_uid = live_uid.clone();
    }
    let desired = manifest::desired(parsed, namespace, &a.applied_by);

    if a.strategy.type_ == ApplyStrategyType::ReportDiff {
        result.report_diff = true;
        let diffs = match &live {
            Some(live) => diff(&parsed.object, live),
            None => vec![FieldDifference {
                path: "/".into(),
                value_in_member: None,
                value_in_hub: Some("the whole object (missing in the member)".into()),
            }],
        };
        result.applied = (
            FALSE,
            "ReportDiff",
            format!("not written (ReportDiff): {} field(s) differ", diffs.len()),
        );
        result.diff = Some(diffs);
        if let Some(live) = &live {
            result.observe(live, rules);
        }
        return result;
    }

    let field_manager = update
        .server_side_apply
        .as_ref()
        .and_then(|s| s.field_manager.clone())
        .unwrap_or_else(|| a.ctx.config.field_manager.clone());
    let force_configured = update.server_side_apply.as_ref().is_some_and(|s| s.force);
    let written: Result<Option<Value>, kube::Error> = match (update.type_, &live) {
        (UpdateStrategyType::ReadOnly, None) => {
            result.retry = false;
            return result.fail(
                "NotFound",
                "updateStrategy is ReadOnly and the object does not exist in the member",
            );
        }
        (UpdateStrategyType::ReadOnly, Some(_)) => {
            result.ok(
                "ReadOnly",
                "read only: status is reported, nothing is written",
            );
            Ok(None)
        }
        (UpdateStrategyType::CreateOnly, Some(_)) => {
            result.ok(
                "AlreadyExists",
                "CreateOnly: exists; never changed after creation",
            );
            Ok(None)
        }
        (UpdateStrategyType::CreateOnly, None) => {
            result.ok("Created", "created (CreateOnly)");
            create(&api, &desired).await.map(Some)
        }
        (UpdateStrategyType::ServerSideApply | UpdateStrategyType::Update, live) => {
            let mut take_over = false;
            if let (Some(live), false) = (live, ours) {
                match a.strategy.when_to_take_over {
                    WhenToTakeOver::Never => {
                        return result.fail(
                            "TakeOverRefused",
                            "the object exists in the member and was not created by Atoll; applyStrategy.whenToTakeOver is Never",
                        );
                    }
                    WhenToTakeOver::IfNoDiff => {
                        let diffs = diff(&parsed.object, live);
                        if !diffs.is_empty() {
                            let message = format!(
                                "the object exists in the member, was not created by Atoll and differs from the manifest in {} field(s) (first: {}); applyStrategy.whenToTakeOver is IfNoDiff",
                                diffs.len(),
                                diffs[0].path
                            );
                            result.diff = Some(diffs);
                            return result.fail("TakeOverRefused", message);
                        }
                    }
                    WhenToTakeOver::Always => {}
                }
                take_over = true;
            }
            let manifest_changed = live.as_ref().is_some_and(|l| {
                manifest::annotation(l, ANNOTATION_MANIFEST_HASH)
                    != manifest::annotation(&desired, ANNOTATION_MANIFEST_HASH)
            });
            let drift = live
                .as_ref()
                .map(|l| diff(&parsed.object, l))
                .unwrap_or_default();
            let drifted = ours && !manifest_changed && !drift.is_empty();
            if live.is_some() && !take_over && !manifest_changed && drift.is_empty() {
                result.ok("UpToDate", "applied; the member matches the manifest");
                Ok(None)
            } else {
                let reason = match (live.is_some(), take_over, drifted) {
                    (false, _, _) => "Created",
                    (true, true, _) => "TookOver",
                    (true, false, true) => "DriftReverted",
                    (true, false, false) => "Updated",
                };
                let message = if drifted {
                    format!(
                        "reverted drift in the member: {}",
                        drift
                            .iter()
                            .map(|d| d.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    "applied".to_owned()
                };
                result.ok(reason, message);
                match update.type_ {
                    UpdateStrategyType::Update => match live {
                        None => create(&api, &desired).await.map(Some),
                        Some(live) => {
                            let mut replacement = desired.clone();
                            replacement["metadata"]["resourceVersion"] =
                                live["metadata"]["resourceVersion"].clone();
                            replace(&api, &parsed.name, &replacement).await.map(Some)
                        }
                    },
                    _ => {
                        let mut params = PatchParams::apply(&field_manager);
                        // Atoll is the source of truth for its manifests' fields: reverting
                        // drift or taking over means taking those fields back.
                        params.force = force_configured || drifted || take_over;
                        api.patch(&parsed.name, &params, &Patch::Apply(&desired))
                            .await
                            .and_then(|o| serde_json::to_value(o).map_err(kube::Error::SerdeError))
                            .map(Some)
                    }
                }
            }
        }
    };
    let object = match written {
        Ok(Some(object)) => {
            result.owned_uid = object
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_owned);
            object
        }
        Ok(None) => live.unwrap_or(Value::Null),
        Err(e) => {
            if matches!(&e, kube::Error::Api(s) if s.code == 404) {
                a.ctx.evict(&parsed.gvk);
            }
            result.unknown = ours;
            result.retry = transient(&e);
            return result.fail("ApplyFailed", member_message(&e));
        }
    };
    if !object.is_null() {
        result.observe(&object, rules);
    }
    result
}

async fn create(api: &Api<DynamicObject>, desired: &Value) -> Result<Value, kube::Error> {
    let object: DynamicObject =
        serde_json::from_value(desired.clone()).map_err(kube::Error::SerdeError)?;
    let created = api.create(&PostParams::default(), &object).await?;
    serde_json::to_value(created).map_err(kube::Error::SerdeError)
}

async fn replace(
    api: &Api<DynamicObject>,
    name: &str,
    desired: &Value,
) -> Result<Value, kube::Error> {
    let object: DynamicObject =
        serde_json::from_value(desired.clone()).map_err(kube::Error::SerdeError)?;
    let replaced = api.replace(name, &PostParams::default(), &object).await?;
    serde_json::to_value(replaced).map_err(kube::Error::SerdeError)
}

/// The member's record of a Work, created when missing, carrying the Work's current
/// `deleteOption` (what happens to the applied objects once the Work is gone).
async fn record(ctx: &Ctx, work: &Work) -> Result<AppliedWork, WorkError> {
    let name = work.name_any();
    let name = name.as_str();
    let api: Api<AppliedWork> = Api::all(ctx.member.clone());
    let existing = match api
        .get_opt(name)
        .await
        .map_err(on_member("reading the AppliedWork"))?
    {
        Some(existing) => existing,
        None => {
            let mut record = AppliedWork::new(
                name,
                AppliedWorkSpec {
                    work_name: name.to_owned(),
                    work_namespace: ctx.namespace.clone(),
                    delete_option: work.spec.delete_option.clone(),
                },
            );
            record
                .meta_mut()
                .labels
                .get_or_insert_default()
                .insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
            match api.create(&PostParams::default(), &record).await {
                Ok(created) => created,
                Err(kube::Error::Api(status)) if status.code == 409 => api
                    .get(name)
                    .await
                    .map_err(on_member("reading the AppliedWork"))?,
                Err(e) => return Err(on_member("creating the AppliedWork")(e)),
            }
        }
    };
    if existing.spec.work_namespace != ctx.namespace {
        return Err(WorkError::RecordConflict {
            name: name.to_owned(),
            owner: format!(
                "{}/{}",
                existing.spec.work_namespace, existing.spec.work_name
            ),
        });
    }
    if existing.spec.delete_option != work.spec.delete_option {
        return api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"deleteOption": work.spec.delete_option}})),
            )
            .await
            .map_err(on_member("recording the delete option in the AppliedWork"));
    }
    Ok(existing)
}

async fn write_record(
    ctx: &Ctx,
    name: &str,
    before: &[AppliedResourceMeta],
    after: &[AppliedResourceMeta],
) -> Result<(), WorkError> {
    if before == after {
        return Ok(());
    }
    Api::<AppliedWork>::all(ctx.member.clone())
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"appliedResources": after}})),
        )
        .await
        .map_err(on_member("recording applied resources in the AppliedWork"))?;
    Ok(())
}

/// What deleting one applied resource achieved.
pub(crate) enum Deletion {
    Gone,
    Pending,
}

fn api_in(member: &Client, id: &WorkResourceIdentifier) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(&id.group, &id.version, &id.kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &id.resource);
    if id.namespace.is_empty() {
        Api::all_with(member.clone(), &resource)
    } else {
        Api::namespaced_with(member.clone(), &id.namespace, &resource)
    }
}

/// Deletes exactly the object with the recorded uid, in the foreground (its dependents go
/// first); anything else of that name is left alone.
async fn delete_exact(ctx: &Ctx, applied: &AppliedResourceMeta) -> Result<Deletion, WorkError> {
    delete_exact_in(&ctx.member, applied).await
}

/// [`delete_exact`] with only a member client (what `remove_applied` has).
pub(crate) async fn delete_exact_in(
    member: &Client,
    applied: &AppliedResourceMeta,
) -> Result<Deletion, WorkError> {
    let id = &applied.identifier;
    let api = api_in(member, id);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions {
            uid: Some(applied.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&id.name, &params).await {
        Ok(either) => Ok(if either.is_left() {
            Deletion::Pending
        } else {
            Deletion::Gone
        }),
        // Gone, or replaced by an object with another uid: ours is gone either way.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
            Ok(Deletion::Gone)
        }
        Err(e) => Err(on_member(format!(
            "deleting {} {}/{}",
            id.kind, id.namespace, id.name
        ))(e)),
    }
}

/// Deletes what the record lists and is not orphaned, dropping entries once gone; returns the
/// entries left (still being deleted).
async fn collect(
    ctx: &Ctx,
    work: &Work,
    stale: Vec<AppliedResourceMeta>,
) -> Result<Vec<AppliedResourceMeta>, WorkError> {
    let mut left = Vec::new();
    for applied in stale {
        if manifest::is_orphaned(work.spec.delete_option.as_ref(), &applied.identifier) {
            debug!(name = %applied.identifier.name, "orphaned as the delete option asks");
            continue;
        }
        match delete_exact(ctx, &applied).await {
            Ok(Deletion::Gone) => {}
            Ok(Deletion::Pending) => left.push(applied),
            Err(error) => {
                warn!(%error, "garbage collection");
                left.push(applied);
            }
        }
    }
    Ok(left)
}

/// Deletes everything the Work applied (unless orphaned) and its record. True when done.
async fn clean_up(work: &Work, ctx: &Ctx) -> Result<bool, WorkError> {
    let name = work.name_any();
    let api: Api<AppliedWork> = Api::all(ctx.member.clone());
    let Some(record) = api
        .get_opt(&name)
        .await
        .map_err(on_member("reading the AppliedWork"))?
    else {
        return Ok(true);
    };
    if record.spec.work_namespace != ctx.namespace {
        return Ok(true);
    }
    let before = record.status.unwrap_or_default().applied_resources;
    let left = collect(ctx, work, before.clone()).await?;
    if !left.is_empty() {
        write_record(ctx, &name, &before, &left).await?;
        return Ok(false);
    }
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(true),
        Err(e) => Err(on_member("deleting the AppliedWork")(e)),
    }
}

/// Applies every manifest, collects what is no longer wanted and publishes status. Returns
/// whether to retry soon.
async fn apply_work(work: &Work, ctx: &Ctx) -> Result<bool, WorkError> {
    let name = work.name_any();
    let record = record(ctx, work).await?;
    let before = record.status.unwrap_or_default().applied_resources;
    let a = ApplyCtx {
        ctx,
        work,
        strategy: work.spec.apply_strategy.clone().unwrap_or_default(),
        recorded_uids: before.iter().map(|r| r.uid.as_str()).collect(),
        applied_by: format!("{}/{}", ctx.namespace, name),
    };
    let mut results = Vec::new();
    for (ordinal, parsed) in manifest::in_apply_order(&work.spec) {
        results.push(match parsed {
            Ok(parsed) => apply_manifest(&a, &parsed).await,
            Err(why) => ManifestResult::new(WorkResourceIdentifier {
                ordinal: i64::try_from(ordinal).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .fail("InvalidManifest", why),
        });
    }
    results.sort_by_key(|r| r.identifier.ordinal);

    // The record: what this round applied or owns, plus what could not be looked at.
    let mut after: Vec<AppliedResourceMeta> = Vec::new();
    for result in &results {
        if let Some(uid) = &result.owned_uid
            && !after.iter().any(|r| &r.uid == uid)
        {
            after.push(AppliedResourceMeta {
                identifier: result.identifier.clone(),
                uid: uid.clone(),
            });
        }
    }
    // A manifest that cannot be read names nothing, so whatever it named before is unknown:
    // a typo in a Work must not delete anything from the member.
    let unreadable = results.iter().any(|r| r.applied.1 == "InvalidManifest");
    let mut stale = Vec::new();
    for previous in &before {
        if after.iter().any(|r| r.uid == previous.uid) {
            continue;
        }
        let unknown = results.iter().any(|r| {
            r.unknown
                && r.identifier.group == previous.identifier.group
                && r.identifier.kind == previous.identifier.kind
                && r.identifier.name == previous.identifier.name
                && (r.identifier.resource.is_empty()
                    || r.identifier.namespace == previous.identifier.namespace)
        });
        if unknown || unreadable {
            after.push(previous.clone());
        } else {
            stale.push(previous.clone());
        }
    }
    let mut retry = results.iter().any(|r| r.retry);
    if !stale.is_empty() {
        // Entries leave the record only once their object is gone.
        let left = collect(ctx, work, stale).await?;
        retry |= !left.is_empty();
        after.extend(left);
    }
    write_record(ctx, &name, &before, &after).await?;

    let keys: Vec<ObjectKey> = results
        .iter()
        .filter_map(|r| {
            let resource = r.watch.as_ref()?;
            ctx.watch(resource);
            Some((
                resource.group.clone(),
                resource.plural.clone(),
                r.identifier.namespace.clone(),
                r.identifier.name.clone(),
            ))
        })
        .chain(after.iter().map(|r| {
            (
                r.identifier.group.clone(),
                r.identifier.resource.clone(),
                r.identifier.namespace.clone(),
                r.identifier.name.clone(),
            )
        }))
        .collect();
    lock(&ctx.interest).set(&name, keys);

    publish(work, ctx, &results).await?;
    Ok(retry)
}

async fn publish(work: &Work, ctx: &Ctx, results: &[ManifestResult]) -> Result<(), WorkError> {
    let now = Time(Timestamp::now());
    let generation = work.metadata.generation;
    let current = work.status.clone().unwrap_or_default();
    let manifest_conditions: Vec<ManifestCondition> = results
        .iter()
        .map(|r| {
            let mut list = current
                .manifest_conditions
                .iter()
                .find(|m| m.identifier.ordinal == r.identifier.ordinal)
                .map(|m| m.conditions.clone())
                .unwrap_or_default();
            let (status, reason, message) = &r.applied;
            let mut wanted = vec![conditions::condition(
                CONDITION_APPLIED,
                status,
                reason,
                message.clone(),
                generation,
                now.clone(),
            )];
            match &r.health {
                Some(h) => {
                    wanted.push(conditions::condition(
                        CONDITION_AVAILABLE,
                        h.available,
                        h.reason,
                        h.message.clone(),
                        generation,
                        now.clone(),
                    ));
                    wanted.push(conditions::condition(
                        CONDITION_PROGRESSING,
                        if h.progressing { TRUE } else { FALSE },
                        h.reason,
                        h.message.clone(),
                        generation,
                        now.clone(),
                    ));
                    wanted.push(conditions::condition(
                        CONDITION_DEGRADED,
                        if h.degraded { TRUE } else { FALSE },
                        h.reason,
                        h.message.clone(),
                        generation,
                        now.clone(),
                    ));
                }
                None => wanted.push(conditions::condition(
                    CONDITION_AVAILABLE,
                    UNKNOWN,
                    "Unknown",
                    "the resource's state is not known",
                    generation,
                    now.clone(),
                )),
            }
            if r.report_diff {
                let count = r.diff.as_ref().map(Vec::len).unwrap_or_default();
                wanted.push(conditions::condition(
                    CONDITION_DIFF_REPORTED,
                    TRUE,
                    if count == 0 { "NoDiff" } else { "DiffFound" },
                    format!("{count} field(s) differ from the manifest"),
                    generation,
                    now.clone(),
                ));
            }
            let types: Vec<String> = wanted.iter().map(|c| c.type_.clone()).collect();
            list.retain(|c| types.contains(&c.type_));
            for condition in wanted {
                conditions::set(&mut list, condition);
            }
            ManifestCondition {
                identifier: r.identifier.clone(),
                conditions: list,
                status_feedback: r.feedback.clone(),
                drift_details: None,
                diff_details: r
                    .diff
                    .as_ref()
                    .filter(|d| !d.is_empty())
                    .map(|d| DiffDetails {
                        observed_diffs: d.clone(),
                    }),
            }
        })
        .collect();
    let work_conditions =
        status::aggregate(&current.conditions, &manifest_conditions, generation, &now);
    if work_conditions == current.conditions && manifest_conditions == current.manifest_conditions {
        return Ok(());
    }
    ctx.works
        .patch_status(
            &work.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "conditions": work_conditions,
                "manifestConditions": manifest_conditions,
            }})),
        )
        .await
        .map_err(on_hub("writing the Work's status"))?;
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

/// Sets the Work's Applied and Available conditions to a failure of the whole Work (the member
/// cannot be reached, or its record belongs to another Work), keeping the manifest conditions
/// last observed.
async fn publish_failure(
    work: &Work,
    ctx: &Ctx,
    status: &str,
    reason: &str,
    error: &WorkError,
) -> Result<(), WorkError> {
    let current = work.status.clone().unwrap_or_default();
    let mut work_conditions = current.conditions.clone();
    let now = Time(Timestamp::now());
    for type_ in [CONDITION_APPLIED, CONDITION_AVAILABLE] {
        conditions::set(
            &mut work_conditions,
            conditions::condition(
                type_,
                status,
                reason,
                format!("retrying: {error}"),
                work.metadata.generation,
                now.clone(),
            ),
        );
    }
    if work_conditions == current.conditions {
        return Ok(());
    }
    ctx.works
        .patch_status(
            &work.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": work_conditions}})),
        )
        .await
        .map_err(on_hub("writing the Work's status"))?;
    Ok(())
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
