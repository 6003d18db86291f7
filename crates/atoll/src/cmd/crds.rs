//! `atoll crds`.

use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// A set of Atoll's CRDs, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Area {
    /// The About API: ClusterProperty (every member).
    About,
    /// Cluster inventory: ClusterProfile (the hub).
    Inventory,
    /// The Work API: Work (the hub) and AppliedWork (members).
    Work,
    /// Multi-Cluster Services: ServiceExport and ServiceImport (every member, and the hub).
    Mcs,
}

impl Area {
    fn holds(self, crd: &CustomResourceDefinition) -> bool {
        let plural = crd.spec.names.plural.as_str();
        match self {
            Area::About => crd.spec.group == "about.k8s.io",
            Area::Inventory => plural == "clusterprofiles",
            Area::Work => matches!(plural, "works" | "appliedworks"),
            Area::Mcs => matches!(plural, "serviceexports" | "serviceimports"),
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Write one `<group>_<plural>.yaml` per CRD into this directory instead of printing.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Only these CRDs: about, inventory, work, mcs (repeatable, or a comma list); every CRD
    /// when unset.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "AREA")]
    only: Vec<Area>,
}

/// The CRDs `--only` chooses (every CRD without it).
fn chosen(only: &[Area]) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut crds = atoll_api::crds()?;
    if !only.is_empty() {
        crds.retain(|crd| only.iter().any(|area| area.holds(crd)));
    }
    Ok(crds)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let crds = chosen(&args.only)?;
    let Some(dir) = args.output_dir else {
        let yaml: String = crds
            .iter()
            .map(atoll_api::crd::to_yaml)
            .collect::<Result<_, _>>()?;
        print!("{yaml}");
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for crd in crds {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_belongs_to_exactly_one_area() -> anyhow::Result<()> {
        let areas = [Area::About, Area::Inventory, Area::Work, Area::Mcs];
        for crd in atoll_api::crds()? {
            let owners = areas.iter().filter(|a| a.holds(&crd)).count();
            assert_eq!(owners, 1, "{:?}", crd.metadata.name);
        }
        let mcs: Vec<_> = chosen(&[Area::Mcs])?
            .into_iter()
            .map(|c| c.spec.names.plural)
            .collect();
        assert_eq!(mcs.len(), 2, "{mcs:?}");
        assert_eq!(chosen(&[])?.len(), atoll_api::crds()?.len());
        Ok(())
    }
}
