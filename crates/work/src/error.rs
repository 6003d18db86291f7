//! Why a Work could not be reconciled, naming the step that failed (as kube-runtime's watcher
//! errors do), so that callers can match on it.

/// Why a Work could not be reconciled this time (it is retried with backoff). Per-manifest
/// failures are not errors: they are conditions in the Work's status.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// A request to the hub failed.
    #[error("hub: {step}: {source}")]
    Hub {
        /// What was being done.
        step: Step,
        /// What happened.
        source: kube::Error,
    },
    /// A request to the member failed.
    #[error("member: {step}: {source}")]
    Member {
        /// What was being done.
        step: Step,
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

/// The step of applying or removing Works that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Reading the AppliedWork CRD in the member.
    ReadAppliedWorkCrd,
    /// Creating the AppliedWork CRD in the member.
    CreateAppliedWorkCrd,
    /// Bringing the AppliedWork CRD Atoll installed up to date.
    UpdateAppliedWorkCrd,
    /// Waiting for the AppliedWork CRD to be served.
    AwaitAppliedWorkCrd,
    /// Reading a Work's AppliedWork record.
    ReadRecord,
    /// Creating a Work's AppliedWork record.
    CreateRecord,
    /// Recording the Work's delete option in its AppliedWork.
    RecordDeleteOption,
    /// Recording the applied resources in the AppliedWork's status.
    RecordAppliedResources,
    /// Deleting an AppliedWork record.
    DeleteRecord,
    /// Listing the member's AppliedWork records.
    ListRecords,
    /// Deleting an object a Work applied.
    DeleteApplied {
        /// Its kind.
        kind: String,
        /// Its namespace, empty when cluster-scoped.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Adding or removing a Work's cleanup finalizer.
    UpdateFinalizers,
    /// Writing a Work's status.
    WriteStatus,
    /// Listing Works.
    ListWorks,
    /// Reading a Work, by name.
    ReadWork(String),
    /// Setting a Work's delete option to Orphan, by name.
    OrphanWork(String),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::ReadAppliedWorkCrd => f.write_str("reading the AppliedWork CRD"),
            Step::CreateAppliedWorkCrd => f.write_str("creating the AppliedWork CRD"),
            Step::UpdateAppliedWorkCrd => f.write_str("updating the AppliedWork CRD"),
            Step::AwaitAppliedWorkCrd => f.write_str("waiting for the AppliedWork CRD"),
            Step::ReadRecord => f.write_str("reading the AppliedWork"),
            Step::CreateRecord => f.write_str("creating the AppliedWork"),
            Step::RecordDeleteOption => {
                f.write_str("recording the delete option in the AppliedWork")
            }
            Step::RecordAppliedResources => {
                f.write_str("recording applied resources in the AppliedWork")
            }
            Step::DeleteRecord => f.write_str("deleting the AppliedWork"),
            Step::ListRecords => f.write_str("listing AppliedWorks"),
            Step::DeleteApplied {
                kind,
                namespace,
                name,
            } if namespace.is_empty() => write!(f, "deleting {kind} {name}"),
            Step::DeleteApplied {
                kind,
                namespace,
                name,
            } => write!(f, "deleting {kind} {namespace}/{name}"),
            Step::UpdateFinalizers => f.write_str("updating the Work's finalizers"),
            Step::WriteStatus => f.write_str("writing the Work's status"),
            Step::ListWorks => f.write_str("listing Works"),
            Step::ReadWork(name) => write!(f, "reading Work {name}"),
            Step::OrphanWork(name) => write!(f, "orphaning Work {name}"),
        }
    }
}

impl WorkError {
    /// The step that failed, unless the error is not a failed request.
    pub fn step(&self) -> Option<&Step> {
        match self {
            WorkError::Hub { step, .. } | WorkError::Member { step, .. } => Some(step),
            WorkError::RecordConflict { .. } => None,
        }
    }
}

pub(crate) fn on_hub(step: Step) -> impl FnOnce(kube::Error) -> WorkError {
    move |source| WorkError::Hub { step, source }
}

pub(crate) fn on_member(step: Step) -> impl FnOnce(kube::Error) -> WorkError {
    move |source| WorkError::Member { step, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_step_and_callers_can_match_it() {
        let error = on_member(Step::DeleteApplied {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            name: "cm".into(),
        })(kube::Error::LinesCodecMaxLineLengthExceeded);
        assert!(
            error
                .to_string()
                .starts_with("member: deleting ConfigMap default/cm: "),
            "{error}"
        );
        assert!(matches!(
            error.step(),
            Some(Step::DeleteApplied { kind, .. }) if kind == "ConfigMap"
        ));
        let cluster_scoped = Step::DeleteApplied {
            kind: "Namespace".into(),
            namespace: String::new(),
            name: "app".into(),
        };
        assert_eq!(cluster_scoped.to_string(), "deleting Namespace app");
        let conflict = WorkError::RecordConflict {
            name: "w".into(),
            owner: "ns/w".into(),
        };
        assert_eq!(conflict.step(), None);
    }
}
