//! REST/JSON to gRPC transcoding against a real tonic server (examples/orders): every
//! binding form (annotations with additional bindings and verbs, explicit bindings,
//! `body: "*"`, no body, `response_body`), repeated and nested query parameters, the
//! well-known types, status mapping with `google.rpc.Status` details, bad input refused
//! before the service, deadlines, metadata both ways, and contracts that do not load.

use crate::support::*;

#[path = "../../examples/orders/service.rs"]
mod orders;

async fn server() -> (std::net::SocketAddr, orders::OrderService) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = orders::OrderService::default();
    tokio::spawn(orders::serve(l, svc.clone()));
    (addr, svc)
}

fn config(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  orders-grpc: {{endpoints: ["{addr}"], protocol: h2c}}
routes:
  - name: orders-api
    match: {{prefix: /v1}}
    timeouts: {{request: 500ms}}
    grpc:
      upstream: orders-grpc
      protos: [examples/protos/orders.proto]
      services: [api.OrderService]
      bindings:
        - {{post: /v1/orders, call: api.OrderService/CreateOrder, body: "*"}}
        - {{get: "/v1/orders/{{id}}", call: api.OrderService/GetOrder}}
        - {{put: "/v1/orders/{{id}}", call: api.OrderService/UpdateOrder, body: "*"}}
      json: {{unknown_fields: reject, emit_defaults: false, enums_as: names}}
      request_headers: [x-tenant]
      response_headers: [x-order-version]
{extra}
"#
    )
}

fn calls(svc: &orders::OrderService, method: &str) -> usize {
    svc.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _)| m == method)
        .count()
}

fn post(url: &str, body: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    request("POST", url, &[("content-type", "application/json")], body)
}

