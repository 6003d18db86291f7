//! Multi-Cluster Services (KEP-1645) for Atoll: exports validated in each member, aggregated
//! across the ClusterSet on the hub, and written back into every member as ServiceImports,
//! derived Services and EndpointSlices.
//!
//! # The parts
//!
//! - [`aggregate`]: the pure rules (no I/O): from every cluster's export of a service, the
//!   ServiceImport spec and each export's Conflict condition.
//! - [`member::MemberSyncer`]: one cluster's side, the **same code in push and pull mode**.
//!   Given a hub client that may be confined to the cluster's own hub namespace
//!   (`atoll-cluster-<name>`) and a member client, it validates the member's ServiceExports,
//!   publishes each valid export's shape and EndpointSlices up into the hub namespace, and
//!   writes down into the member what the hub computed for it.
//! - [`hub::Aggregator`]: the hub's side, with full hub access: reads what every joined,
//!   healthy cluster published, aggregates, and writes each cluster's imports and slices into
//!   that cluster's hub namespace.
//!
//! # The hub representation
//!
//! In each cluster namespace `atoll-cluster-<name>` on the hub, labelled
//! [`LABEL_ROLE`], [`LABEL_NAMESPACE`], [`LABEL_SERVICE`] and `source-cluster`:
//!
//! | object | name | role | written by |
//! |---|---|---|---|
//! | ServiceExport, shape in annotation [`ANNOTATION_SERVICE`] | `<ns>.<svc>` | `export` | member syncer |
//! | EndpointSlice copied from the member | `<ns>.<slice>` | `export` | member syncer |
//! | ServiceImport (aggregated spec, `status.clusters`) | `<ns>.<svc>` | `import` | aggregator |
//! | EndpointSlice of every healthy exporter | `<svc>-<hash>` | `import` | aggregator |
//!
//! The aggregator writes each export's `Conflict` condition into the hub ServiceExport's
//! status, and the member syncer copies it into the member's ServiceExport.
//!
//! # Invariants
//!
//! - **Level-triggered.** Each side keeps watch caches of everything it reads and, after any
//!   event, recomputes the whole desired state from the caches and writes only differences
//!   (server-side apply, so every write is safe to repeat). Nothing is deleted before every
//!   cache has listed once; after that, any object carrying this side's role label that is not
//!   desired is deleted, so a restart leaves no stale imports or slices.
//! - **Atoll deletes only what it created**: everything it writes carries
//!   `app.kubernetes.io/managed-by: atoll` and a [`LABEL_ROLE`]; only objects of its own role
//!   are ever deleted.
//! - **The member syncer touches only its cluster's hub namespace** on the hub.
//!
//! # Must not depend on
//!
//! The controllers, the agent, DNS, the hub API server or the store. Like every library here
//! it picks no `k8s-openapi` version.

pub mod aggregate;
pub mod hub;
pub mod member;
pub mod rbac;
pub mod slices;
mod watch;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "atoll-mcs";
/// Label on everything Atoll creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "atoll");
/// Which part of MCS an object is: [`ROLE_EXPORT`], [`ROLE_IMPORT`] or [`ROLE_MEMBER`].
pub const LABEL_ROLE: &str = "mcs.atoll.io/role";
/// Hub objects a member syncer publishes.
pub const ROLE_EXPORT: &str = "export";
/// Hub objects the aggregator writes for a cluster.
pub const ROLE_IMPORT: &str = "import";
/// Member objects the member syncer writes (ServiceImports, derived Services, slices).
pub const ROLE_MEMBER: &str = "member-import";
/// The member namespace of the service a hub object is about.
pub const LABEL_NAMESPACE: &str = "mcs.atoll.io/namespace";
/// The name of the service a hub object (or a derived Service) is about.
pub const LABEL_SERVICE: &str = "mcs.atoll.io/service";
/// Hub ServiceExport annotation: the exported Service's shape, as JSON
/// ([`aggregate::ExportedService`]).
pub const ANNOTATION_SERVICE: &str = "mcs.atoll.io/service";
/// Hub ServiceImport annotation: the winning `exportedLabels`, as JSON.
pub const ANNOTATION_EXPORTED_LABELS: &str = "mcs.atoll.io/exported-labels";
/// Hub ServiceImport annotation: the winning `exportedAnnotations`, as JSON.
pub const ANNOTATION_EXPORTED_ANNOTATIONS: &str = "mcs.atoll.io/exported-annotations";
/// The Kubernetes label binding an EndpointSlice to a Service.
pub const LABEL_KUBE_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The Kubernetes label naming an EndpointSlice's manager.
pub const LABEL_ENDPOINTSLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Atoll's value of [`LABEL_ENDPOINTSLICE_MANAGED_BY`] (not the Kubernetes controller's
/// `endpointslice-controller.k8s.io`, which would otherwise adopt or delete the slices).
pub const ENDPOINTSLICE_MANAGER: &str = "mcs-controller.atoll.io";

/// The name of a hub ServiceExport or ServiceImport about `namespace/service`.
pub fn hub_object_name(namespace: &str, service: &str) -> String {
    format!("{namespace}.{service}")
}

/// The hub name of a member's EndpointSlice `namespace/slice`.
pub fn hub_export_slice_name(namespace: &str, slice: &str) -> String {
    format!("{namespace}.{slice}")
}

/// The name of an imported slice (on the hub and in the member): unique per service, source
/// cluster and source slice, and stable across restarts.
pub fn import_slice_name(namespace: &str, service: &str, cluster: &str, slice: &str) -> String {
    format!(
        "{service}-{:016x}",
        fnv1a(&[namespace, service, cluster, slice])
    )
}

/// The name of the derived Service of an imported `service` (in the same namespace).
pub fn derived_service_name(service: &str) -> String {
    format!("derived-{:016x}", fnv1a(&[service]))
}

/// FNV-1a 64 over the parts, separated by a byte no name contains: stable across releases,
/// unlike std's hasher.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let separator: &[u8] = if i == 0 { &[] } else { b"/" };
        for byte in separator.iter().chain(part.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinct() {
        assert_eq!(fnv1a(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(
            fnv1a(&["a"]),
            0xaf63_dc4c_8601_ec8c,
            "the FNV-1a test vector"
        );
        let a = import_slice_name("demo", "web", "c1", "web-abc");
        assert_eq!(a, import_slice_name("demo", "web", "c1", "web-abc"));
        assert_ne!(a, import_slice_name("demo", "web", "c2", "web-abc"));
        assert_ne!(
            import_slice_name("ab", "c", "d", "e"),
            import_slice_name("a", "bc", "d", "e")
        );
        assert!(a.starts_with("web-") && a.len() == 4 + 16);
        assert_eq!(derived_service_name("web").len(), 24);
        assert_eq!(hub_object_name("demo", "web"), "demo.web");
    }
}
