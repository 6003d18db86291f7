//! A JSON, merge, strategic-merge or apply patch, applied to a ConfigMap.
//! Input format: `atoll_apiserver::fuzzing::patch`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = atoll_apiserver::fuzzing::patch(data) {
        panic!("{broken}");
    }
});
