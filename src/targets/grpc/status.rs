//! gRPC statuses as HTTP errors: `grpc-status` read from a head or trailers, the standard
//! table applied (in `GatewayError`), `grpc-message` and the `google.rpc.Status` details
//! (`grpc-status-details-bin`) rendered as JSON with the types at hand.

use http::HeaderMap;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use super::*;

/// `google.rpc.Status` details as JSON: each `Any` decoded when its type is in the
/// contracts, otherwise only its `@type`.
pub(super) fn details(pool: &DescriptorPool, ser: &SerializeOptions, b64: &[u8]) -> Option<Value> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(
            b64.strip_suffix(b"==")
                .or(b64.strip_suffix(b"="))
                .unwrap_or(b64),
        )
        .ok()?;
    let status = protos::Status::decode(raw.as_slice()).ok()?;
    let list = status
        .details
        .iter()
        .map(|any| {
            let name = any.type_url.rsplit('/').next().unwrap_or("");
            let mut v = pool
                .get_message_by_name(name)
                .and_then(|d| DynamicMessage::decode(d, any.value.as_slice()).ok())
                .and_then(|m| {
                    let mut out = Vec::new();
                    let mut s = serde_json::Serializer::new(&mut out);
                    m.serialize_with_options(&mut s, ser).ok()?;
                    serde_json::from_slice::<Value>(&out).ok()
                })
                .filter(Value::is_object)
                .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
            v["@type"] = Value::from(any.type_url.clone());
            v
        })
        .collect();
    Some(Value::Array(list))
}

/// The `grpc-status` of a head or trailers.
pub(super) fn status_of(meta: &HeaderMap) -> Option<u32> {
    meta.get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The error of a non-zero `grpc-status`, with its message and details.
pub(super) fn grpc_error(
    code: u32,
    meta: &HeaderMap,
    grpc: &Grpc,
    headers: HeaderMap,
) -> GatewayError {
    status_error(code, meta, &grpc.pool, &grpc.ser, headers)
}

pub(super) fn status_error(
    code: u32,
    meta: &HeaderMap,
    pool: &DescriptorPool,
    ser: &SerializeOptions,
    headers: HeaderMap,
) -> GatewayError {
    let message = meta
        .get(&GRPC_MESSAGE)
        .map(|v| {
            percent_encoding::percent_decode(v.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let details = meta
        .get(&GRPC_DETAILS)
        .and_then(|v| details(pool, ser, v.as_bytes()));
    GatewayError::Grpc {
        code,
        message,
        details,
        headers: Box::new(headers),
    }
}
