//! bench-client's OpenAI target against a real pool's HTTP API (real worker processes, real model):
//! timings come from the streamed chunks, `ignore_eos` fixes the output length, cached prompt tokens
//! are reported, and the report names what served every summary. And prefix routing on real workers.

mod common;

use bench_client::openai_client::OpenAiClient;
use bench_client::report::Report;
use bench_client::runner::{Target, run_closed_loop};
use bench_client::slo::Slo;
use bench_client::{shared_prefix, workload};
use common::{TestPool, fast_scheduler};
use coordinator::SchedulerConfig;
use coordinator::routing::Routing;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_target_times_streamed_chunks_and_reports_what_served() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    let client = OpenAiClient::new(&format!("{}/v1", pool.http_url()), None, Some("smollm2".into())).unwrap();
    let prompts = workload::builtin_workload(4, 24);
    let (records, wall_s) = run_closed_loop(Target::OpenAi(client.clone()), &prompts, 2).await;
    for record in &records {
        assert!(record.ok, "{record:?}");
        assert!(record.completion_tokens > 1 && !record.text.is_empty(), "{record:?}");
        // The first piece came before the last one: the time to first token is the stream's.
        assert!(record.ttft_ms > 0.0 && record.ttft_ms < record.e2e_ms, "{record:?}");
        assert!(!record.inter_token_ms.is_empty(), "gaps between streamed pieces: {record:?}");
        assert!(record.tpot_ms > 0.0);
    }

    // ignore_eos: exactly max_tokens, although the model would stop sooner on its own.
    let mut fixed = modelpool::PredictRequest::user("Which city is the capital of France?", 40);
    let (natural, _) = run_closed_loop(Target::OpenAi(client.clone()), std::slice::from_ref(&fixed), 1).await;
    assert!(natural[0].completion_tokens < 40, "{:?}", natural[0]);
    fixed.sampling.ignore_eos = true;
    let (forced, _) = run_closed_loop(Target::OpenAi(client.clone()), &[fixed], 1).await;
    assert_eq!(forced[0].completion_tokens, 40, "{:?}", forced[0]);

    // The same DSPy-shaped call twice: the second reports its reused prompt tokens.
    let calls = shared_prefix::workload(2, 1, 4);
    let (first, _) = run_closed_loop(Target::OpenAi(client.clone()), &calls[..1], 1).await;
    let (second, _) = run_closed_loop(Target::OpenAi(client), &calls[1..], 1).await;
    assert!(first[0].prompt_tokens > 1000, "a preamble of 1,000+ tokens: {:?}", first[0].prompt_tokens);
    assert!(second[0].cached_tokens > 900, "the preamble was reused: {:?}", second[0]);

    let run = bench_client::report::ScenarioRun {
        cpu_kernels: Vec::new(),
        name: "parallel-c2".into(),
        engine: "openai".into(),
        repeat: 0,
        workers: 1,
        slots_per_worker: 1,
        threads_per_worker: 1,
        concurrency: 2,
        wall_s,
        records,
        memory: Default::default(),
        stopped: None,
    };
    let report = Report::new("bench-client", "smollm2".into(), 24, Slo::default(), vec![run]);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["summaries"].as_array().unwrap().iter().all(|s| s["engine"] == "openai"), "{}", json["summaries"]);
    assert!(report.summaries[0].ttft_ms.p50 > 0.0);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_routing_keeps_each_program_on_the_worker_that_computed_it() {
    let scheduler = SchedulerConfig { routing: Routing::Prefix, ..fast_scheduler() };
    let pool = TestPool::start(2, scheduler, &[]).await;
    let client = OpenAiClient::new(&pool.http_url(), None, None).unwrap();
    // Two programs, one call each first (one per worker), then three more of each, one at a time.
    let calls = shared_prefix::workload(8, 2, 2);
    let (records, _) = run_closed_loop(Target::OpenAi(client), &calls, 1).await;
    assert!(records.iter().all(|r| r.ok), "{records:?}");
    let cached: Vec<(u32, u32)> = records.iter().map(|r| (r.cached_tokens, r.prompt_tokens)).collect();
    // Each later call found its program's preamble (most of its prompt) on the worker it was sent to.
    assert!(cached[2..].iter().all(|&(c, p)| c * 4 >= p * 3), "(cached, prompt) tokens: {cached:?}");
    pool.shutdown().await;
}
