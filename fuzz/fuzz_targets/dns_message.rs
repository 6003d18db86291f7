//! One UDP datagram to `atoll dns`, answered as its UDP loop answers it.
//! Input format: `atoll_dns::fuzzing::udp_query`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = atoll_dns::fuzzing::udp_query(data) {
        panic!("{broken}");
    }
});
