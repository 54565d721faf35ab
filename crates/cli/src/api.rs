//! A small client of the gateway's REST API for the commands that go through it (`carnet
//! import`): JSON calls, a streamed upload and a streamed download, over http or https, with an
//! API key. Refusals come back as the API's code, field and message.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt as _;

type Body = BoxBody<Bytes, std::io::Error>;

pub struct Api {
    base: String,
    key: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
}

/// Bytes read from a file per upload frame.
const FRAME: usize = 256 * 1024;

impl Api {
    pub fn new(base: &str, key: &str) -> anyhow::Result<Api> {
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--url must be an http:// or https:// URL of the gateway");
        }
        if key.is_empty() {
            bail!("an API key is required (--api-key or CARNET_API_KEY)");
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .context("tls setup")?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Api { base: base.trim_end_matches('/').to_string(), key: key.to_string(), client })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Body,
    ) -> anyhow::Result<(u16, hyper::body::Incoming)> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", content_type)
            .body(body)?;
        let response = self.client.request(request).await.with_context(|| format!("cannot reach {}", self.base))?;
        Ok((response.status().as_u16(), response.into_body()))
    }

    /// A JSON call; a refusal is an error naming the API's code and field.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let body = Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed();
        let (status, incoming) = self.send(method, path, "application/json", body).await?;
        let bytes = incoming.collect().await.context("reading the answer")?.to_bytes();
        answer(status, &bytes)
    }

    /// PUTs a file as the body, counting the bytes sent in `sent`.
    pub async fn upload(
        &self,
        path: &str,
        file: &Path,
        content_type: &str,
        sent: Arc<AtomicU64>,
    ) -> anyhow::Result<serde_json::Value> {
        let f = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
        let frames = futures::stream::unfold(Some(f), move |state| {
            let sent = sent.clone();
            async move {
                let mut f = state?;
                let mut buf = vec![0u8; FRAME];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                        Some((Ok(Frame::data(Bytes::from(buf))), Some(f)))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        });
        let frames: Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync>> = Box::pin(frames);
        let (status, incoming) = self.send("PUT", path, content_type, BodyExt::boxed(StreamBody::new(frames))).await?;
        let bytes = incoming.collect().await.context("reading the answer")?.to_bytes();
        answer(status, &bytes)
    }

    /// GETs `path` and hands back the answer's headers and body to stream, once it is a success.
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<(hyper::HeaderMap, hyper::body::Incoming)> {
        let body = Full::new(Bytes::new()).map_err(|never| match never {}).boxed();
        let request = hyper::Request::builder()
            .method("GET")
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key))
            .body(body)?;
        let response = self.client.request(request).await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status().as_u16();
        let (parts, incoming) = response.into_parts();
        if status >= 300 {
            let bytes = incoming.collect().await?.to_bytes();
            answer(status, &bytes)?;
            bail!("{status}");
        }
        Ok((parts.headers, incoming))
    }

    /// GETs `path` into `out`, streamed.
    pub async fn download(&self, path: &str, out: &Path) -> anyhow::Result<u64> {
        let (_, incoming) = self.get_stream(path).await?;
        let mut file = tokio::fs::File::create(out).await.with_context(|| format!("cannot write {}", out.display()))?;
        let mut stream = incoming.into_data_stream();
        let mut n = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("reading the download")?;
            n += chunk.len() as u64;
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        Ok(n)
    }
}

fn answer(status: u16, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
    let json: serde_json::Value = serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null);
    if status >= 300 {
        let field = json["field"].as_str().map(|f| format!(" ({f})")).unwrap_or_default();
        bail!(
            "{status} {}{field}: {}",
            json["code"].as_str().unwrap_or("error"),
            json["detail"].as_str().or(json["message"].as_str()).unwrap_or("no detail")
        );
    }
    Ok(json)
}
