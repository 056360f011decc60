//! The HTTP API's listener: plaintext or HTTPS (the certificate the gRPC port serves), with the limits
//! a server on a network needs: a bounded number of open connections where idle ones make room for new
//! ones (`http_connections`), deadlines for a first request, a request's headers and body, a TLS
//! handshake and idleness between requests (a client that opens connections and sends nothing, over
//! HTTP/1 or HTTP/2, cannot hold them), and a write deadline with bounded buffers (a client that stops
//! reading, an SSE stream's above all, is dropped soon, which cancels its prompt).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tracing::{debug, warn};

use crate::http_connections::{Connection, OpenConnections};
use crate::openai::ApiError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the HTTP listener protects itself; see the `serve` flags.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Longest a client may take from connecting to its first request's headers (a TLS handshake
    /// included), whatever the protocol, and to send one request's headers.
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body once its headers are in.
    pub body_read_timeout: Duration,
    /// Longest a connection may stay open with no request in flight after its last one.
    pub idle_timeout: Duration,
    /// Open connections at most. At the limit a new one takes the place of the connection idle the
    /// longest; only when every one has a request in flight is it answered 503 and closed.
    pub max_connections: usize,
    /// Longest a write may wait for a client that accepts no data.
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// The kernel's send buffer per connection (Linux doubles it): plenty for JSON answers and event streams.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// How long open connections may take to finish their requests once the server stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish (bounded).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<ServerConfig>>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let connections = OpenConnections::new(limits.max_connections);
    let (stop_connections, stopping) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper queues up to ~400 KiB of a response before it waits for the socket; 64 KiB (also the
    // largest request head) lets a client that stops reading meet the write deadline soon.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).max_buf_size(64 * 1024);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(20)));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: accepting again at once would spin.
                    warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(connection) = connections.take_place() else {
            tokio::spawn(refuse(stream, acceptor.is_none(), limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Linux grows a send buffer up to 4 MiB: a client that stops reading would pin that much per
        // connection, and a stream would take minutes to fill it and meet the write deadline.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES);
        let (builder, acceptor, app, stopping) = (builder.clone(), acceptor.clone(), app.clone(), stopping.clone());
        tokio::spawn(async move {
            let connection = Arc::new(connection);
            let io = WriteDeadline::new(stream, limits.write_timeout);
            let service = counted_service(app, Arc::clone(&connection), limits.body_read_timeout);
            let outcome = match acceptor {
                None => run_connection(builder.serve_connection(TokioIo::new(io), service), &connection, limits, stopping).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        accepted = acceptor.accept(io) => accepted,
                        () = connection.idle_too_long(limits.header_read_timeout, limits.idle_timeout) => {
                            return debug!("TLS handshake timed out");
                        }
                        () = connection.evicted() => return debug!("TLS handshake cut short: the connection limit was reached"),
                    };
                    match handshake {
                        Ok(tls) => {
                            run_connection(builder.serve_connection(TokioIo::new(tls), service), &connection, limits, stopping).await
                        }
                        Err(error) => return debug!(%error, "TLS handshake failed"),
                    }
                }
            };
            if let Err(error) = outcome {
                debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_connections.send(true);
    if tokio::time::timeout(DRAIN_LIMIT, connections.closed()).await.is_err() {
        warn!(limit_s = DRAIN_LIMIT.as_secs(), open = connections.len(), "HTTP connections still open at shutdown were dropped");
    }
    Ok(())
}

/// Serves one connection until it ends, it has been idle too long, a new connection took its place, or
/// the server stops (then its requests in flight may finish).
async fn run_connection<C>(
    served: C,
    connection: &Connection,
    limits: HttpLimits,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    C: GracefulConnection<Error = BoxError>,
{
    tokio::pin!(served);
    tokio::select! {
        result = served.as_mut() => return result,
        // Nothing is in flight: closing loses nothing (requests run inside `served`, not polled now).
        () = connection.idle_too_long(limits.header_read_timeout, limits.idle_timeout) => {
            debug!("idle HTTP connection closed");
            return Ok(());
        }
        // Chosen while idle; a request may have started since, and then it finishes first.
        () = connection.evicted() => {
            if !connection.busy() {
                debug!("idle HTTP connection closed to make room for a new one");
                return Ok(());
            }
        }
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    served.as_mut().graceful_shutdown();
    served.await
}

/// `app` as the connection's service: each request counted in flight until its response's body is done,
/// and its body bounded in time.
fn counted_service(
    app: Router,
    connection: Arc<Connection>,
    body_read_timeout: Duration,
) -> impl hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone {
    let app = TowerToHyperService::new(app);
    hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = connection.request_started();
        let call = app.call(request.map(|body| BodyDeadline::new(body, body_read_timeout)));
        async move {
            let response = call.await?;
            // The closure holds the guard: dropped with the body, once the last byte went or the client left.
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _in_flight = &in_flight;
                    frame
                }))
            }))
        }
    })
}

/// A connection over the limit: told so (503 with Retry-After, when plaintext) and closed.
async fn refuse(mut stream: TcpStream, plaintext: bool, limit: usize) {
    debug!(limit, "HTTP connection refused: at the connection limit");
    if plaintext {
        let body = ApiError {
            status: 503,
            message: format!("too many open connections (limit {limit}); try again shortly"),
            kind: "service_unavailable_error",
            param: None,
            code: Some("too_many_connections"),
        }
        .body()
        .to_string();
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            // Read what the client sent, so that closing does not reset the connection before it reads.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
    }
}

/// A connection whose writes fail with `TimedOut` once one has waited `timeout` for the client to accept
/// data: hyper then closes the connection and drops the response it was sending.
struct WriteDeadline<IO> {
    io: IO,
    timeout: Duration,
    /// Started when a write first has to wait; cleared when one goes through.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> WriteDeadline<IO> {
    fn new(io: IO, timeout: Duration) -> Self {
        Self { io, timeout, stalled: None }
    }

    /// Passes a write's result on; while it waits, checks the deadline.
    fn watch<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client accepted no data for {} s", timeout.as_secs_f64()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteDeadline<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, result)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, result)
    }
}

/// Why a request's body failed: it did not arrive within the body deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] unless it ends within its deadline: a client that
/// sends headers and then its body a byte at a time cannot hold a request in flight (which idle
/// connections never evict).
struct BodyDeadline {
    body: Incoming,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl BodyDeadline {
    fn new(body: Incoming, limit: Duration) -> Self {
        Self { body, limit, deadline: Box::pin(tokio::time::sleep(limit)) }
    }
}

impl hyper::body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|frame| frame.map_err(BoxError::from))),
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
