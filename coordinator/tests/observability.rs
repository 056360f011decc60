//! Metrics, health and gRPC reflection on a real pool: the numbers move with the requests sent.

mod common;

use common::{TestPool, chat, fast_scheduler, http_get, metric};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The service names a server lists through reflection, as `grpcurl list` would show them.
async fn listed_services(url: &str) -> Vec<String> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut responses = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("a reflection response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_the_requests_and_reflection_lists_the_services() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    let coordinator_metrics = format!("{}/metrics", pool.http_url());
    let worker_address = pool.list().await[0].info.as_ref().unwrap().address.clone();
    let worker_metrics = format!("{worker_address}/metrics");

    let (status, before) = http_get(&coordinator_metrics).await;
    assert_eq!(status, 200);
    assert_eq!(metric(&before, "modelpool_coordinator_requests_total{outcome=\"ok\"}"), Some(0.0));
    assert_eq!(metric(&before, "modelpool_coordinator_workers"), Some(1.0));

    let mut client = pool.client.clone();
    for _ in 0..2 {
        client.predict(chat("Say hi.", 6)).await.unwrap();
    }
    let mut bad = chat("hi", 6);
    bad.sampling.as_mut().unwrap().temperature = Some(9.0);
    client.predict(bad).await.unwrap_err();

    let (_, after) = http_get(&coordinator_metrics).await;
    assert_eq!(metric(&after, "modelpool_coordinator_requests_total{outcome=\"ok\"}"), Some(2.0), "{after}");
    assert_eq!(metric(&after, "modelpool_coordinator_requests_total{outcome=\"invalid\"}"), Some(1.0));
    assert_eq!(metric(&after, "modelpool_coordinator_request_duration_seconds_count"), Some(2.0));
    assert_eq!(metric(&after, "modelpool_coordinator_time_to_first_token_seconds_count"), Some(2.0));
    assert!(metric(&after, "modelpool_coordinator_generated_tokens_total").unwrap() >= 2.0);
    assert!(after.contains("modelpool_worker_in_flight{worker_id="), "per-worker gauges");

    let (status, worker_text) = http_get(&worker_metrics).await;
    assert_eq!(status, 200);
    assert_eq!(metric(&worker_text, "modelpool_worker_requests_total{outcome=\"ok\"}"), Some(2.0), "{worker_text}");
    assert!(metric(&worker_text, "modelpool_worker_rss_bytes").unwrap() > 1e6);
    assert_eq!(metric(&worker_text, "modelpool_worker_slots"), Some(1.0));

    // Liveness and readiness.
    assert_eq!(http_get(&format!("{}/health", pool.http_url())).await.0, 200);
    assert_eq!(http_get(&format!("{}/ready", pool.http_url())).await.0, 200);
    assert_eq!(http_get(&format!("{worker_address}/ready")).await.0, 200);

    // Reflection: the services are discoverable without the .proto files.
    let services = listed_services(&pool.coordinator_url()).await;
    for name in ["modelpool.v1.Coordinator", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == name), "coordinator lists {name}: {services:?}");
    }
    let services = listed_services(&worker_address).await;
    assert!(services.iter().any(|s| s == "modelpool.v1.Worker"), "worker lists its service: {services:?}");

    // With every worker gone the coordinator is not ready.
    pool.workers.workers[0].signal(libc::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if http_get(&format!("{}/ready", pool.http_url())).await.0 == 503 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "/ready still 200 after the only worker died");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    pool.shutdown().await;
}
