//! The CRDs committed under `crds/` must be exactly what the Rust types generate.

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let mut committed = BTreeMap::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            committed.insert(name, std::fs::read_to_string(&path)?);
        }
    }
    let mut generated = BTreeMap::new();
    for crd in atoll_api::crds()? {
        generated.insert(
            atoll_api::crd::file_name(&crd),
            atoll_api::crd::to_yaml(&crd)?,
        );
    }
    let regenerate =
        "regenerate them with `cargo run -p atoll -- crds --output-dir crds` and commit";
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "the files under crds/ are not the generated set; {regenerate}"
    );
    for (name, yaml) in &generated {
        assert!(
            committed.get(name) == Some(yaml),
            "crds/{name} has drifted from the Rust types; {regenerate}"
        );
    }
    Ok(())
}
