//! JSON request bodies converted to Protobuf as a `grpc` route converts them, against a
//! fixed contract with every field kind and the well-known types: no panic, bounded
//! depth, and a stable round trip for whatever is accepted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    turnpike::server::fuzzing::grpc_json(data);
});
