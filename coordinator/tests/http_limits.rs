//! The HTTP API as a server on a network (hardening findings 3 and 12, round 2's 1, 4 and 8), against a
//! real coordinator and, where prompts run, a real worker: HTTPS with the gRPC port's certificate,
//! plaintext refused where it would carry the token in the clear, deadlines for a first request, headers,
//! a body and idleness over HTTP/1, HTTP/2 and TLS, a connection limit that idle sockets cannot fill, a
//! write deadline for clients that stop reading and a stall limit for HTTP/2 streams that take no data,
//! and queued prompts of clients that left never dispatched.

mod common;

use std::time::{Duration, Instant};

use common::{TestPki, TestPool, fast_scheduler, host_of};
use coordinator::Config;
use coordinator::http_server::HttpLimits;
use lab::local_pool::LocalCoordinator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection or `limit` passes; None if it was still open then.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&received).into_owned())
}

fn chat_body(text: &str, max_tokens: u32, stream: bool) -> String {
    serde_json::json!({
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "stream": stream,
    })
    .to_string()
}

fn post(host: &str, path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

/// Waits (90 s at most) until the pool's one worker has cancelled a prompt, and fails if it served
/// one instead: the prompt of `client` must not run to its end.
async fn until_cancelled_unserved(pool: &TestPool, client: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let load = pool.list().await[0].load.unwrap_or_default();
        if load.cancelled >= 1 {
            assert_eq!(load.served, 0, "cancelled, not finished");
            return;
        }
        assert!(load.served == 0, "the prompt ran to its end for {client}");
        assert!(Instant::now() < deadline, "the prompt is cancelled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A coordinator (no workers) whose HTTP API has these limits.
async fn coordinator_with(limits: HttpLimits) -> LocalCoordinator {
    LocalCoordinator::start(Config { http_limits: limits, ..Config::default() }).await.unwrap()
}

/// A client that sent part of its headers and then nothing held its connection forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let limits = HttpLimits { header_read_timeout: Duration::from_secs(1), ..HttpLimits::default() };
    let coordinator = coordinator_with(limits).await;
    let mut stream = TcpStream::connect(host_of(&coordinator.http_url)).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(read_until_closed(&mut stream, Duration::from_secs(15)).await.is_some(), "the server closed the connection");
    coordinator.stop().await;
}

/// Open connections had no limit. One over the limit is answered 503 and closed while every
/// open one has a request in flight (here: bodies that never finish), and those requests end at the body
/// deadline with 408, which frees their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503_while_every_one_is_busy() {
    let limits = HttpLimits { max_connections: 3, body_read_timeout: Duration::from_secs(2), ..HttpLimits::default() };
    let coordinator = coordinator_with(limits).await;
    let host = host_of(&coordinator.http_url);
    let mut busy = Vec::new();
    for _ in 0..3 {
        // Headers and a part of the body: the request is in flight, waiting for the rest.
        let mut stream = TcpStream::connect(&host).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"messages\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(&host).await.unwrap();
    extra.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut extra, Duration::from_secs(10)).await.expect("refused and closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections") && answer.contains("limit 3"), "{answer}");
    for mut stream in busy {
        let mut head = [0u8; 1024];
        let n =
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head)).await.expect("answered at the body deadline").unwrap();
        let answer = String::from_utf8_lossy(&head[..n]);
        assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"), "{answer}");
    }
    let (status, _) = common::http_get(&format!("{}/health", coordinator.http_url)).await;
    assert_eq!(status, 200, "the places are free again");
    coordinator.stop().await;
}

