//! Removing a cluster's Works from its member, as unjoining does.
//!
//! As in Karmada and OCM, a cluster leaving takes with it what its Works applied: every
//! recorded object (exactly its uid) is deleted, in the foreground, unless the Work's
//! `deleteOption` orphans it (`Orphan`, or `SelectivelyOrphan` and listed), or the caller keeps
//! every workload ([`Removal::keep_all`]), which orphans them all. The AppliedWork records go
//! once their objects are gone, so nothing stays tracked by a record about to lose its CRD.
//! This is the applier's own cleanup of a deleted Work, run by whoever unjoins, so it does not
//! depend on an applier running.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use atoll_api::conditions;
use atoll_api::work::{
    AppliedResourceMeta, AppliedWork, CONDITION_APPLIED, DeleteOption, DeletePropagationPolicy,
    Work, WorkResourceIdentifier,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::applier::{Deletion, REASON_MEMBER_ERROR, REASON_MEMBER_UNREACHABLE, delete_exact_in};
use crate::error::{Step, WorkError, on_hub, on_member};
use crate::manifest;

/// What [`remove_applied`] should do.
#[derive(Debug, Clone)]
pub struct Removal {
    /// The cluster's hub namespace (the Works' namespace, the records' `workNamespace`).
    pub namespace: String,
    /// Orphan every applied object (`atoll unjoin --keep-workloads`), whatever the Works say.
    pub keep_all: bool,
    /// How long to wait for foreground deletions to finish.
    pub timeout: Duration,
}

/// What [`remove_applied`] did, object by object (`kind namespace/name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Objects deleted from the member.
    pub deleted: BTreeSet<String>,
    /// Objects left in the member (orphaned by a `deleteOption` or by `keep_all`).
    pub kept: BTreeSet<String>,
}

/// Why [`remove_applied`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RemovalError {
    /// A request failed (boxed: it names the step, and errors stay small).
    #[error(transparent)]
    Request(Box<WorkError>),
    /// Deletions were still in progress when the wait ended.
    #[error(
        "{} object(s) the Works applied were still being deleted after {timeout:?} (e.g. {example}); run it again to wait longer",
        pending
    )]
    StillDeleting {
        /// How many.
        pending: usize,
        /// One of them.
        example: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The applier of some orphaned Works did not record their new delete option in time.
    #[error(
        "{pending} Work(s) (e.g. {example}) were set to orphan what they applied, but their applier did not record it in the member within {timeout:?}"
    )]
    NotRecorded {
        /// How many.
        pending: usize,
        /// One of them.
        example: String,
        /// How long it waited.
        timeout: Duration,
    },
}

impl From<WorkError> for RemovalError {
    fn from(error: WorkError) -> Self {
        RemovalError::Request(Box::new(error))
    }
}

/// Sets a Work's `deleteOption` to Orphan: whatever removes it leaves what it applied.
pub async fn orphan(works: &Api<Work>, name: &str) -> Result<Work, WorkError> {
    works
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": {"deleteOption": {"propagationPolicy": "Orphan"}}
            })),
        )
        .await
        .map_err(on_hub(Step::OrphanWork(name.to_owned())))
}

