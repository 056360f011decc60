//! The pool's shared secret, with real processes: only holders of the token register, heartbeat or
//! predict, on the coordinator and on the workers alike.

mod common;

use std::time::Duration;

use common::{TestPki, TestPool, chat, fast_scheduler};
use coordinator::Config;
use modelpool::auth::{Credentials, Token};
use modelpool::proto::worker_client::WorkerClient;
use modelpool::proto::{self, ListWorkersRequest};
use tonic::Code;

const SECRET: &str = "test-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_token_holders_join_the_pool_or_call_it() {
    let token = Token::new(Some(SECRET.into())).unwrap();
    let credentials = Credentials { token: token.clone(), ..Credentials::default() };
    let scheduler = Config { credentials, ..Config::from(fast_scheduler()) };
    let pool = TestPool::start(1, scheduler, &["--token", SECRET]).await;

    // The pool's own client carries the token: the worker registered with it and prompts run.
    let answer = pool.client.clone().predict(chat("Say hi.", 4)).await.unwrap().into_inner();
    assert!(answer.completion_tokens > 0);
    let url = pool.coordinator_url();

    for (name, client_token) in [("no token", Token::none()), ("wrong token", Token::new(Some("wrong-secret-0123456789".into())).unwrap())]
    {
        let mut client = bench_client::connect(&url, &Credentials { token: client_token, ..Credentials::default() }).unwrap();
        let status = client.predict(chat("Say hi.", 4)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert!(status.message().contains("token"), "{}", status.message());
        assert_eq!(client.list_workers(ListWorkersRequest {}).await.unwrap_err().code(), Code::Unauthenticated, "{name}");
        // Nor can anything register without it.
        let register = proto::RegisterRequest {
            info: Some(proto::WorkerInfo { address: "http://127.0.0.1:1".into(), slots: 1, ..Default::default() }),
            protocol_version: proto::ProtocolVersion::ProtocolVersion1 as i32,
        };
        assert_eq!(client.register(register).await.unwrap_err().code(), Code::Unauthenticated, "{name}");
    }

    // The worker itself refuses callers without the token.
    let worker_address = pool.list().await[0].info.as_ref().unwrap().address.clone();
    let channel = tonic::transport::Endpoint::from_shared(worker_address).unwrap().connect_lazy();
    let status = WorkerClient::new(channel.clone()).predict(chat("Say hi.", 4)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut holder = WorkerClient::with_interceptor(channel, token.attach());
    assert!(holder.predict(chat("Say hi.", 4)).await.unwrap().into_inner().completion_tokens > 0);

    // A worker started with another secret never joins.
    let mut impostor_spec = pool.spec.clone();
    impostor_spec.extra_args = vec!["--token".into(), "another-secret-0123456789".into()];
    let mut impostor = lab::local_pool::WorkerProcess::spawn(&impostor_spec).unwrap();
    // It loads in well under a second and then tries to register every second.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(impostor.try_exit_status(), None, "the impostor is still running and trying: its absence below is the refusal's doing");
    let workers = pool.list().await;
    assert_eq!(workers.len(), 1, "only the token holder is registered");
    assert!(workers.iter().all(|w| w.info.as_ref().unwrap().pid != impostor.pid));
    impostor.stop(Duration::from_secs(5)).await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_link_can_run_over_tls() {
    let pki = TestPki::new();
    let server_tls = modelpool::tls::server_config(Some(pki.path("cert.pem").as_ref()), Some(pki.path("key.pem").as_ref())).unwrap();
    let credentials = Credentials { tls: modelpool::tls::ClientTls::from_ca_pem(&pki.ca_pem), ..Credentials::default() };
    let scheduler = Config { credentials, server_tls, ..Config::from(fast_scheduler()) };
    let (cert, key, ca) = (pki.path("cert.pem"), pki.path("key.pem"), pki.path("ca.pem"));
    // The worker serves TLS too (so it advertises https://) and trusts the CA for the coordinator's.
    let pool = TestPool::start(1, scheduler, &["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca]).await;
    assert!(pool.coordinator_url().starts_with("https://"));
    let worker_address = pool.list().await[0].info.as_ref().unwrap().address.clone();
    assert!(worker_address.starts_with("https://"), "{worker_address}");

    // Client -> coordinator -> worker, all over TLS.
    let answer = pool
        .client
        .clone()
        .predict(chat("Paris is the capital of France. Which city is the capital of France?", 16))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);

    // Plaintext to a TLS port fails; https without the CA is refused before dialling.
    let plaintext = pool.coordinator_url().replacen("https://", "http://", 1);
    let refused = bench_client::connect(&plaintext, &Credentials::default()).unwrap().predict(chat("Say hi.", 4)).await;
    // The TLS server drops the plaintext connection; how hyper reports that varies from run to run
    // (protocol error, broken pipe, cancelled), but it is never an answer.
    assert!(refused.is_err(), "a plaintext call to a TLS port got an answer");
    let error = bench_client::connect(&pool.coordinator_url(), &Credentials::default()).unwrap_err();
    assert!(error.to_string().contains("tls-ca"), "{error}");
    pool.shutdown().await;
}

/// One token opened both the client API and membership, so an application could
/// join as a worker. With `--api-keys-file`, applications hold keys that open the client API only, and
/// the pool token only lets workers join.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_open_the_client_api_and_only_the_pool_token_joins() {
    use lab::local_pool::{LocalCoordinator, LocalPool, WorkerSpec, find_worker_binary};
    const KEY: &str = "application-key-0123456789";
    let keys = std::env::temp_dir().join(format!("modelpool-keys-{}", std::process::id()));
    std::fs::write(&keys, format!("# applications\n{KEY}\n\nsecond-application-key-9876543210\n")).unwrap();
    let token = Token::new(Some(SECRET.into())).unwrap();
    let config = Config {
        credentials: Credentials { token: token.clone(), ..Credentials::default() },
        api_keys: Some(modelpool::auth::ApiKeys::load(&keys).unwrap()),
        ..Config::from(fast_scheduler())
    };
    let _ = std::fs::remove_file(&keys);
    let coordinator = LocalCoordinator::start(config).await.unwrap();
    let as_app = Credentials { token: Token::new(Some(KEY.into())).unwrap(), ..Credentials::default() };
    let mut app = bench_client::connect(&coordinator.url, &as_app).unwrap();
    let spec = WorkerSpec {
        binary: find_worker_binary(None).unwrap(),
        model: model_input::model_cache::ensure_default_model().unwrap(),
        coordinator: coordinator.url.clone(),
        threads: 1,
        slots: 1,
        extra_args: vec!["--token".into(), SECRET.into()],
    };
    let workers = LocalPool::start(&spec, 1, &app, Duration::from_secs(120)).await.expect("the token holder joins");

    assert!(app.predict(chat("Say hi.", 4)).await.unwrap().into_inner().completion_tokens > 0, "a key opens Predict");
    // A key does not open membership: no joining, no deregistering.
    let register = proto::RegisterRequest {
        info: Some(proto::WorkerInfo { address: "http://127.0.0.1:1".into(), slots: 1, context_per_slot: 2048, ..Default::default() }),
        protocol_version: proto::ProtocolVersion::ProtocolVersion1 as i32,
    };
    let refused = app.register(register).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // The pool token no longer opens the client API.
    let mut operator = coordinator.client.clone();
    assert_eq!(operator.predict(chat("Say hi.", 4)).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(operator.list_workers(ListWorkersRequest {}).await.unwrap_err().code(), Code::Unauthenticated);
    // Nor the HTTP API, which takes the key.
    let get_as = |path: &'static str, authorization: String| {
        let url = coordinator.http_url.clone();
        async move {
            let host = url.trim_start_matches("http://").to_string();
            let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await.unwrap();
            answer
        }
    };
    let http_as = |authorization: String| get_as("/v1/models", authorization);
    let http = |key: &str| http_as(format!("Bearer {key}"));
    assert!(http(KEY).await.starts_with("HTTP/1.1 200"));
    assert!(http(SECRET).await.starts_with("HTTP/1.1 401"));
    // HTTP's scheme names are case-insensitive: `bearer` is a Bearer.
    assert!(http_as(format!("bearer {KEY}")).await.starts_with("HTTP/1.1 200"));
    // The status page's data is behind the keys too; the page itself holds none, and asks for a key.
    assert!(get_as("/status.json", format!("Bearer {KEY}")).await.starts_with("HTTP/1.1 200"));
    assert!(get_as("/status.json", format!("Bearer {SECRET}")).await.starts_with("HTTP/1.1 401"));
    let page = get_as("/", String::new()).await;
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("status.json"), "{page}");
    workers.stop(Duration::from_secs(10)).await;
    coordinator.stop().await;
}

/// A token holder could register a worker claiming 4294967295 slots (drawing nearly every
/// prompt) or a 1-token context (failing every prompt at admission), and deregister any worker whose id
/// ListWorkers shows. Claims are now bounded, and only the registering instance (its lease) may
/// heartbeat or deregister.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_claims_are_bounded_and_only_the_registrant_may_leave_or_heartbeat() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    let mut client = pool.client.clone();
    let claim = |slots: u32, context_per_slot: u32| proto::RegisterRequest {
        info: Some(proto::WorkerInfo { address: "http://127.0.0.1:1".into(), slots, context_per_slot, ..Default::default() }),
        protocol_version: proto::ProtocolVersion::ProtocolVersion1 as i32,
    };
    let greedy = client.register(claim(u32::MAX, 2048)).await.unwrap_err();
    assert_eq!(greedy.code(), Code::InvalidArgument);
    assert!(greedy.message().contains("info.slots"), "{}", greedy.message());
    let tiny = client.register(claim(1, 1)).await.unwrap_err();
    assert_eq!(tiny.code(), Code::InvalidArgument);
    assert!(tiny.message().contains("info.context_per_slot"), "{}", tiny.message());

    let victim = pool.list().await[0].worker_id.clone();
    let denied = client.deregister(proto::DeregisterRequest { worker_id: victim.clone(), lease: String::new() }).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let forged = proto::HeartbeatRequest { worker_id: victim.clone(), lease: "not-the-lease".into(), ..Default::default() };
    assert_eq!(client.heartbeat(forged).await.unwrap_err().code(), Code::PermissionDenied);
    let workers = pool.list().await;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].worker_id, victim, "the worker is still there, under its id");
    assert!(client.predict(chat("Say hi.", 4)).await.unwrap().into_inner().completion_tokens > 0);
    pool.shutdown().await;
}

