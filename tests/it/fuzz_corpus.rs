//! The fuzz corpus (fuzz/corpus/<target>/), replayed as ordinary tests: every input a
//! fuzzer kept, and every crash it found once fixed, stays a regression test.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus for {target}");
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, data) in inputs(target) {
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{target}: {} fails", path.display());
        }
    }
}

#[test]
fn normalize_path_corpus() {
    replay("normalize_path", turnpike::server::fuzzing::normalize_path);
}

#[test]
fn http1_head_corpus() {
    replay("http1_head", turnpike::server::fuzzing::http1_head);
}

#[test]
fn h1_response_corpus() {
    replay("h1_response", turnpike::server::fuzzing::h1_response);
}

#[test]
fn h1_stream_corpus() {
    replay("h1_stream", turnpike::server::fuzzing::h1_stream);
}

#[test]
fn grpc_json_corpus() {
    replay("grpc_json", turnpike::server::fuzzing::grpc_json);
}
