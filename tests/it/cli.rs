//! The command line: `validate`, `explain`, `--version`.

use std::process::Command;

fn turnpike(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn version() {
    let (code, out, _) = turnpike(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("turnpike {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn validate_accepts_the_quickstart_and_lists_every_problem_otherwise() {
    for name in [
        "quickstart.yaml",
        "tls.yaml",
        "auth.yaml",
        "resilience.yaml",
        "bff.yaml",
        "grpc.yaml",
    ] {
        let (code, out, err) = turnpike(&["validate", "-c", &example(name)]);
        assert_eq!(code, 0, "{name}: {out}{err}");
        assert!(out.ends_with(": ok\n"), "{name}: {out}");
    }

    let (code, _, err) = turnpike(&["validate", "-c", &fixture("bad/many_problems.yaml")]);
    assert_eq!(code, 1);
    assert!(err.contains("3 problem(s)"), "{err}");
}

#[test]
fn explain_shows_the_decision_params_policies_and_forward() {
    let (code, out, err) = turnpike(&[
        "explain",
        "-c",
        &example("quickstart.yaml"),
        "GET",
        "http://localhost:8080/api/orders/42?expand=items",
    ]);
    assert_eq!(code, 0, "{err}");
    for expected in [
        "route `orders`: path and all conditions match -> chosen",
        "route:    orders",
        "params:   id=42",
        "policies: headers -> headers",
        "target:   upstream `orders`",
        "forward:  /orders/42?expand=items",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    let (_, out, _) = turnpike(&[
        "explain",
        "-c",
        &example("quickstart.yaml"),
        "-H",
        "X-Api-Version: 2",
        "GET",
        "/api/users/7",
    ]);
    assert!(out.contains("route:    users-by-header-version"), "{out}");
    let (_, out, _) = turnpike(&[
        "explain",
        "-c",
        &example("quickstart.yaml"),
        "DELETE",
        "/api/orders/1",
    ]);
    assert!(out.contains("405 method_not_allowed (Allow: GET)"), "{out}");
}

#[test]
fn explain_shows_the_resilience_settings_that_apply() {
    let (code, out, err) = turnpike(&[
        "explain",
        "-c",
        &example("resilience.yaml"),
        "GET",
        "http://localhost:8080/orders/42",
    ]);
    assert_eq!(code, 0, "{err}");
    for expected in [
        "127.0.0.1:8183 (weight 1, priority 1)",
        "  health:    {\"active\":{",
        "  breaker:   {\"failure_rate\":\"50%\"",
        "  limits:    {\"max_in_flight\":1000,\"max_pending\":100}",
        "  retry:     {\"attempts\":2,",
        "hedge:    {\"after\":\"150ms\",\"max\":1}",
        "fallback: respond 503 on [circuit_open, no_healthy_endpoint, upstream_timeout]",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
}

#[test]
fn explain_shows_the_call_graph_of_a_compose_route() {
    let (code, out, err) = turnpike(&[
        "explain",
        "-c",
        &example("bff.yaml"),
        "GET",
        "http://localhost:8080/api/user-profile/123",
    ]);
    assert_eq!(code, 0, "{err}");
    for expected in [
        "target:   compose [user, orders, preferences, last_order]",
        "compose:  timeout 800ms",
        "  stage 1: user -> GET `users` /users/123 (timeout 800ms, required)",
        "  stage 1: orders -> GET `orders` /users/123/orders?limit=5 (timeout 300ms, optional)",
        "  stage 1: preferences -> GET `prefs` /users/123/preferences (timeout 800ms, optional)",
        "  stage 2: last_order -> GET `orders` /orders/${orders[0].id} (timeout 800ms, optional, after orders)",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
}

#[test]
fn explain_shows_the_grpc_method_a_rest_request_maps_to() {
    let (code, out, err) = turnpike(&[
        "explain",
        "-c",
        &example("grpc.yaml"),
        "GET",
        "http://localhost:8080/v1/orders/o-1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("target:   grpc `orders-grpc` (15 bindings)"),
        "{out}"
    );
    assert!(
        out.contains("grpc:     GET /v1/orders/{id} -> api.OrderService/GetOrder (o-1)"),
        "{out}"
    );
    let (_, out, _) = turnpike(&[
        "explain",
        "-c",
        &example("grpc.yaml"),
        "POST",
        "http://localhost:8080/v1/orders/o-1:cancel",
    ]);
    assert!(
        out.contains("POST /v1/orders/{id}:cancel -> api.OrderService/CancelOrder"),
        "{out}"
    );
}
