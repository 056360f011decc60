//! Conversations that grow turn by turn, as chat applications send them and as vLLM's and SGLang's
//! multi-turn benchmarks shape them (scaled to a small model's context): a system prompt every
//! conversation shares, a context of its own in the first user turn, then user turns of some 100–150
//! tokens, each request carrying the whole conversation so far with the model's own earlier answers.
//! Several conversations run interleaved; within one, a turn is sent when the last one's answer is in.
//! What a server gains here is reusing the conversation it computed one turn ago.

use std::sync::Arc;
use std::time::Instant;

use modelpool::{ChatMessage, PredictRequest, Prompt, Role, SamplingParams};
use tokio::sync::Semaphore;

use crate::fresh::passage;
use crate::record::RequestRecord;
use crate::runner::Target;

const SYSTEM: &str = "You are a careful research assistant. The user shares notes about people, places and the work \
they did, and asks questions about them. Answer from the notes, in plain sentences, and say when the notes do not \
tell. Keep each answer short: two or three sentences unless the user asks for more.";

/// Passages in the first turn's context (about 40 tokens each) and in every later user turn.
const CONTEXT_PASSAGES: u64 = 6;
const TURN_PASSAGES: u64 = 3;

/// One conversation: its turns' user messages, and what it has said so far.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: usize,
    users: Vec<String>,
    messages: Vec<ChatMessage>,
}

impl Conversation {
    /// Conversation `id` of the run with `seed`, `turns` user turns long; its passages are its own.
    pub fn new(seed: u64, id: usize, turns: usize) -> Self {
        let per_conversation = CONTEXT_PASSAGES + TURN_PASSAGES * turns as u64;
        let mut next = (0..per_conversation).map(|i| passage(seed, id as u64 * per_conversation + i));
        let mut take = |n: u64| (0..n).filter_map(|_| next.next()).collect::<Vec<_>>().join(" ");
        let context = take(CONTEXT_PASSAGES);
        let users = (0..turns)
            .map(|turn| {
                let notes = take(TURN_PASSAGES);
                if turn == 0 {
                    format!(
                        "Here are my notes so far:\n{context}\n\nMore notes:\n{notes}\n\nWho in these notes studied the oldest subject?"
                    )
                } else {
                    format!("More notes:\n{notes}\n\nHow do these people relate to the ones before? Name one link.")
                }
            })
            .collect();
        Self { id, users, messages: vec![ChatMessage::new(Role::System, SYSTEM)] }
    }

    /// Turns answered so far.
    pub fn turns_done(&self) -> usize {
        (self.messages.len() - 1) / 2
    }

    /// The request of the next turn: the whole conversation so far and the next user message; `None`
    /// when every turn is done.
    pub fn next_request(&self, max_tokens: u32) -> Option<PredictRequest> {
        let user = self.users.get(self.turns_done())?;
        let mut messages = self.messages.clone();
        messages.push(ChatMessage::new(Role::User, user.clone()));
        Some(PredictRequest {
            request_id: format!("conv{}-turn{}", self.id, self.turns_done() + 1),
            prompt: Prompt::Chat(messages),
            sampling: SamplingParams { max_tokens, ..SamplingParams::default() },
        })
    }

    /// The model answered the last request with `answer`: both join the conversation.
    pub fn record_answer(&mut self, answer: &str) {
        let user = self.users[self.turns_done()].clone();
        self.messages.push(ChatMessage::new(Role::User, user));
        self.messages.push(ChatMessage::new(Role::Assistant, answer.trim()));
    }
}

/// `count` conversations of `turns` turns, numbers `offset..offset + count` of the run with `seed`.
pub fn conversations(seed: u64, offset: usize, count: usize, turns: usize) -> Vec<Conversation> {
    (offset..offset + count).map(|id| Conversation::new(seed, id, turns)).collect()
}

/// Runs every conversation to its end, at most `concurrency` at once (each one a client sending its
/// turns one after another). Returns a record per request, conversation by conversation, and the wall
/// time. A failed turn ends its conversation: the turns after it are not sent.
pub async fn run_conversations(
    target: Target,
    conversations: Vec<Conversation>,
    concurrency: usize,
    max_tokens: u32,
) -> (Vec<RequestRecord>, f64) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conversations.len());
    for mut conversation in conversations {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("semaphore never closed");
        let target = target.clone();
        let client_wait_ms = start.elapsed().as_secs_f64() * 1000.0;
        tasks.push(tokio::spawn(async move {
            let mut records = Vec::new();
            while let Some(request) = conversation.next_request(max_tokens) {
                let index = conversation.id * 1000 + conversation.turns_done();
                let record = target.send(&request, index, client_wait_ms, None).await;
                let ok = record.ok;
                if ok {
                    conversation.record_answer(&record.text);
                }
                records.push(record);
                if !ok {
                    break;
                }
            }
            drop(permit);
            records
        }));
    }
    let mut records = Vec::new();
    for task in tasks {
        match task.await {
            Ok(done) => records.extend(done),
            Err(e) => records.push(RequestRecord { error: Some(format!("conversation task failed: {e}")), ..Default::default() }),
        }
    }
    (records, start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(request: &PredictRequest) -> Vec<ChatMessage> {
        match &request.prompt {
            Prompt::Chat(messages) => messages.clone(),
            Prompt::Raw(_) => unreachable!("conversations are chats"),
        }
    }

    #[test]
    fn each_turn_carries_the_whole_conversation_before_it_with_the_answers() {
        let mut conversation = Conversation::new(5, 2, 3);
        let first = messages(&conversation.next_request(32).unwrap());
        assert_eq!(first.len(), 2);
        assert_eq!((first[0].role, first[1].role), (Role::System, Role::User));
        conversation.record_answer(" Amara studied botany. ");
        let second = messages(&conversation.next_request(32).unwrap());
        assert_eq!(second[..first.len()], first[..], "turn 2 starts with turn 1's request");
        assert_eq!(second[first.len()], ChatMessage::new(Role::Assistant, "Amara studied botany."));
        assert_eq!(second.len(), 4);
        conversation.record_answer("A link.");
        let third = messages(&conversation.next_request(32).unwrap());
        assert_eq!(third[..second.len()], second[..]);
        conversation.record_answer("Another.");
        assert!(conversation.next_request(32).is_none(), "three turns");
    }

    #[test]
    fn conversations_share_the_system_prompt_and_nothing_else() {
        let all = conversations(1, 0, 3, 2);
        let firsts: Vec<Vec<ChatMessage>> = all.iter().map(|c| messages(&c.next_request(8).unwrap())).collect();
        assert!(firsts.iter().all(|m| m[0].content == SYSTEM));
        assert_ne!(firsts[0][1].content, firsts[1][1].content);
        assert_ne!(firsts[1][1].content, firsts[2][1].content);
        // Another offset: other conversations.
        let later = messages(&conversations(1, 3, 1, 2)[0].next_request(8).unwrap());
        assert!(firsts.iter().all(|m| m[1].content != later[1].content));
    }

    #[test]
    fn user_turns_are_about_a_hundred_to_a_hundred_and_fifty_words_of_notes() {
        let conversation = Conversation::new(1, 0, 4);
        for turn in &conversation.users[1..] {
            let words = turn.split_whitespace().count();
            // About 1.3 tokens a word for this kind of text.
            assert!((70..=120).contains(&words), "{words} words: {turn}");
        }
    }
}
