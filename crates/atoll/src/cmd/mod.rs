//! One module per subcommand.

pub mod controller;
pub mod crds;
pub mod dns;
pub mod get;
pub mod hub;
pub mod join;
pub mod pull;
pub mod work;
