//! The prefix cache on a real MLX worker (MLX's CPU backend, the default model): greedy text is the same
//! with and without reuse for a repeated prompt, an extension and a divergence, a cold slot takes a prefix
//! from a busy one, and eviction. Prompts are short: MLX's CPU prefill runs at about 14 tokens/s here.

mod common;

use common::{TestWorker, config};
use modelpool::proto;
use modelpool::{PredictRequest, Prompt, SamplingParams};
use worker::engine::EngineKind;

const TEXT: &str = "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a can of oil \
    and a cloth for the great lens. From the gallery he could see the fishing boats coming home across the bay, \
    their lamps swinging in the dark, and beyond them the line of the cliffs where the gulls nested in spring. \
    He kept a logbook of every ship that passed and of the weather at each hour.";

fn raw(text: &str, max_tokens: u32, ignore_eos: bool) -> proto::PredictRequest {
    let sampling = SamplingParams { max_tokens, ignore_eos, ..SamplingParams::default() };
    proto::PredictRequest::from(&PredictRequest { request_id: String::new(), prompt: Prompt::Raw(text.into()), sampling })
}

async fn mlx_worker(slots: u32, prefix_cache: bool) -> TestWorker {
    let mut config = config(slots).await;
    config.engine = EngineKind::Mlx;
    config.prefix_cache = prefix_cache;
    TestWorker::start(config).await
}

async fn predict(worker: &TestWorker, request: &proto::PredictRequest) -> proto::PredictResponse {
    worker.client.clone().predict(request.clone()).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mlx_greedy_text_is_the_same_with_and_without_reuse_and_copies_work() {
    let cached = mlx_worker(2, true).await;
    let plain = mlx_worker(1, false).await;
    let mut diverging: Vec<&str> = TEXT.split(' ').collect();
    let at = diverging.len() * 2 / 3;
    diverging[at] = "lantern";
    let requests = [
        ("text", raw(TEXT, 6, false)),
        ("the text again", raw(TEXT, 6, false)),
        ("the text extended", raw(&format!("{TEXT} A storm came in from the west."), 6, false)),
        ("the text diverging", raw(&diverging.join(" "), 6, false)),
    ];
    let mut answers = Vec::new();
    for (name, request) in &requests {
        let with = predict(&cached, request).await;
        let without = predict(&plain, request).await;
        assert_eq!(with.text, without.text, "{name}: greedy text with reuse equals text without");
        assert_eq!(without.cached_tokens, 0, "{name}");
        answers.push(with);
    }
    // A repeated prompt reuses all but its last token; others whole 32-token prefill chunks (see the MLX
    // loop's reuse policy).
    assert_eq!(answers[0].cached_tokens, 0);
    assert_eq!(answers[1].cached_tokens, answers[1].prompt_tokens - 1);
    assert!(answers[2].cached_tokens >= 32 && answers[2].cached_tokens <= answers[0].prompt_tokens, "{:?}", answers[2]);
    assert!(answers[3].cached_tokens >= 32 && answers[3].cached_tokens < answers[0].prompt_tokens, "{:?}", answers[3]);

    // A cold slot takes the prefix from the busy one.
    let mut running = cached.client.clone().predict_stream(raw(TEXT, 40, true)).await.unwrap().into_inner();
    running.message().await.unwrap().expect("the first request is generating");
    let second = raw(&format!("{TEXT} The keeper"), 6, false);
    let copied = predict(&cached, &second).await;
    assert!(copied.copied_tokens >= 32, "the cold slot took the prefix from the busy one: {copied:?}");
    drop(running);
    assert_eq!(copied.text, predict(&plain, &second).await.text);
    cached.stop().await;
    plain.stop().await;
}
