//! The two kinds of hub every hub-side scenario runs against: a test-bed kube-apiserver with
//! Atoll's CRDs (its controller manager signs CSRs), and `atoll hub` (the `atoll-apiserver`
//! crate) started in process with a temporary data directory. Members are always test-bed
//! kube-apiservers.
//!
//! `on_both_hubs!(scenario, ...)` turns each `async fn scenario(kind: HubKind) -> Result<()>`
//! into two tests, `scenario::kube_apiserver` and `scenario::atoll_hub`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use atoll_store::Store;
use atoll_store::memory::MemoryStore;
use atoll_testbed::{Cluster, Testbed, TestbedConfig};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Which hub a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubKind {
    /// Cluster 0 of the test bed: kube-apiserver 1.20 and its controller manager.
    KubeApiserver,
    /// `atoll hub`, in process.
    Atoll,
}

/// `atoll hub` in this process. Its store outlives restarts (as the data directory does for
/// the real command); the server itself (listener, router, control loops, signer) is stopped
/// and started again on the same address.
struct AtollHub {
    server: tokio::sync::Mutex<Option<atoll_apiserver::Hub>>,
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    listen: std::net::SocketAddr,
}

async fn start_atoll(
    dir: &Path,
    store: Arc<dyn Store>,
    listen: std::net::SocketAddr,
) -> Result<atoll_apiserver::Hub> {
    Ok(atoll_apiserver::Hub::start(
        store,
        atoll_apiserver::HubConfig {
            data_dir: dir.to_path_buf(),
            listen,
            token_file: None,
            extra_sans: vec![],
            compaction_interval: None,
            max_token_expiration: atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION,
        },
    )
    .await?)
}

impl AtollHub {
    async fn start() -> Result<AtollHub> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let server = start_atoll(dir.path(), store.clone(), "127.0.0.1:0".parse()?).await?;
        Ok(AtollHub {
            listen: server.addr,
            server: tokio::sync::Mutex::new(Some(server)),
            dir,
            store,
        })
    }
}

/// A hub and the test-bed members.
pub struct Fleet {
    pub kind: HubKind,
    testbed: Option<Testbed>,
    atoll: Option<AtollHub>,
}

impl Fleet {
    /// A hub of `kind` with Atoll's CRDs installed, and `members` test-bed clusters.
    pub async fn start(kind: HubKind, members: usize) -> Result<Fleet> {
        Fleet::start_with(kind, members, true).await
    }

    /// As [`Fleet::start`], choosing whether test-bed clusters run a controller manager.
    pub async fn start_with(
        kind: HubKind,
        members: usize,
        controller_manager: bool,
    ) -> Result<Fleet> {
        let clusters = match kind {
            HubKind::KubeApiserver => members + 1,
            HubKind::Atoll => members,
        };
        let testbed = if clusters == 0 {
            None
        } else {
            Some(
                Testbed::start(TestbedConfig {
                    controller_manager,
                    ..TestbedConfig::with_clusters(clusters)
                })
                .await?,
            )
        };
        let atoll = match kind {
            HubKind::KubeApiserver => None,
            HubKind::Atoll => Some(AtollHub::start().await?),
        };
        let fleet = Fleet {
            kind,
            testbed,
            atoll,
        };
        super::install_crds(&fleet.hub().await?).await?;
        Ok(fleet)
    }

    /// The member clusters.
    pub fn members(&self) -> &[Cluster] {
        let clusters = self.testbed.as_ref().map(Testbed::clusters).unwrap_or(&[]);
        match self.kind {
            HubKind::KubeApiserver => clusters.get(1..).unwrap_or(&[]),
            HubKind::Atoll => clusters,
        }
    }

    fn hub_cluster(&self) -> Option<&Cluster> {
        match self.kind {
            HubKind::KubeApiserver => self.testbed.as_ref()?.clusters().first(),
            HubKind::Atoll => None,
        }
    }

    fn atoll(&self) -> Result<&AtollHub> {
        self.atoll.as_ref().context("atoll hub not started")
    }

    /// An admin client of the hub.
    pub async fn hub(&self) -> Result<Client> {
        match self.hub_cluster() {
            Some(cluster) => Ok(cluster.client().await?),
            None => {
                let kubeconfig = Kubeconfig::read_from(self.hub_kubeconfig_path()?)?;
                let config =
                    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                        .await?;
                Ok(Client::try_from(config)?)
            }
        }
    }

    /// The hub's admin kubeconfig.
    pub fn hub_kubeconfig_path(&self) -> Result<PathBuf> {
        match self.hub_cluster() {
            Some(cluster) => Ok(cluster.kubeconfig_path().to_path_buf()),
            None => Ok(self.atoll()?.dir.path().join("admin.kubeconfig")),
        }
    }

    /// The hub's URL.
    pub fn hub_url(&self) -> Result<String> {
        match self.hub_cluster() {
            Some(cluster) => Ok(cluster.url()),
            None => Ok(format!("https://{}", self.atoll()?.listen)),
        }
    }

    /// The CA the hub's serving certificate chains to, PEM.
    pub fn hub_ca_pem(&self) -> Result<String> {
        match self.hub_cluster() {
            Some(cluster) => Ok(cluster.ca_cert_pem()),
            None => Ok(std::fs::read_to_string(
                self.atoll()?.dir.path().join("pki/ca.crt"),
            )?),
        }
    }

    /// Stops the hub's API server abruptly (the test bed's: SIGKILL; `atoll hub`: stops
    /// listening and ends its connections).
    pub async fn kill_hub(&self) -> Result<()> {
        if let Some(cluster) = self.hub_cluster() {
            cluster.kill_apiserver();
            return Ok(());
        }
        let server = self.atoll()?.server.lock().await.take();
        if let Some(server) = server {
            server.shutdown().await;
        }
        Ok(())
    }

    /// Starts the hub's API server again, on the same address, over the same data.
    pub async fn restart_hub(&self) -> Result<()> {
        if let Some(cluster) = self.hub_cluster() {
            cluster.restart_apiserver().await?;
            return Ok(());
        }
        let atoll = self.atoll()?;
        let mut slot = atoll.server.lock().await;
        if let Some(server) = slot.take() {
            server.shutdown().await;
        }
        *slot = Some(start_atoll(atoll.dir.path(), atoll.store.clone(), atoll.listen).await?);
        Ok(())
    }

    /// The directory holding the atoll hub's data, if it is one.
    pub fn atoll_data_dir(&self) -> Option<&Path> {
        self.atoll.as_ref().map(|a| a.dir.path())
    }
}

/// Runs each scenario against both hubs, as the tests `<scenario>::kube_apiserver` and
/// `<scenario>::atoll_hub`.
#[macro_export]
macro_rules! on_both_hubs {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kube_apiserver() -> anyhow::Result<()> {
                super::$scenario(super::common::hub::HubKind::KubeApiserver).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn atoll_hub() -> anyhow::Result<()> {
                super::$scenario(super::common::hub::HubKind::Atoll).await
            }
        }
    )*};
}
