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
