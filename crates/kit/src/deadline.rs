//! The server-side deadline of RPCs. tonic's `Server::timeout` applies to every method alike;
//! a long-running one — an import's file streamed in (`UploadImport`) — must not be cut off, so
//! the deadline is a layer that knows which methods to leave alone. A client's own `grpc-timeout`
//! still applies everywhere.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http::{Request, Response};

/// Methods that run as long as their stream does.
pub const LONG_RUNNING: [&str; 1] = ["/carnet.contacts.v1.ContactsService/UploadImport"];

#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    deadline: Duration,
}

impl DeadlineLayer {
    pub fn new(deadline: Duration) -> Self {
        DeadlineLayer { deadline }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner, deadline: self.deadline }
    }
}

#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    deadline: Duration,
}

impl<S, B, R> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let exempt = LONG_RUNNING.contains(&request.uri().path());
        let deadline = self.deadline;
        let future = self.inner.call(request);
        Box::pin(async move {
            if exempt {
                return future.await;
            }
            match tokio::time::timeout(deadline, future).await {
                Ok(result) => result,
                Err(_) => {
                    Ok(tonic::Status::deadline_exceeded("the request took longer than the server's deadline")
                        .into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, ServiceExt as _};

    async fn slow(_: Request<()>) -> Result<Response<String>, std::convert::Infallible> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Response::new("done".to_string()))
    }

    #[tokio::test]
    async fn test_deadline_cuts_ordinary_methods_and_spares_long_running_ones() {
        let svc = DeadlineLayer::new(Duration::from_millis(20)).layer(tower::service_fn(slow));
        let cut = svc
            .clone()
            .oneshot(Request::builder().uri("/carnet.contacts.v1.ContactsService/GetContact").body(()).unwrap());
        let cut = cut.await.unwrap();
        assert_eq!(cut.headers().get("grpc-status").unwrap(), "4", "DEADLINE_EXCEEDED");
        let spared = svc.oneshot(Request::builder().uri(LONG_RUNNING[0]).body(()).unwrap()).await.unwrap();
        assert_eq!(spared.into_body(), "done");
    }
}
