//! Connecting to a cluster. Hub commands choose the hub as kubectl does (`--kubeconfig`, else
//! `KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account); member-side
//! commands (`atoll agent`, `atoll dns`) must name their member explicitly, since `KUBECONFIG`
//! usually points at the hub.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use atoll_api::cluster_profile::{ATOLL_CLUSTER_MANAGER, ClusterProfile, LABEL_CLUSTER_MANAGER};
use atoll_controllers::inventory::DEFAULT_MANAGER_NAMESPACE;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The environment variable that names a member-side command's kubeconfig.
pub const MEMBER_KUBECONFIG_ENV: &str = "ATOLL_MEMBER_KUBECONFIG";

/// The leader-election Lease every `atoll controller` (and `atoll hub`) holds by default.
pub const CONTROLLER_LEASE: &str = "atoll-controller";

/// The API server this process talks to, for error messages ("The connection to the server
/// … was refused").
static SERVER: OnceLock<String> = OnceLock::new();

/// The API server the command connected to (`host:port`), once it has.
pub fn server() -> Option<&'static str> {
    SERVER.get().map(String::as_str)
}

fn remember(config: &kube::Config) {
    let url = &config.cluster_url;
    let host = match (url.host(), url.port_u16()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => url.to_string(),
    };
    let _ = SERVER.set(host);
}

/// Flags that choose the hub.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Kubeconfig of the hub.
    #[arg(long, env = "KUBECONFIG", value_name = "FILE", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig.
    #[arg(long, value_name = "CONTEXT", global = true)]
    pub context: Option<String>,
}

/// Reads a kubeconfig (relative file paths in it resolved against its directory). Opening it
/// first gives an unreadable file a plain error naming the path (kube's quotes it).
fn read_kubeconfig(path: &Path) -> anyhow::Result<Kubeconfig> {
    std::fs::File::open(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))
}

async fn config_from(path: &Path, context: Option<&String>) -> anyhow::Result<kube::Config> {
    let options = KubeConfigOptions {
        context: context.cloned(),
        ..Default::default()
    };
    let kubeconfig = read_kubeconfig(path)?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("using kubeconfig {}", path.display()))
}

impl ClusterArgs {
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.config().await?)?)
    }

    /// The connection settings, as kubectl would resolve them.
    pub async fn config(&self) -> anyhow::Result<kube::Config> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => config_from(path, self.context.as_ref()).await?,
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer()
                .await
                .context("no kubeconfig: pass --kubeconfig or set KUBECONFIG")?,
        };
        remember(&config);
        Ok(config)
    }
}

/// Flags that choose the member cluster of `atoll agent` and `atoll dns`: never `KUBECONFIG`
/// or `~/.kube/config`, which usually name the hub.
#[derive(clap::Args, Debug, Clone)]
pub struct MemberArgs {
    /// Kubeconfig of the member cluster this command works in. Required (or
    /// ATOLL_MEMBER_KUBECONFIG, or --in-cluster): KUBECONFIG is not used, since it usually
    /// points at the hub.
    #[arg(long, env = MEMBER_KUBECONFIG_ENV, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the member's kubeconfig.
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
    /// Use the service account of the pod this runs in (inside the member).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub in_cluster: bool,
    /// Run even when the cluster looks like an Atoll hub (it runs Atoll's hub controllers or
    /// holds Atoll's ClusterProfiles).
    #[arg(long)]
    pub allow_hub: bool,
}

impl MemberArgs {
    /// A client of the member, refusing a cluster that looks like an Atoll hub unless
    /// `--allow-hub`. `command` names the command in messages (`atoll dns`).
    pub async fn client(&self, command: &str) -> anyhow::Result<kube::Client> {
        let config = match (&self.kubeconfig, self.in_cluster) {
            (Some(path), _) => config_from(path, self.context.as_ref()).await?,
            (None, true) => kube::Config::incluster()
                .context("--in-cluster: no service account (is this running in a pod?)")?,
            (None, false) => bail!(
                "{command} works in a member cluster: name it with --kubeconfig FILE (or {MEMBER_KUBECONFIG_ENV}), or pass --in-cluster inside a pod. KUBECONFIG is not used: it usually points at the hub"
            ),
        };
        remember(&config);
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)?;
        if !self.allow_hub
            && let Some(why) = hub_marker(&client).await
        {
            bail!(
                "{command}: the cluster at {url} looks like an Atoll hub ({why}), not a member; pass the member's kubeconfig, or --allow-hub if this cluster is meant to be both"
            );
        }
        tracing::info!(server = %url, "{command}: member API server");
        Ok(client)
    }
}

/// Why the cluster looks like an Atoll hub, if it does: it holds the hub controllers' leader
/// Lease, or ClusterProfiles managed by Atoll. What cannot be read (no such kind, forbidden)
/// says nothing.
pub async fn hub_marker(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), DEFAULT_MANAGER_NAMESPACE);
    if let Ok(Some(_)) = leases.get_opt(CONTROLLER_LEASE).await {
        return Some(format!(
            "Atoll's hub controllers hold the Lease {DEFAULT_MANAGER_NAMESPACE}/{CONTROLLER_LEASE}"
        ));
    }
    let profiles: Api<ClusterProfile> = Api::all(client.clone());
    let selector = format!("{LABEL_CLUSTER_MANAGER}={ATOLL_CLUSTER_MANAGER}");
    match profiles
        .list_metadata(&ListParams::default().labels(&selector).limit(1))
        .await
    {
        Ok(list) if !list.items.is_empty() => {
            Some("it holds ClusterProfiles managed by Atoll".into())
        }
        _ => None,
    }
}
