//! A member kubeconfig, loaded as the hub loads one from its Secret.
//! Input format: `atoll_controllers::fuzzing::member_kubeconfig`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atoll_controllers::fuzzing::member_kubeconfig(data);
});
