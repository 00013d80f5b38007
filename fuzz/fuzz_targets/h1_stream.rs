//! A client's whole HTTP/1.1 byte stream (pipelined requests, bodies), through
//! turnpike's server codec and hyper's server: where both deliver a request they deliver
//! the same one, and turnpike never delivers more (datapath.md §4).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    turnpike::server::fuzzing::h1_stream(data);
});
