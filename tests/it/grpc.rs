//! gRPC passes through unchanged: a tonic client calls a tonic server (tonic's transport,
//! a service written the way tonic's code generator writes them) through the gateway (HTTP/2 both sides), unary and server-streaming, with
//! errors carried in trailers (and trailers-only responses). Messages are prost structs
//! written by hand, so no protoc is needed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::Stream;
use http::uri::PathAndQuery;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::support::*;

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    index: u32,
}

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// The service: `/test.Echo/Unary`, `/test.Echo/Stream` (count replies, then a status
/// with trailing metadata) and `/test.Echo/Fail` (trailers-only), dispatched the way
/// tonic's generated servers do, through `tonic::server::Grpc`.
#[derive(Clone)]
struct EchoService;

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "test.Echo";
}

impl tower::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move { Ok(dispatch(req).await) })
    }
}

async fn dispatch(req: http::Request<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
    match req.uri().path() {
        "/test.Echo/Unary" => {
            let svc = tower::service_fn(|r: Request<EchoRequest>| async move {
                let seen = r.metadata().get("x-request-id").is_some();
                let m = r.into_inner();
                let mut resp = Response::new(EchoReply {
                    message: format!("echo: {}", m.message),
                    index: 0,
                });
                resp.metadata_mut().insert(
                    "x-saw-request-id",
                    if seen { "yes" } else { "no" }.parse().unwrap(),
                );
                Ok::<_, Status>(resp)
            });
            grpc.unary(svc, req).await
        }
        "/test.Echo/Stream" => {
            let svc = tower::service_fn(|r: Request<EchoRequest>| async move {
                let m = r.into_inner();
                let items: Vec<Result<EchoReply, Status>> = (0..m.count)
                    .map(|i| {
                        Ok(EchoReply {
                            message: m.message.clone(),
                            index: i,
                        })
                    })
                    .chain(std::iter::once({
                        let mut s = Status::resource_exhausted("no more");
                        s.metadata_mut().insert("x-left", "0".parse().unwrap());
                        Err(s)
                    }))
                    .collect();
                let stream: Replies = Box::pin(futures_util::stream::iter(items));
                Ok::<_, Status>(Response::new(stream))
            });
            grpc.server_streaming(svc, req).await
        }
        _ => {
            let svc = tower::service_fn(|_r: Request<EchoRequest>| async move {
                Err::<Response<EchoReply>, _>(Status::not_found("no such user"))
            });
            grpc.unary(svc, req).await
        }
    }
}

/// A tonic gRPC server (tonic's own transport) on a free port.
async fn grpc_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoService)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
    );
    addr
}

#[tokio::test]
async fn grpc_unary_and_streaming_pass_through_with_trailers() {
    let upstream = grpc_server().await;
    let gw = gateway(&format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  grpc: {{endpoints: ["{upstream}"], protocol: h2c}}
routes:
  - {{name: echo, match: {{prefix: /test.Echo/, methods: [POST]}}, upstream: grpc}}
"#
    ))
    .await;
    let channel = tonic::transport::Endpoint::from_shared(url(&gw, "public"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    let codec = || ProstCodec::<EchoRequest, EchoReply>::default();

    // Unary.
    client.ready().await.unwrap();
    let resp = client
        .unary(
            Request::new(EchoRequest {
                message: "hi".into(),
                count: 0,
            }),
            PathAndQuery::from_static("/test.Echo/Unary"),
            codec(),
        )
        .await
        .unwrap();
    assert_eq!(resp.metadata().get("x-saw-request-id").unwrap(), "yes");
    assert!(resp.metadata().get("x-request-id").is_some());
    assert_eq!(resp.into_inner().message, "echo: hi");

    // Server streaming: every message, then the status and metadata from the trailers.
    client.ready().await.unwrap();
    let resp = client
        .server_streaming(
            Request::new(EchoRequest {
                message: "tick".into(),
                count: 5,
            }),
            PathAndQuery::from_static("/test.Echo/Stream"),
            codec(),
        )
        .await
        .unwrap();
    let mut stream = resp.into_inner();
    let mut got = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => got.push(m.index),
            Ok(None) => panic!("the stream ended without its status"),
            Err(s) => break s,
        }
    };
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "no more");
    assert_eq!(status.metadata().get("x-left").unwrap(), "0");

    // Trailers-only error.
    client.ready().await.unwrap();
    let err = client
        .unary(
            Request::new(EchoRequest::default()),
            PathAndQuery::from_static("/test.Echo/Fail"),
            codec(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such user");
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    /// 1 SERVING, 2 NOT_SERVING.
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `grpc.health.v1.Health/Check` answering `status` for the service `orders`, and
/// NOT_FOUND for any other name, as grpc's own health servers do.
#[derive(Clone)]
struct HealthService(std::sync::Arc<std::sync::atomic::AtomicI32>);

impl tonic::server::NamedService for HealthService {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl tower::Service<http::Request<tonic::body::Body>> for HealthService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let status = self.0.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<
                HealthCheckResponse,
                HealthCheckRequest,
            >::default());
            let svc = tower::service_fn(move |r: Request<HealthCheckRequest>| {
                let status = status.clone();
                async move {
                    if r.into_inner().service != "orders" {
                        return Err(Status::not_found("unknown service"));
                    }
                    Ok(Response::new(HealthCheckResponse {
                        status: status.load(std::sync::atomic::Ordering::SeqCst),
                    }))
                }
            });
            Ok(grpc.unary(svc, req).await)
        })
    }
}

#[tokio::test]
async fn the_grpc_health_protocol_marks_an_endpoint_unhealthy_and_healthy_again() {
    use std::sync::atomic::{AtomicI32, Ordering::SeqCst};
    let status = std::sync::Arc::new(AtomicI32::new(1));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthService(status.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
    );
    let config = |service: &str| {
        format!(
            r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
upstreams:
  grpc:
    endpoints: ["{addr}"]
    protocol: h2c
    health_check:
      active: {{type: grpc, service: {service}, interval: 100ms, healthy_after: 1, unhealthy_after: 1}}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: grpc}}
"#
        )
    };
    let gw = gateway(&config("orders")).await;
    let admin = format!("http://{}/upstreams", gw.admin_addr().unwrap());
    let healthy = || async {
        get(&admin, &[]).await.json()["upstreams"][0]["endpoints"][0]["healthy"]
            .as_bool()
            .unwrap()
    };
    assert!(healthy().await);
    status.store(2, SeqCst); // NOT_SERVING
    eventually(
        std::time::Duration::from_secs(5),
        "NOT_SERVING marks it unhealthy",
        || async { (!healthy().await).then_some(()) },
    )
    .await;
    status.store(1, SeqCst);
    eventually(
        std::time::Duration::from_secs(5),
        "SERVING marks it healthy",
        || async { healthy().await.then_some(()) },
    )
    .await;
    // A service the server does not know (grpc-status 5) fails the check too.
    let loaded = turnpike::config::load_str(&config("billing"), std::path::Path::new(".")).unwrap();
    gw.runtime().apply(loaded).await.unwrap();
    eventually(
        std::time::Duration::from_secs(5),
        "an unknown service is unhealthy",
        || async { (!healthy().await).then_some(()) },
    )
    .await;
}
