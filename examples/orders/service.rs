//! An `api.OrderService` (examples/protos/orders.proto) for trying and testing gRPC
//! transcoding: messages are prost structs written by hand (no `protoc`), dispatched the
//! way tonic's generated servers do. Orders live in memory.
//!
//! Test hooks: `GetOrder` with id `missing` answers NOT_FOUND, `bad` INVALID_ARGUMENT with
//! `google.rpc.Status` details, `slow` waits 2 s, `meta` echoes the metadata it received
//! into the order's attributes, `reset` drops the stream without a status.

// Shared with the tests (tests/it/transcode.rs includes this file), where not every
// item is used.
#![allow(unreachable_pub, dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use prost::Message;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    #[prost(string, tag = "1")]
    pub sku: String,
    #[prost(int32, tag = "2")]
    pub quantity: i32,
    #[prost(int64, tag = "3")]
    pub price_cents: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Order {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub customer_id: String,
    #[prost(message, repeated, tag = "3")]
    pub items: Vec<Item>,
    #[prost(int64, tag = "4")]
    pub total_cents: i64,
    #[prost(int32, tag = "5")]
    pub status: i32,
    #[prost(message, optional, tag = "6")]
    pub created_at: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "7")]
    pub note: Option<String>,
    #[prost(message, optional, tag = "8")]
    pub delivery_window: Option<prost_types::Duration>,
    #[prost(message, optional, tag = "9")]
    pub attributes: Option<prost_types::Struct>,
    #[prost(bytes = "vec", tag = "10")]
    pub signature: Vec<u8>,
    #[prost(message, optional, tag = "11")]
    pub extension: Option<prost_types::Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateOrderRequest {
    #[prost(string, tag = "1")]
    pub customer_id: String,
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<Item>,
    #[prost(message, optional, tag = "3")]
    pub note: Option<String>,
    #[prost(message, optional, tag = "4")]
    pub attributes: Option<prost_types::Struct>,
    #[prost(message, optional, tag = "5")]
    pub delivery_window: Option<prost_types::Duration>,
    #[prost(message, optional, tag = "6")]
    pub extension: Option<prost_types::Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetOrderRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateOrderRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub order: Option<Order>,
    #[prost(message, optional, tag = "3")]
    pub update_mask: Option<prost_types::FieldMask>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListFilter {
    #[prost(string, tag = "1")]
    pub customer_id: String,
    #[prost(message, optional, tag = "2")]
    pub since: Option<prost_types::Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOrdersRequest {
    #[prost(int32, tag = "1")]
    pub page_size: i32,
    #[prost(int32, repeated, tag = "2")]
    pub statuses: Vec<i32>,
    #[prost(message, optional, tag = "3")]
    pub filter: Option<ListFilter>,
    #[prost(bool, tag = "4")]
    pub include_items: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOrdersResponse {
    #[prost(message, repeated, tag = "1")]
    pub orders: Vec<Order>,
    #[prost(string, tag = "2")]
    pub next_page_token: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CancelOrderRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub customer_id: String,
    #[prost(string, tag = "3")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteOrderRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `google.api.HttpBody`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpBody {
    #[prost(string, tag = "1")]
    pub content_type: String,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UploadReceiptRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub file: Option<HttpBody>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchOrdersRequest {
    #[prost(string, tag = "1")]
    pub customer_id: String,
    #[prost(int32, tag = "2")]
    pub count: i32,
    #[prost(int32, tag = "3")]
    pub interval_ms: i32,
    #[prost(int32, tag = "4")]
    pub end_with: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderEvent {
    #[prost(int32, tag = "1")]
    pub seq: i32,
    #[prost(string, tag = "2")]
    pub order_id: String,
    #[prost(int32, tag = "3")]
    pub status: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImportSummary {
    #[prost(int32, tag = "1")]
    pub imported: i32,
    #[prost(string, repeated, tag = "2")]
    pub ids: Vec<String>,
}

type Events = Pin<Box<dyn futures_util::Stream<Item = Result<OrderEvent, Status>> + Send>>;

/// `google.rpc.BadRequest` (google/rpc/error_details.proto), for the `bad` hook.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldViolation {
    #[prost(string, tag = "1")]
    pub field: String,
    #[prost(string, tag = "2")]
    pub description: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BadRequest {
    #[prost(message, repeated, tag = "1")]
    pub field_violations: Vec<FieldViolation>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The service, with its orders and what its last request carried (for tests).
#[derive(Clone, Default)]
pub struct OrderService {
    orders: Arc<Mutex<BTreeMap<String, Order>>>,
    /// The metadata of every request, by method name.
    pub seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
}

impl tonic::server::NamedService for OrderService {
    const NAME: &'static str = "api.OrderService";
}

type Fut = Pin<
    Box<
        dyn std::future::Future<Output = Result<http::Response<tonic::body::Body>, Infallible>>
            + Send,
    >,
>;

impl tower::Service<http::Request<tonic::body::Body>> for OrderService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Fut {
        let svc = self.clone();
        Box::pin(async move { Ok(svc.dispatch(req).await) })
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_767_225_600,
        nanos: 500_000_000,
    }
}

/// The order `GetOrder` answers for id `fixed` (the benchmark's).
pub fn fixed() -> Order {
    Order {
        id: "fixed".into(),
        customer_id: "c-42".into(),
        items: vec![
            Item {
                sku: "book-17".into(),
                quantity: 2,
                price_cents: 1250,
            },
            Item {
                sku: "pen-3".into(),
                quantity: 1,
                price_cents: 199,
            },
        ],
        total_cents: 2699,
        status: 2,
        created_at: Some(now()),
        note: Some("leave at the door".into()),
        ..Default::default()
    }
}

macro_rules! unary {
    ($req:expr, $in:ty, $out:ty, $f:expr) => {{
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<$out, $in>::default());
        grpc.unary(tower::service_fn($f), $req).await
    }};
}

impl OrderService {
    async fn dispatch(
        &self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        self.seen
            .lock()
            .unwrap()
            .push((method.clone(), req.headers().clone()));
        let orders = self.orders.clone();
        let headers = req.headers().clone();
        match method.as_str() {
            "CreateOrder" => unary!(req, CreateOrderRequest, Order, move |r: Request<
                CreateOrderRequest,
            >| {
                let orders = orders.clone();
                async move {
                    let m = r.into_inner();
                    if m.customer_id.is_empty() {
                        return Err(Status::invalid_argument("customer_id is required"));
                    }
                    let mut map = orders.lock().unwrap();
                    let order = Order {
                        id: format!("o-{}", map.len() + 1),
                        total_cents: m
                            .items
                            .iter()
                            .map(|i| i.price_cents * i64::from(i.quantity))
                            .sum(),
                        customer_id: m.customer_id,
                        items: m.items,
                        status: 1,
                        created_at: Some(now()),
                        note: m.note,
                        delivery_window: m.delivery_window,
                        attributes: m.attributes,
                        signature: vec![0xde, 0xad, 0xbe, 0xef],
                        extension: m.extension,
                    };
                    map.insert(order.id.clone(), order.clone());
                    let mut resp = Response::new(order);
                    resp.metadata_mut()
                        .insert("x-order-version", "1".parse().unwrap());
                    Ok(resp)
                }
            }),
            "GetOrder" | "GetOrderItems" => {
                unary!(req, GetOrderRequest, Order, move |r: Request<
                    GetOrderRequest,
                >| {
                    let orders = orders.clone();
                    let headers = headers.clone();
                    async move {
                        let id = r.into_inner().id;
                        match id.as_str() {
                            "missing" => return Err(Status::not_found(format!("no order {id}"))),
                            "bad" => {
                                let detail = BadRequest {
                                    field_violations: vec![FieldViolation {
                                        field: "id".into(),
                                        description: "not an order id".into(),
                                    }],
                                };
                                let status = RpcStatus {
                                    code: Code::InvalidArgument as i32,
                                    message: "bad id".into(),
                                    details: vec![prost_types::Any {
                                        type_url: "type.googleapis.com/google.rpc.BadRequest"
                                            .into(),
                                        value: detail.encode_to_vec(),
                                    }],
                                };
                                return Err(Status::with_details(
                                    Code::InvalidArgument,
                                    "bad id",
                                    status.encode_to_vec().into(),
                                ));
                            }
                            "slow" => tokio::time::sleep(std::time::Duration::from_secs(2)).await,
                            "fixed" => return Ok(Response::new(fixed())),
                            "meta" => {
                                let fields = headers
                                    .iter()
                                    .filter(|(k, _)| !k.as_str().starts_with(':'))
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            prost_types::Value {
                                                kind: Some(prost_types::value::Kind::StringValue(
                                                    v.to_str().unwrap_or("").to_string(),
                                                )),
                                            },
                                        )
                                    })
                                    .collect();
                                return Ok(Response::new(Order {
                                    id,
                                    attributes: Some(prost_types::Struct { fields }),
                                    ..Default::default()
                                }));
                            }
                            _ => {}
                        }
                        orders
                            .lock()
                            .unwrap()
                            .get(&id)
                            .cloned()
                            .map(Response::new)
                            .ok_or_else(|| Status::not_found(format!("no order {id}")))
                    }
                })
            }
            "UpdateOrder" => unary!(req, UpdateOrderRequest, Order, move |r: Request<
                UpdateOrderRequest,
            >| {
                let orders = orders.clone();
                async move {
                    let m = r.into_inner();
                    let mut map = orders.lock().unwrap();
                    let Some(order) = map.get_mut(&m.id) else {
                        return Err(Status::not_found(format!("no order {}", m.id)));
                    };
                    let patch = m.order.unwrap_or_default();
                    for path in m.update_mask.map(|f| f.paths).unwrap_or_default() {
                        match path.as_str() {
                            "note" => order.note = patch.note.clone(),
                            "status" => order.status = patch.status,
                            "items" => order.items = patch.items.clone(),
                            other => {
                                return Err(Status::invalid_argument(format!(
                                    "cannot update {other}"
                                )))
                            }
                        }
                    }
                    Ok(Response::new(order.clone()))
                }
            }),
            "ListOrders" => unary!(
                req,
                ListOrdersRequest,
                ListOrdersResponse,
                move |r: Request<ListOrdersRequest>| {
                    let orders = orders.clone();
                    async move {
                        let m = r.into_inner();
                        let customer = m
                            .filter
                            .as_ref()
                            .map(|f| f.customer_id.clone())
                            .unwrap_or_default();
                        let list: Vec<Order> = orders
                            .lock()
                            .unwrap()
                            .values()
                            .filter(|o| customer.is_empty() || o.customer_id == customer)
                            .filter(|o| m.statuses.is_empty() || m.statuses.contains(&o.status))
                            .take(if m.page_size > 0 {
                                m.page_size as usize
                            } else {
                                usize::MAX
                            })
                            .map(|o| Order {
                                items: if m.include_items {
                                    o.items.clone()
                                } else {
                                    Vec::new()
                                },
                                ..o.clone()
                            })
                            .collect();
                        Ok(Response::new(ListOrdersResponse {
                            orders: list,
                            next_page_token: String::new(),
                        }))
                    }
                }
            ),
            "CancelOrder" => unary!(req, CancelOrderRequest, Order, move |r: Request<
                CancelOrderRequest,
            >| {
                let orders = orders.clone();
                async move {
                    let m = r.into_inner();
                    let mut map = orders.lock().unwrap();
                    let order = map
                        .get_mut(&m.id)
                        .ok_or_else(|| Status::not_found(format!("no order {}", m.id)))?;
                    if !m.customer_id.is_empty() && m.customer_id != order.customer_id {
                        return Err(Status::permission_denied("not your order"));
                    }
                    order.status = 4;
                    order.note = Some(m.reason);
                    Ok(Response::new(order.clone()))
                }
            }),
            "DeleteOrder" => unary!(req, DeleteOrderRequest, (), move |r: Request<
                DeleteOrderRequest,
            >| {
                let orders = orders.clone();
                async move {
                    let id = r.into_inner().id;
                    match orders.lock().unwrap().remove(&id) {
                        Some(_) => Ok(Response::new(())),
                        None => Err(Status::not_found(format!("no order {id}"))),
                    }
                }
            }),
            "CheckOrder" => unary!(req, GetOrderRequest, (), move |r: Request<
                GetOrderRequest,
            >| {
                let orders = orders.clone();
                async move {
                    let id = r.into_inner().id;
                    match orders.lock().unwrap().contains_key(&id) {
                        true => Ok(Response::new(())),
                        false => Err(Status::not_found(format!("no order {id}"))),
                    }
                }
            }),
            "GetInvoice" => unary!(req, GetOrderRequest, HttpBody, move |r: Request<
                GetOrderRequest,
            >| async move {
                let id = r.into_inner().id;
                Ok::<_, Status>(Response::new(HttpBody {
                    content_type: "text/csv".into(),
                    data: format!("order,total\n{id},2699\n").into_bytes(),
                }))
            }),
            "UploadReceipt" => unary!(req, UploadReceiptRequest, Order, move |r: Request<
                UploadReceiptRequest,
            >| async move {
                let m = r.into_inner();
                let file = m.file.unwrap_or_default();
                Ok::<_, Status>(Response::new(Order {
                    id: m.id,
                    note: Some(file.content_type),
                    signature: file.data,
                    ..Default::default()
                }))
            }),
            "WatchOrders" => {
                let mut grpc = tonic::server::Grpc::new(
                    ProstCodec::<OrderEvent, WatchOrdersRequest>::default(),
                );
                let svc = tower::service_fn(|r: Request<WatchOrdersRequest>| async move {
                    let m = r.into_inner();
                    let pause = std::time::Duration::from_millis(m.interval_ms.max(0) as u64);
                    let customer = m.customer_id.clone();
                    let events = futures_util::stream::unfold(0, move |seq| {
                        let customer = customer.clone();
                        async move {
                            if seq >= m.count {
                                return None;
                            }
                            if seq > 0 {
                                tokio::time::sleep(pause).await;
                            }
                            let e = OrderEvent {
                                seq,
                                order_id: format!("{customer}-{seq}"),
                                status: 1 + seq % 4,
                            };
                            Some((Ok(e), seq + 1))
                        }
                    });
                    let end = m.end_with;
                    let tail = futures_util::stream::iter(
                        (end != 0)
                            .then(|| Err(Status::new(Code::from_i32(end), "the watch ended"))),
                    );
                    let stream: Events = Box::pin(futures_util::StreamExt::chain(events, tail));
                    Ok::<_, Status>(Response::new(stream))
                });
                grpc.server_streaming(svc, req).await
            }
            "ExportOrders" => {
                type Chunks =
                    Pin<Box<dyn futures_util::Stream<Item = Result<HttpBody, Status>> + Send>>;
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<HttpBody, WatchOrdersRequest>::default());
                let svc = tower::service_fn(|r: Request<WatchOrdersRequest>| async move {
                    let m = r.into_inner();
                    let chunks: Vec<Result<HttpBody, Status>> = (0..m.count)
                        .map(|i| {
                            Ok(HttpBody {
                                content_type: "text/csv".into(),
                                data: format!("{},{i}\n", m.customer_id).into_bytes(),
                            })
                        })
                        .collect();
                    let stream: Chunks = Box::pin(futures_util::stream::iter(chunks));
                    Ok::<_, Status>(Response::new(stream))
                });
                grpc.server_streaming(svc, req).await
            }
            "ImportOrders" => {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<
                    ImportSummary,
                    CreateOrderRequest,
                >::default());
                let svc =
                    tower::service_fn(move |r: Request<tonic::Streaming<CreateOrderRequest>>| {
                        let orders = orders.clone();
                        async move {
                            let mut stream = r.into_inner();
                            let mut ids = Vec::new();
                            while let Some(m) = stream.message().await? {
                                let mut map = orders.lock().unwrap();
                                let id = format!("o-{}", map.len() + 1);
                                map.insert(
                                    id.clone(),
                                    Order {
                                        id: id.clone(),
                                        customer_id: m.customer_id,
                                        items: m.items,
                                        status: 1,
                                        ..Default::default()
                                    },
                                );
                                ids.push(id);
                            }
                            Ok::<_, Status>(Response::new(ImportSummary {
                                imported: ids.len() as i32,
                                ids,
                            }))
                        }
                    });
                grpc.client_streaming(svc, req).await
            }
            "SyncOrders" => {
                type Orders =
                    Pin<Box<dyn futures_util::Stream<Item = Result<Order, Status>> + Send>>;
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<Order, CreateOrderRequest>::default());
                let svc =
                    tower::service_fn(move |r: Request<tonic::Streaming<CreateOrderRequest>>| {
                        let orders = orders.clone();
                        async move {
                            let answers =
                                futures_util::stream::unfold(r.into_inner(), move |mut stream| {
                                    let orders = orders.clone();
                                    async move {
                                        let m = match stream.message().await {
                                            Ok(Some(m)) => m,
                                            Ok(None) => return None,
                                            Err(e) => return Some((Err(e), stream)),
                                        };
                                        let mut map = orders.lock().unwrap();
                                        let order = Order {
                                            id: format!("o-{}", map.len() + 1),
                                            customer_id: m.customer_id,
                                            items: m.items,
                                            status: 1,
                                            ..Default::default()
                                        };
                                        map.insert(order.id.clone(), order.clone());
                                        Some((Ok(order), stream))
                                    }
                                });
                            let stream: Orders = Box::pin(answers);
                            Ok::<_, Status>(Response::new(stream))
                        }
                    });
                grpc.streaming(svc, req).await
            }
            _ => {
                let mut resp = http::Response::new(tonic::body::Body::empty());
                let h = resp.headers_mut();
                h.insert("content-type", "application/grpc".parse().unwrap());
                h.insert(
                    "grpc-status",
                    (Code::Unimplemented as i32).to_string().parse().unwrap(),
                );
                resp
            }
        }
    }
}

/// Serves the service on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, svc: OrderService) {
    let _ = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await;
}
