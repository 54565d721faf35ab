//! A small HTTP client for the gateway tests and benchmarks (hyper, HTTP/1.1, keep-alive).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An answer: status, headers and the body parsed as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub json: serde_json::Value,
    pub body: Bytes,
}

impl Answer {
    /// The problem `code` of an error answer.
    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or_default()
    }

    /// The problem `field` of an error answer.
    pub fn field(&self) -> &str {
        self.json["field"].as_str().unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    /// A client of `http://{addr}`.
    pub fn new(addr: std::net::SocketAddr) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Http { client: Client::builder(TokioExecutor::new()).build(connector), base: format!("http://{addr}") }
    }

    /// Sends a JSON request (`body` `None` sends none) with an optional bearer credential.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Answer {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.raw(method, path, bearer, bytes.as_ref().map(|_| "application/json"), bytes.unwrap_or_default()).await
    }

    /// Sends raw bytes with the given content type.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let headers: Vec<(&str, String)> =
            bearer.map(|t| ("authorization", format!("Bearer {t}"))).into_iter().collect();
        self.raw_with_headers(method, path, &headers, content_type, body).await
    }

    /// Sends raw bytes with the given headers and content type.
    pub async fn raw_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = self.client.request(req.body(Full::new(Bytes::from(body))).unwrap()).await.expect("http request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("http body").to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Answer { status, headers, json, body }
    }
}
