//! Replays the committed fuzz corpus (`fuzz/corpus/dns_message/`) and crash inputs
//! (`fuzz/regressions/dns_message/`) through the function the fuzz target calls
//! (`atoll_dns::fuzzing::udp_query`): every datagram is answered or dropped as the UDP path
//! must, without a panic or a broken invariant. No cargo-fuzz needed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Context, Result, ensure};

#[test]
fn dns_message_corpus_is_answered_or_dropped() -> Result<()> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = fuzz.join(dir).join("dns_message");
        if !dir.exists() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            inputs.push(entry?.path());
        }
    }
    inputs.sort();
    ensure!(!inputs.is_empty(), "no committed inputs for dns_message");
    let mut failures = Vec::new();
    let mut answered = 0;
    for path in &inputs {
        let data = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        match catch_unwind(AssertUnwindSafe(|| atoll_dns::fuzzing::udp_query(&data))) {
            Ok(Ok(Some(_))) => answered += 1,
            Ok(Ok(None)) => {}
            Ok(Err(broken)) => failures.push(format!("{}: {broken}", path.display())),
            Err(_) => failures.push(format!("{}: panicked", path.display())),
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    ensure!(answered > 0, "no datagram was answered");
    Ok(())
}
