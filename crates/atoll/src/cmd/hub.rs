//! `atoll hub` (alias `up`): Atoll's own Kubernetes-compatible API server with an embedded
//! store, in one process, with Atoll's CRDs installed and every hub-side controller running
//! inside it over the in-process client. `--api-only` serves the bare Kubernetes API, as the
//! lightweight member clusters of fleet simulations need.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use atoll_apiserver::{ConnectionLimits, Hub, HubConfig};
use atoll_store::Store;
use atoll_store::memory::MemoryStore;
use atoll_store::redb::{RedbOptions, RedbStore};

use crate::cmd::controller::{ControllerOptions, run_controllers, shutdown_signal};
use crate::cmd::crds;

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
    /// The longest lifetime a ServiceAccount TokenRequest gets; longer requests are shortened
    /// to it with a warning, as kube-apiserver's flag of the same name (0: no cap; otherwise
    /// from 1h to 2^32 seconds).
    #[arg(long, default_value = "8760h", value_parser = parse_max_expiration)]
    service_account_max_token_expiration: Duration,
    /// Extra DNS names or IPs for the serving certificate (first start only).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Serve the Kubernetes API only: no Atoll CRDs and no Atoll controllers (for lightweight
    /// member clusters and simulations).
    #[arg(long)]
    api_only: bool,
    /// Seconds a client gets to finish its TLS handshake.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    tls_handshake_timeout: u64,
    /// Seconds a client gets to send a request's headers (kube-apiserver's 32 s).
    #[arg(long, value_name = "SECONDS", default_value_t = 32)]
    header_read_timeout: u64,
    /// Seconds a connection with no request in flight stays open (kube-apiserver's 90 s);
    /// watches and other running requests keep theirs open.
    #[arg(long, value_name = "SECONDS", default_value_t = 90)]
    idle_timeout: u64,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    #[command(flatten)]
    controllers: ControllerOptions,
}

impl Args {
    fn connection_limits(&self) -> anyhow::Result<ConnectionLimits> {
        let positive = |name: &str, secs: u64| {
            anyhow::ensure!(secs > 0, "--{name} must be at least 1 second");
            Ok(Duration::from_secs(secs))
        };
        Ok(ConnectionLimits {
            tls_handshake_timeout: positive("tls-handshake-timeout", self.tls_handshake_timeout)?,
            header_read_timeout: positive("header-read-timeout", self.header_read_timeout)?,
            idle_timeout: positive("idle-timeout", self.idle_timeout)?,
            max_connections: usize::try_from(self.max_connections)
                .context("--max-connections is too large")?,
            ..ConnectionLimits::default()
        })
    }
}

/// `0` (no cap) or a duration as `--ttl` reads it (90s, 30m, 1h, 2h30m, 1d).
fn parse_max_expiration(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "0" | "0s" => Ok(Duration::ZERO),
        other => crate::cmd::pull::parse_duration(other),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let limits = args.connection_limits()?;
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
    let hub = Hub::start_with_limits(
        store,
        HubConfig {
            data_dir,
            listen: args.listen,
            token_file: args.token_auth_file,
            extra_sans: args.tls_sans,
            compaction_interval,
            max_token_expiration: args.service_account_max_token_expiration,
        },
        limits,
    )
    .await?;
    println!("Atoll hub serving on https://{}", hub.addr);
    println!("Admin kubeconfig: {}", hub.admin_kubeconfig.display());
    println!("  export KUBECONFIG={}", hub.admin_kubeconfig.display());
    let outcome = if args.api_only {
        shutdown_signal().await;
        Ok(())
    } else {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut controllers =
            tokio::spawn(run_atoll(hub.server().client(), args.controllers, stopped));
        tokio::select! {
            () = shutdown_signal() => {
                // The controllers finish in-flight Works and release their lease before the
                // API they use goes away.
                let _ = stop.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(25), &mut controllers).await;
                Ok(())
            }
            joined = &mut controllers => joined.context("hub controllers")?,
        }
    };
    tracing::info!("shutting down");
    hub.shutdown().await;
    outcome
}

/// Installs Atoll's CRDs, then runs the controllers until `stopped` says so. Losing leadership
/// (to another hub sharing the same etcd) is not fatal here: the API keeps being served and
/// the controllers campaign again.
async fn run_atoll(
    client: kube::Client,
    options: ControllerOptions,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    crds::install(&client).await?;
    println!("Atoll CRDs installed; hub controllers starting");
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    loop {
        let outcome = run_controllers(
            client.clone(),
            options.clone(),
            until_stopped(stopped.clone()),
        )
        .await;
        if *stopped.borrow() {
            return outcome;
        }
        if let Err(error) = outcome {
            tracing::warn!(
                error = format!("{error:#}"),
                "hub controllers stopped; restarting"
            );
        }
        tokio::select! {
            () = until_stopped(stopped.clone()) => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
