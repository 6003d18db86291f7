//! `atoll crds`.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Write one `<group>_<plural>.yaml` per CRD into this directory instead of printing.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(dir) = args.output_dir else {
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

/// Creates Atoll's CRDs on a hub, or replaces them where they differ, and waits until each is
/// Established. Safe to repeat (every start of `atoll hub` does it).
pub async fn install(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};
    use kube::runtime::wait::{await_condition, conditions};

    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in atoll_api::crds()? {
        let name = crd.metadata.name.clone().unwrap_or_default();
        match api.get_opt(&name).await? {
            None => {
                api.create(&PostParams::default(), &crd)
                    .await
                    .with_context(|| format!("creating CRD {name}"))?;
            }
            Some(existing) if existing.spec != crd.spec => {
                let mut desired = crd;
                desired.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &desired)
                    .await
                    .with_context(|| format!("updating CRD {name}"))?;
            }
            Some(_) => {}
        }
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not Established within 60 s"))?
        .with_context(|| format!("waiting for CRD {name}"))?;
    }
    Ok(())
}
