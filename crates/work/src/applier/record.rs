//! The member's AppliedWork records: the CRD, one record per Work with what it applied, and
//! garbage collection of exactly the recorded uids (as the Work's `deleteOption` says).

use std::time::Duration;

use atoll_api::work::{
    AppliedResourceMeta, AppliedWork, AppliedWorkSpec, Work, WorkResourceIdentifier,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
    PropagationPolicy,
};
use kube::core::GroupVersionKind;
use kube::runtime::wait::{await_condition, conditions as wait_conditions};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::error::{Step, WorkError, on_member};
use crate::manifest;

use super::{Ctx, MANAGED_BY};

/// Annotation on the AppliedWork CRD Atoll installs: a hash of its versions (schemas), so
/// that an applier of a later Atoll brings it up to date, once.
const ANNOTATION_CRD_HASH: &str = "work.atoll.io/crd-hash";

/// Creates the AppliedWork CRD in the member unless it exists (bringing the versions of one
/// Atoll installed up to date, so that no recorded field is pruned), and waits until it is
/// served.
pub(super) async fn install_applied_work_crd(member: &Client) -> Result<(), WorkError> {
    let crds: Api<CustomResourceDefinition> = Api::all(member.clone());
    let mut crd = AppliedWork::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let versions = json!(crd.spec.versions);
    let versions_hash = manifest::hash(&versions);
    let existing = crds
        .get_opt(&name)
        .await
        .map_err(on_member(Step::ReadAppliedWorkCrd))?;
    if let Some(existing) = &existing
        && existing.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
        && existing.annotations().get(ANNOTATION_CRD_HASH) != Some(&versions_hash)
    {
        crds.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {ANNOTATION_CRD_HASH: versions_hash}},
                "spec": {"versions": versions},
            })),
        )
        .await
        .map_err(on_member(Step::UpdateAppliedWorkCrd))?;
        info!("updated the AppliedWork CRD in the member");
    }
    if existing.is_none() {
        crd.metadata
            .labels
            .get_or_insert_default()
            .insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        crd.metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_CRD_HASH.into(), versions_hash);
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => info!("installed the AppliedWork CRD in the member"),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(on_member(Step::CreateAppliedWorkCrd)(e)),
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
        step: Step::AwaitAppliedWorkCrd,
        source: kube::Error::Service(Box::new(e)),
    })?;
    Ok(())
}

/// The member's record of a Work, created when missing, carrying the Work's current
/// `deleteOption` (what happens to the applied objects once the Work is gone).
pub(super) async fn record(ctx: &Ctx, work: &Work) -> Result<AppliedWork, WorkError> {
    let name = work.name_any();
    let name = name.as_str();
    let api: Api<AppliedWork> = Api::all(ctx.member.clone());
    let existing = match api
        .get_opt(name)
        .await
        .map_err(on_member(Step::ReadRecord))?
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
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    api.get(name).await.map_err(on_member(Step::ReadRecord))?
                }
                Err(e) => return Err(on_member(Step::CreateRecord)(e)),
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
            .map_err(on_member(Step::RecordDeleteOption));
    }
    Ok(existing)
}

pub(super) async fn write_record(
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
        .map_err(on_member(Step::RecordAppliedResources))?;
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
        Err(e) => Err(on_member(Step::DeleteApplied {
            kind: id.kind.clone(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
        })(e)),
    }
}

/// Deletes what the record lists and is not orphaned, dropping entries once gone; returns the
/// entries left (still being deleted).
pub(super) async fn collect(
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
pub(super) async fn clean_up(work: &Work, ctx: &Ctx) -> Result<bool, WorkError> {
    let name = work.name_any();
    let api: Api<AppliedWork> = Api::all(ctx.member.clone());
    let Some(record) = api
        .get_opt(&name)
        .await
        .map_err(on_member(Step::ReadRecord))?
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
        Err(e) => Err(on_member(Step::DeleteRecord)(e)),
    }
}
