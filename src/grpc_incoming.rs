//! The TCP connections a daemon's gRPC port accepts. At most a set number are open at once: past it a
//! new one is closed as soon as it is accepted, so that a flood of sockets cannot use up the process's
//! file descriptors (which its own calls to workers, its model and its logs need too). And each must
//! send its first bytes (the HTTP/2 preface, or a TLS ClientHello) within a deadline: hyper waits for
//! the preface with no timer, so a socket that never sends one would otherwise hold its place for ever.
//! The TLS handshake has a deadline of its own ([`crate::tls::HANDSHAKE_TIMEOUT`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::warn;

/// How long a new connection may stay silent.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most on the coordinator's gRPC port (workers' and applications'), by default.
pub const COORDINATOR_MAX_CONNECTIONS: usize = 1024;
/// Open connections at most on a worker's port (the coordinator's, probes, scrapes), by default.
pub const WORKER_MAX_CONNECTIONS: usize = 256;

/// Accepted connections of `listener`, at most `max_connections` open at once.
pub struct LimitedIncoming {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    max_connections: usize,
    first_bytes_timeout: Duration,
    refused: u64,
}

impl LimitedIncoming {
    pub fn new(listener: TcpListener, max_connections: usize, first_bytes_timeout: Duration) -> Self {
        Self { listener, permits: Arc::new(Semaphore::new(max_connections)), max_connections, first_bytes_timeout, refused: 0 }
    }
}

impl Stream for LimitedIncoming {
    type Item = io::Result<LimitedConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let (stream, peer) = match ready!(this.listener.poll_accept(cx)) {
                Ok(accepted) => accepted,
                Err(error) => return Poll::Ready(Some(Err(error))),
            };
            match Arc::clone(&this.permits).try_acquire_owned() {
                Ok(permit) => {
                    // gRPC answers are small and latency-bound: no Nagle delay.
                    let _ = stream.set_nodelay(true);
                    let silence = Box::pin(tokio::time::sleep(this.first_bytes_timeout));
                    return Poll::Ready(Some(Ok(LimitedConnection { stream, silence: Some(silence), _permit: permit })));
                }
                Err(_) => {
                    this.refused += 1;
                    // The first refusal and then every power of two: a flood must not flood the log too.
                    if this.refused.is_power_of_two() {
                        warn!(%peer, open = this.max_connections, refused = this.refused, "gRPC connection refused: the port's connection limit is reached");
                    }
                }
            }
        }
    }
}

/// One accepted connection; its place is given back when it closes.
pub struct LimitedConnection {
    stream: TcpStream,
    /// Runs until the first bytes arrive; then `None`.
    silence: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.silence = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timed_out = this.silence.as_mut().is_some_and(|silence| silence.as_mut().poll(cx).is_ready());
                if timed_out {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no bytes from the client within the first-bytes deadline")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The same connection facts as a plain TCP stream gives, so that a call's peer address and, under
/// TLS, its client certificate are found where tonic puts them.
impl Connected for LimitedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn past_the_limit_a_connection_is_closed_and_a_silent_one_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = LimitedIncoming::new(listener, 1, Duration::from_millis(200));
        let _first = TcpStream::connect(address).await.unwrap();
        let mut held = incoming.next().await.unwrap().unwrap();
        // The second is accepted and closed at once: the client reads end-of-stream.
        let mut second = TcpStream::connect(address).await.unwrap();
        let accept_more = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(500), incoming.next()).await;
            incoming
        });
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), second.read(&mut byte)).await.expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let incoming = accept_more.await.unwrap();
        // The held one never sent a byte: its read fails after the deadline.
        let error = tokio::time::timeout(Duration::from_secs(5), held.read(&mut byte)).await.expect("in time").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop((held, incoming));
    }
}
