//! Writes `table/builtin.json` from `spec/kubernetes-1.20.2.json`:
//! `cargo run -p atoll-merge --bin merge-table`.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(atoll_merge::generate::SPEC_FILE))?)?;
    let table = atoll_merge::generate::render(&spec)?;
    std::fs::write(dir.join(atoll_merge::generate::TABLE_FILE), table)?;
    Ok(())
}
