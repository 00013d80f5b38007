//! `cargo run --example orders_server -- [ADDRESS]`: the `api.OrderService` of
//! examples/protos/orders.proto on ADDRESS (default 127.0.0.1:50051), plain HTTP/2, for
//! trying examples/grpc.yaml.

mod service;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("api.OrderService on {addr}");
    service::serve(listener, service::OrderService::default()).await;
    Ok(())
}
