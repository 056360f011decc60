//! The MLX engine against the llama.cpp engine, same GGUF, both served in this process.

mod common;

use common::{TestWorker, alone_then_together, invariant_config};
use model_input::prompt_format::PromptFormat;
use worker::engine::EngineKind;
use worker::engine::mlx::model::{MlxLlama, QuantizedProducts};

/// The bench's built-in prompts (extraction tasks and questions), the first eight.
fn builtin_prompts() -> Vec<Vec<modelpool::ChatMessage>> {
    bench_client::workload::builtin_prompts().into_iter().take(8).collect()
}

fn request(messages: &[modelpool::ChatMessage], max_tokens: u32) -> modelpool::proto::PredictRequest {
    let mut request = modelpool::PredictRequest::user("", max_tokens);
    request.prompt = modelpool::Prompt::Chat(messages.to_vec());
    modelpool::proto::PredictRequest::from(&request)
}

/// Logits of the next token after `tokens`, from llama.cpp with or without flash attention.
fn llama_logits(model: &llama_cpp_2::model::LlamaModel, tokens: &[i32], flash_attention: bool) -> Vec<f32> {
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::token::LlamaToken;
    let backend = worker::engine::llama::default_backend(&model_input::model_cache::ensure_default_model().unwrap()).unwrap();
    // The settings the llama.cpp engine serves with.
    let params = worker::engine::llama::base_context_params(flash_attention).with_n_threads(1);
    let mut context = model.new_context(backend, params).unwrap();
    let mut batch = LlamaBatch::new(512, 1);
    let tokens: Vec<LlamaToken> = tokens.iter().map(|&t| LlamaToken(t)).collect();
    batch.add_sequence(&tokens, 0, false).unwrap();
    context.decode(&mut batch).unwrap();
    context.get_logits_ith(batch.n_tokens() - 1).to_vec()
}

/// ChatML as llama.cpp's built-in template writes it (no default system message).
fn chatml_without_system(messages: &[modelpool::ChatMessage]) -> String {
    let mut text: String = messages.iter().map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role.as_str(), m.content)).collect();
    text.push_str("<|im_start|>assistant\n");
    text
}

fn ranked(logits: &[f32]) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    ids.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
    ids
}

