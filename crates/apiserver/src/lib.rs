//! The hub's Kubernetes-compatible API server: discovery, CRDs, RBAC and the verbs kubectl and
//! client-go use, over [`atoll_store`].
//!
//! Status: empty. It lands with the hub API server (issue #3).
