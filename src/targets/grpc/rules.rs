//! The rules of a `grpc` target: one per binding (an HTTP method and path template, the
//! gRPC method, where the body goes, `response_body`), made from `google.api.http`
//! annotations or explicit bindings, with every field path resolved against the
//! descriptors at load; and the typed placing of path and query values into the request's
//! JSON tree.

use http::{Method, Uri};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::Value;

use super::path::PathTemplate;
use crate::config::grpc::BindingSpec;

/// Where a request message's body comes from.
#[derive(Debug, Clone)]
pub(super) enum BodyRule {
    /// No body: the fields come from the path and the query.
    None,
    /// `body: "*"`: the body is the request message.
    Whole,
    /// `body: field`: the body is that field.
    Field(FieldDescriptor),
}

/// One HTTP binding of a gRPC method.
pub struct Rule {
    pub(super) method: Method,
    pub(super) template: PathTemplate,
    pub(super) grpc: MethodDescriptor,
    pub(super) target: Uri,
    pub(super) body: BodyRule,
    pub(super) response_body: Option<FieldDescriptor>,
    /// Each path variable's field path.
    pub(super) vars: Vec<Vec<FieldDescriptor>>,
}

impl Rule {
    /// `GET /v1/orders/{id} -> api.OrderService/GetOrder`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} -> {}/{}",
            self.method,
            self.template.text(),
            self.grpc.parent_service().full_name(),
            self.grpc.name()
        )
    }
}

pub(super) fn same(a: &[FieldDescriptor], b: &[FieldDescriptor]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.full_name() == y.full_name())
}

/// A dotted field path (proto or JSON names) through nested singular messages.
pub(super) fn field_path(desc: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut out = Vec::new();
    let mut at = desc.clone();
    let steps: Vec<&str> = path.split('.').collect();
    for (i, step) in steps.iter().enumerate() {
        let f = at
            .get_field_by_name(step)
            .or_else(|| at.get_field_by_json_name(step))?;
        if i + 1 < steps.len() {
            match f.kind() {
                Kind::Message(m) if !f.is_list() && !f.is_map() => at = m,
                _ => return None,
            }
        }
        out.push(f);
    }
    Some(out)
}

/// A text value as the JSON its field takes: booleans and numbers (of the kinds JSON
/// writes as numbers) unquoted when they parse, everything else a string (the proto3
/// JSON mapping reads 64-bit integers, enums, bytes, timestamps and durations from
/// strings).
pub(super) fn typed(fields: &[FieldDescriptor], text: &str) -> Value {
    let Some(f) = fields.last() else {
        return Value::from(text);
    };
    match f.kind() {
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::from(text),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(text)),
        Kind::Float | Kind::Double => text
            .parse::<f64>()
            .ok()
            .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number))
            .unwrap_or_else(|| Value::from(text)),
        Kind::Message(m) if m.full_name() == "google.protobuf.BoolValue" => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::from(text),
        },
        _ => Value::from(text),
    }
}

/// Sets (or, for a repeated field, appends) `value` at `fields` in the JSON tree.
pub(super) fn set(root: &mut Value, fields: &[FieldDescriptor], value: Value, append: bool) {
    let mut at = root;
    for (i, f) in fields.iter().enumerate() {
        if !at.is_object() {
            *at = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = at else { return };
        let slot = map.entry(f.json_name().to_string()).or_insert(Value::Null);
        if i + 1 == fields.len() {
            if append {
                match slot {
                    Value::Array(items) => items.push(value),
                    other => *other = Value::Array(vec![value]),
                }
            } else {
                *slot = value;
            }
            return;
        }
        at = slot;
    }
}

/// The binding a `google.api.http` rule describes.
pub(super) fn annotation(rule: &DynamicMessage) -> Result<(BindingSpec, Option<String>), String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
    };
    let mut b = BindingSpec {
        get: text("get"),
        post: text("post"),
        put: text("put"),
        patch: text("patch"),
        delete: text("delete"),
        call: String::new(),
        body: text("body"),
        response_body: text("response_body"),
    };
    // `custom: {kind: "HEAD", path: ...}`: any method token.
    let mut custom = None;
    if b.pattern().is_empty() {
        if let Some(c) = rule
            .get_field_by_name("custom")
            .and_then(|v| v.as_message().cloned())
        {
            let field = |name: &str| {
                c.get_field_by_name(name)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .filter(|s| !s.is_empty())
            };
            let (Some(kind), Some(path)) = (field("kind"), field("path")) else {
                return Err("a `custom` pattern needs a `kind` and a `path`".into());
            };
            if Method::from_bytes(kind.as_bytes()).is_err() {
                return Err(format!("`custom` kind `{kind}` is not a method"));
            }
            b.get = Some(path);
            custom = Some(kind);
        }
    }
    if b.pattern().len() != 1 {
        return Err("the google.api.http annotation names no pattern".into());
    }
    Ok((b, custom))
}

/// A rule for `method` bound as `b` says.
pub(super) fn make_rule(method: &MethodDescriptor, b: &BindingSpec) -> Result<Rule, String> {
    let Some(&(verb, text)) = b.pattern().first() else {
        return Err("no method and path".into());
    };
    let template = PathTemplate::parse(text)?;
    let input = method.input();
    let mut vars = Vec::new();
    for v in template.vars() {
        let name = v.field.join(".");
        let fields = field_path(&input, &name).ok_or_else(|| {
            format!(
                "`{{{name}}}` in `{text}`: `{}` has no field `{name}`",
                input.full_name()
            )
        })?;
        let last = fields.last().expect("a field path has one step at least");
        if last.is_list() || last.is_map() || matches!(last.kind(), Kind::Message(_)) {
            return Err(format!(
                "`{{{name}}}` in `{text}` must name a singular scalar field"
            ));
        }
        vars.push(fields);
    }
    let body =
        match b.body.as_deref() {
            None | Some("") => BodyRule::None,
            Some("*") => BodyRule::Whole,
            Some(f) => BodyRule::Field(input.get_field_by_name(f).ok_or_else(|| {
                format!("body `{f}`: `{}` has no field `{f}`", input.full_name())
            })?),
        };
    let response_body = match b.response_body.as_deref() {
        None | Some("") => None,
        Some(f) => Some(method.output().get_field_by_name(f).ok_or_else(|| {
            format!(
                "response_body `{f}`: `{}` has no field `{f}`",
                method.output().full_name()
            )
        })?),
    };
    let target: Uri = format!("/{}/{}", method.parent_service().full_name(), method.name())
        .parse()
        .map_err(|_| "the method's name is not a valid path".to_string())?;
    Ok(Rule {
        method: Method::from_bytes(verb.as_bytes()).map_err(|_| "bad method".to_string())?,
        template,
        grpc: method.clone(),
        target,
        body,
        response_body,
        vars,
    })
}
