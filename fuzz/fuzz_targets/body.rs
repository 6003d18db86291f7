//! A create, update or delete body: protobuf (the k8s envelope), JSON or YAML.
//! Input format: `atoll_apiserver::fuzzing::body`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = atoll_apiserver::fuzzing::body(data) {
        panic!("{broken}");
    }
});
