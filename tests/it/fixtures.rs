//! Golden configuration fixtures: every file under tests/fixtures/good (and examples/)
//! must load and compile; every file under tests/fixtures/bad must fail with exactly the
//! text in its `.err` file. `UPDATE_FIXTURES=1` rewrites the `.err` files (review them).

use std::path::{Path, PathBuf};

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn load_and_compile(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).unwrap();
    let loaded =
        turnpike::config::load_str(&text, path.parent().unwrap()).map_err(|e| e.to_string())?;
    turnpike::runtime::compile::check(loaded).map_err(|e| e.to_string())
}

#[test]
fn good_configs_load() {
    let mut files = yaml_files(&dir("tests/fixtures/good"));
    files.extend(yaml_files(&dir("examples")));
    assert!(files.len() >= 4);
    for f in files {
        if let Err(e) = load_and_compile(&f) {
            panic!("{} should load:\n{e}", f.display());
        }
    }
}

#[test]
fn bad_configs_fail_with_their_exact_errors() {
    let update = std::env::var_os("UPDATE_FIXTURES").is_some();
    let mut failures = Vec::new();
    let files = yaml_files(&dir("tests/fixtures/bad"));
    assert!(files.len() >= 10);
    for f in files {
        let got = match load_and_compile(&f) {
            Ok(()) => "(loaded without error)".to_string(),
            Err(e) => e,
        };
        let expected_path = f.with_extension("err");
        if update {
            std::fs::write(&expected_path, format!("{got}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != got {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- got\n{got}",
                f.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn secrets_are_substituted_inside_scalars() {
    let path = dir("tests/fixtures/good/secrets.yaml");
    let loaded = turnpike::config::load_str(
        &std::fs::read_to_string(&path).unwrap(),
        path.parent().unwrap(),
    )
    .unwrap();
    let turnpike::policies::PolicySpec::Headers(h) = &loaded.spec.routes[0].policies[0] else {
        panic!("the fixture's first policy is a headers policy");
    };
    let set = &h.request.as_ref().unwrap().set;
    assert_eq!(
        set["authorization"],
        "Bearer fixture-token: with colon # and hash"
    );
    assert_eq!(
        set["x-request"], "${request_id} from ${client_ip}",
        "runtime variables are left for templates"
    );
    assert_eq!(loaded.spec.listeners[0].address, "127.0.0.1:0");
    assert!(loaded.secrets.iter().any(|s| s.contains("fixture-token")));
}
