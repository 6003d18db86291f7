//! What the attack modules share: `atoll hub` in process, over memory, with Atoll's CRDs.

use std::sync::Arc;

use anyhow::Result;
use kube::config::Kubeconfig;
use kube::{Client, Config};

/// `atoll hub` in process, over memory, with Atoll's CRDs.
pub struct InProcessHub {
    _dir: tempfile::TempDir,
    _server: atoll_apiserver::Hub,
    pub admin_kubeconfig: Kubeconfig,
    pub client: Client,
}

pub async fn start_hub() -> Result<InProcessHub> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn atoll_store::Store> = Arc::new(atoll_store::memory::MemoryStore::new());
    let server = atoll_apiserver::Hub::start(
        store,
        atoll_apiserver::HubConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse()?,
            token_file: None,
            extra_sans: vec![],
            compaction_interval: None,
            max_token_expiration: atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION,
        },
    )
    .await?;
    let admin_kubeconfig = Kubeconfig::read_from(&server.admin_kubeconfig)?;
    let config =
        Config::from_custom_kubeconfig(admin_kubeconfig.clone(), &Default::default()).await?;
    let client = Client::try_from(config)?;
    atoll_testbed::install_crds(&client, atoll_api::crds()?).await?;
    Ok(InProcessHub {
        _dir: dir,
        _server: server,
        admin_kubeconfig,
        client,
    })
}

impl InProcessHub {
    /// The hub as `user` (the admin impersonating it).
    pub async fn as_user(&self, user: &str) -> Result<Client> {
        let mut config =
            Config::from_custom_kubeconfig(self.admin_kubeconfig.clone(), &Default::default())
                .await?;
        config.auth_info.impersonate = Some(user.into());
        Ok(Client::try_from(config)?)
    }
}