/// A token holder who read a worker's address and instance in
/// ListWorkers re-registered them and so replaced the live worker: a new id and lease of its own, the
/// real worker's heartbeats refused, the old entry's attempts and prefix-index entries orphaned. A live
/// registration is now never replaced, and a claim's context per slot is bounded (the prefix index
/// sizes a worker's entries by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_registration_cannot_be_taken_over_and_context_claims_are_bounded() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    let mut client = pool.client.clone();
    let victim = pool.list().await[0].clone();
    let takeover = proto::RegisterRequest { info: victim.info.clone(), protocol_version: proto::ProtocolVersion::ProtocolVersion1 as i32 };
    let refused = client.register(takeover).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(refused.message().contains("info.instance_id") && refused.message().contains(&victim.worker_id), "{}", refused.message());
    // The real worker is still the registered one (its heartbeats keep being accepted) and serves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let workers = pool.list().await;
    assert_eq!(workers.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(), [victim.worker_id.as_str()]);
    assert!(client.predict(chat("Say hi.", 4)).await.unwrap().into_inner().completion_tokens > 0);

    let vast = proto::RegisterRequest {
        info: Some(proto::WorkerInfo {
            address: "http://127.0.0.1:1".into(),
            instance_id: "vast".into(),
            context_per_slot: u32::MAX,
            ..victim.info.clone().unwrap()
        }),
        protocol_version: proto::ProtocolVersion::ProtocolVersion1 as i32,
    };
    let refused = client.register(vast).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("info.context_per_slot") && refused.message().contains("1048576"), "{}", refused.message());
    pool.shutdown().await;
}

