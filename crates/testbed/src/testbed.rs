//! The test bed: one etcd, N clusters, one temporary directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{ClusterSpec, MAX_CLUSTERS};
use crate::etcd::Etcd;
use crate::{Cluster, Error};

/// The prefix of every test bed's directory: `atoll-testbed-<pid>-<random>`.
const DIR_PREFIX: &str = "atoll-testbed-";
/// A file marking a directory kept on purpose (`keep_dir`).
const KEEP_MARKER: &str = "KEEP";

/// What to start.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// How many clusters (API servers) share the etcd. At least one.
    pub clusters: usize,
    /// Run a kube-controller-manager per cluster, so Deployments get
    /// ReplicaSets and pods, Services get endpoints, namespaces are garbage
    /// collected and service accounts get tokens. Default: true.
    pub controller_manager: bool,
    /// How long starting may take in all, before [`Testbed::start`] gives up.
    /// Default: 120 s (generous: tests run side by side on small machines).
    pub startup_timeout: Duration,
    /// Keep the test bed's directory after drop, for debugging. Default:
    /// true when the environment variable `ATOLL_TESTBED_KEEP` is set.
    pub keep_dir: bool,
    /// Where to create the test bed's directory. Default:
    /// `ATOLL_TESTBED_TMPDIR`, else the system's temporary directory.
    pub parent_dir: Option<PathBuf>,
    /// Where `kube-apiserver` and `kube-controller-manager` (and optionally
    /// `etcd`) are. Default: [`bin_dir`](crate::bin_dir).
    pub bin_dir: Option<PathBuf>,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        TestbedConfig {
            clusters: 1,
            controller_manager: true,
            startup_timeout: Duration::from_secs(120),
            keep_dir: std::env::var_os("ATOLL_TESTBED_KEEP").is_some_and(|v| !v.is_empty()),
            parent_dir: None,
            bin_dir: None,
        }
    }
}

impl TestbedConfig {
    /// The default configuration with `clusters` clusters.
    pub fn with_clusters(clusters: usize) -> Self {
        TestbedConfig {
            clusters,
            ..TestbedConfig::default()
        }
    }
}

/// Running Kubernetes clusters sharing one etcd.
///
/// Dropping it kills every process it started and deletes its directory.
#[derive(Debug)]
pub struct Testbed {
    // Fields drop in declaration order: clusters (controller managers, then
    // API servers), then etcd, then the directory they all wrote to.
    clusters: Vec<Cluster>,
    etcd: Etcd,
    dir: tempfile::TempDir,
}

impl Testbed {
    /// Starts one etcd and `cfg.clusters` clusters, and returns when all are
    /// ready: `/readyz` answers `ok`, the `default` namespace exists and,
    /// with the controller manager, the `default` service account in
    /// `default` has its token. On failure everything started so far is
    /// stopped again, and the error carries the end of the failing
    /// component's log.
    pub async fn start(cfg: TestbedConfig) -> Result<Testbed, Error> {
        if cfg.clusters == 0 || cfg.clusters > MAX_CLUSTERS {
            return Err(Error::Config(format!(
                "clusters must be between 1 and {MAX_CLUSTERS}, got {}",
                cfg.clusters
            )));
        }
        let bin_dir = match &cfg.bin_dir {
            Some(dir) => {
                crate::require_executable(dir, "kube-apiserver")?;
                dir.clone()
            }
            None => crate::bin_dir()?,
        };
        let etcd_bin = crate::find_etcd(Some(&bin_dir))?;
        let started = Instant::now();
        let deadline = started + cfg.startup_timeout;

        let parent = match &cfg.parent_dir {
            Some(dir) => dir.clone(),
            None => std::env::var_os("ATOLL_TESTBED_TMPDIR")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        };
        std::fs::create_dir_all(&parent)
            .map_err(Error::io(format!("creating {}", parent.display())))?;
        sweep_stale_dirs(&parent);
        let mut dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(&parent)
            .map_err(Error::io(format!(
                "creating a test-bed directory in {}",
                parent.display()
            )))?;
        if cfg.keep_dir {
            dir.disable_cleanup(true);
            // The stale-directory sweep spares directories marked so.
            let _ = std::fs::write(dir.path().join(KEEP_MARKER), b"");
            tracing::info!(dir = %dir.path().display(), "keeping the test-bed directory");
        }

        let etcd = Etcd::start(&etcd_bin, dir.path(), deadline).await?;
        let etcd_url = etcd.url();
        let clusters = futures::future::try_join_all((0..cfg.clusters).map(|index| {
            let name = format!("cluster-{index}");
            Cluster::start(ClusterSpec {
                dir: dir.path().join(&name),
                name,
                index,
                bin_dir: &bin_dir,
                etcd_url: etcd_url.clone(),
                controller_manager: cfg.controller_manager,
                deadline,
            })
        }))
        .await?;
        tracing::info!(
            clusters = clusters.len(),
            elapsed = ?started.elapsed(),
            dir = %dir.path().display(),
            "test bed ready"
        );
        Ok(Testbed {
            clusters,
            etcd,
            dir,
        })
    }

    /// The clusters, in order (`cluster-0`, `cluster-1`, …).
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// The shared etcd's client URL.
    pub fn etcd_url(&self) -> String {
        self.etcd.url()
    }

    /// The test bed's directory: `etcd.log`, and one directory per cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process ids of every process the test bed runs.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.clusters.iter().flat_map(Cluster::pids).collect();
        pids.push(self.etcd.pid());
        pids
    }
}

/// Removes directories of test beds whose process is gone (killed before it
/// could clean up). Best effort: errors are ignored.
fn sweep_stale_dirs(parent: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && !entry.path().join(KEEP_MARKER).exists()
        {
            tracing::debug!(dir = %entry.path().display(), "removing a stale test-bed directory");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