#[test]
fn mlx_logits_match_llama_cpp_on_the_builtin_prompts() {
    let path = model_input::model_cache::ensure_default_model().unwrap();
    let format = PromptFormat::load(&path).unwrap();
    let backend = worker::engine::llama::default_backend(&path).unwrap();
    let llama = llama_cpp_2::model::LlamaModel::load_from_file(backend, &path, &Default::default()).unwrap();
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    let mlx = MlxLlama::load(&path).unwrap();

    let mut margins = Vec::new();
    let mut worst = 0.0f32;
    let mut same_as_flash_attention = 0;
    for prompt in builtin_prompts() {
        // The conversation without the template's default system message: the inputs the bounds below were
        // measured on (the forward passes are compared here, not the template).
        let tokens: Vec<i32> =
            format.encode(&modelpool::Prompt::Raw(chatml_without_system(&prompt))).unwrap().into_iter().map(|t| t as i32).collect();
        // Against float32 attention, as MLX computes it; llama.cpp's default flash attention rounds to
        // float16 on the CPU, and that alone decides one near-tie (counted and printed below).
        let theirs = llama_logits(&llama, &tokens, false);
        let with_flash_attention = ranked(&llama_logits(&llama, &tokens, true))[0];
        let mut cache = mlx.new_cache();
        let ours = mlx.forward(&tokens, tokens.len() as i32, &mut [&mut cache]).unwrap();
        ours.eval().unwrap();
        let ours = ours.as_slice::<f32>().to_vec();
        let (their_rank, our_rank) = (ranked(&theirs), ranked(&ours));
        // The same computation: the leading logits agree closely.
        for &id in their_rank.iter().take(10) {
            let difference = (theirs[id] - ours[id]).abs();
            worst = worst.max(difference);
            // Measured: at most 0.57 on these prompts.
            assert!(difference < 0.75, "token {id}: llama.cpp {} vs MLX {} for {prompt:?}", theirs[id], ours[id]);
        }
        let margin = theirs[their_rank[0]] - theirs[their_rank[1]];
        // Their arithmetic differs (llama.cpp rounds activations to 8 bits for its dot products), so
        // later tokens may drift; the first greedy token must be the same for every prompt.
        assert_eq!(our_rank[0], their_rank[0], "first greedy token differs for {prompt:?} (llama.cpp's top-two margin {margin:.3})");
        same_as_flash_attention += usize::from(with_flash_attention == our_rank[0]);
        margins.push(margin);
    }
    let closest = margins.iter().copied().fold(f32::MAX, f32::min);
    println!(
        "first greedy token: 8/8 identical to llama.cpp with float32 attention ({same_as_flash_attention}/8 with its default flash \
         attention); worst top-10 logit difference {worst:.3}; closest llama.cpp top-two margin {closest:.3}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn served_mlx_text_starts_as_llama_cpps_and_the_agreement_is_reported() {
    // llama.cpp with float32 attention, the arithmetic closest to MLX's (see the logits test).
    let mut llama_config = invariant_config(1).await;
    llama_config.flash_attention = false;
    let llama = TestWorker::start(llama_config).await;
    let mut mlx_config = invariant_config(1).await;
    mlx_config.engine = EngineKind::Mlx;
    let mlx = TestWorker::start(mlx_config).await;
    let tokenizer = PromptFormat::load(&model_input::model_cache::ensure_default_model().unwrap()).unwrap().tokenizer;
    let mut agreeing = Vec::new();
    for prompt in builtin_prompts().iter().take(4) {
        let a = llama.client.clone().predict(request(prompt, 16)).await.unwrap().into_inner();
        let b = mlx.client.clone().predict(request(prompt, 16)).await.unwrap().into_inner();
        assert_eq!(a.prompt_tokens, b.prompt_tokens, "both engines see the same prompt tokens");
        let (a, b) = (tokenizer.encode(&a.text, false), tokenizer.encode(&b.text, false));
        agreeing.push(a.iter().zip(&b).take(16).take_while(|(x, y)| x == y).count());
    }
    // Reported, not required past the first token: the arithmetic differs, so text may drift later.
    println!("first-16-token agreement, MLX vs llama.cpp, per prompt: {agreeing:?}");
    assert!(agreeing[0] >= 1, "the extraction prompt starts the same");
    llama.stop().await;
    mlx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chat_template_is_the_one_llama_cpp_applies() {
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
    use modelpool::{ChatMessage, Role};

    let path = model_input::model_cache::ensure_default_model().unwrap();
    let backend = worker::engine::llama::default_backend(&path).unwrap();
    let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default().with_vocab_only(true)).unwrap();
    let messages = [
        ChatMessage::new(Role::System, "You extract facts."),
        ChatMessage::new(Role::User, "Paris is in France."),
        ChatMessage::new(Role::Assistant, "Paris | in | France"),
        ChatMessage::new(Role::User, "And Rome?"),
    ];
    let theirs = model
        .apply_chat_template(
            &model.chat_template(None).unwrap(),
            &messages.iter().map(|m| LlamaChatMessage::new(m.role.as_str().into(), m.content.clone()).unwrap()).collect::<Vec<_>>(),
            true,
        )
        .unwrap();
    // The GGUF's Jinja template, rendered by minijinja, writes what llama.cpp's built-in ChatML writes for
    // a conversation that has its own system message.
    let format = PromptFormat::load(&path).unwrap();
    let ours: Vec<model_input::chat_template::TemplateMessage<'_>> = messages.iter().map(Into::into).collect();
    assert_eq!(format.render_chat(&ours).unwrap(), theirs);
}

/// The default model loaded by MLX on the CPU (its products through the quantized kernel), and the
/// built-in prompts' token ids.
fn default_model_in_mlx() -> (MlxLlama, Vec<Vec<i32>>) {
    let path = model_input::model_cache::ensure_default_model().unwrap();
    let format = PromptFormat::load(&path).unwrap();
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    let prompts = builtin_prompts()
        .into_iter()
        .map(|messages| format.encode(&modelpool::Prompt::Chat(messages)).unwrap().into_iter().map(|t| t as i32).collect())
        .collect();
    (MlxLlama::load(&path).unwrap(), prompts)
}

/// A forward pass's logits, evaluated.
fn logits(a: mlx_rs::Array) -> Vec<f32> {
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

/// A prompt fed in chunks (with other sequences decoding in between) must end in the same state as fed
/// at once: the causal mask of a chunk is aligned after what the cache holds.
#[test]
fn chunked_prefill_and_batched_decode_match_one_sequence_at_once() {
    let (mlx, prompts) = default_model_in_mlx();
    let (a, b) = (prompts[0].clone(), prompts[1].clone());

    let mut whole = mlx.new_cache();
    let at_once = logits(mlx.forward(&a, a.len() as i32, &mut [&mut whole]).unwrap());
    let mut chunked = mlx.new_cache();
    let split = a.len() / 3;
    mlx.forward(&a[..split], split as i32, &mut [&mut chunked]).unwrap();
    let in_chunks = logits(mlx.forward(&a[split..], (a.len() - split) as i32, &mut [&mut chunked]).unwrap());
    let worst = at_once.iter().zip(&in_chunks).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "chunked prefill differs from one pass by {worst}");

    // Two sequences of unequal length decoded in one pass: each row is what that sequence gives alone.
    let mut other = mlx.new_cache();
    let b_alone = logits(mlx.forward(&b, b.len() as i32, &mut [&mut other]).unwrap());
    let (next_a, next_b) = (argmax(&at_once), argmax(&b_alone));
    let (mut a_alone_cache, mut b_alone_cache) = (whole, other);
    let mut a_batched_cache = chunked;
    let mut b_batched_cache = mlx.new_cache();
    mlx.forward(&b, b.len() as i32, &mut [&mut b_batched_cache]).unwrap();
    let a_step = logits(mlx.forward(&[next_a], 1, &mut [&mut a_alone_cache]).unwrap());
    let b_step = logits(mlx.forward(&[next_b], 1, &mut [&mut b_alone_cache]).unwrap());
    let both = logits(mlx.forward(&[next_a, next_b], 1, &mut [&mut a_batched_cache, &mut b_batched_cache]).unwrap());
    let vocab = a_step.len();
    assert_eq!(both.len(), 2 * vocab);
    for (row, alone) in [&a_step, &b_step].into_iter().enumerate() {
        let batched = &both[row * vocab..(row + 1) * vocab];
        let worst = alone.iter().zip(batched).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "row {row}: batched decode differs from alone by {worst}");
        assert_eq!(argmax(alone), argmax(batched));
    }
    assert_eq!(a_alone_cache.len, a_batched_cache.len);
}

