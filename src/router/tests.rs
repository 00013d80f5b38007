//! The routing table: priorities, fallbacks, 405, hosts, parameters and rewrites.

use super::rewrite::Rewrite;
use super::*;
use crate::config::{MatchSpec, Problems, RewriteSpec, ValueMatchSpec};

struct Case {
    name: &'static str,
    hosts: &'static [&'static str],
    path: Option<&'static str>,
    prefix: Option<&'static str>,
    methods: &'static [&'static str],
    headers: &'static [(&'static str, &'static str)],
    query: &'static [(&'static str, &'static str)],
}

const fn route(name: &'static str) -> Case {
    Case {
        name,
        hosts: &[],
        path: None,
        prefix: None,
        methods: &[],
        headers: &[],
        query: &[],
    }
}

fn table() -> Vec<Case> {
    vec![
        Case {
            path: Some("/users/{id}"),
            methods: &["GET"],
            ..route("user-get")
        },
        Case {
            path: Some("/users/{id}"),
            methods: &["PUT", "DELETE"],
            ..route("user-write")
        },
        Case {
            path: Some("/users/me"),
            ..route("user-me")
        },
        Case {
            path: Some("/users/{id}/posts/{post}"),
            ..route("user-post")
        },
        Case {
            path: Some("/users/{*rest}"),
            ..route("users-rest")
        },
        Case {
            prefix: Some("/api"),
            ..route("api")
        },
        Case {
            prefix: Some("/api/v1"),
            ..route("api-v1")
        },
        Case {
            path: Some("/api/v1/health"),
            ..route("api-v1-health")
        },
        Case {
            prefix: Some("/api/v2"),
            headers: &[("x-api-version", "2")],
            ..route("api-v2-header")
        },
        Case {
            prefix: Some("/api/v2"),
            ..route("api-v2")
        },
        Case {
            prefix: Some("/search"),
            query: &[("engine", "new")],
            ..route("search-new")
        },
        Case {
            prefix: Some("/search"),
            ..route("search")
        },
        Case {
            hosts: &["admin.example.com"],
            prefix: Some("/"),
            ..route("admin-host")
        },
        Case {
            hosts: &["*.example.com"],
            prefix: Some("/"),
            ..route("wild-host")
        },
        Case {
            hosts: &["*.eu.example.com"],
            prefix: Some("/"),
            ..route("eu-host")
        },
        Case {
            hosts: &["*.example.com"],
            path: Some("/status"),
            ..route("wild-status")
        },
        Case {
            path: Some("/status"),
            ..route("status")
        },
        Case {
            path: Some("/"),
            ..route("root")
        },
        Case {
            path: Some("/only-post"),
            methods: &["POST"],
            ..route("only-post")
        },
        Case {
            path: Some("/files/{*path}"),
            ..route("files")
        },
        Case {
            path: Some("/tenants/{tenant}/items"),
            ..route("tenant-items")
        },
        Case {
            prefix: Some("/tenants/{tenant}"),
            ..route("tenant-any")
        },
        Case {
            path: Some("/x"),
            headers: &[("x-beta", "")],
            ..route("beta-present")
        },
        Case {
            path: Some("/x"),
            ..route("x")
        },
    ]
}

fn build() -> Router<()> {
    let mut b = RouterBuilder::default();
    for (order, c) in table().into_iter().enumerate() {
        let spec = MatchSpec {
            hosts: c.hosts.iter().map(|s| s.to_string()).collect(),
            path: c.path.map(String::from),
            prefix: c.prefix.map(String::from),
            methods: c.methods.iter().map(|s| s.to_string()).collect(),
            headers: c.headers.iter().map(|(n, v)| value_match(n, v)).collect(),
            query: c.query.iter().map(|(n, v)| value_match(n, v)).collect(),
        };
        let pattern = match (&spec.path, &spec.prefix) {
            (Some(p), _) => Pattern::path(p).unwrap(),
            (None, Some(p)) => Pattern::prefix(p).unwrap(),
            _ => Pattern::prefix("/").unwrap(),
        };
        let mut problems = Problems::default();
        let conditions = Arc::new(Conditions::compile("m", &spec, &mut problems));
        assert!(problems.is_empty());
        let entry = Arc::new(Entry {
            name: Arc::from(c.name),
            order,
            conditions,
            params: pattern.param_names().into(),
            value: (),
        });
        if c.hosts.is_empty() {
            b.insert(None, &pattern, entry);
        } else {
            for h in c.hosts {
                b.insert(Some(h), &pattern, entry.clone());
            }
        }
    }
    b.build()
}

