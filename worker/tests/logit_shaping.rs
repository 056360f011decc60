//! A request's logit bias and penalties on real workers of both engines (the default model; MLX on its
//! CPU backend): a bias of +100 forces a token and -100 bans it, greedy and sampled; OpenAI's frequency
//! and presence penalties make a reply that repeats itself repeat less; a bias on an id the model's
//! vocabulary does not have is refused naming the field.

mod common;

use common::{TestWorker, config};
use model_input::prompt_format::PromptFormat;
use modelpool::proto;
use modelpool::{PredictRequest, Prompt, SamplingParams};
use worker::engine::EngineKind;

/// A prompt the default model continues by listing fruits over and over (greedy, without penalties).
const FRUITS: &str = "The list of fruits: apple, banana, cherry, apple, banana, cherry, apple,";

/// A prompt the default model continues by counting on, a comma after each number.
const COUNTING: &str = "one, two, three, four, five, six, seven, eight, nine, ten. One, two, three, four, five, six, \
    seven, eight, nine, ten. One,";

fn request(prompt: &str, sampling: SamplingParams) -> proto::PredictRequest {
    proto::PredictRequest::from(&PredictRequest { request_id: String::new(), prompt: Prompt::Raw(prompt.into()), sampling })
}

async fn text(worker: &TestWorker, prompt: &str, sampling: SamplingParams) -> String {
    worker.client.clone().predict(request(prompt, sampling)).await.unwrap().into_inner().text
}

fn comma_id() -> u32 {
    let format = PromptFormat::load(&model_input::model_cache::ensure_default_model().unwrap()).unwrap();
    let ids = format.tokenizer.encode(",", false);
    assert_eq!(ids.len(), 1, "',' is one token of the default model");
    ids[0]
}

async fn worker(engine: EngineKind) -> TestWorker {
    let mut config = config(2).await;
    config.engine = engine;
    TestWorker::start(config).await
}

async fn bias_forces_and_bans(engine: EngineKind) {
    let worker = worker(engine).await;
    let comma = comma_id();
    for temperature in [0.0, 0.9] {
        let forced = SamplingParams { max_tokens: 6, temperature, seed: 5, logit_bias: vec![(comma, 100.0)], ..SamplingParams::default() };
        assert_eq!(text(&worker, "Once upon a time", forced).await, ",,,,,,", "{engine:?} at temperature {temperature}");
    }
    let plain = SamplingParams { max_tokens: 24, ..SamplingParams::default() };
    let counted = text(&worker, COUNTING, plain.clone()).await;
    assert!(counted.contains(','), "{engine:?}: the model counts on with commas: {counted:?}");
    let banned = text(&worker, COUNTING, SamplingParams { logit_bias: vec![(comma, -100.0)], ..plain }).await;
    assert!(!banned.contains(','), "{engine:?}: -100 bans the comma: {banned:?}");
    worker.stop().await;
}

async fn penalties_repeat_less(engine: EngineKind) {
    let worker = worker(engine).await;
    let plain = SamplingParams { max_tokens: 40, ..SamplingParams::default() };
    let commas = |text: &str| text.matches(',').count();
    let looping = text(&worker, FRUITS, plain.clone()).await;
    for penalised in [SamplingParams { frequency_penalty: 2.0, ..plain.clone() }, SamplingParams { presence_penalty: 2.0, ..plain.clone() }]
    {
        let what = format!("{engine:?} frequency {} presence {}", penalised.frequency_penalty, penalised.presence_penalty);
        let reply = text(&worker, FRUITS, penalised).await;
        assert!(commas(&reply) < commas(&looping), "{what}: {reply:?} repeats the comma less than {looping:?}");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_logit_bias_forces_and_bans_a_token() {
    bias_forces_and_bans(EngineKind::Llama).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlx_logit_bias_forces_and_bans_a_token() {
    bias_forces_and_bans(EngineKind::Mlx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_penalties_make_a_looping_reply_repeat_less() {
    penalties_repeat_less(EngineKind::Llama).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlx_penalties_make_a_looping_reply_repeat_less() {
    penalties_repeat_less(EngineKind::Mlx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bias_on_an_id_past_the_vocabulary_is_refused_naming_the_field() {
    let worker = worker(EngineKind::Llama).await;
    let sampling = SamplingParams { logit_bias: vec![(1 << 20, 1.0)], ..SamplingParams::default() };
    let status = worker.client.clone().predict(request("Hello", sampling)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("sampling.logit_bias") && status.message().contains("vocabulary"), "{status:?}");
    worker.stop().await;
}
