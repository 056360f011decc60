//! The prefix cache on a real MLX worker (MLX's CPU backend, the default model): greedy text is the same
//! with and without reuse for a repeated prompt, a strict prefix, an extension and a divergence, a cold slot takes a prefix
//! from a busy one, eviction, and the prompt store. Prompts are short: in the batch-invariant passes these tests use, MLX's quantized kernel prefills about 14 tokens/s here.

mod common;

use common::{TestWorker, config, invariant_config};
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
    let mut config = invariant_config(slots).await;
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
    let words: Vec<&str> = TEXT.split(' ').collect();
    let half = words[..words.len() / 2].join(" ");
    let requests = [
        ("text", raw(TEXT, 6, false)),
        ("the text again", raw(TEXT, 6, false)),
        ("a strict prefix of the text", raw(&half, 6, false)),
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
    assert!(answers[2].cached_tokens >= 32 && answers[2].cached_tokens < answers[2].prompt_tokens, "{:?}", answers[2]);
    assert!(answers[3].cached_tokens >= 32 && answers[3].cached_tokens <= answers[0].prompt_tokens, "{:?}", answers[3]);
    assert!(answers[4].cached_tokens >= 32 && answers[4].cached_tokens < answers[0].prompt_tokens, "{:?}", answers[4]);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mlx_evicts_the_least_recently_used_prefix_and_keeps_the_context_limit() {
    let mut config = config(2).await;
    config.engine = EngineKind::Mlx;
    config.context_per_slot = 128;
    // The slots alone (no prompt store, which would keep what they evict).
    config.prompt_store_bytes = 0;
    let cached = TestWorker::start(config).await;
    let texts = [
        "Marie Curie was born in Warsaw and moved to Paris, where she studied physics and chemistry at the Sorbonne for years.",
        "Ada Lovelace worked with Charles Babbage on the Analytical Engine in London and wrote the first published program.",
        "The Danube flows through Vienna, Bratislava, Budapest and Belgrade before it reaches the Black Sea in Romania.",
    ];
    let mut cached_tokens = Vec::new();
    // Three prompts through two slots: the third evicts the first, the second survives.
    for i in [0, 1, 2, 1, 0] {
        cached_tokens.push(predict(&cached, &raw(texts[i], 2, false)).await.cached_tokens);
    }
    assert!(cached_tokens[..3].iter().all(|&c| c == 0), "{cached_tokens:?}");
    assert!(cached_tokens[3] >= 16, "the second prompt was still cached: {cached_tokens:?}");
    assert_eq!(cached_tokens[4], 0, "the first was evicted: {cached_tokens:?}");
    // A cached prompt strict about max_tokens and asking for more than its slot's context has left is
    // still refused, with the numbers.
    let mut strict = raw(texts[1], 120, false);
    strict.sampling.as_mut().unwrap().strict_max_tokens = Some(true);
    let status = cached.client.clone().predict(strict).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("128"), "{}", status.message());
    // Not strict (the default), it is served and generation stops where the slot's context ends.
    let served = cached.client.clone().predict(raw(texts[1], 120, true)).await.unwrap().into_inner();
    assert_eq!(served.finish_reason(), proto::FinishReason::Length);
    assert_eq!(served.prompt_tokens + served.completion_tokens, 128, "{served:?}");
    cached.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mlx_restores_a_stored_prompt_with_the_text_computed_fresh() {
    // One slot: the second prompt displaces the first, which is saved in the store; the first again is
    // restored from it, and gives the text it gave when computed.
    let mut config = invariant_config(1).await;
    config.engine = EngineKind::Mlx;
    let worker = TestWorker::start(config).await;
    let first = "A glossary for new lighthouse keepers. Lens: the glass that focuses the lamp. Gallery: the walkway \
        around the lantern. Lamp room: where the light burns. Question: what is the gallery?";
    let second = "A glossary for new beekeepers. Smoker: a can that puffs smoke to calm the bees. Super: a box of \
        frames for honey. Brood: the eggs and young bees. Question: what is a super?";
    let computed = predict(&worker, &raw(first, 6, false)).await;
    assert_eq!(predict(&worker, &raw(second, 6, false)).await.cached_tokens, 0);
    let restored = predict(&worker, &raw(first, 6, false)).await;
    assert!(restored.cached_tokens >= 32, "{restored:?}");
    assert_eq!(restored.text, computed.text, "restoring changed the text");
    let load = worker.load().await;
    assert_eq!((load.prompt_store_hits, load.prompt_store_entries), (1, 2), "{load:?}");
    assert!(load.prompt_store_bytes > 0, "{load:?}");
    worker.stop().await;
}
