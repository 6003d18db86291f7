//! Writing a Work's status on the hub: per-manifest conditions and the aggregate, or a failure
//! of the whole Work.

use atoll_api::conditions::{self, FALSE, TRUE, UNKNOWN};
use atoll_api::work::{
    CONDITION_APPLIED, CONDITION_AVAILABLE, CONDITION_DEGRADED, CONDITION_PROGRESSING, DiffDetails,
    ManifestCondition, Work,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::error::{Step, WorkError, on_hub};
use crate::status::{self, CONDITION_DIFF_REPORTED};

use super::Ctx;
use super::apply::ManifestResult;

pub(super) async fn publish(
    work: &Work,
    ctx: &Ctx,
    results: &[ManifestResult],
) -> Result<(), WorkError> {
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
        .map_err(on_hub(Step::WriteStatus))?;
    Ok(())
}

/// Sets the Work's Applied and Available conditions to a failure of the whole Work (the member
/// cannot be reached, or its record belongs to another Work), keeping the manifest conditions
/// last observed.
pub(super) async fn publish_failure(
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
        .map_err(on_hub(Step::WriteStatus))?;
    Ok(())
}
