//! Hub-side controllers: cluster inventory (join, health, taints), Work distribution in push
//! mode, and MCS aggregation.
//!
//! Status: empty. The controllers land with issues #4, #5 and #6.
