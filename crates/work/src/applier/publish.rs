//! Writing a Work's status on the hub: per-manifest conditions and the aggregate, or a failure
//! of the whole Work.

use atoll_api::conditions::{self, FALSE, TRUE, UNKNOWN};
use atoll_api::work::{
    CONDITION_APPLIED, CONDITION_AVAILABLE, CONDITION_DEGRADED, CONDITION_PROGRESSING, DiffDetails,
    ManifestCondition, Work,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::error::{Step, WorkError, on_hub};
use crate::status::{self, CONDITION_DIFF_REPORTED};

use super::Ctx;
use super::apply::ManifestResult;

/// Writes the Work's status from this round's results, when it changed: each manifest's
/// conditions, feedback and differences, and the Work's aggregated conditions.
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
            let previous = current
                .manifest_conditions
                .iter()
                .find(|m| m.identifier.ordinal == r.identifier.ordinal)
                .map(|m| m.conditions.clone())
                .unwrap_or_default();
            ManifestCondition {
                identifier: r.identifier.clone(),
                conditions: manifest_conditions(previous, r, generation, &now),
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

/// One manifest's conditions: Applied, then Available, Progressing and Degraded from its
/// health (Available Unknown without), and DiffReported under ReportDiff; conditions of other
/// types are dropped, and one unchanged keeps its transition time.
fn manifest_conditions(
    mut list: Vec<Condition>,
    r: &ManifestResult,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let condition = |type_: &str, status: &str, reason: &str, message: String| {
        conditions::condition(type_, status, reason, message, generation, now.clone())
    };
    let (status, reason, message) = &r.applied;
    let mut wanted = vec![condition(
        CONDITION_APPLIED,
        status,
        reason,
        message.clone(),
    )];
    match &r.health {
        Some(h) => {
            let flag = |on: bool| if on { TRUE } else { FALSE };
            wanted.push(condition(
                CONDITION_AVAILABLE,
                h.available,
                h.reason,
                h.message.clone(),
            ));
            wanted.push(condition(
                CONDITION_PROGRESSING,
                flag(h.progressing),
                h.reason,
                h.message.clone(),
            ));
            wanted.push(condition(
                CONDITION_DEGRADED,
                flag(h.degraded),
                h.reason,
                h.message.clone(),
            ));
        }
        None => wanted.push(condition(
            CONDITION_AVAILABLE,
            UNKNOWN,
            "Unknown",
            "the resource's state is not known".to_owned(),
        )),
    }
    if r.report_diff {
        let count = r.diff.as_ref().map(Vec::len).unwrap_or_default();
        wanted.push(condition(
            CONDITION_DIFF_REPORTED,
            TRUE,
            if count == 0 { "NoDiff" } else { "DiffFound" },
            format!("{count} field(s) differ from the manifest"),
        ));
    }
    let types: Vec<String> = wanted.iter().map(|c| c.type_.clone()).collect();
    list.retain(|c| types.contains(&c.type_));
    for condition in wanted {
        conditions::set(&mut list, condition);
    }
    list
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
