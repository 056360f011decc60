//! Whether a server closed a TCP connection, for tests of both daemons' connection limits.

/// Whether the server closed `stream` within `limit` (end of stream or a reset); what it sent before
/// (an HTTP/2 server speaks first: its SETTINGS) is read and dropped.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, limit: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 256];
    let closed = async { while let Ok(1..) = stream.read(&mut buffer).await {} };
    tokio::time::timeout(limit, closed).await.is_ok()
}
