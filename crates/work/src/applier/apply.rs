//! Applying a Work: each manifest by its kind, update strategy and take-over policy, then the
//! record, garbage collection of what is no longer wanted, the member watches and status.

use std::collections::HashSet;

use atoll_api::conditions::{FALSE, TRUE, UNKNOWN};
use atoll_api::work::{
    AppliedResourceMeta, ApplyStrategy, ApplyStrategyType, FeedbackRule, FieldDifference,
    StatusFeedback, UpdateStrategy, UpdateStrategyType, WhenToTakeOver, Work,
    WorkResourceIdentifier,
};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::Scope;
use serde_json::Value;

use crate::diff::diff;
use crate::error::WorkError;
use crate::manifest::{self, ANNOTATION_APPLIED_BY, ANNOTATION_MANIFEST_HASH, Parsed};
use crate::status::{self, Health};

use super::publish::publish;
use super::record::{collect, record, write_record};
use super::{Ctx, ObjectKey, lock};

/// The outcome of one manifest.
pub(super) struct ManifestResult {
    pub(super) identifier: WorkResourceIdentifier,
    pub(super) applied: (&'static str, &'static str, String),
    pub(super) health: Option<Health>,
    pub(super) feedback: Option<StatusFeedback>,
    pub(super) diff: Option<Vec<FieldDifference>>,
    pub(super) report_diff: bool,
    /// The uid to record as applied by this Work.
    pub(super) owned_uid: Option<String>,
    /// Nothing could be learned about the object: keep what the record says about it.
    pub(super) unknown: bool,
    /// Try again soon.
    pub(super) retry: bool,
    pub(super) watch: Option<ApiResource>,
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
        self.set_failed(reason, message);
        self
    }

    fn set_failed(&mut self, reason: &'static str, message: impl Into<String>) {
        self.applied = (FALSE, reason, message.into());
    }

    fn ok(&mut self, reason: &'static str, message: impl Into<String>) {
        self.applied = (TRUE, reason, message.into());
    }

    fn observe(&mut self, object: &Value, rules: &[FeedbackRule]) {
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

/// Applies one manifest: where it goes, what the member holds, then the write its strategy
/// and the take-over policy allow, and what the member then shows.
async fn apply_manifest(a: &ApplyCtx<'_>, parsed: &Parsed) -> ManifestResult {
    let mut result = ManifestResult::new(parsed.identifier());
    let Some((api, namespace)) = target(a, parsed, &mut result).await else {
        return result;
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
    if a.strategy.type_ == ApplyStrategyType::ReportDiff {
        return report_diff(result, parsed, live.as_ref(), rules);
    }
    let desired = manifest::desired(parsed, namespace.as_deref(), &a.applied_by);
    let write = Write {
        a,
        parsed,
        api: &api,
        live: live.as_ref(),
        ours,
        desired: &desired,
        update: &update,
    };
    let Some(written) = write.by_strategy(&mut result).await else {
        return result;
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

/// The member API a manifest is written through, and its namespace (`default` for a
/// namespaced kind without one); fills in the identifier's resource and namespace. `None`,
/// with `result` failed, while the member does not serve the kind or discovery fails.
async fn target(
    a: &ApplyCtx<'_>,
    parsed: &Parsed,
    result: &mut ManifestResult,
) -> Option<(Api<DynamicObject>, Option<String>)> {
    let (resource, caps) = match a.ctx.resolve(&parsed.gvk).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            result.unknown = true;
            result.retry = true;
            let api_version = parsed
                .object
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            result.set_failed(
                "KindNotServed",
                format!(
                    "the member does not serve kind {} in {api_version} (yet); retrying with backoff",
                    parsed.gvk.kind
                ),
            );
            return None;
        }
        Err(e) => {
            result.unknown = true;
            result.retry = true;
            result.set_failed("DiscoveryFailed", member_message(&e));
            return None;
        }
    };
    let namespace = match caps.scope {
        Scope::Namespaced if parsed.namespace.is_empty() => Some("default".to_owned()),
        Scope::Namespaced => Some(parsed.namespace.clone()),
        Scope::Cluster => None,
    };
    result.identifier.resource = resource.plural.clone();
    result.identifier.namespace = namespace.clone().unwrap_or_default();
    result.watch = Some(resource.clone());
    let api = match &namespace {
        Some(ns) => Api::namespaced_with(a.ctx.member.clone(), ns, &resource),
        None => Api::all_with(a.ctx.member.clone(), &resource),
    };
    Some((api, namespace))
}

/// Under `ReportDiff`: nothing is written; how the member differs from the manifest is.
fn report_diff(
    mut result: ManifestResult,
    parsed: &Parsed,
    live: Option<&Value>,
    rules: &[FeedbackRule],
) -> ManifestResult {
    result.report_diff = true;
    let diffs = match live {
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
    if let Some(live) = live {
        result.observe(live, rules);
    }
    result
}

/// One manifest's write, as its update strategy says.
struct Write<'a> {
    a: &'a ApplyCtx<'a>,
    parsed: &'a Parsed,
    api: &'a Api<DynamicObject>,
    live: Option<&'a Value>,
    /// Whether the live object is the Work's own (recorded, or annotated as applied by it).
    ours: bool,
    desired: &'a Value,
    update: &'a UpdateStrategy,
}

impl Write<'_> {
    /// What was written (`Ok(None)`: nothing needed writing), or `None` when the write was
    /// refused (`result` says why).
    async fn by_strategy(
        &self,
        result: &mut ManifestResult,
    ) -> Option<Result<Option<Value>, kube::Error>> {
        match (self.update.type_, self.live) {
            (UpdateStrategyType::ReadOnly, None) => {
                result.retry = false;
                result.set_failed(
                    "NotFound",
                    "updateStrategy is ReadOnly and the object does not exist in the member",
                );
                None
            }
            (UpdateStrategyType::ReadOnly, Some(_)) => {
                result.ok(
                    "ReadOnly",
                    "read only: status is reported, nothing is written",
                );
                Some(Ok(None))
            }
            (UpdateStrategyType::CreateOnly, Some(_)) => {
                result.ok(
                    "AlreadyExists",
                    "CreateOnly: exists; never changed after creation",
                );
                Some(Ok(None))
            }
            (UpdateStrategyType::CreateOnly, None) => {
                result.ok("Created", "created (CreateOnly)");
                Some(create(self.api, self.desired).await.map(Some))
            }
            (UpdateStrategyType::ServerSideApply | UpdateStrategyType::Update, _) => {
                let take_over = self.may_take_over(result)?;
                Some(self.apply(take_over, result).await)
            }
        }
    }

    /// Whether a live object Atoll did not create is taken over (`Some(false)`: it is Atoll's
    /// own, or there is none); `None`, with `result` failed, when `whenToTakeOver` refuses.
    fn may_take_over(&self, result: &mut ManifestResult) -> Option<bool> {
        let Some(live) = self.live.filter(|_| !self.ours) else {
            return Some(false);
        };
        match self.a.strategy.when_to_take_over {
            WhenToTakeOver::Never => {
                result.set_failed(
                    "TakeOverRefused",
                    "the object exists in the member and was not created by Atoll; applyStrategy.whenToTakeOver is Never",
                );
                None
            }
            WhenToTakeOver::IfNoDiff => {
                let diffs = diff(&self.parsed.object, live);
                let Some(first) = diffs.first() else {
                    return Some(true);
                };
                let message = format!(
                    "the object exists in the member, was not created by Atoll and differs from the manifest in {} field(s) (first: {}); applyStrategy.whenToTakeOver is IfNoDiff",
                    diffs.len(),
                    first.path
                );
                result.diff = Some(diffs);
                result.set_failed("TakeOverRefused", message);
                None
            }
            WhenToTakeOver::Always => Some(true),
        }
    }

    /// Server-side apply or replace, unless the member already matches: reverts drift, takes
    /// over when allowed, and says which of these it did.
    async fn apply(
        &self,
        take_over: bool,
        result: &mut ManifestResult,
    ) -> Result<Option<Value>, kube::Error> {
        let manifest_changed = self.live.is_some_and(|l| {
            manifest::annotation(l, ANNOTATION_MANIFEST_HASH)
                != manifest::annotation(self.desired, ANNOTATION_MANIFEST_HASH)
        });
        let drift = self
            .live
            .map(|l| diff(&self.parsed.object, l))
            .unwrap_or_default();
        let drifted = self.ours && !manifest_changed && !drift.is_empty();
        if self.live.is_some() && !take_over && !manifest_changed && drift.is_empty() {
            result.ok("UpToDate", "applied; the member matches the manifest");
            return Ok(None);
        }
        let reason = match (self.live.is_some(), take_over, drifted) {
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
        let name = &self.parsed.name;
        if self.update.type_ == UpdateStrategyType::Update {
            return match self.live {
                None => create(self.api, self.desired).await.map(Some),
                Some(live) => {
                    let mut replacement = self.desired.clone();
                    let version = live
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(Value::Null);
                    if let Some(metadata) = replacement
                        .get_mut("metadata")
                        .and_then(Value::as_object_mut)
                    {
                        metadata.insert("resourceVersion".into(), version);
                    }
                    replace(self.api, name, &replacement).await.map(Some)
                }
            };
        }
        let field_manager = self
            .update
            .server_side_apply
            .as_ref()
            .and_then(|s| s.field_manager.clone())
            .unwrap_or_else(|| self.a.ctx.config.field_manager.clone());
        let mut params = PatchParams::apply(&field_manager);
        // Atoll is the source of truth for its manifests' fields: reverting drift or taking
        // over means taking those fields back.
        params.force = self
            .update
            .server_side_apply
            .as_ref()
            .is_some_and(|s| s.force)
            || drifted
            || take_over;
        self.api
            .patch(name, &params, &Patch::Apply(self.desired))
            .await
            .and_then(|o| serde_json::to_value(o).map_err(kube::Error::SerdeError))
            .map(Some)
    }
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

/// Applies every manifest, collects what is no longer wanted and publishes status. Returns
/// whether to retry soon.
pub(super) async fn apply_work(work: &Work, ctx: &Ctx) -> Result<bool, WorkError> {
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
