//! `atoll`: the one binary. Each subcommand is a thin shell over a library crate.

mod cmd;
mod connect;

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
    /// Wrap the objects in YAML files into a Work for a joined cluster (create or update).
    ApplyWork(cmd::work::ApplyArgs),
    /// Show joined clusters (`atoll get clusters [-o json|yaml] [-w]`) or Works with their
    /// per-manifest status (`atoll get works [CLUSTER] [-o json|yaml]`).
    Get(cmd::get::Args),
    /// Run the hub-side controllers against a Kubernetes hub, with leader election.
    Controller(cmd::controller::Args),
    /// Bootstrap tokens for pull-mode agents (`atoll token create`, `list`, `revoke`).
    #[command(subcommand)]
    Token(cmd::pull::TokenCommand),
    /// Accept a pull-mode agent waiting to join (without a name: list the waiting ones).
    Accept(cmd::pull::AcceptArgs),
    /// Ask a pull-mode cluster's agent to replace its hub credentials now.
    RotateCredentials(cmd::pull::RotateArgs),
    /// Run the pull-mode agent in a member: register with the hub, report health and
    /// properties, and run the cluster's controllers, until SIGTERM or unjoin.
    Agent(cmd::pull::AgentArgs),
    /// Serve `clusterset.local` (Multi-Cluster Services DNS) from a cluster's ServiceImports
    /// and EndpointSlices, over UDP and TCP, until SIGTERM or SIGINT.
    Dns(cmd::dns::Args),
    /// Run Atoll's hub: a Kubernetes-compatible API server with an embedded store, in one
    /// process. Writes an admin kubeconfig to `<data-dir>/admin.kubeconfig`.
    #[command(alias = "up")]
    Hub(cmd::hub::Args),
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
        Command::ApplyWork(args) => runtime()?.block_on(cmd::work::apply(args)),
        Command::Get(args) => runtime()?.block_on(cmd::get::run(args)),
        Command::Controller(args) => runtime()?.block_on(cmd::controller::run(args)),
        Command::Dns(args) => runtime()?.block_on(cmd::dns::run(args)),
        Command::Token(command) => runtime()?.block_on(cmd::pull::token(command)),
        Command::Accept(args) => runtime()?.block_on(cmd::pull::accept(args)),
        Command::RotateCredentials(args) => runtime()?.block_on(cmd::pull::rotate(args)),
        Command::Agent(args) => {
            runtime()?.block_on(cmd::pull::agent(args, cmd::pull::agent_tasks()))
        }
        Command::Hub(args) => runtime()?.block_on(cmd::hub::run(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
