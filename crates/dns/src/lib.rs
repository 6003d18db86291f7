//! Authoritative DNS for `clusterset.local`, fed by the ServiceImports and EndpointSlices of the
//! cluster it serves.
//!
//! Status: empty. It lands with the Multi-Cluster Services issue (#6).
