//! Outbound HTTP, mediated by Carnet.
//!
//! Only `https://` URLs on hosts the manifest declares in `hosts` (exact names, with a port when
//! one is declared) are reachable; anything else is refused before leaving the host. Each fetch
//! has its own timeout and body cap, a run may send only a few (8 by default), redirects are not
//! followed, and the time spent counts against the run's deadline: a fetch still waiting when
//! the deadline comes ends the run as a timeout.

use crate::Error;

/// An HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body, as received.
    pub body: Vec<u8>,
}

impl Response {
    /// Returns whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Returns the body as text, or `None` when it is not UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// GETs `url` through the host.
///
/// A refusal (an undeclared host, not `https://`, no fetches left) or a source that cannot be
/// reached, times out or sends too large a body is an [`Error::Unavailable`] carrying the host's
/// reason, so `?` ends the run as "try later". A response with any status, 3xx included, is
/// `Ok`: check [`Response::is_success`].
pub fn fetch(url: &str) -> Result<Response, Error> {
    imp::fetch(url)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Response;
    use crate::Error;
    use crate::bindings::carnet::enricher::http;

    pub fn fetch(url: &str) -> Result<Response, Error> {
        http::fetch(url).map(|r| Response { status: r.status, body: r.body }).map_err(Error::Unavailable)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Response;
    use crate::Error;

    pub fn fetch(_url: &str) -> Result<Response, Error> {
        Err(Error::unavailable("no host to fetch through outside WebAssembly"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_response_reads_status_and_text() {
        let ok = Response { status: 204, body: b"done".to_vec() };
        assert!(ok.is_success());
        assert_eq!(ok.text(), Some("done"));
        let bad = Response { status: 404, body: vec![0xff] };
        assert!(!bad.is_success());
        assert_eq!(bad.text(), None);
    }

    #[test]
    fn test_fetch_outside_wasm_is_unavailable() {
        assert!(matches!(fetch("https://example.org/"), Err(Error::Unavailable(_))));
    }
}