/// An empty value means "present".
fn value_match(name: &str, value: &str) -> ValueMatchSpec {
    ValueMatchSpec {
        name: name.into(),
        exact: (!value.is_empty()).then(|| value.to_string()),
        regex: None,
        present: value.is_empty().then_some(true),
    }
}

fn find(
    router: &Router<()>,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> String {
    let (path, query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let q = Query {
        method: &method,
        host,
        path,
        query,
        headers: &map,
    };
    match router.find(&q, None) {
        Found::Route { entry, params } => {
            let ps: Vec<String> = params.iter(path).map(|(n, v)| format!("{n}={v}")).collect();
            if ps.is_empty() {
                entry.name.to_string()
            } else {
                format!("{} {}", entry.name, ps.join(" "))
            }
        }
        Found::MethodNotAllowed(m) => {
            let mut names: Vec<&str> = m.iter().map(Method::as_str).collect();
            names.sort();
            format!("405 {}", names.join(","))
        }
        Found::NotFound => "404".into(),
    }
}

#[test]
fn routing_table() {
    let r = build();
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "a.test", "/users/7", &[], "user-get id=7"),
        ("PUT", "a.test", "/users/7", &[], "user-write id=7"),
        ("POST", "a.test", "/users/7", &[], "users-rest rest=7"),
        ("GET", "a.test", "/users/me", &[], "user-me"),
        ("DELETE", "a.test", "/users/me", &[], "user-me"),
        (
            "GET",
            "a.test",
            "/users/7/posts/9",
            &[],
            "user-post id=7 post=9",
        ),
        (
            "GET",
            "a.test",
            "/users/7/posts",
            &[],
            "users-rest rest=7/posts",
        ),
        ("GET", "a.test", "/users/", &[], "users-rest rest="),
        ("GET", "a.test", "/users", &[], "404"),
        ("GET", "a.test", "/api", &[], "api"),
        ("GET", "a.test", "/api/", &[], "api"),
        ("GET", "a.test", "/api/things/1", &[], "api"),
        ("GET", "a.test", "/apix", &[], "404"),
        ("GET", "a.test", "/api/v1", &[], "api-v1"),
        ("GET", "a.test", "/api/v1/users", &[], "api-v1"),
        ("GET", "a.test", "/api/v1/health", &[], "api-v1-health"),
        ("GET", "a.test", "/api/v1/health/deep", &[], "api-v1"),
        (
            "GET",
            "a.test",
            "/api/v2/x",
            &[("x-api-version", "2")],
            "api-v2-header",
        ),
        (
            "GET",
            "a.test",
            "/api/v2/x",
            &[("x-api-version", "3")],
            "api-v2",
        ),
        ("GET", "a.test", "/api/v2/x", &[], "api-v2"),
        ("GET", "a.test", "/search?engine=new", &[], "search-new"),
        ("GET", "a.test", "/search?q=1&engine=new", &[], "search-new"),
        ("GET", "a.test", "/search?engine=old", &[], "search"),
        ("GET", "admin.example.com", "/users/7", &[], "admin-host"),
        ("GET", "shop.example.com", "/users/7", &[], "wild-host"),
        ("GET", "shop.eu.example.com", "/x", &[], "eu-host"),
        ("GET", "example.com", "/status", &[], "status"),
        ("GET", "shop.example.com", "/status", &[], "wild-status"),
        ("GET", "admin.example.com", "/status", &[], "admin-host"),
        ("GET", "a.test", "/status", &[], "status"),
        ("GET", "a.test", "/", &[], "root"),
        ("GET", "a.test", "/only-post", &[], "405 POST"),
        ("POST", "a.test", "/only-post", &[], "only-post"),
        (
            "GET",
            "a.test",
            "/files/a/b/c.txt",
            &[],
            "files path=a/b/c.txt",
        ),
        (
            "GET",
            "a.test",
            "/tenants/acme/items",
            &[],
            "tenant-items tenant=acme",
        ),
        (
            "GET",
            "a.test",
            "/tenants/acme/other/1",
            &[],
            "tenant-any tenant=acme",
        ),
        (
            "GET",
            "a.test",
            "/tenants/acme",
            &[],
            "tenant-any tenant=acme",
        ),
        ("GET", "a.test", "/tenants//items", &[], "404"),
        ("GET", "a.test", "/x", &[("x-beta", "1")], "beta-present"),
        ("GET", "a.test", "/x", &[], "x"),
        ("GET", "a.test", "/nothing", &[], "404"),
        ("GET", "a.test", "/USERS/7", &[], "404"),
    ];
    let mut failures = Vec::new();
    for (method, host, target, headers, want) in cases {
        let got = find(&r, method, host, target, headers);
        if got != *want {
            failures.push(format!(
                "{method} {host}{target} {headers:?}: got `{got}`, want `{want}`"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 30);
}

#[test]
fn method_not_allowed_lists_every_method_of_the_path() {
    let mut b = RouterBuilder::default();
    for (i, (name, methods)) in [("r", vec!["GET"]), ("w", vec!["PUT", "DELETE"])]
        .into_iter()
        .enumerate()
    {
        let spec = MatchSpec {
            path: Some("/items/{id}".into()),
            methods: methods.into_iter().map(String::from).collect(),
            ..MatchSpec::default()
        };
        let mut p = Problems::default();
        let entry = Entry {
            name: Arc::from(name),
            order: i,
            conditions: Arc::new(Conditions::compile("m", &spec, &mut p)),
            params: vec!["id".to_string()].into(),
            value: (),
        };
        b.insert(
            None,
            &Pattern::path("/items/{id}").unwrap(),
            Arc::new(entry),
        );
    }
    let r = b.build();
    assert_eq!(find(&r, "POST", "h", "/items/1", &[]), "405 DELETE,GET,PUT");
    assert_eq!(find(&r, "POST", "h", "/other", &[]), "404");
}

#[test]
fn trace_explains_the_decision() {
    let r = build();
    let method = Method::GET;
    let headers = HeaderMap::new();
    let q = Query {
        method: &method,
        host: "a.test",
        path: "/api/v2/x",
        query: None,
        headers: &headers,
    };
    let mut trace = Vec::new();
    let Found::Route { entry, .. } = r.find(&q, Some(&mut trace)) else {
        panic!("no route")
    };
    assert_eq!(&*entry.name, "api-v2");
    let text = trace.join("\n");
    assert!(
        text.contains("route `api-v2-header`: path matches, but header x-api-version"),
        "{text}"
    );
    assert!(
        text.contains("route `api-v2`: path and all conditions match -> chosen"),
        "{text}"
    );
}

#[test]
fn hosts_are_normalized() {
    assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
    assert_eq!(normalize_host("example.com."), "example.com");
    assert_eq!(normalize_host("[::1]:80"), "[::1]");
}

fn rewrite(spec: RewriteSpec, names: &[&str]) -> Rewrite {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut p = Problems::default();
    let r = Rewrite::compile("r", Some(&spec), &names, &mut p);
    assert!(p.is_empty());
    r
}

#[test]
fn rewrites() {
    let strip = rewrite(
        RewriteSpec {
            strip_prefix: Some("/api".into()),
            ..Default::default()
        },
        &[],
    );
    let none = Params::default();
    assert_eq!(strip.apply("/api/users/7", &none), "/users/7");
    assert_eq!(strip.apply("/api", &none), "/");
    assert_eq!(strip.apply("/apix/1", &none), "/apix/1");
    let both = rewrite(
        RewriteSpec {
            strip_prefix: Some("/api/".into()),
            add_prefix: Some("/internal".into()),
            ..Default::default()
        },
        &[],
    );
    assert_eq!(both.apply("/api/users", &none), "/internal/users");
    assert_eq!(both.apply("/api", &none), "/internal");

    let r = build();
    let method = Method::GET;
    let headers = HeaderMap::new();
    let path = "/users/7/posts/9";
    let q = Query {
        method: &method,
        host: "h",
        path,
        query: None,
        headers: &headers,
    };
    let Found::Route { params, .. } = r.find(&q, None) else {
        panic!()
    };
    let t = rewrite(
        RewriteSpec {
            path: Some("/v2/posts/{post}/by/{id}".into()),
            ..Default::default()
        },
        &["id", "post"],
    );
    assert_eq!(t.apply(path, &params), "/v2/posts/9/by/7");
}

#[test]
fn template_rejects_unknown_params() {
    let mut p = Problems::default();
    let spec = RewriteSpec {
        path: Some("/v2/{nope}".into()),
        ..Default::default()
    };
    Rewrite::compile(
        "routes[0].rewrite",
        Some(&spec),
        &["id".to_string()],
        &mut p,
    );
    assert!(!p.is_empty());
}
