//! cargo +nightly fuzz run net_queues   (from vmm/)
#![no_main]

#[path = "../net_harness.rs"]
mod net_harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = net_harness::run(data);
});
