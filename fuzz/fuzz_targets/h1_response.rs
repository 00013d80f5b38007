//! Upstream HTTP/1.1 responses as turnpike's own client parses and frames them, with a
//! chunked body decoded at once and byte by byte (differential against httparse).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    turnpike::server::fuzzing::h1_response(data);
});
