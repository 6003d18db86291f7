//! Attacks: see the suite's module list in main.rs.