fn argmax(logits: &[f32]) -> i32 {
    ranked(logits)[0] as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mlx_worker_with_three_slots_serves_them_together_with_the_text_of_each_alone() {
    let mut mlx_config = invariant_config(3).await;
    mlx_config.engine = EngineKind::Mlx;
    let mlx = TestWorker::start(mlx_config).await;
    let requests: Vec<_> = builtin_prompts().iter().skip(4).take(3).map(|prompt| request(prompt, 12)).collect();
    let (alone, together) = alone_then_together(&mlx.client, &requests).await;
    for (a, t) in alone.iter().zip(&together) {
        assert_eq!(a.text, t.text, "batched greedy output equals the output alone");
    }
    mlx.stop().await;
}

/// The default (mixed) passes compute a quantized product of several rows densely, through the BLAS MLX
/// calls, which must be OpenBLAS: the worker links it (worker/build.rs), because the mlx-cpu wheel's own
/// is the reference BLAS (about 40x slower here). The logits stay the quantized kernel's up to rounding,
/// for a prompt alone and for a prompt and another sequence's decode token in one pass.
#[test]
fn dense_products_through_openblas_give_the_quantized_kernels_logits() {
    let blas = worker::engine::mlx::blas::in_use();
    assert!(blas.is_fast(), "MLX's cblas_sgemm should be OpenBLAS's (scripts/setup.sh installs libopenblas0-pthread): {blas:?}");
    let (mut mlx, prompts) = default_model_in_mlx();
    let (a, b) = (prompts[2].clone(), prompts[3].clone());

    // The quantized kernel: `a` alone; `b`, then its next token.
    let mut cache = mlx.new_cache();
    let a_kernel = logits(mlx.forward(&a, a.len() as i32, &mut [&mut cache]).unwrap());
    let mut b_cache = mlx.new_cache();
    let next_b = argmax(&logits(mlx.forward(&b, b.len() as i32, &mut [&mut b_cache]).unwrap()));
    let b_kernel = logits(mlx.forward(&[next_b], 1, &mut [&mut b_cache]).unwrap());

    // Dense products: `b` prefilled, then `a`'s whole prompt and `b`'s next token in one pass.
    mlx.products = QuantizedProducts::DequantizedFrom { rows: 2 };
    let mut b_cache = mlx.new_cache();
    let b_prompt = logits(mlx.forward(&b, b.len() as i32, &mut [&mut b_cache]).unwrap());
    assert_eq!(argmax(&b_prompt), next_b);
    let mut a_cache = mlx.new_cache();
    let next = [next_b];
    let both = logits(mlx.forward_runs(&mut [(&a[..], &mut a_cache), (&next[..], &mut b_cache)]).unwrap());
    let vocab = a_kernel.len();
    assert_eq!(both.len(), 2 * vocab);
    assert_eq!((a_cache.len, b_cache.len), (a.len() as i32, b.len() as i32 + 1));
    for (row, kernel) in [&a_kernel, &b_kernel].into_iter().enumerate() {
        let dense = &both[row * vocab..(row + 1) * vocab];
        let worst = kernel.iter().zip(dense).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        println!("row {row}: dense products differ from the quantized kernel's by at most {worst}");
        assert!(worst < 1e-3, "row {row}: dense products differ from the quantized kernel's by {worst}");
        // Rounded differently, so the dense path really ran.
        assert!(worst > 0.0, "row {row}: bit-identical logits: were the products dense?");
        assert_eq!(ranked(kernel)[..5], ranked(dense)[..5], "row {row}: the top five tokens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_default_mlx_worker_names_its_blas_and_answers_with_dense_products() {
    let mut mlx_config = common::config(2).await;
    mlx_config.engine = EngineKind::Mlx;
    let mlx = TestWorker::start(mlx_config).await;
    let info = mlx.client.clone().info(modelpool::proto::InfoRequest {}).await.unwrap().into_inner();
    assert!(info.cpu_kernels.contains("float32 products on OpenBLAS"), "{}", info.cpu_kernels);
    let answer = mlx.client.clone().predict(common::chat("Which city is the capital of France?", 12)).await.unwrap().into_inner();
    assert!(answer.text.contains("Paris"), "{answer:?}");
    mlx.stop().await;
}
