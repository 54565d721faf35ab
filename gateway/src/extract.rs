//! Request extractors that refuse bad input with a message naming the field: JSON bodies (size
//! limit, unknown fields, wrong types), query strings and ids in paths.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use carnet_kit::ErrorCode;

use crate::error::ApiError;

/// Largest accepted JSON body unless configured otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The body limit in force, put into request extensions by the router.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// A JSON body deserialised strictly: unknown fields and wrong types are refused with the path
/// of the field; values are never echoed back.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
        if !is_json {
            return Err(ApiError::invalid_field("content-type", "must be application/json"));
        }
        let limit = req.extensions().get::<BodyLimit>().map_or(DEFAULT_MAX_BODY_BYTES, |l| l.0);
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) if b.len() <= limit => b,
            _ => return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("body: larger than {limit} bytes"))),
        };
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, mapping serde errors onto (field path, message) without the offending value.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => match de.end() {
            Ok(()) => Ok(v),
            Err(_) => Err(ApiError::invalid_field("body", "has trailing characters after the JSON value")),
        },
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            Err(describe(&path, &inner))
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path == "." || path.is_empty() { name.to_string() } else { format!("{path}.{name}") }
}

fn describe(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::invalid_field("body", format!("is not valid JSON (line {}, column {})", err.line(), err.column()))
        }
        Category::Data => {
            let text = err.to_string();
            let text = text.split(" at line ").next().unwrap_or(&text);
            let between = |s: &str| s.split('`').nth(1).map(str::to_owned);
            if text.starts_with("unknown field") {
                // The path already ends at the unknown member.
                let name = between(text).unwrap_or_default();
                let field = if path.ends_with(&name) { path.to_string() } else { join(path, &name) };
                ApiError::invalid_field(field, "is not a known field")
            } else if text.starts_with("missing field") {
                let name = between(text).unwrap_or_default();
                ApiError::invalid_field(join(path, &name), "is required")
            } else if let Some((_, expected)) = text.split_once("expected ") {
                // "invalid type: string \"…\", expected u32" → keep only what was expected.
                let field = if path == "." { "body".to_string() } else { path.to_string() };
                ApiError::invalid_field(field, format!("has the wrong type or value, expected {expected}"))
            } else {
                let field = if path == "." { "body".to_string() } else { path.to_string() };
                ApiError::invalid_field(field, "has the wrong type or value")
            }
        }
    }
}

/// A query string deserialised strictly: unknown parameters and wrong types are refused
/// naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|err| {
            let path = err.path().to_string();
            let text = err.into_inner().to_string();
            let name = text.split('`').nth(1).unwrap_or_default().to_string();
            if text.starts_with("unknown field") {
                ApiError::invalid_field(name, "is not a known query parameter")
            } else if path != "." {
                ApiError::invalid_field(path, "has the wrong type or value")
            } else {
                ApiError::invalid_field("query", "is malformed")
            }
        })
    }
}

/// Parses an id taken from the path, naming `field` when it is malformed.
pub fn path_id(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    carnet_kit::grpc::parse_id(field, raw).map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Inner,
    }

    fn field_of(json: &str) -> (Option<String>, String) {
        let err = parse_json::<Outer>(json.as_bytes()).unwrap_err().error;
        (err.field_opt, err.message)
    }

    #[test]
    fn test_unknown_field_is_named_with_its_path() {
        let (field, _) = field_of(r#"{"name":"a","inner":{"count":1,"colour":"red"}}"#);
        assert_eq!(field.as_deref(), Some("inner.colour"));
    }

    #[test]
    fn test_wrong_type_is_named_without_echoing_the_value() {
        let (field, message) = field_of(r#"{"name":"a","inner":{"count":"secret-value"}}"#);
        assert_eq!(field.as_deref(), Some("inner.count"));
        assert!(!message.contains("secret-value"), "{message}");
    }

    #[test]
    fn test_missing_field_is_named() {
        let (field, _) = field_of(r#"{"inner":{"count":1}}"#);
        assert_eq!(field.as_deref(), Some("name"));
    }

    #[test]
    fn test_top_level_unknown_field_is_named_once() {
        let (field, _) = field_of(r#"{"name":"a","inner":{"count":1},"shoe":1}"#);
        assert_eq!(field.as_deref(), Some("shoe"));
    }

    #[test]
    fn test_malformed_json_names_the_body() {
        let (field, _) = field_of(r#"{"name":"#);
        assert_eq!(field.as_deref(), Some("body"));
    }
}
