//! The prefix cache on a real worker with the real model (llama.cpp): greedy text is the same with and
//! without reuse, a cold slot copies a prefix from another slot, eviction, and the prompt shapes that
//! reuse must handle (a strict prefix, an extension, a divergence mid-way).

mod common;

use common::{TestWorker, config, invariant_config};
use modelpool::proto;
use modelpool::{ChatMessage, PredictRequest, Prompt, SamplingParams};
use tonic::Code;

/// A DSPy-style call cut to its system message and chunk (about 250 tokens), so that a worker without
/// reuse computes it quickly enough for a test.
fn short_messages(program: usize, chunk: usize) -> Vec<ChatMessage> {
    let messages = bench_client::shared_prefix::call(program, chunk);
    vec![messages[0].clone(), messages[messages.len() - 1].clone()]
}

fn short_call(program: usize, chunk: usize, max_tokens: u32) -> proto::PredictRequest {
    request(Prompt::Chat(short_messages(program, chunk)), max_tokens, false)
}

fn raw(text: &str, max_tokens: u32) -> proto::PredictRequest {
    request(Prompt::Raw(text.into()), max_tokens, false)
}

fn request(prompt: Prompt, max_tokens: u32, ignore_eos: bool) -> proto::PredictRequest {
    let sampling = SamplingParams { max_tokens, ignore_eos, ..SamplingParams::default() };
    proto::PredictRequest::from(&PredictRequest { request_id: String::new(), prompt, sampling })
}

const STORY: &str = "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a can of oil \
    and a cloth for the great lens. From the gallery he could see the fishing boats coming home across the bay, \
    their lamps swinging, and beyond them the dark line of the cliffs where the gulls nested in spring. He kept a \
    logbook of every ship that passed, the weather at each hour, and the state of the light, and in forty years \
    he had missed only one entry, on the night his daughter was born in the cottage below. In winter the storms \
    came from the west and the spray reached the top of the tower, so that the glass had to be wiped every hour \
    until dawn. The supply boat came once a fortnight with flour, paraffin, letters and the newspapers, which he \
    read in order, a day at a time, as if the news were still new. When the light was electrified the board sent \
    him a pension and a clock, and he moved to the village, but every evening at dusk he still walked to the \
    harbour wall to watch the beam come round and count the seconds between the flashes.";

async fn no_reuse_worker(slots: u32) -> TestWorker {
    let mut config = invariant_config(slots).await;
    config.prefix_cache = false;
    TestWorker::start(config).await
}