/// A body over the size limit was a 413 whose message ("length limit exceeded") named neither the limit
/// nor a code a client could act on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_size_limit_is_413_naming_the_limit() {
    let coordinator = coordinator_with(HttpLimits::default()).await;
    let host = host_of(&coordinator.http_url);
    let body = chat_body(&"a".repeat(coordinator::http::MAX_BODY_BYTES), 1, false);
    let mut stream = TcpStream::connect(&host).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let request = post(&host, "/v1/chat/completions", &body);
    // The server may answer and close before it has read the whole body.
    let (_, answer) = tokio::join!(writer.write_all(request.as_bytes()), async {
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        // Until the JSON error's last brace (or the server closes, or 20 s pass).
        while !received.ends_with(b"}") {
            match tokio::time::timeout(Duration::from_secs(20), reader.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buffer[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&received).into_owned()
    });
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");
    assert!(answer.contains(&coordinator::http::MAX_BODY_BYTES.to_string()), "{answer}");
    coordinator.stop().await;
}

/// Sockets that send nothing held their places forever (the header
/// deadline only started with a first byte), so 600 of them answered every probe of /health with 503.
/// Now at the limit a new connection takes the place of the one idle the longest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_never_lock_out_a_health_probe() {
    let limits = HttpLimits { max_connections: 3, header_read_timeout: Duration::from_secs(60), ..HttpLimits::default() };
    let coordinator = coordinator_with(limits).await;
    let host = host_of(&coordinator.http_url);
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(&host).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probed = Instant::now();
    let (status, body) = common::http_get(&format!("{}/health", coordinator.http_url)).await;
    assert_eq!(status, 200, "{body}");
    assert!(probed.elapsed() < Duration::from_secs(5), "answered at once, not after a deadline: {:?}", probed.elapsed());
    // The oldest were closed to make room.
    assert!(read_until_closed(&mut idle[0], Duration::from_secs(5)).await.is_some(), "the idlest socket was closed");
    coordinator.stop().await;
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: what a client sends before its first request.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The header deadline did not cover a connection that sent no byte, nor
/// one that spoke HTTP/2 (its preface, then nothing). Both now close at the header deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_http2_connections_close_at_the_header_deadline() {
    let limits = HttpLimits { header_read_timeout: Duration::from_secs(1), ..HttpLimits::default() };
    let coordinator = coordinator_with(limits).await;
    let host = host_of(&coordinator.http_url);
    let mut silent = TcpStream::connect(&host).await.unwrap();
    let mut http2 = TcpStream::connect(&host).await.unwrap();
    http2.write_all(HTTP2_PREFACE).await.unwrap();
    let started = Instant::now();
    assert!(read_until_closed(&mut silent, Duration::from_secs(10)).await.is_some(), "a socket that sent nothing was closed");
    assert!(read_until_closed(&mut http2, Duration::from_secs(10)).await.is_some(), "an idle HTTP/2 connection was closed");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    coordinator.stop().await;
}

/// After a keep-alive request the connection stays only for the idle limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_closes_after_the_idle_limit() {
    let limits = HttpLimits { idle_timeout: Duration::from_secs(1), ..HttpLimits::default() };
    let coordinator = coordinator_with(limits).await;
    let host = host_of(&coordinator.http_url);
    let mut stream = TcpStream::connect(&host).await.unwrap();
    stream.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await.expect("closed once idle");
    assert!(answer.starts_with("HTTP/1.1 200"), "served first: {answer}");
    coordinator.stop().await;
}

