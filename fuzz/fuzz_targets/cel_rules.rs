//! A CRD's CEL rule compiled into a schema and evaluated on a JSON object.
//! Input format: `atoll_apiserver::fuzzing::cel_rules`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = atoll_apiserver::fuzzing::cel_rules(data) {
        panic!("{broken}");
    }
});
