//! The console's only way to the data: the gateway's own REST router, called in-process with the
//! signed-in user's credential as the `Authorization` header. Whatever the API refuses that
//! user, the console cannot do either.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt as _;

/// Largest API answer the console reads (an access export can be large).
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// An API client acting as one credential.
#[derive(Clone)]
pub struct Api {
    router: Router,
    credential: String,
    /// The console request's id, passed on so the API calls of one page share it (audit, traces).
    request_id_opt: Option<String>,
}

/// A raw API answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An API refusal as the console shows it: the problem's code, the field at fault and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub code: String,
    pub field_opt: Option<String>,
    pub message: String,
}

impl Failure {
    /// One line: `code (field): message`.
    pub fn line(&self) -> String {
        match &self.field_opt {
            Some(field) => format!("{} ({field}): {}", self.code, self.message),
            None => format!("{}: {}", self.code, self.message),
        }
    }

    /// The refusal an error answer carries.
    pub fn of(answer: &Answer) -> Failure {
        let problem: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let text = |k: &str| problem[k].as_str().map(str::to_string);
        Failure {
            status: answer.status.as_u16(),
            code: text("code").unwrap_or_else(|| "internal".into()),
            field_opt: text("field"),
            message: text("detail").unwrap_or_else(|| format!("the API answered {}", answer.status)),
        }
    }
}

impl Api {
    pub fn new(router: Router, credential: String) -> Api {
        Api { router, credential, request_id_opt: None }
    }

    /// The same client, sending `request_id` as `x-request-id` with every call.
    pub fn with_request_id(mut self, request_id: String) -> Api {
        self.request_id_opt = Some(request_id);
        self
    }

    /// Sends one request to the API router and reads the whole answer.
    pub async fn send(&self, method: Method, path: &str, body_opt: Option<&Value>) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.credential))
            .header(header::USER_AGENT, "carnet-console");
        if let Some(id) = &self.request_id_opt {
            request = request.header("x-request-id", id.as_str());
        }
        let body = match body_opt {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(json).expect("json serialises"))
            }
            None => Body::empty(),
        };
        let request = match request.body(body) {
            Ok(request) => request,
            Err(_) => return answer_of(StatusCode::BAD_REQUEST, "invalid_argument", "the request path is malformed"),
        };
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
            Ok(body) => Answer { status: parts.status, headers: parts.headers, body },
            Err(_) => answer_of(StatusCode::BAD_GATEWAY, "internal", "the API answer could not be read"),
        }
    }

    /// Sends a request and parses a successful JSON answer; a refusal becomes a [`Failure`].
    pub async fn call(&self, method: Method, path: &str, body_opt: Option<&Value>) -> Result<Value, Failure> {
        let answer = self.send(method, path, body_opt).await;
        if !answer.status.is_success() {
            return Err(Failure::of(&answer));
        }
        Ok(serde_json::from_slice(&answer.body).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::DELETE, path, None).await
    }
}

fn answer_of(status: StatusCode, code: &str, detail: &str) -> Answer {
    let body = serde_json::json!({"code": code, "detail": detail});
    Answer { status, headers: HeaderMap::new(), body: Bytes::from(body.to_string()) }
}

/// `path` with the non-empty `params` as its query string.
pub fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(k, v);
        any = true;
    }
    if any { format!("{path}?{}", query.finish()) } else { path.to_string() }
}

/// Percent-encodes one path segment (ids come from the user's address bar).
pub fn segment(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_with_query_skips_empty_values_and_encodes() {
        assert_eq!(with_query("/v1/contacts", &[("q", ""), ("limit", "")]), "/v1/contacts");
        assert_eq!(with_query("/v1/contacts", &[("q", "a b&c"), ("limit", "50")]), "/v1/contacts?q=a+b%26c&limit=50");
        assert_eq!(segment("../x y"), "..%2Fx+y");
    }

    #[test]
    fn test_failure_line_names_code_and_field() {
        let answer = Answer {
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            body: Bytes::from(r#"{"code":"invalid_argument","field":"phone","detail":"phone: is not in the policy"}"#),
        };
        let f = Failure::of(&answer);
        assert_eq!(f.line(), "invalid_argument (phone): phone: is not in the policy");
        assert_eq!(f.status, 400);
    }
}
