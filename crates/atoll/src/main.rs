//! `atoll`: the one binary. Each subcommand is a thin shell over a library crate.

mod cmd;
mod hub;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "atoll",
    version,
    about = "Atoll: a multi-cluster control plane for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition Atoll uses, as YAML.
    ///
    /// Pipe it to `kubectl apply -f -` to install Atoll's kinds in any cluster, or use
    /// `--output-dir` to write one file per CRD.
    Crds(cmd::crds::Args),
    /// Join a member cluster to the hub in push mode.
    Join(cmd::join::JoinArgs),
    /// Remove a member cluster: everything Atoll created in it and on the hub.
    Unjoin(cmd::join::UnjoinArgs),
    /// Show joined clusters (`atoll get clusters [-o json|yaml] [-w]`).
    Get(cmd::get::Args),
    /// Run the hub-side controllers against a Kubernetes hub, with leader election.
    Controller(cmd::controller::Args),
    /// Serve `clusterset.local` (Multi-Cluster Services DNS) from a cluster's ServiceImports
    /// and EndpointSlices, over UDP and TCP, until SIGTERM or SIGINT.
    Dns(DnsArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // hickory-server logs every DNS query at info.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Crds(args) => cmd::crds::run(args),
        Command::Join(args) => runtime()?.block_on(cmd::join::join(args)),
        Command::Unjoin(args) => runtime()?.block_on(cmd::join::unjoin(args)),
        Command::Get(args) => runtime()?.block_on(cmd::get::run(args)),
        Command::Controller(args) => runtime()?.block_on(cmd::controller::run(args)),
        Command::Dns(args) => runtime()?.block_on(dns(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Flags of `atoll dns`.
#[derive(clap::Args)]
struct DnsArgs {
    /// Kubeconfig of the cluster to serve. When unset: `KUBECONFIG`, `~/.kube/config`, then
    /// the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Context in the kubeconfig.
    #[arg(long, value_name = "CONTEXT")]
    context: Option<String>,
    /// Address to serve on, UDP and TCP.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:53")]
    listen: std::net::SocketAddr,
    /// Zone to serve.
    #[arg(long, value_name = "ZONE", default_value = atoll_dns::model::DEFAULT_ZONE)]
    zone: String,
    /// Name of the zone's name server, in NS and SOA records [default: ns.dns.<zone>].
    #[arg(long, value_name = "NAME")]
    ns_name: Option<String>,
    /// Address of the name server, for its A/AAAA record and NS glue; repeatable.
    #[arg(long = "ns-address", value_name = "IP")]
    ns_addresses: Vec<std::net::IpAddr>,
}

async fn dns(args: DnsArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let options = kube::config::KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(config)?;
    let mut zone = atoll_dns::ZoneConfig::new(&args.zone)?.with_ns_addresses(args.ns_addresses);
    if let Some(name) = &args.ns_name {
        zone = zone.with_ns_name(name)?;
    }
    let cancel = atoll_dns::CancellationToken::new();
    let on_signal = cancel.clone();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    let listen = args.listen;
    atoll_dns::run(client, atoll_dns::Options { listen, zone }, cancel).await?;
    Ok(())
}
