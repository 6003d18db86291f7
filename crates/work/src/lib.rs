//! Atoll's Work applier: one code path for push mode (the hub holds the member's credentials)
//! and pull mode (the member's agent dials the hub).
//!
//! [`run`] watches the Works of one cluster namespace on the hub and, for each, in the member:
//! - applies every manifest, of any kind (CRDs and cluster-scoped kinds included), resolving
//!   kinds by discovery of their group version; CRDs and Namespaces go first; a kind the member
//!   does not serve yet is retried with backoff and reported (`KindNotServed`);
//! - writes with server-side apply (field manager `atoll`) or the manifest's update strategy
//!   (`Update`, `CreateOnly`, `ReadOnly`), taking over objects Atoll did not create only as
//!   `applyStrategy.whenToTakeOver` allows (`Never` by default);
//! - reports per-manifest conditions (a manifest the member rejects carries the member's
//!   message while the others still apply), availability per kind, status feedback (well-known
//!   values and JSONPath rules), and the aggregated Work conditions;
//! - watches every applied resource in the member (metadata only), so a change there is
//!   reflected in the hub within moments and drift in the manifest's fields is reverted (or,
//!   under `ReportDiff`, only reported);
//! - records every applied resource with its uid in an `AppliedWork`, and deletes exactly those
//!   uids when a manifest is removed or the Work is deleted (as `deleteOption` says), holding
//!   the Work's deletion with the `FINALIZER_WORK_CLEANUP` finalizer until the member is clean;
//! - [`remove_applied`] does that cleanup for every Work of a namespace at once, without an
//!   applier (what unjoining a cluster does).
//!
//! Invariants:
//! - Level-triggered and idempotent: on restart everything converges from the hub's Works,
//!   the member's objects and the AppliedWork records; nothing is lost or duplicated.
//! - Deletes only uids it recorded (preconditioned deletes), never "whatever has this name".
//! - Touches only Works (and their status) in its one hub namespace.
//!
//! Must not depend on: cluster inventory (join, profiles, credentials), the agent, the API
//! server, the store, DNS.

mod applier;
pub mod diff;
pub mod error;
pub mod manifest;
pub mod removal;
pub mod status;

pub use applier::{ApplierConfig, FIELD_MANAGER, release_finalizers, run};
pub use error::{Step, WorkError};
pub use removal::{Removal, RemovalError, Removed, remove_applied};
