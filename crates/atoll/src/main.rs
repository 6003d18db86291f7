//! `atoll`: the one binary. Each subcommand is a thin shell over a library crate.

use std::path::PathBuf;

use anyhow::Context;
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
    Crds {
        /// Write one `<group>_<plural>.yaml` per CRD into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { output_dir } => crds(output_dir),
    }
}

fn crds(output_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let Some(dir) = output_dir else {
        print!("{}", atoll_api::crds_yaml()?);
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for crd in atoll_api::crds()? {
        let path = dir.join(atoll_api::crd::file_name(&crd));
        std::fs::write(&path, atoll_api::crd::to_yaml(&crd)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
