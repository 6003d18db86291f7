//! Replays the committed fuzz corpus (`fuzz/corpus/kubeconfig/`) and crash inputs
//! (`fuzz/regressions/kubeconfig/`) through the function the fuzz target calls
//! (`atoll_controllers::fuzzing::member_kubeconfig`): every kubeconfig loads or is refused
//! without a panic. No cargo-fuzz needed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use atoll_controllers::fuzzing::{Verdict, member_kubeconfig};

#[test]
fn kubeconfig_corpus_loads_or_is_refused() -> Result<()> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = fuzz.join(dir).join("kubeconfig");
        if !dir.exists() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            inputs.push(entry?.path());
        }
    }
    inputs.sort();
    ensure!(!inputs.is_empty(), "no committed inputs for kubeconfig");
    let mut panicked = Vec::new();
    let mut verdicts = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        match catch_unwind(AssertUnwindSafe(|| member_kubeconfig(&data))) {
            Ok(verdict) => verdicts.push(verdict),
            Err(_) => panicked.push(path.display().to_string()),
        }
    }
    ensure!(panicked.is_empty(), "panicked: {}", panicked.join(", "));
    ensure!(
        verdicts.contains(&Verdict::Accepted),
        "no kubeconfig of the corpus loaded"
    );
    Ok(())
}