/// Optional mutual TLS for workers. With `--tls-worker-ca`, membership calls need a client
/// certificate that CA signed: the worker presents its own and joins; a token holder without one cannot
/// register, though it may still call the client API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_worker_ca_only_workers_with_its_certificates_join() {
    let pki = TestPki::new();
    let (cert, key, ca) = (pki.path("cert.pem"), pki.path("key.pem"), pki.path("ca.pem"));
    let server_tls = modelpool::tls::server_config(Some(cert.as_ref()), Some(key.as_ref())).unwrap().unwrap();
    let config = Config {
        server_tls: Some(modelpool::tls::with_client_ca(server_tls, ca.as_ref(), "tls-worker-ca").unwrap()),
        worker_certificates: true,
        credentials: Credentials { tls: modelpool::tls::ClientTls::from_ca_pem(&pki.ca_pem), ..Credentials::default() },
        ..Config::from(fast_scheduler())
    };
    let pool = TestPool::start(1, config, &["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca]).await;
    assert_eq!(pool.list().await.len(), 1, "the worker presented its certificate and joined");

    // Same CA trusted, no client certificate.
    let mut anonymous = bench_client::connect(
        &pool.coordinator_url(),
        &Credentials { tls: modelpool::tls::ClientTls::from_ca_pem(&pki.ca_pem), ..Credentials::default() },
    )
    .unwrap();
    let register = proto::RegisterRequest {
        info: Some(proto::WorkerInfo { address: "https://127.0.0.1:1".into(), slots: 1, context_per_slot: 2048, ..Default::default() }),
        protocol_version: proto::ProtocolVersion::ProtocolVersion1 as i32,
    };
    let refused = anonymous.register(register).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("client certificate"), "{}", refused.message());
    assert!(anonymous.predict(chat("Say hi.", 4)).await.unwrap().into_inner().completion_tokens > 0, "the client API needs none");
    pool.shutdown().await;
}

