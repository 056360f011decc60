//! The pool's shared secret, with real processes: only holders of the token register, heartbeat or
//! predict, on the coordinator and on the workers alike.

mod common;

use std::time::Duration;

use common::{TestPool, chat, fast_scheduler};
use coordinator::SchedulerConfig;
use modelpool::auth::Token;
use modelpool::proto::worker_client::WorkerClient;
use modelpool::proto::{self, ListWorkersRequest};
use tonic::Code;

const SECRET: &str = "test-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_token_holders_join_the_pool_or_call_it() {
    let token = Token::new(Some(SECRET.into())).unwrap();
    let scheduler = SchedulerConfig { token: token.clone(), ..fast_scheduler() };
    let pool = TestPool::start(1, scheduler, &["--token", SECRET]).await;

    // The pool's own client carries the token: the worker registered with it and prompts run.
    let answer = pool.client.clone().predict(chat("Say hi.", 4)).await.unwrap().into_inner();
    assert!(answer.completion_tokens > 0);
    let url = pool.coordinator_url();

    for (name, client_token) in [("no token", Token::none()), ("wrong token", Token::new(Some("wrong-secret-0123456789".into())).unwrap())] {
        let mut client = bench_client::connect(&url, &client_token).unwrap();
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
    let impostor = coordinator::local_pool::WorkerProcess::spawn(&impostor_spec).unwrap();
    // It loads in well under a second and then tries to register every second.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let workers = pool.list().await;
    assert_eq!(workers.len(), 1, "only the token holder is registered");
    assert!(workers.iter().all(|w| w.info.as_ref().unwrap().pid != impostor.pid));
    impostor.stop(Duration::from_secs(5)).await;
    pool.shutdown().await;
}
