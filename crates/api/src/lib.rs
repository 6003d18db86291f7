//! Atoll's API types: the SIG-Multicluster kinds and Atoll's extensions to them.
//!
//! This crate is the bottom layer of the workspace. It holds plain data: Rust types for every
//! kind Atoll serves or writes, the well-known names (labels, property names, condition types and
//! reasons), and the generation of their CustomResourceDefinitions.
//!
//! Invariants:
//! - No I/O, no async, no clients. Everything here is a pure function of its inputs.
//! - JSON shapes, field names, scopes and validation match the upstream SIG-Multicluster
//!   projects, so YAML written for upstream applies unchanged. Atoll's own extensions are
//!   optional fields that upstream YAML never sets.
//! - The CRDs committed under `crds/` are exactly what [`crds`] returns; a test enforces it.

// kube-derive takes one `printcolumn(...)` per column, and clippy reads their repeated
// `type_ = "string"` as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod about;
pub mod cluster_profile;
pub mod conditions;
pub mod crd;
pub mod mcs;
mod optional_spec;
pub mod work;

pub use crd::{CrdError, crds, crds_yaml};