/// `--api-keys-file` without a worker secret left membership open (a
/// worker with no token registered and was sent prompts). `coordinator serve` now refuses to start so,
/// naming the flags that fix it, and starts with a token beside the keys.
#[test]
fn api_keys_without_a_worker_secret_are_refused_at_start() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let keys = std::env::temp_dir().join(format!("modelpool-keys-alone-{}", std::process::id()));
    std::fs::write(&keys, "application-key-0123456789\n").unwrap();
    let serve = |extra: &[&str]| {
        let mut command = Command::new(common::coordinator_binary());
        command.args(["serve", "--port", "0", "--http-port", "0", "--api-keys-file"]).arg(&keys).args(extra);
        command.env_remove("MODELPOOL_TOKEN").env("RUST_LOG", "warn").stdin(Stdio::null());
        command
    };
    let refused = serve(&[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "it started: {stderr}");
    assert!(stderr.contains("--api-keys-file") && stderr.contains("--token") && stderr.contains("--tls-worker-ca"), "{stderr}");

    // With the pool token beside the keys it serves (and says where).
    let mut started = serve(&["--token", SECRET]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(started.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = started.kill();
    let _ = started.wait();
    let _ = std::fs::remove_file(&keys);
    assert!(line.starts_with("MODELPOOL_COORDINATOR_LISTENING"), "{line:?}");
}
