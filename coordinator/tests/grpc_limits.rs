//! The coordinator's gRPC port under idle sockets, against a real
//! coordinator over TCP: past `--grpc-max-connections` a new connection is closed at once, a connection
//! that sends nothing is closed after the first-bytes deadline, and then the port serves calls again.
//! On the old main nothing bounded either: every socket stayed open as long as its client liked.

mod common;

use std::time::{Duration, Instant};

use common::{closed_within, host_of};
use coordinator::Config;
use lab::local_pool::LocalCoordinator;
use modelpool::proto::ListWorkersRequest;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_bounded_in_number_and_in_time() {
    let config = Config { grpc_max_connections: 8, grpc_first_bytes_timeout: Duration::from_secs(2), ..Config::default() };
    let coordinator = LocalCoordinator::start(config).await.unwrap();
    let address = host_of(&coordinator.url);
    // The harness's own client holds one place once it has called.
    let mut client = coordinator.client.clone();
    client.list_workers(ListWorkersRequest {}).await.unwrap();
    let opened = Instant::now();
    let mut sockets = Vec::new();
    for _ in 0..12 {
        sockets.push(TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Those past the limit were closed as soon as they were accepted; the harness's client holds a
    // place or none, so 4 or 5 of the 12.
    let mut idle = Vec::new();
    for mut stream in sockets {
        if !closed_within(&mut stream, Duration::from_millis(50)).await {
            idle.push(stream);
        }
    }
    assert!(opened.elapsed() < Duration::from_millis(1500), "checked before any deadline: {:?}", opened.elapsed());
    assert!((7..=8).contains(&idle.len()), "{} of 12 connections kept their place under a limit of 8", idle.len());
    // A connection that was given a place but never spoke is closed at its deadline, not before.
    for stream in &mut idle {
        assert!(closed_within(stream, Duration::from_secs(5)).await, "a silent connection is closed");
    }
    assert!(opened.elapsed() >= Duration::from_millis(1500), "closed at the deadline, not at once: {:?}", opened.elapsed());
    // The places are free again: the port serves the calls it is there for, on new connections too.
    client.list_workers(ListWorkersRequest {}).await.unwrap();
    let fresh = tonic::transport::Endpoint::from_shared(coordinator.url.clone()).unwrap().connect().await.unwrap();
    modelpool::proto::coordinator_client::CoordinatorClient::new(fresh).list_workers(ListWorkersRequest {}).await.unwrap();
    coordinator.stop().await;
}