#[tokio::test]
async fn every_binding_form_and_the_well_known_types() {
    let (addr, _svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    // body "*", with wrappers, Struct, Duration; int64 and bytes come back as strings.
    let r = send(post(
        &format!("{base}/v1/orders"),
        r#"{"customerId": "c1", "items": [{"sku": "book", "quantity": 2, "priceCents": "1250"}],
            "note": "leave at door", "attributes": {"gift": true, "tags": ["a", 1]}, "deliveryWindow": "3600s"}"#,
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-order-version"), Some("1"), "response metadata");
    let v = r.json();
    assert_eq!(v["id"], "o-1");
    assert_eq!(v["customerId"], "c1");
    assert_eq!(v["totalCents"], "2500", "int64 as a string");
    assert_eq!(v["status"], "NEW", "enums as names");
    assert_eq!(v["createdAt"], "2026-01-01T00:00:00.500Z");
    assert_eq!(v["note"], "leave at door");
    assert_eq!(v["deliveryWindow"], "3600s");
    assert_eq!(
        v["attributes"],
        serde_json::json!({"gift": true, "tags": ["a", 1.0]})
    );
    assert_eq!(v["signature"], "3q2+7w==", "bytes as base64");
    assert!(v.get("nextPageToken").is_none());
    // A path variable.
    let r = get(&format!("{base}/v1/orders/o-1"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["items"][0]["priceCents"], "1250");
    // PUT with a FieldMask in its JSON form.
    let r = send(request(
        "PUT",
        &format!("{base}/v1/orders/o-1"),
        &[],
        r#"{"order": {"note": "ring twice", "status": "PAID"}, "updateMask": "note,status"}"#,
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["status"], "PAID");
    assert_eq!(r.json()["note"], "ring twice");
    // Annotated: nested and repeated query parameters, bools, enums by name.
    send(post(
        &format!("{base}/v1/orders"),
        r#"{"customerId": "c2"}"#,
    ))
    .await;
    let r = get(
        &format!("{base}/v1/orders?filter.customerId=c1&statuses=PAID&statuses=SHIPPED&pageSize=5&includeItems=true"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let list = r.json()["orders"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "o-1");
    assert_eq!(list[0]["items"][0]["sku"], "book");
    let r = get(&format!("{base}/v1/orders?filter.customer_id=c2"), &[]).await;
    assert_eq!(
        r.json()["orders"][0]["id"],
        "o-2",
        "proto names work in the query too"
    );
    // A verb, and an additional binding with two variables.
    let r = send(post(
        &format!("{base}/v1/orders/o-2:cancel"),
        r#"{"reason": "late"}"#,
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["status"], "CANCELLED");
    let r = send(post(
        &format!("{base}/v1/customers/c9/orders/o-1:cancel"),
        "{}",
    ))
    .await;
    assert_eq!(r.status, 403, "the customer id came from the path");
    assert_eq!(r.error_code(), "grpc_permission_denied");
    // response_body: only that field.
    let r = get(&format!("{base}/v1/orders/o-1/items"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!([{"sku": "book", "quantity": 2, "priceCents": "1250"}])
    );
    // google.protobuf.Empty.
    let r = send(request("DELETE", &format!("{base}/v1/orders/o-2"), &[], "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({}));
    // No binding: 404; a path bound for other methods: 405 with Allow.
    assert_eq!(get(&format!("{base}/v1/nothing"), &[]).await.status, 404);
    let r = send(request(
        "PATCH",
        &format!("{base}/v1/orders/o-1"),
        &[],
        "{}",
    ))
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("DELETE, GET, HEAD, PUT"));
    // A custom pattern (HEAD).
    let r = send(request("HEAD", &format!("{base}/v1/orders/o-1"), &[], "")).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = send(request("HEAD", &format!("{base}/v1/orders/o-2"), &[], "")).await;
    assert_eq!(r.status, 404, "deleted above");
}

#[tokio::test]
async fn grpc_statuses_become_http_statuses_with_message_and_details() {
    let (addr, _svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/v1/orders/missing"), &[]).await;
    assert_eq!(r.status, 404);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "grpc_not_found");
    assert_eq!(e["grpc_status"], 5);
    assert_eq!(e["message"], "no order missing");
    let r = get(&format!("{base}/v1/orders/bad"), &[]).await;
    assert_eq!(r.status, 400);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "grpc_invalid_argument");
    assert_eq!(
        e["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(e["details"][0]["fieldViolations"][0]["field"], "id");
    // The service's own validation (INVALID_ARGUMENT, trailers-only).
    let r = send(post(&format!("{base}/v1/orders"), "{}")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "customer_id is required");
    // The route's time budget goes as grpc-timeout; past it, 504.
    let r = get(&format!("{base}/v1/orders/slow"), &[]).await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    let code = r.error_code();
    assert!(
        ["grpc_deadline_exceeded", "upstream_timeout"].contains(&code.as_str()),
        "{code}"
    );
}

#[tokio::test]
async fn metadata_goes_both_ways_and_the_deadline_is_sent() {
    let (addr, svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    let r = get(
        &format!("{base}/v1/orders/meta"),
        &[
            ("x-request-id", "tc-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-tenant", "t7"),
            ("authorization", "Bearer secret"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = r.json()["attributes"].clone();
    assert_eq!(seen["x-request-id"], "tc-1");
    assert!(seen["traceparent"].as_str().unwrap().starts_with("00-0af7"));
    assert_eq!(seen["x-tenant"], "t7");
    assert!(
        seen.get("authorization").is_none(),
        "not listed in request_headers"
    );
    assert_eq!(seen["content-type"], "application/grpc");
    let timeout = seen["grpc-timeout"].as_str().unwrap();
    let ms: u64 = timeout.trim_end_matches('m').parse().unwrap();
    assert!(timeout.ends_with('m') && ms <= 500, "{timeout}");
    assert_eq!(calls(&svc, "GetOrder"), 1);
}

#[tokio::test]
async fn bad_input_never_reaches_the_service() {
    let (addr, svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    let deep = format!(
        "{{\"attributes\": {}1{}}}",
        "{\"a\":".repeat(80),
        "}".repeat(80)
    );
    for (body, why) in [
        (r#"{"customerId": "c1""#.to_string(), "not valid JSON"),
        (r#"{"customerId": 7}"#.to_string(), "customerId"),
        (
            r#"{"customerId": "c1", "colour": "red"}"#.to_string(),
            "colour",
        ),
        (
            r#"{"customerId": "c1", "items": [{"quantity": "many"}]}"#.to_string(),
            "quantity",
        ),
        (r#"[1, 2]"#.to_string(), "object"),
        (deep, "deeper"),
    ] {
        let r = send(post(&format!("{base}/v1/orders"), &body)).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.error_code(), "invalid_request", "{body}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(why), "{body}: {msg}");
    }
    let r = get(&format!("{base}/v1/orders?colour=red"), &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("colour"));
    let r = get(&format!("{base}/v1/orders?pageSize=lots"), &[]).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(calls(&svc, "CreateOrder"), 0);
    assert_eq!(calls(&svc, "ListOrders"), 0);
    // `ignore` lets unknown fields go.
    let gw = gateway(&config(addr, "").replace("unknown_fields: reject", "unknown_fields: ignore"))
        .await;
    let r = send(post(
        &format!("{}/v1/orders", url(&gw, "public")),
        r#"{"customerId": "c1", "colour": "red"}"#,
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn an_oversized_answer_is_a_502_and_json_options_apply() {
    let (addr, _svc) = server().await;
    let small = config(addr, "").replace(
        "      response_headers: [x-order-version]",
        "      response_headers: [x-order-version]\n      max_message: 64",
    );
    let gw = gateway(&small).await;
    let base = url(&gw, "public");
    let r = send(post(
        &format!("{base}/v1/orders"),
        &format!(r#"{{"customerId": "c1", "note": "{}"}}"#, "x".repeat(40)),
    ))
    .await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.error_code(), "upstream_protocol_error");
    let opts = config(addr, "").replace(
        "json: {unknown_fields: reject, emit_defaults: false, enums_as: names}",
        "json: {unknown_fields: reject, emit_defaults: true, enums_as: numbers, field_names: proto}",
    );
    let gw = gateway(&opts).await;
    let r = send(post(
        &format!("{}/v1/orders", url(&gw, "public")),
        r#"{"customer_id": "c1"}"#,
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["status"], 1);
    assert_eq!(v["customer_id"], "c1");
    assert_eq!(v["items"], serde_json::json!([]), "defaults written");
}

#[tokio::test]
async fn contracts_and_bindings_that_do_not_load_are_config_errors() {
    let base = config("127.0.0.1:9".parse().unwrap(), "");
    let cases = [
        (
            base.replace("examples/protos/orders.proto", "examples/protos/nope.proto"),
            "routes[0].grpc.protos[0]",
            "does not compile",
        ),
        (
            base.replace(
                "call: api.OrderService/GetOrder",
                "call: api.OrderService/Nope",
            ),
            "routes[0].grpc.bindings[1].call",
            "no method",
        ),
        (
            base.replace(
                "\"/v1/orders/{id}\", call: api.OrderService/GetOrder",
                "\"/v1/orders/{order.sku}\", call: api.OrderService/GetOrder",
            ),
            "routes[0].grpc.bindings[1]",
            "has no field `order.sku`",
        ),
        (
            base.replace("{put: \"/v1/orders/{id}\"", "{get: \"/v1/orders\""),
            "routes[0].grpc",
            "two bindings for `GET /v1/orders`",
        ),
        (
            base.replace("services: [api.OrderService]", "services: [api.Nothing]"),
            "routes[0].grpc.services[0]",
            "no service",
        ),
        (
            base.replace(
                "body: \"*\"}\n        - {get",
                "body: \"nope\"}\n        - {get",
            ),
            "routes[0].grpc.bindings[0]",
            "no field `nope`",
        ),
    ];
    for (yaml, at, why) in cases {
        let e = config_error(&yaml).unwrap_or_else(|| panic!("accepted: {why}"));
        assert!(
            e.contains(at) && e.contains(why),
            "want {at}: {why}, got:\n{e}"
        );
    }
}

/// Reads a streaming answer frame by frame: the data of each frame, in order.
async fn frames(resp: hyper::Response<hyper::body::Incoming>) -> Vec<String> {
    use http_body_util::BodyExt;
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            out.push(String::from_utf8(d.to_vec()).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn server_streaming_is_ndjson_or_sse_flushed_per_message() {
    let (addr, _svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    // NDJSON: each message is its own chunk, sent when it arrives (the service waits
    // 300 ms between them, so they cannot share one).
    let resp = client()
        .request(request(
            "GET",
            &format!("{base}/v1/orders/c1/events?count=3&intervalMs=300"),
            &[],
            "",
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let chunks = frames(resp).await;
    assert_eq!(
        chunks,
        [
            "{\"orderId\":\"c1-0\",\"status\":\"NEW\"}\n",
            "{\"seq\":1,\"orderId\":\"c1-1\",\"status\":\"PAID\"}\n",
            "{\"seq\":2,\"orderId\":\"c1-2\",\"status\":\"SHIPPED\"}\n",
        ]
    );
    // Server-Sent Events by Accept; a status after the messages ends the stream with an
    // error event.
    let resp = client()
        .request(request(
            "GET",
            &format!("{base}/v1/orders/c2/events?count=1&endWith=8"),
            &[("accept", "text/event-stream")],
            "",
        ))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = frames(resp).await.concat();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0], "data: {\"orderId\":\"c2-0\",\"status\":\"NEW\"}");
    let (kind, data) = events[1].split_once('\n').unwrap();
    assert_eq!(kind, "event: error");
    let e: serde_json::Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(e["error"]["code"], "grpc_resource_exhausted");
    assert_eq!(e["error"]["message"], "the watch ended");
    // A status before any message is an ordinary error answer.
    let r = get(
        &format!("{base}/v1/orders/c3/events?count=0&endWith=5"),
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "grpc_not_found");
}

#[tokio::test]
async fn client_streaming_reads_an_ndjson_body() {
    let (addr, svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    let r = send(request(
        "POST",
        &format!("{base}/v1/orders/import"),
        &[("content-type", "application/x-ndjson")],
        "{\"customerId\": \"a\"}\n\n{\"customerId\": \"b\", \"items\": [{\"sku\": \"x\"}]}\n",
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"imported": 2, "ids": ["o-1", "o-2"]})
    );
    let r = send(request(
        "POST",
        &format!("{base}/v1/orders/import"),
        &[],
        "{\"customerId\": \"a\"}\n{\"customerId\": 5}\n",
    ))
    .await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("line 2: ") && msg.contains("customerId"),
        "{msg}"
    );
    assert_eq!(
        calls(&svc, "ImportOrders"),
        1,
        "the bad stream was never sent"
    );
}

#[tokio::test]
async fn bidirectional_streaming_sends_the_ndjson_body_and_streams_the_answers() {
    let (addr, svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    let r = send(request(
        "POST",
        &format!("{base}/v1/orders/sync"),
        &[("content-type", "application/x-ndjson")],
        "{\"customerId\": \"a\"}\n{\"customerId\": \"b\"}\n{\"customerId\": \"c\"}\n",
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<serde_json::Value> = std::str::from_utf8(&r.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<_> = lines.iter().map(|l| l["id"].clone()).collect();
    let customers: Vec<_> = lines.iter().map(|l| l["customerId"].clone()).collect();
    assert_eq!(ids, ["o-1", "o-2", "o-3"], "one answer per line, in order");
    assert_eq!(customers, ["a", "b", "c"]);
    assert_eq!(calls(&svc, "SyncOrders"), 1);
}

#[tokio::test]
async fn any_in_a_request_is_resolved_by_the_descriptors_at_hand() {
    let (addr, svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    // A message of the contract, and a well-known type with its special JSON form.
    for ext in [
        serde_json::json!({"@type": "type.googleapis.com/api.Item", "sku": "gift-wrap", "quantity": 1, "priceCents": "300"}),
        serde_json::json!({"@type": "type.googleapis.com/google.protobuf.Duration", "value": "90s"}),
    ] {
        let body = serde_json::json!({"customerId": "c1", "extension": ext}).to_string();
        let r = send(post(&format!("{base}/v1/orders"), &body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["extension"], ext, "packed, sent and rendered back");
    }
    // A type the descriptors do not know is refused before any call.
    let r = send(post(
        &format!("{base}/v1/orders"),
        r#"{"customerId": "c1", "extension": {"@type": "type.googleapis.com/api.Nope", "x": 1}}"#,
    ))
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error_code(), "invalid_request");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("extension"), "{msg}");
    assert_eq!(calls(&svc, "CreateOrder"), 2);
}

#[tokio::test]
async fn http_body_is_sent_and_answered_raw() {
    let (addr, _svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/v1/orders/o-9/invoice"), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("text/csv"));
    assert_eq!(&r.body[..], b"order,total\no-9,2699\n");
    let receipt: &[u8] = b"%PDF-1.7 \x00\xff binary";
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{base}/v1/orders/o-9/receipt"))
        .header("content-type", "application/pdf")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            receipt,
        )))
        .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["id"], "o-9", "the path still fills the other fields");
    assert_eq!(v["note"], "application/pdf");
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(v["signature"].as_str().unwrap())
            .unwrap(),
        receipt
    );
}

/// Splits a gRPC-Web body into its frames: (flag, payload).
fn web_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        out.push((b[0], b[5..5 + len].to_vec()));
        b = &b[5 + len..];
    }
    assert!(b.is_empty(), "trailing bytes");
    out
}

#[tokio::test]
async fn grpc_web_binary_and_text_reach_the_native_service() {
    use base64::Engine;
    use prost::Message;
    let (addr, svc) = server().await;
    let yaml = config(addr, "  - {name: web, match: {prefix: /api.OrderService}, upstream: orders-grpc, grpc_web: true}");
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    let message = orders::GetOrderRequest { id: "fixed".into() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    // Binary, over HTTP/1.1 as a browser sends it.
    let r = send(request_bytes(
        &format!("{base}/api.OrderService/GetOrder"),
        "application/grpc-web+proto",
        frame.clone(),
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/grpc-web+proto"));
    let frames = web_frames(&r.body);
    assert_eq!(frames.len(), 2, "a message, then the trailers");
    assert_eq!(frames[0].0, 0);
    let order = orders::Order::decode(frames[0].1.as_slice()).unwrap();
    assert_eq!(order.customer_id, "c-42");
    assert_eq!(frames[1].0, 0x80);
    let trailers = String::from_utf8(frames[1].1.clone()).unwrap();
    assert!(trailers.contains("grpc-status:0\r\n"), "{trailers}");
    // The service saw native gRPC.
    let seen = svc.seen.lock().unwrap().last().unwrap().1.clone();
    assert_eq!(seen["content-type"], "application/grpc+proto");
    assert_eq!(seen["te"], "trailers");
    // Text: base64 both ways (each chunk of the answer encoded on its own).
    let b64 = base64::engine::general_purpose::STANDARD;
    let r = send(request_bytes(
        &format!("{base}/api.OrderService/GetOrder"),
        "application/grpc-web-text",
        b64.encode(&frame).into_bytes(),
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/grpc-web-text+proto")
    );
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let mut raw = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        // Each padded chunk ends at its `=` run (or the end).
        let end = rest.find('=').map_or(rest.len(), |i| {
            i + rest[i..].chars().take_while(|c| *c == '=').count()
        });
        raw.extend(b64.decode(&rest[..end]).unwrap());
        rest = &rest[end..];
    }
    let frames = web_frames(&raw);
    assert_eq!(
        orders::Order::decode(frames[0].1.as_slice()).unwrap().id,
        "fixed"
    );
    assert_eq!(frames.last().unwrap().0, 0x80);
    // A status without a message: trailers-only, in the head.
    let mut missing = vec![0u8];
    let m = orders::GetOrderRequest {
        id: "missing".into(),
    }
    .encode_to_vec();
    missing.extend_from_slice(&(m.len() as u32).to_be_bytes());
    missing.extend_from_slice(&m);
    let r = send(request_bytes(
        &format!("{base}/api.OrderService/GetOrder"),
        "application/grpc-web+proto",
        missing,
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("5"));
    // Without grpc_web on the route, a gRPC-Web request is not translated.
    let yaml = config(
        addr,
        "  - {name: web, match: {prefix: /api.OrderService}, upstream: orders-grpc}",
    );
    let gw = gateway(&yaml).await;
    let r = send(request_bytes(
        &format!("{}/api.OrderService/GetOrder", url(&gw, "public")),
        "application/grpc-web+proto",
        frame,
    ))
    .await;
    assert_ne!(r.header("content-type"), Some("application/grpc-web+proto"));
}

fn request_bytes(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn grpc_web_needs_an_http2_upstream() {
    let yaml = r#"
listeners: [{name: public, address: "127.0.0.1:0"}]
upstreams:
  plain: {endpoints: ["127.0.0.1:9"]}
routes:
  - {name: web, match: {prefix: /}, upstream: plain, grpc_web: true}
"#;
    let e = config_error(yaml).expect("refused");
    assert!(e.contains("routes[0].grpc_web") && e.contains("h2c"), "{e}");
}

#[tokio::test]
async fn a_stream_reset_without_grpc_status_is_a_502() {
    // An h2 server that answers the head, one byte of a frame, then resets the stream.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let resp = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    if let Ok(mut send) = respond.send_response(resp, false) {
                        let _ = send.send_data(bytes::Bytes::from_static(&[0, 0]), false);
                        send.send_reset(h2::Reason::INTERNAL_ERROR);
                    }
                }
            });
        }
    });
    let gw = gateway(&config(addr, "")).await;
    let r = get(&format!("{}/v1/orders/o-1", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.error_code(), "upstream_reset");
}

#[tokio::test]
async fn a_stream_of_http_bodies_is_their_bytes() {
    let (addr, _svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let r = get(
        &format!("{}/v1/orders/c7/export?count=3", url(&gw, "public")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("text/csv"));
    assert_eq!(&r.body[..], b"c7,0\nc7,1\nc7,2\n");
}

#[tokio::test]
async fn well_known_types_in_the_query() {
    let (addr, svc) = server().await;
    let gw = gateway(&config(addr, "")).await;
    let base = url(&gw, "public");
    let r = get(
        &format!("{base}/v1/orders?filter.since=2026-01-01T10:00:00.250Z&pageSize=2"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = get(&format!("{base}/v1/orders?filter.since=yesterday"), &[]).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("filter.since"), "{msg}");
    assert_eq!(
        calls(&svc, "ListOrders"),
        1,
        "the bad timestamp was never sent"
    );
}
