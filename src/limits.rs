//! Limits shared by the two listeners (the webhook's HTTPS server and the admin server), so
//! that a slow or hostile client cannot hold the process's memory or its request slots:
//!
//! - **header-read timeout**: a connection that does not send a complete request head within
//!   it (also the first request after the TLS handshake, and the next one on an idle keep-alive
//!   connection) is closed. axum-server turns hyper's own default off; it is set here;
//! - **request timeout**: from the moment the head is read, the whole request — waiting for a
//!   slot, reading the body, deciding — has this long; then 408 (503 if it never got a slot);
//! - **connection cap**: at most this many connections are open (from TCP accept, through the
//!   TLS handshake, to close); one over the cap is closed at once, without a task reading it;
//! - **request cap**: at most this many requests are handled (their bodies buffered) at once;
//!   the others wait for a slot within their request timeout;
//! - **body cap**: a `Content-Length` above the limit is refused with 413 before any of the
//!   body is read; a body without one is refused as soon as it grows past the limit (axum's
//!   `DefaultBodyLimit`, set by the router), so at most the limit is ever buffered.
//!
//! Worst case held by bodies: `max_requests × max body` (the webhook's defaults: 32 × 4 MiB).

use std::future::Ready;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest read buffer of an HTTP/1 connection (hyper's default is about 400 KiB): bounds a
/// request head, and what one connection buffers at a time.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// The limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A request head (and the first request of a connection) must arrive within this.
    pub header_read_timeout: Duration,
    /// A request, from its head to the response, gets this long.
    pub request_timeout: Duration,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Requests handled at once at most; more wait (within their request timeout).
    pub max_requests: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl Limits {
    /// Sets the timeouts on `server`'s HTTP builder (its timer is installed by axum-server),
    /// and the first-request timeout.
    pub fn configure<A, Acc>(
        &self,
        mut server: axum_server::Server<A, Acc>,
    ) -> axum_server::Server<A, Acc>
    where
        A: axum_server::Address,
    {
        let builder = server.http_builder();
        builder
            .http1()
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(MAX_READ_BUFFER);
        builder
            .http2()
            .max_concurrent_streams(u32::try_from(self.max_requests).unwrap_or(u32::MAX))
            .max_header_list_size(MAX_READ_BUFFER as u32);
        server.first_request_timeout(self.header_read_timeout)
    }

    /// The acceptor that closes connections over `max_connections` (the plain one, or the
    /// inner one of the TLS acceptor).
    pub fn connection_limit(&self) -> ConnectionLimit {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(self.max_connections.max(1))),
        }
    }

    /// `router` with the request timeout, the request cap and the `Content-Length` check.
    pub fn layer<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        let limit = Arc::new(RequestLimit {
            slots: Semaphore::new(self.max_requests.max(1)),
            timeout: self.request_timeout,
            max_body_bytes: self.max_body_bytes,
        });
        router.layer(middleware::from_fn_with_state(limit, limit_request))
    }
}

struct RequestLimit {
    slots: Semaphore,
    timeout: Duration,
    max_body_bytes: usize,
}

async fn limit_request(
    State(limit): State<Arc<RequestLimit>>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.max_body_bytes as u64) {
        tracing::warn!(
            content_length = declared,
            limit = limit.max_body_bytes,
            "request body over the limit refused before reading it"
        );
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {} bytes",
                limit.max_body_bytes
            ),
        )
            .into_response();
    }
    let mut got_slot = false;
    let handled = tokio::time::timeout(limit.timeout, async {
        let _slot = limit.slots.acquire().await;
        got_slot = true;
        next.run(request).await
    })
    .await;
    match handled {
        Ok(response) => response,
        Err(_) if got_slot => {
            tracing::warn!(timeout = ?limit.timeout, "request timed out");
            (StatusCode::REQUEST_TIMEOUT, "request timed out").into_response()
        }
        Err(_) => {
            tracing::warn!(timeout = ?limit.timeout, "request timed out waiting for a slot");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight",
            )
                .into_response()
        }
    }
}

/// An acceptor (the inner one of the TLS acceptor, or the plain one) that holds one permit
/// per open connection; a connection over the cap is closed at once.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
}

impl<I, S> Accept<I, S> for ConnectionLimit {
    type Stream = Permitted<I>;
    type Service = S;
    type Future = Ready<io::Result<(Permitted<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        std::future::ready(match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok((
                Permitted {
                    inner: stream,
                    _permit: permit,
                },
                service,
            )),
            Err(_) => {
                tracing::debug!("connection limit reached; closing a new connection");
                Err(io::Error::other("connection limit reached"))
            }
        })
    }
}

/// A connection holding its permit until it is dropped.
pub struct Permitted<I> {
    inner: I,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Permitted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Permitted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
