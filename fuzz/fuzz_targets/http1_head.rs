//! HTTP/1 request heads, parsed as hyper parses them, then checked and normalized as the
//! gateway does before routing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    turnpike::server::fuzzing::http1_head(data);
});
