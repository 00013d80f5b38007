//! The request side of a call: the request message (or the messages of a client stream)
//! made from the body, the path variables and the query parameters.

use http::header::CONTENT_TYPE;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind};
use serde_json::Value;

use super::*;

impl Grpc {
    /// The request message from the body, the path variables and the query.
    pub(super) async fn request_message(
        &self,
        rule: &Rule,
        values: &[String],
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<DynamicMessage, GatewayError> {
        let mut root = Value::Object(serde_json::Map::new());
        // A `google.api.HttpBody` body is the raw bytes and their content type.
        let mut raw: Option<(Option<FieldDescriptor>, DynamicMessage)> = None;
        if !matches!(rule.body, BodyRule::None) {
            // The route's `max_body` bounds the body as it streams; this is a last guard.
            let bytes = read_all(body, 64 << 20).await?;
            let target = match &rule.body {
                BodyRule::Whole if is_http_body(&rule.grpc.input()) => {
                    Some((None, rule.grpc.input()))
                }
                BodyRule::Field(f) => match f.kind() {
                    Kind::Message(m) if is_http_body(&m) && !f.is_list() => {
                        Some((Some(f.clone()), m))
                    }
                    _ => None,
                },
                _ => None,
            };
            if let Some((field, desc)) = target {
                let mut m = DynamicMessage::new(desc);
                let content_type = parts
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream");
                m.set_field_by_name(
                    "content_type",
                    prost_reflect::Value::String(content_type.into()),
                );
                m.set_field_by_name("data", prost_reflect::Value::Bytes(bytes.clone()));
                raw = Some((field, m));
            } else if !bytes.iter().all(u8::is_ascii_whitespace) {
                let v = parse_body(&bytes, self.max_depth)?;
                match &rule.body {
                    BodyRule::Whole => {
                        if !v.is_object() {
                            return Err(invalid("the body must be a JSON object".into()));
                        }
                        root = v;
                    }
                    BodyRule::Field(f) => {
                        root[f.json_name()] = v;
                    }
                    BodyRule::None => {}
                }
            }
        }
        for (fields, value) in rule.vars.iter().zip(values) {
            set(&mut root, fields, typed(fields, value), false);
        }
        if let Some(query) = parts.uri.query() {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let (k, v) = (
                    crate::targets::compose::template::decode_form(k),
                    crate::targets::compose::template::decode_form(v),
                );
                let Some(fields) = field_path(&rule.grpc.input(), &k) else {
                    if self.reject_unknown {
                        return Err(invalid(format!("unknown query parameter `{k}`")));
                    }
                    continue;
                };
                if rule.vars.iter().any(|p| same(p, &fields)) {
                    continue; // the path's value wins
                }
                let repeated = fields.last().is_some_and(|f| f.is_list());
                set(&mut root, &fields, typed(&fields, &v), repeated);
            }
        }
        match raw {
            Some((None, whole)) => Ok(whole),
            Some((Some(field), body)) => {
                let mut m = to_message(&rule.grpc.input(), root, &self.de)?;
                m.set_field(&field, prost_reflect::Value::Message(body));
                Ok(m)
            }
            None => to_message(&rule.grpc.input(), root, &self.de),
        }
    }

    /// The messages of a client-streaming call: an NDJSON body, one message per line
    /// (the path's variables set in each).
    pub(super) async fn request_stream(
        &self,
        rule: &Rule,
        values: &[String],
        body: Body,
    ) -> Result<Vec<DynamicMessage>, GatewayError> {
        let bytes = read_all(body, 64 << 20).await?;
        let mut out = Vec::new();
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut v = parse_body(line, self.max_depth)
                .map_err(|e| invalid(format!("line {}: {}", n + 1, text_of(&e))))?;
            if !v.is_object() {
                return Err(invalid(format!(
                    "line {}: a message must be a JSON object",
                    n + 1
                )));
            }
            for (fields, value) in rule.vars.iter().zip(values) {
                set(&mut v, fields, typed(fields, value), false);
            }
            let m = to_message(&rule.grpc.input(), v, &self.de)
                .map_err(|e| invalid(format!("line {}: {}", n + 1, text_of(&e))))?;
            out.push(m);
        }
        Ok(out)
    }
}