async fn predict(worker: &TestWorker, request: &proto::PredictRequest) -> proto::PredictResponse {
    worker.client.clone().predict(request.clone()).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn greedy_text_is_the_same_with_and_without_reuse() {
    let cached = TestWorker::start(invariant_config(2).await).await;
    let plain = no_reuse_worker(2).await;
    let words: Vec<&str> = STORY.split(' ').collect();
    let half = words[..words.len() / 2].join(" ");
    let mut diverging = words.clone();
    diverging[words.len() / 3] = "lantern";
    let requests = [
        ("program 0, chunk 0", short_call(0, 0, 16)),
        ("program 0, chunk 1", short_call(0, 1, 16)),
        ("program 1, chunk 0", short_call(1, 0, 16)),
        ("program 0, chunk 2", short_call(0, 2, 16)),
        ("story", raw(STORY, 16)),
        ("the story again", raw(STORY, 16)),
        ("a strict prefix of the story", raw(&half, 16)),
        ("the prefix extended", raw(&format!("{half} The next morning a storm came in from the west."), 16)),
        ("the story diverging", raw(&diverging.join(" "), 16)),
    ];
    let mut answers = Vec::new();
    for (name, request) in &requests {
        let with = predict(&cached, request).await;
        let without = predict(&plain, request).await;
        assert_eq!(with.text, without.text, "{name}: greedy text with reuse equals text without");
        assert_eq!(with.completion_tokens, without.completion_tokens, "{name}");
        assert_eq!(with.prompt_tokens, without.prompt_tokens, "{name}");
        assert_eq!(without.cached_tokens, 0, "{name}: the worker without reuse computes everything");
        answers.push(with);
    }
    let preamble = answers[0].prompt_tokens / 2;
    assert_eq!(answers[0].cached_tokens, 0, "the first call finds nothing cached");
    assert!(answers[1].cached_tokens > preamble, "same program: its system message is reused ({:?})", answers[1].cached_tokens);
    assert!(answers[2].cached_tokens < 32, "another program shares only the opening words");
    assert!(answers[3].cached_tokens > preamble, "program 0 is still cached beside program 1");
    // The same prompt again: all of it but the last attention tile (see batch_loop::aligned_reuse).
    let (story, again) = (&answers[4], &answers[5]);
    assert!(again.cached_tokens + 64 >= story.prompt_tokens && again.cached_tokens < story.prompt_tokens, "{again:?}");
    // A strict prefix: all of it but the last tile.
    let half = &answers[6];
    assert!(half.cached_tokens + 64 >= half.prompt_tokens && half.cached_tokens < half.prompt_tokens, "{half:?}");
    // The prefix extended: the prefix is reused, the extension computed.
    let extended = &answers[7];
    assert!(extended.cached_tokens + 66 >= half.prompt_tokens && extended.cached_tokens < extended.prompt_tokens, "{extended:?}");
    // Diverging a third of the way in: the part before the divergence.
    let diverged = &answers[8];
    assert!(diverged.cached_tokens > 10 && diverged.cached_tokens < story.prompt_tokens / 2, "{:?}", diverged.cached_tokens);
    assert!(answers.iter().all(|a| a.copied_tokens == 0), "one request at a time: nothing needs copying");

    // The worker counts what it computed and what it reused.
    let load = cached.load().await;
    let reused: u64 = answers.iter().map(|a| u64::from(a.cached_tokens)).sum();
    assert_eq!(load.prompt_tokens_reused, reused);
    cached.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_slot_copies_the_prefix_from_a_busy_one() {
    let cached = TestWorker::start(invariant_config(2).await).await;
    // Slot 0 is busy generating for a while with program 0's preamble in its cache.
    let long = request(Prompt::Chat(short_messages(0, 0)), 400, true);
    let mut running = cached.client.clone().predict_stream(long).await.unwrap().into_inner();
    running.message().await.unwrap().expect("the first request is generating");
    let second = short_call(0, 1, 16);
    let copied = predict(&cached, &second).await;
    assert!(copied.copied_tokens > 100, "the cold slot copied the preamble: {copied:?}");
    assert_eq!(copied.cached_tokens, copied.copied_tokens);
    drop(running);

    let plain = no_reuse_worker(1).await;
    let reference = predict(&plain, &second).await;
    assert_eq!(copied.text, reference.text, "text from copied keys and values equals text computed in full");
    cached.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prompts_arriving_together_compute_their_shared_prefix_once() {
    let cached = TestWorker::start(invariant_config(3).await).await;
    let plain = no_reuse_worker(1).await;
    let requests: Vec<_> = (0..3).map(|chunk| short_call(2, chunk, 8)).collect();
    // What the warm-up computed, so that the count below is these requests' alone.
    let before = cached.load().await.prompt_tokens_computed;
    let together = futures::future::join_all(requests.iter().map(|r| predict(&cached, r))).await;
    // One computed the preamble; the other two waited for it and copied it.
    let copied: Vec<u32> = together.iter().map(|r| r.copied_tokens).collect();
    assert_eq!(copied.iter().filter(|&&c| c > 100).count(), 2, "{copied:?}");
    let load = cached.load().await;
    let prompt_tokens: u64 = together.iter().map(|r| u64::from(r.prompt_tokens)).sum();
    let copied_total: u64 = copied.iter().map(|&c| u64::from(c)).sum();
    // Everything not copied was computed, once.
    let computed = load.prompt_tokens_computed - before;
    assert!(computed + copied_total <= prompt_tokens, "computed {computed} + copied {copied_total} of {prompt_tokens}");
    assert_eq!(load.prompt_tokens_reused, copied_total);
    for (request, answer) in requests.iter().zip(&together) {
        assert_eq!(answer.text, predict(&plain, request).await.text, "copied keys and values give the text computed in full");
    }
    cached.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_least_recently_used_prefix_is_evicted_when_slots_hold_others() {
    // The slots alone (no prompt store, which would keep what they evict).
    let mut config = config(2).await;
    config.prompt_store_bytes = 0;
    let cached = TestWorker::start(config).await;
    let mut cached_tokens = Vec::new();
    // Three programs through two slots: the third evicts the first, the second survives.
    for program in [0, 1, 2, 1, 0] {
        cached_tokens.push(predict(&cached, &short_call(program, 3, 4)).await.cached_tokens);
    }
    assert!(cached_tokens[..3].iter().all(|&c| c < 32), "{cached_tokens:?}");
    assert!(cached_tokens[3] > 100, "program 1 was still cached: {cached_tokens:?}");
    assert!(cached_tokens[4] < 32, "program 0 was evicted by program 2: {cached_tokens:?}");
    cached.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reused_prefix_does_not_stretch_the_context() {
    let mut config = config(1).await;
    config.context_per_slot = 512;
    let cached = TestWorker::start(config).await;
    let first = predict(&cached, &short_call(0, 0, 8)).await;
    // The same preamble again, strict about max_tokens and asking for more than the context has left
    // after the prompt: refused with the numbers, although most of the prompt is cached.
    let mut too_long = short_call(0, 1, 512 - first.prompt_tokens + 8);
    too_long.sampling.as_mut().unwrap().strict_max_tokens = Some(true);
    let status = cached.client.clone().predict(too_long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("512"), "{}", status.message());
    let fits = predict(&cached, &short_call(0, 1, 8)).await;
    assert!(fits.cached_tokens > 100, "{fits:?}");
    cached.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prompt_restored_from_the_store_gives_the_text_computed_fresh() {
    // One slot: each program displaces the last, which is saved in the store and restored when its
    // program comes back (the slot alone keeps only the last; see the eviction test above).
    let cached = TestWorker::start(invariant_config(1).await).await;
    let plain = no_reuse_worker(1).await;
    let mut cached_tokens = Vec::new();
    for program in [0, 1, 2, 0, 1, 2] {
        let call = short_call(program, 3, 8);
        let with_reuse = predict(&cached, &call).await;
        let without = predict(&plain, &call).await;
        assert_eq!(with_reuse.text, without.text, "program {program}: restoring changed the text");
        cached_tokens.push(with_reuse.cached_tokens);
    }
    assert!(cached_tokens[..3].iter().all(|&c| c < 32), "{cached_tokens:?}");
    assert!(cached_tokens[3..].iter().all(|&c| c > 100), "every program came back from the store: {cached_tokens:?}");
    let load = cached.load().await;
    assert_eq!(load.prompt_store_hits, 3, "{load:?}");
    // Each program saved once: a restored program displaced again holds what its entry holds already.
    assert_eq!((load.prompt_store_saved, load.prompt_store_entries), (3, 3), "{load:?}");
    cached.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_of_a_few_mib_evicts_the_least_recently_used_and_says_so() {
    let mut config = config(1).await;
    // Two of these prompts' keys and values (some 370 tokens at 22.5 KiB each: 8.5 MB).
    config.prompt_store_bytes = 20 << 20;
    let worker = TestWorker::start(config).await;
    let info = worker.client.clone().info(proto::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.prompt_store_capacity_bytes, 20 << 20);
    assert!((800..1000).contains(&info.prompt_store_tokens), "20 MiB at 22.5 KiB a token: {info:?}");
    let mut cached_tokens = Vec::new();
    // 0..3 leave 1 and 2 in the store (0 was evicted to save 2), 3 in the slot; 0 comes back computed.
    for program in [0, 1, 2, 3, 0] {
        cached_tokens.push(predict(&worker, &short_call(program, 3, 4)).await.cached_tokens);
    }
    assert!(cached_tokens.iter().all(|&c| c < 32), "nothing reused: {cached_tokens:?}");
    let load = worker.load().await;
    assert!(load.prompt_store_evicted >= 2, "{load:?}");
    assert!(load.prompt_store_bytes <= 20 << 20 && load.prompt_store_entries == 2, "{load:?}");
    // Saving 3 (displaced by 0) evicted 1, the least recently used: 2 is still there, and restoring it
    // comes before saving the 0 it displaces, so making room cannot evict it.
    assert!(predict(&worker, &short_call(2, 4, 4)).await.cached_tokens > 100);
    assert!(predict(&worker, &short_call(1, 4, 4)).await.cached_tokens < 32, "1 was evicted");
    let metrics = worker.metrics().await;
    for name in
        ["modelpool_worker_prompt_store_evicted_total", "modelpool_worker_prompt_store_bytes", "modelpool_worker_prompt_store_hits_total 1"]
    {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    worker.stop().await;
}

/// A list the model can only continue by reading it from its context: 48 unrelated words, then the
/// list again from its start, cut after `shown` words.
fn copying_prompt(shown: usize) -> (String, Vec<&'static str>) {
    const WORDS: &str = "walnut harbor velvet comet pencil glacier saddle lantern orchid basalt meadow trumpet \
        cobalt pepper falcon quartz ribbon canyon tulip anchor marble violin cactus ember willow tractor \
        sparrow oyster maple dagger thistle beacon hazel prism otter mosaic barley jigsaw lemon castle \
        zephyr pigeon copper sonnet badger cedar puffin garnet";
    let words: Vec<&'static str> = WORDS.split_whitespace().collect();
    let text = format!(
        "Memorize this list of words: {}.\nNow repeat the list exactly, from the first word: {}",
        words.join(" "),
        words[..shown].join(" ")
    );
    (text, words)
}

/// Whether `text` goes on with the next `count` words of the list after the first `shown`.
fn continues_the_list(text: &str, words: &[&str], shown: usize, count: usize) -> bool {
    let expected = words[shown..shown + count].join(" ");
    text.split_whitespace().collect::<Vec<_>>().join(" ").starts_with(&expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_passes_reuse_and_copy_prefixes_that_continue_the_context() {
    // The default (mixed) passes are not bit-identical with and without reuse, so the check is what a
    // wrong prefix would break: continuing a list that is only in the reused part of the context.
    let cached = TestWorker::start(config(2).await).await;
    let (first, words) = copying_prompt(3);
    let answer = predict(&cached, &raw(&first, 16)).await;
    assert_eq!(answer.cached_tokens, 0);
    assert!(continues_the_list(&answer.text, &words, 3, 4), "computed in full: {:?}", answer.text);
    // Longer cuts of the same list: everything before the cut is reused.
    for shown in [5, 8] {
        let (prompt, _) = copying_prompt(shown);
        let answer = predict(&cached, &raw(&prompt, 16)).await;
        assert!(answer.cached_tokens > 60, "{shown}: the list was reused: {answer:?}");
        assert!(continues_the_list(&answer.text, &words, shown, 4), "{shown} shown, after reuse: {:?}", answer.text);
    }
    // Two arriving together: one computes, the other copies or reuses it; both continue the list.
    let cold = TestWorker::start(config(2).await).await;
    let prompts: Vec<_> = [4, 6].iter().map(|&shown| (shown, raw(&copying_prompt(shown).0, 16))).collect();
    let answers = futures::future::join_all(prompts.iter().map(|(_, r)| predict(&cold, r))).await;
    assert!(answers.iter().any(|a| a.cached_tokens > 60), "one took the other's prefix: {answers:?}");
    for ((shown, _), answer) in prompts.iter().zip(&answers) {
        assert!(continues_the_list(&answer.text, &words, *shown, 4), "{shown} shown, together: {:?}", answer.text);
    }
    cached.stop().await;
    cold.stop().await;
}

/// `--kv-cache-type q8_0`: llama.cpp really caches 8-bit keys and values (a saved sequence takes about
/// 12 KiB a token instead of float16's 22.5), the store says it holds about twice the tokens, and the
/// worker still answers (greedy text then differs from float16's, so it is not compared).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_q8_0_cache_takes_half_the_bytes_per_token_and_still_serves() {
    let mut config = config(1).await;
    config.kv_cache_type = worker::engine::llama::KvCacheType::Q8_0;
    let worker = TestWorker::start(config).await;
    let info = worker.client.clone().info(proto::InfoRequest {}).await.unwrap().into_inner();
    let per_token = info.prompt_store_capacity_bytes / info.prompt_store_tokens;
    assert!((11 << 10..13 << 10).contains(&per_token), "about 12 KiB a token: {info:?}");
    // The first program is displaced by the second and saved: what it took is what llama.cpp wrote.
    let first = predict(&worker, &short_call(0, 0, 4)).await;
    assert!(first.completion_tokens > 0 && !first.text.is_empty(), "{first:?}");
    predict(&worker, &short_call(1, 0, 4)).await;
    let load = worker.load().await;
    assert_eq!(load.prompt_store_entries, 1, "{load:?}");
    let saved_tokens = u64::from(first.prompt_tokens + first.completion_tokens);
    let saved_per_token = load.prompt_store_bytes / saved_tokens;
    assert!(saved_per_token < 16 << 10, "{saved_per_token} bytes a token saved: float16 would be 23040 ({load:?})");
    worker.stop().await;
}
