//! Storage for the hub API server: versioned objects with watch, behind one interface, with an
//! embedded store by default and etcd for larger installations.
//!
//! Status: empty. The store lands with the hub API server (issue #3); this crate exists now so
//! that the layering in ARCHITECTURE.md is fixed before code arrives.
