//! Real Kubernetes clusters on loopback, for Atoll's integration tests.
//!
//! [`Testbed::start`] runs one `etcd` and N `kube-apiserver`s (each with its
//! own etcd prefix, CA, service-account key and service CIDR), optionally a
//! `kube-controller-manager` per cluster, and returns once every cluster
//! answers `/readyz` (and, with the controller manager, once the `default`
//! service account and its token exist). [`NodeSimulator`] stands in for a
//! kubelet and scheduler so Deployments become ready and Services get
//! endpoints without any container runtime.
//!
//! The binaries come from `hack/testbed.sh`, which builds and caches them;
//! see [`bin_dir`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use atoll_testbed::{NodeSimulator, Testbed, TestbedConfig};
//!
//! let testbed = Testbed::start(TestbedConfig::with_clusters(2)).await?;
//! let [hub, member] = testbed.clusters() else { unreachable!() };
//! let client = member.client().await?;
//! let _node = NodeSimulator::start(client.clone(), "node-0").await?;
//! let out = hub.kubectl().args(["get", "ns"]).output()?;
//! assert!(out.status.success());
//! # Ok(())
//! # }
//! ```
//!
//! A test bed may also be shared by the tests of one binary (in a `static`
//! `OnceLock`, say): statics are never dropped, but the parent-death signal
//! still ends its processes when the test binary exits, and the next test
//! bed to start removes its directory.
//!
//! # Invariants
//!
//! - Every child process dies with its [`Testbed`]: on drop (including
//!   unwinding from a panicking test), and — through the kernel's
//!   parent-death signal — when the test process itself exits or is killed.
//! - Ports are never fixed: every listener gets a port picked free at start,
//!   so any number of test beds can run side by side (nextest runs each test
//!   in its own process).
//! - All state lives in one temporary directory per test bed, removed on
//!   drop; directories left behind by killed test processes are swept by the
//!   next test bed that starts.
//!
//! # Dependencies
//!
//! This crate is test support for the whole workspace and must not depend on
//! any other Atoll crate; it speaks only to Kubernetes.

mod cluster;
mod crds;
mod error;
mod etcd;
mod kubeconfig;
mod node;
mod pki;
mod ports;
mod process;
mod testbed;

use std::path::{Path, PathBuf};

pub use cluster::Cluster;
pub use crds::install_crds;
pub use error::Error;
pub use node::NodeSimulator;
pub use testbed::{Testbed, TestbedConfig};

/// The Kubernetes version `hack/testbed.sh` builds by default.
pub const KUBE_VERSION: &str = "1.20.2";

/// The directory holding `kube-apiserver` and `kube-controller-manager`.
///
/// `ATOLL_TESTBED_BIN` overrides it; otherwise it is
/// `${ATOLL_TESTBED_CACHE:-$HOME/.cache/atoll/testbed}/kubernetes-<version>/bin`,
/// where `hack/testbed.sh` puts them (`ATOLL_KUBE_VERSION` picks the version,
/// as it does for the script). Fails, naming the script, when
/// `kube-apiserver` is not there.
pub fn bin_dir() -> Result<PathBuf, Error> {
    let dir = match std::env::var_os("ATOLL_TESTBED_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = match std::env::var_os("ATOLL_TESTBED_CACHE") {
                Some(cache) => PathBuf::from(cache),
                None => {
                    let home = std::env::var_os("HOME").ok_or_else(|| Error::MissingBinary {
                        binary: "kube-apiserver".into(),
                        dir: PathBuf::from("$HOME/.cache/atoll/testbed"),
                    })?;
                    Path::new(&home).join(".cache/atoll/testbed")
                }
            };
            let version = std::env::var("ATOLL_KUBE_VERSION")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| KUBE_VERSION.to_owned());
            cache.join(format!("kubernetes-{version}")).join("bin")
        }
    };
    require_executable(&dir, "kube-apiserver")?;
    Ok(dir)
}

/// The `etcd` binary: `ATOLL_TESTBED_ETCD`, else `etcd` in [`bin_dir`], else
/// `/usr/bin/etcd` (Debian's `etcd-server`), else `etcd` on `PATH`.
pub fn etcd_bin() -> Result<PathBuf, Error> {
    find_etcd(bin_dir().ok().as_deref())
}

fn find_etcd(bin_dir: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("ATOLL_TESTBED_ETCD") {
        return Ok(PathBuf::from(path));
    }
    if let Some(dir) = bin_dir
        && is_executable(&dir.join("etcd"))
    {
        return Ok(dir.join("etcd"));
    }
    let system = Path::new("/usr/bin/etcd");
    if is_executable(system) {
        return Ok(system.to_path_buf());
    }
    find_on_path("etcd").ok_or_else(|| Error::MissingBinary {
        binary: "etcd".into(),
        dir: system.parent().unwrap_or(system).to_path_buf(),
    })
}

/// The `kubectl` binary: `ATOLL_TESTBED_KUBECTL`, else `kubectl` on `PATH`
/// (falling back to the bare name, so a missing kubectl fails when run).
pub fn kubectl_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ATOLL_TESTBED_KUBECTL") {
        return PathBuf::from(path);
    }
    find_on_path("kubectl").unwrap_or_else(|| PathBuf::from("kubectl"))
}

fn require_executable(dir: &Path, binary: &str) -> Result<PathBuf, Error> {
    let path = dir.join(binary);
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(Error::MissingBinary {
            binary: binary.into(),
            dir: dir.to_path_buf(),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    /// Test beds may be shared between tests (e.g. in a `static`).
    #[test]
    fn handles_are_send_and_sync() {
        assert_send_sync::<crate::Testbed>();
        assert_send_sync::<crate::Cluster>();
        assert_send_sync::<crate::NodeSimulator>();
        assert_send_sync::<crate::Error>();
    }
}