/// Orphans every Work `works` holds (see [`orphan`]) and waits until their applier has
/// recorded it in the member's AppliedWorks: until each Work's `Applied` condition observes
/// the orphaning generation from an applier that reached the member (the applier writes the
/// record before the status). This is how a cluster whose member the hub cannot reach (pull
/// mode) keeps its workloads: its agent later removes only what the records do not orphan.
/// Returns how many Works were orphaned.
pub async fn orphan_all(works: &Api<Work>, timeout: Duration) -> Result<usize, RemovalError> {
    let listed = match works.list(&Default::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(e) => return Err(on_hub(Step::ListWorks)(e).into()),
    };
    let mut waiting: BTreeMap<String, i64> = BTreeMap::new();
    for work in &listed {
        let name = work.name_any();
        let orphaned = orphan(works, &name).await?;
        waiting.insert(name, orphaned.metadata.generation.unwrap_or_default());
    }
    let count = waiting.len();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut recorded = Vec::new();
        for (name, generation) in &waiting {
            let Some(work) = works
                .get_opt(name)
                .await
                .map_err(on_hub(Step::ReadWork(name.clone())))?
            else {
                // Gone already: its applier saw its deletion, with the option set.
                recorded.push(name.clone());
                continue;
            };
            let applied = work
                .status
                .as_ref()
                .and_then(|s| conditions::find(&s.conditions, CONDITION_APPLIED));
            if applied.is_some_and(|c| {
                c.observed_generation.unwrap_or_default() >= *generation
                    && c.reason != REASON_MEMBER_ERROR
                    && c.reason != REASON_MEMBER_UNREACHABLE
            }) {
                recorded.push(name.clone());
            }
        }
        for name in recorded {
            waiting.remove(&name);
        }
        let Some(example) = waiting.keys().next() else {
            return Ok(count);
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(RemovalError::NotRecorded {
                pending: waiting.len(),
                example: example.clone(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn describe(id: &WorkResourceIdentifier) -> String {
    if id.namespace.is_empty() {
        format!("{} {}", id.kind, id.name)
    } else {
        format!("{} {}/{}", id.kind, id.namespace, id.name)
    }
}

/// The AppliedWork records of the Works of `namespace` in `member` (none without their CRD).
/// Read them before deleting the Works: an applier still running may finish a deleted Work's
/// cleanup, record included, before [`remove_applied`] looks.
pub async fn applied_records(
    member: &Client,
    namespace: &str,
) -> Result<Vec<AppliedWork>, WorkError> {
    let records: Api<AppliedWork> = Api::all(member.clone());
    match records.list(&Default::default()).await {
        Ok(list) => Ok(list
            .items
            .into_iter()
            .filter(|r| r.spec.work_namespace == namespace)
            .collect()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Vec::new()),
        Err(e) => Err(on_member(Step::ListRecords)(e)),
    }
}

/// What is known of a record: its Work's name, the delete option it carries, and every entry
/// it ever listed.
struct Known {
    work_name: String,
    delete_option: Option<DeleteOption>,
    resources: Vec<AppliedResourceMeta>,
}

fn remember(known: &mut BTreeMap<String, Known>, record: AppliedWork) {
    let entry = known.entry(record.name_any()).or_insert_with(|| Known {
        work_name: record.spec.work_name.clone(),
        delete_option: record.spec.delete_option.clone(),
        resources: Vec::new(),
    });
    for applied in record.status.unwrap_or_default().applied_resources {
        if !entry.resources.iter().any(|a| a.uid == applied.uid) {
            entry.resources.push(applied);
        }
    }
}

/// Deletes from `member` what the Works of `removal.namespace` applied (as each Work's
/// `deleteOption` says, or nothing under `keep_all`), then their AppliedWork records.
/// `delete_options` holds each Work's option by name and `before` the records, both read
/// before the Works were deleted; a record of a Work not in `delete_options` (a pull-mode
/// agent, whose Works are gone when it cleans up) follows the option the record carries, as
/// the applier's sweep treats a vanished Work. What an applier deletes meanwhile counts as
/// deleted. A member without the AppliedWork CRD has nothing to remove.
pub async fn remove_applied(
    member: &Client,
    removal: &Removal,
    delete_options: &BTreeMap<String, Option<DeleteOption>>,
    before: Vec<AppliedWork>,
) -> Result<Removed, RemovalError> {
    let records: Api<AppliedWork> = Api::all(member.clone());
    let deadline = tokio::time::Instant::now() + removal.timeout;
    let mut removed = Removed::default();
    // Every record seen (before the Works went, and since), by name, with every entry it ever
    // listed: an applier cleaning up meanwhile drops entries and records as their objects go,
    // and what it is still deleting must be waited for all the same.
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    for record in before {
        remember(&mut known, record);
    }
    loop {
        for record in applied_records(member, &removal.namespace).await? {
            remember(&mut known, record);
        }
        let mut pending: Vec<String> = Vec::new();
        let mut done: Vec<String> = Vec::new();
        for (record_name, record) in &known {
            let option = if removal.keep_all {
                Some(DeleteOption {
                    propagation_policy: DeletePropagationPolicy::Orphan,
                    selectively_orphans: None,
                })
            } else {
                match delete_options.get(&record.work_name) {
                    Some(option) => option.clone(),
                    None => record.delete_option.clone(),
                }
            };
            let mut left = 0;
            for applied in &record.resources {
                let what = describe(&applied.identifier);
                if manifest::is_orphaned(option.as_ref(), &applied.identifier) {
                    removed.kept.insert(what);
                    continue;
                }
                match delete_exact_in(member, applied).await? {
                    Deletion::Gone => {
                        removed.deleted.insert(what);
                    }
                    Deletion::Pending => {
                        left += 1;
                        pending.push(what);
                    }
                }
            }
            if left == 0 {
                match records.delete(record_name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(on_member(Step::DeleteRecord)(e).into()),
                }
                done.push(record_name.clone());
            }
        }
        for name in done {
            known.remove(&name);
        }
        if pending.is_empty() {
            return Ok(removed);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RemovalError::StillDeleting {
                pending: pending.len(),
                example: pending.swap_remove(0),
                timeout: removal.timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
