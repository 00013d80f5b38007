//! Path normalization: what it accepts is canonical and traversal-free.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    turnpike::server::fuzzing::normalize_path(data);
});
