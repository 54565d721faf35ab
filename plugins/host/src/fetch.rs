//! The host side of `http.fetch`: a GET to a host the plugin's manifest declares, within a
//! timeout, a body cap and a number of fetches per run. Redirects are not followed (the plugin
//! gets the 3xx); nothing about the request or the response is logged (URLs and bodies may hold
//! personal data).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::Uri;
use hyper::http::uri::Scheme;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::manifest::parse_host;

/// The longest URL a plugin may fetch.
const MAX_URL_BYTES: usize = 8 << 10;

/// How long the caller waits past the fetch's own timeout before giving up on the fetch thread.
const GRACE: Duration = Duration::from_millis(50);

/// The limits of the HTTP fetch, on top of the run's [`Limits`](crate::Limits).
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// Wall time of one fetch, from connecting to the last byte of the body. Never more than
    /// what is left of the run's timeout: a fetch that reaches the run's deadline fails the run
    /// with [`RunError::Timeout`](crate::RunError::Timeout).
    pub timeout: Duration,
    /// Bytes of one response body; a longer body fails the fetch (the plugin gets an error).
    pub max_body_bytes: usize,
    /// Fetches one run may send; later ones are refused. Fetches refused before any connection
    /// (an undeclared host, a bad URL) do not count.
    pub max_fetches: u32,
    /// Whether `http://` URLs may be fetched (still only from declared hosts). For tests against
    /// loopback and for development: keep it off in production.
    pub allow_plain_http: bool,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            timeout: Duration::from_secs(2),
            max_body_bytes: 1 << 20,
            max_fetches: 8,
            allow_plain_http: false,
        }
    }
}

