//! The member-cluster agent: pull-mode registration, the Work applier and MCS export watching
//! for its own cluster.
//!
//! Status: empty. The agent lands with issues #4 and #5.
