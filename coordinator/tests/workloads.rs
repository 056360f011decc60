//! The yardstick's workloads against a real pool (an in-process coordinator, a worker process, the
//! default model): DSPy-shaped calls never send one prompt twice, in a round or across rounds, yet the
//! pool reuses their shared preamble; a conversation's next turn carries the whole conversation before
//! it, the model's own answer included, and the pool reuses it.

mod common;

use std::collections::HashSet;

use bench_client::{fresh, multi_turn};
use common::{TestPool, fast_scheduler};
use modelpool::{ChatMessage, Prompt, Role, proto};

fn prompt_text(prompt: &Prompt) -> String {
    format!("{prompt:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dspy_calls_never_repeat_yet_the_pool_reuses_their_preamble() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    let round = fresh::dspy(7, 0, 4, 1, 4);
    let seen: HashSet<String> = round.iter().map(|call| prompt_text(&call.prompt)).collect();
    assert_eq!(seen.len(), round.len(), "no call repeats within the round");
    let next_round = fresh::dspy(7, 4, 4, 1, 4);
    assert!(next_round.iter().all(|call| !seen.contains(&prompt_text(&call.prompt))), "the next offset gives other calls");

    let mut served = Vec::new();
    for call in &round {
        let reply = pool.client.clone().predict(proto::PredictRequest::from(call)).await.unwrap().into_inner();
        assert!(reply.completion_tokens > 0, "{reply:?}");
        served.push((reply.cached_tokens, reply.prompt_tokens));
    }
    // (At most the chat template's opening, which the worker's warm-up prompt began with.)
    assert!(served[0].0 < 50, "the first call computes its preamble: {served:?}");
    for &(cached, prompt) in &served[1..] {
        // The preamble (1,000+ tokens) is reused; the call's own passage never is, since no call repeats.
        assert!(cached >= 500 && cached + 20 < prompt, "cached {cached} of {prompt}: {served:?}");
    }
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_turn_carries_the_last_turn_and_the_models_own_answer() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    let mut conversation = multi_turn::conversations(3, 0, 1, 3).remove(0);
    let mut previous: Option<(Vec<ChatMessage>, String)> = None;
    while let Some(request) = conversation.next_request(12) {
        let Prompt::Chat(messages) = &request.prompt else { panic!("a conversation is chat messages") };
        if let Some((before, answer)) = &previous {
            assert_eq!(messages.len(), before.len() + 2, "the answer and one new user turn");
            assert_eq!(&messages[..before.len()], &before[..], "the whole conversation before it");
            assert_eq!(messages[before.len()], ChatMessage::new(Role::Assistant, answer.trim()), "the model's own answer");
            assert_eq!(messages.last().unwrap().role, Role::User);
        }
        let reply = pool.client.clone().predict(proto::PredictRequest::from(&request)).await.unwrap().into_inner();
        assert!(!reply.text.trim().is_empty(), "{reply:?}");
        if previous.is_some() {
            assert!(reply.cached_tokens * 2 > reply.prompt_tokens, "the conversation so far is reused: {reply:?}");
        }
        previous = Some((messages.clone(), reply.text.clone()));
        conversation.record_answer(&reply.text);
    }
    assert_eq!(conversation.turns_done(), 3);
    pool.shutdown().await;
}