/// How one fetch ended.
pub(crate) enum Outcome {
    /// The server answered, with this status and body.
    Answered(u16, Vec<u8>),
    /// The fetch failed; the text is for the plugin.
    Failed(String),
    /// The timeout it was given ran out.
    TimedOut,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The outbound side of a [`Host`](crate::Host): one pooled HTTP client, driven by a
/// current-thread Tokio runtime on a thread of its own.
///
/// `Host::run` is blocking and is called from anywhere: a blocking thread of a multi-thread
/// runtime, a plain thread, or a runtime worker (the CLI). Entering the caller's runtime or
/// starting one per fetch would panic in that last case, and connections could not outlive a
/// per-fetch runtime; with a runtime of its own every caller hands the request over and waits on
/// a channel, and the connection pool lives as long as the host. One thread is enough: fetches
/// wait on the network, and at most `pool_size` runs fetch at once.
pub(crate) struct Outbound {
    client: HttpsClient,
    runtime: tokio::runtime::Handle,
    limits: FetchLimits,
    /// Dropped with the host: the runtime's thread then ends, dropping any fetch still going.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Outbound {
    pub(crate) fn new(limits: FetchLimits) -> Result<Outbound, String> {
        // The provider is named explicitly so that no process-wide rustls default is needed.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("failed to set up tls for plugin fetches: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("failed to build the plugin fetch runtime: {e}"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("carnet-plugin-fetch".into())
            .spawn(move || {
                // Returns when the sender is dropped; the runtime is then dropped here, off any
                // async context.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| format!("failed to start the plugin fetch thread: {e}"))?;
        Ok(Outbound { client, runtime: handle, limits, _stop: stop })
    }

    pub(crate) fn limits(&self) -> &FetchLimits {
        &self.limits
    }

    /// GETs `uri` (already checked by [`check_url`]) within `timeout`, blocking the caller.
    pub(crate) fn get(&self, uri: Uri, timeout: Duration) -> Outcome {
        let request = match hyper::Request::get(uri)
            .header(hyper::header::USER_AGENT, concat!("carnet-plugin-host/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
        {
            Ok(request) => request,
            Err(_) => return Outcome::Failed("the url is not valid".into()),
        };
        let client = self.client.clone();
        let max_body_bytes = self.limits.max_body_bytes;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task = self.runtime.spawn(async move {
            let outcome = match tokio::time::timeout(timeout, exchange(client, request, max_body_bytes)).await {
                Ok(Ok((status, body))) => Outcome::Answered(status, body),
                Ok(Err(message)) => Outcome::Failed(message),
                Err(_) => Outcome::TimedOut,
            };
            let _ = tx.send(outcome);
        });
        // The runtime's timer ends the exchange; this wait bounds the caller even if that thread
        // is too busy to fire it.
        match rx.recv_timeout(timeout + GRACE) {
            Ok(outcome) => outcome,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                task.abort();
                Outcome::TimedOut
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Outcome::Failed("the host is shutting down".into()),
        }
    }
}

async fn exchange(
    client: HttpsClient,
    request: hyper::Request<Empty<Bytes>>,
    max_body_bytes: usize,
) -> Result<(u16, Vec<u8>), String> {
    let too_large = || format!("the response body is larger than {max_body_bytes} bytes");
    let response = client.request(request).await.map_err(|e| describe("the fetch failed", &e))?;
    let status = response.status().as_u16();
    let declared_length_opt = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length_opt.is_some_and(|n| n > max_body_bytes as u64) {
        return Err(too_large());
    }
    let body = Limited::new(response.into_body(), max_body_bytes).collect().await.map_err(|e| {
        if e.is::<LengthLimitError>() { too_large() } else { describe("failed to read the response body", &*e) }
    })?;
    Ok((status, body.to_bytes().to_vec()))
}

/// Returns `what` followed by the error's chain of causes, cut short.
fn describe(what: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = what.to_string();
    let mut cause_opt = Some(e);
    while let Some(cause) = cause_opt {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        cause_opt = cause.source();
    }
    text.chars().take(200).collect()
}

/// Returns `url` parsed when it may be fetched: `https://` (or `http://` when `allow_plain_http`),
/// no userinfo, and a host and port that one of `declared` names exactly (a declared host
/// without a port stands for the scheme's default one). The error text is for the plugin.
pub(crate) fn check_url(url: &str, declared: &[String], allow_plain_http: bool) -> Result<Uri, String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("the url is longer than {MAX_URL_BYTES} bytes"));
    }
    let uri: Uri = url.parse().map_err(|_| "the url is not valid".to_string())?;
    let default_port = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => 443,
        Some(s) if *s == Scheme::HTTP && allow_plain_http => 80,
        _ if allow_plain_http => return Err("only https:// and http:// urls can be fetched".into()),
        _ => return Err("only https:// urls can be fetched".into()),
    };
    let authority = uri.authority().ok_or_else(|| "the url has no host".to_string())?;
    if authority.as_str().contains('@') {
        return Err("urls with credentials (user@host) are refused".into());
    }
    let (host, port) = (authority.host(), authority.port_u16().unwrap_or(default_port));
    let is_declared = declared
        .iter()
        .filter_map(|d| parse_host(d))
        .any(|(h, p)| h.eq_ignore_ascii_case(host) && p.unwrap_or(default_port) == port);
    if !is_declared {
        return Err(format!("host {authority} is not declared in the plugin's manifest"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> Vec<String> {
        vec!["api.example.org".into(), "127.0.0.1:8443".into(), "[::1]:9000".into()]
    }

    #[test]
    fn test_check_url_accepts_declared_hosts_and_ports_only() {
        for url in [
            "https://api.example.org/v1/company?domain=x",
            "https://API.Example.org/",
            "https://api.example.org:443/",
            "HTTPS://api.example.org",
            "https://127.0.0.1:8443/",
            "https://[::1]:9000/",
        ] {
            assert!(check_url(url, &declared(), false).is_ok(), "{url}");
        }
        for (url, why) in [
            ("https://api.example.org:8443/", "not declared"),
            ("https://other.example.org/", "not declared"),
            ("https://example.org/", "not declared"),
            ("https://api.example.org.evil.test/", "not declared"),
            ("https://127.0.0.1/", "not declared"),
            ("https://127.0.0.1:8444/", "not declared"),
            ("https://[::1]/", "not declared"),
            ("http://api.example.org/", "only https://"),
            ("ftp://api.example.org/", "only https://"),
            ("api.example.org/v1", "not valid"),
            ("api.example.org:443", "only https://"),
            ("/v1", "only https://"),
            ("https://ada@api.example.org/", "credentials"),
            ("https://ada:pw@api.example.org/", "credentials"),
            ("https://evil.test@api.example.org/", "credentials"),
            ("https://api.example.org /", "not valid"),
            ("", "not valid"),
        ] {
            let err = check_url(url, &declared(), false).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
        let long = format!("https://api.example.org/{}", "a".repeat(MAX_URL_BYTES));
        assert!(check_url(&long, &declared(), false).unwrap_err().contains("longer"));
    }

    #[test]
    fn test_check_url_allows_plain_http_only_when_told() {
        assert!(check_url("http://127.0.0.1:8443/", &declared(), false).is_err());
        assert!(check_url("http://127.0.0.1:8443/", &declared(), true).is_ok());
        assert!(check_url("http://api.example.org/", &declared(), true).is_ok());
        assert!(check_url("http://api.example.org:443/", &declared(), true).is_err());
        assert!(check_url("ftp://api.example.org/", &declared(), true).unwrap_err().contains("http://"));
    }
}
