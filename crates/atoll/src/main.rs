//! `atoll`: the one binary. Each subcommand is a thin shell over a library crate.

mod cmd;
mod connect;
mod output;

use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "atoll",
    version,
    about = "Atoll: a multi-cluster control plane for Kubernetes"
)]
struct Cli {
    /// More logs on stderr: -v for INFO (one-shot commands only warn), -vv for DEBUG.
    /// RUST_LOG overrides it.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
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
    #[command(visible_alias = "up")]
    Hub(cmd::hub::Args),
    /// Print a shell completion script: `source <(atoll completion bash)`, or write
    /// `atoll completion zsh` to a file named `_atoll` on your `fpath`, or
    /// `atoll completion fish > ~/.config/fish/completions/atoll.fish`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Commands that run until stopped log at INFO; one-shot commands print their result.
    fn long_running(&self) -> bool {
        matches!(
            self,
            Command::Controller(_) | Command::Agent(_) | Command::Dns(_) | Command::Hub(_)
        )
    }
}

/// The name Atoll is run under: `kubectl atoll` when installed as the kubectl plugin
/// `kubectl-atoll` (kubectl runs `kubectl-<name>` executables found on PATH).
fn invoked_as_kubectl_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s == "kubectl-atoll"))
        .unwrap_or(false)
}

fn cli_command() -> clap::Command {
    let command = Cli::command();
    if invoked_as_kubectl_plugin() {
        command.name("kubectl atoll").bin_name("kubectl atoll")
    } else {
        command
    }
}

fn main() -> ExitCode {
    let matches = cli_command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    output::init_logging(cli.verbose, cli.command.long_running());
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", output::error_message(&error));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
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
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "atoll", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
