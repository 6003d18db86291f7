//! A list's query string (label and field selectors), then a structured label selector.
//! Input format: `atoll_apiserver::fuzzing::selectors`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = atoll_apiserver::fuzzing::selectors(data) {
        panic!("{broken}");
    }
});
