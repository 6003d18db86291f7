//! Connecting to the hub the way kubectl does: `--kubeconfig`, else `KUBECONFIG`, else
//! `~/.kube/config`, else the in-cluster service account.

use std::path::PathBuf;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Flags that choose the hub.
#[derive(clap::Args, Debug, Clone)]
pub struct HubArgs {
    /// The hub's kubeconfig.
    #[arg(long, env = "KUBECONFIG", value_name = "FILE", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The context in the hub's kubeconfig.
    #[arg(long, value_name = "CONTEXT", global = true)]
    pub context: Option<String>,
}

impl HubArgs {
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading hub kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None => kube::Config::infer()
                .await
                .context("no hub kubeconfig: pass --kubeconfig or set KUBECONFIG")?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}
