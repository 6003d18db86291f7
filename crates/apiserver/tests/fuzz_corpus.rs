//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) and crash inputs
//! (`fuzz/regressions/<target>/`) of the hub's parser targets through the functions the fuzz
//! targets call (`atoll_apiserver::fuzzing`): every input comes back accepted or refused with a
//! client error, without a panic or a broken invariant. No cargo-fuzz needed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use atoll_apiserver::fuzzing::{self, Broken, Verdict};

/// Every committed input of `target`: its corpus, then its crash inputs.
fn inputs(target: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = fuzz.join(dir).join(target);
        if !dir.exists() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            let data = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
            inputs.push((path.display().to_string(), data));
        }
    }
    inputs.sort();
    Ok(inputs)
}

/// Runs every input of `target` through `run`; fails naming each input that panicked or broke
/// an invariant, and when no input was accepted (a corpus of realistic inputs accepts some).
fn replay(target: &str, run: fn(&[u8]) -> Result<Verdict, Broken>) -> Result<()> {
    let inputs = inputs(target)?;
    ensure!(!inputs.is_empty(), "no committed inputs for {target}");
    let mut failures = Vec::new();
    let mut accepted = 0;
    for (name, data) in &inputs {
        match catch_unwind(AssertUnwindSafe(|| run(data))) {
            Ok(Ok(Verdict::Accepted)) => accepted += 1,
            Ok(Ok(Verdict::Refused)) => {}
            Ok(Err(broken)) => failures.push(format!("{name}: {broken}")),
            Err(_) => failures.push(format!("{name}: panicked")),
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    ensure!(accepted > 0, "no input of {target} was accepted");
    Ok(())
}

#[test]
fn body_corpus_decodes_or_is_refused() -> Result<()> {
    replay("body", fuzzing::body)
}

#[test]
fn patch_corpus_applies_or_is_refused() -> Result<()> {
    replay("patch", fuzzing::patch)
}

#[test]
fn selectors_corpus_parses_or_is_refused() -> Result<()> {
    replay("selectors", fuzzing::selectors)
}

#[test]
fn cel_rules_corpus_compiles_and_evaluates_or_is_refused() -> Result<()> {
    replay("cel_rules", fuzzing::cel_rules)
}
