//! `atoll hub` (alias `up`): Atoll's own Kubernetes-compatible API server with an embedded
//! store, in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use atoll_apiserver::{Hub, HubConfig};
use atoll_store::Store;
use atoll_store::memory::MemoryStore;
use atoll_store::redb::{RedbOptions, RedbStore};

use crate::cmd::controller::shutdown_signal;

/// Where objects are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The durable embedded store, in `<data-dir>/store.redb`.
    Redb,
    /// In memory: everything is lost on exit (tests, simulations).
    Memory,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Certificates, the store and the admin kubeconfig live here.
    #[arg(long, default_value = "./atoll-data")]
    data_dir: PathBuf,
    /// The HTTPS address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The storage backend.
    #[arg(long, value_enum, default_value_t = StoreKind::Redb)]
    store: StoreKind,
    /// Static bearer tokens, in kube-apiserver's `--token-auth-file` format
    /// (`token,user,uid,"group1,group2"`).
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Extra DNS names or IPs for the serving certificate (first start only).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let (store, compaction_interval): (Arc<dyn Store>, _) = match args.store {
        // redb compacts itself every five minutes.
        StoreKind::Redb => (
            Arc::new(
                RedbStore::open(data_dir.join("store.redb"), RedbOptions::default())
                    .context("opening the store")?,
            ),
            None,
        ),
        StoreKind::Memory => (
            Arc::new(MemoryStore::new()),
            Some(atoll_apiserver::COMPACTION_INTERVAL),
        ),
    };
    let hub = Hub::start(
        store,
        HubConfig {
            data_dir,
            listen: args.listen,
            token_file: args.token_auth_file,
            extra_sans: args.tls_sans,
            compaction_interval,
        },
    )
    .await?;
    println!("Atoll hub serving on https://{}", hub.addr);
    println!("Admin kubeconfig: {}", hub.admin_kubeconfig.display());
    println!("  export KUBECONFIG={}", hub.admin_kubeconfig.display());
    shutdown_signal().await;
    tracing::info!("shutting down");
    hub.shutdown().await;
    Ok(())
}
