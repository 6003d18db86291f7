//! The attack suite: one test per hole found by attacking Atoll (issue 13 and the README
//! walkthrough's token bug), each written as the attack and asserting that it now fails.
//! SECURITY.md names the attacker each module plays.
//!
//! - `hub_requests`: an authenticated tenant or anonymous client against `atoll hub`'s HTTP
//!   surface (paths, patches, sizes, connections, headers, tokens).
//! - `hub_resources`: a client that means to exhaust `atoll hub`'s memory and connections
//!   (oversized objects, stalled watches, slow and idle connections, panics).
//! - `hub_admission`: a tenant's writes that try to escalate through RBAC bindings, CRDs,
//!   CSRs and CEL rules.
//! - `pull_identity`: bootstrap tokens and agent identities in pull mode.
//! - `member_credentials`: member kubeconfigs the hub stores and loads.
//! - `mcs_identity`: a compromised agent or member admin against the MCS aggregator.
//! - `dns`: an anonymous DNS client against `atoll dns`.

mod dns;
mod hub_admission;
mod hub_requests;
mod hub_resources;
mod mcs_identity;
mod member_credentials;
mod pull_identity;
mod support;