/// An HTTP/2 client that holds its stream's window at 0 keeps a healthy
/// socket, so the write deadline never fired; the stream's task waited in a send and the prompt ran to
/// `max_tokens`. Now a stream that takes no data for the stall limit is dropped and its prompt cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http2_stream_held_at_a_zero_window_is_dropped_and_its_prompt_cancelled() {
    let limits = HttpLimits { write_timeout: Duration::from_secs(2), ..HttpLimits::default() };
    let config = Config { http_limits: limits, ..Config::from(fast_scheduler()) };
    let pool = TestPool::start(1, config, &[]).await;
    let host = host_of(&pool.http_url());
    let tcp = TcpStream::connect(&host).await.unwrap();
    let (mut client, connection) = h2::client::Builder::new().initial_window_size(0).handshake::<_, axum::body::Bytes>(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = axum::http::Request::post(format!("http://{host}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(chat_body("Count from one to one thousand in words.", 2000, true).into(), true).unwrap();
    let response = response.await.expect("headers are not flow-controlled");
    assert_eq!(response.status(), 200);
    // The client never opens its window: not one byte of the stream can reach it.
    until_cancelled_unserved(&pool, "a client that took no data").await;
    drop(response);
    pool.shutdown().await;
}

/// An SSE client that stopped reading held its stream's task, and its prompt ran to the end.
/// Now the write deadline drops the connection and the prompt is cancelled on the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streaming_client_that_stops_reading_is_dropped_and_its_prompt_cancelled() {
    let limits = HttpLimits { write_timeout: Duration::from_secs(2), ..HttpLimits::default() };
    let config = Config { http_limits: limits, ..Config::from(fast_scheduler()) };
    let pool = TestPool::start(1, config, &[]).await;
    let host = host_of(&pool.http_url());
    // A small receive window, so that the server's writes soon have to wait for this client.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(host.parse().unwrap()).await.unwrap();
    let body = chat_body("Count from one to one thousand in words.", 2000, true);
    stream.write_all(post(&host, "/v1/chat/completions", &body).as_bytes()).await.unwrap();
    // The client never reads. The worker's generation must end long before its 2000 tokens.
    until_cancelled_unserved(&pool, "a client that had stopped reading").await;
    drop(stream);
    pool.shutdown().await;
}

/// A streaming client that left while its prompt waited in the queue still had the prompt
/// dispatched and prefilled. Now it is dropped from the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_prompt_whose_streaming_client_left_is_never_run() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    // The worker's one slot is busy for a while.
    let mut busy = common::chat("Count from one to one thousand in words.", 300);
    busy.sampling.as_mut().unwrap().ignore_eos = Some(true);
    let mut client = pool.client.clone();
    let running = tokio::spawn(async move { client.predict(busy).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.list().await[0].in_flight == 0 {
        assert!(Instant::now() < deadline, "the long prompt starts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let host = host_of(&pool.http_url());
    let mut stream = TcpStream::connect(&host).await.unwrap();
    stream.write_all(post(&host, "/v1/chat/completions", &chat_body("Say hi.", 4, true)).as_bytes()).await.unwrap();
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"), "admitted and waiting");
    // The queue an autoscaler watches shows it.
    let (_, metrics) = common::http_get(&format!("{}/metrics", pool.http_url())).await;
    assert_eq!(common::metric(&metrics, "modelpool_coordinator_queue_depth"), Some(1.0), "{metrics}");
    drop(stream);
    let first = running.await.unwrap().expect("the long prompt is served").into_inner();
    assert_eq!(first.completion_tokens, 300);
    // Time for the scheduler to have dispatched the queued prompt, had it been kept.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let load = pool.list().await[0].load.unwrap_or_default();
    assert_eq!((load.served, load.cancelled), (1, 0), "the worker never saw the abandoned prompt");
    pool.shutdown().await;
}

/// With a certificate the HTTP API is HTTPS (the gRPC port's identity); plaintext to it gets
/// no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_serves_https_with_the_grpc_certificate() {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let pki = TestPki::new();
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let config = Config {
        server_tls: modelpool::tls::server_config(Some(cert.as_ref()), Some(key.as_ref())).unwrap(),
        https: modelpool::tls::https_config(Some(cert.as_ref()), Some(key.as_ref())).unwrap(),
        credentials: modelpool::auth::Credentials { tls: modelpool::tls::ClientTls::from_ca_pem(&pki.ca_pem), ..Default::default() },
        http_limits: HttpLimits { header_read_timeout: Duration::from_secs(1), ..HttpLimits::default() },
        ..Config::default()
    };
    let coordinator = LocalCoordinator::start(config).await.unwrap();
    assert!(coordinator.http_url.starts_with("https://"), "{}", coordinator.http_url);
    let host = host_of(&coordinator.http_url);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(&host).await.unwrap();
    let mut tls = connector.connect(rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap().to_owned(), tcp).await.unwrap();
    tls.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"ok\""), "{answer}");

    let mut plain = TcpStream::connect(&host).await.unwrap();
    plain.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut plain, Duration::from_secs(15)).await.unwrap_or_default();
    assert!(!answer.starts_with("HTTP/1.1 200"), "plaintext got an answer: {answer}");

    // A client that finished the handshake and then sent nothing held
    // its connection forever. It is now closed at the header deadline (1 s here) from connecting.
    let started = Instant::now();
    let tcp = TcpStream::connect(&host).await.unwrap();
    let mut tls = connector.connect(rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap().to_owned(), tcp).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a silent TLS connection was closed");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    coordinator.stop().await;
}

/// A daemon with a token on a non-loopback address would have served the HTTP API in
/// plaintext (the token in the clear). It now refuses to start, unless asked for it explicitly.
#[test]
fn a_plaintext_http_api_with_a_token_on_the_network_is_refused() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["serve", "--bind", "0.0.0.0", "--port", "0", "--http-port", "0"])
        .env("MODELPOOL_TOKEN", "a-network-secret-0123456789")
        .output()
        .expect("running coordinator serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--bind") && stderr.contains("--tls-cert") && stderr.contains("--allow-plaintext-http"), "{stderr}");

    // Asked for explicitly, it starts (and is stopped here).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["serve", "--bind", "0.0.0.0", "--port", "0", "--http-port", "0", "--allow-plaintext-http"])
        .env("MODELPOOL_TOKEN", "a-network-secret-0123456789")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("MODELPOOL_COORDINATOR_LISTENING"), "{line}");
}

/// `"stream": null`, which OpenAI's API takes as "not streamed", was
/// refused with 400. Now it is an ordinary unstreamed completion, through a real worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_null_stream_flag_means_not_streamed() {
    let pool = TestPool::start(1, Config::from(fast_scheduler()), &[]).await;
    let host = host_of(&pool.http_url());
    let body = r#"{"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3, "stream": null, "stream_options": {"include_usage": null}}"#;
    let mut stream = TcpStream::connect(&host).await.unwrap();
    let request = post(&host, "/v1/chat/completions", body).replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(60)).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"chat.completion\"") && !answer.contains("data: "), "one JSON completion, not a stream: {answer}");
    pool.shutdown().await;
}
