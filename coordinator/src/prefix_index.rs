//! Which prompt prefixes each worker probably holds in its prefix cache, predicted from where the
//! scheduler sent prompts (no engine events needed, as NVIDIA Dynamo's router does without them). A
//! prompt is keyed on its whole conversation, every message in order with its role, not only the first
//! one, cut into blocks whose hashes chain: two prompts share their first k block hashes exactly when
//! their first k blocks of text are equal. Each worker's entries are bounded and the least recently
//! used go first; a worker that leaves takes its entries with it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use modelpool::{PredictRequest, Prompt};

/// Bytes of conversation per block: a DSPy preamble of 5 KB is about 20 blocks; the chat template's
/// opening words fit well inside one, so sharing one block is already a real shared prefix.
pub const BLOCK_BYTES: usize = 128;

/// The chained block hashes of a request's conversation (only whole blocks).
pub fn prefix_key(request: &PredictRequest) -> Vec<u64> {
    let mut text = Vec::new();
    match &request.prompt {
        Prompt::Chat(messages) => {
            for message in messages {
                text.extend_from_slice(message.role.as_str().as_bytes());
                // Separators no UTF-8 text contains, so that role and content boundaries count.
                text.push(0xff);
                text.extend_from_slice(message.content.as_bytes());
                text.push(0xfe);
            }
        }
        Prompt::Raw(prompt) => text.extend_from_slice(prompt.as_bytes()),
    }
    let mut previous = 0u64;
    text.chunks_exact(BLOCK_BYTES)
        .map(|block| {
            let mut hasher = DefaultHasher::new();
            previous.hash(&mut hasher);
            block.hash(&mut hasher);
            previous = hasher.finish();
            previous
        })
        .collect()
}

#[derive(Debug, Default)]
struct WorkerBlocks {
    /// Block hash -> when it was last sent there.
    last_sent: HashMap<u64, u64>,
    /// The same, ordered by time, for evicting the oldest.
    by_age: BTreeMap<u64, u64>,
}

#[derive(Debug, Default)]
pub struct PrefixIndex {
    workers: HashMap<String, WorkerBlocks>,
    clock: u64,
}

impl PrefixIndex {
    /// How many leading blocks of `key` were sent to `worker_id` (and not since evicted).
    pub fn matched(&self, worker_id: &str, key: &[u64]) -> usize {
        let Some(blocks) = self.workers.get(worker_id) else { return 0 };
        key.iter().take_while(|hash| blocks.last_sent.contains_key(hash)).count()
    }

    /// Notes that a prompt with `key` was sent to `worker_id`, which keeps at most `capacity` blocks.
    pub fn record(&mut self, worker_id: &str, key: &[u64], capacity: usize) {
        let blocks = self.workers.entry(worker_id.to_string()).or_default();
        for &hash in key {
            self.clock += 1;
            if let Some(old) = blocks.last_sent.insert(hash, self.clock) {
                blocks.by_age.remove(&old);
            }
            blocks.by_age.insert(self.clock, hash);
        }
        while blocks.last_sent.len() > capacity.max(1) {
            let (_, hash) = blocks.by_age.pop_first().expect("as many ages as blocks");
            blocks.last_sent.remove(&hash);
        }
    }

    /// Blocks noted for one worker.
    pub fn blocks_of(&self, worker_id: &str) -> usize {
        self.workers.get(worker_id).map_or(0, |w| w.last_sent.len())
    }

    pub fn remove_worker(&mut self, worker_id: &str) {
        self.workers.remove(worker_id);
    }

    /// Blocks held for all workers: what bounds the index's memory.
    pub fn len(&self) -> usize {
        self.workers.values().map(|w| w.last_sent.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Blocks a worker's entry keeps: about what its caches can hold (4 bytes of text per token), twice
/// over, since the index cannot see what the worker evicted. `cached_tokens` counts its slots' contexts
/// and what its prompt store holds ([`modelpool::membership::WorkerDescription::cached_tokens_capacity`]).
pub fn capacity_for(cached_tokens: u64) -> usize {
    (cached_tokens.max(256) * 4 * 2 / BLOCK_BYTES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelpool::{ChatMessage, Role};

    fn chat(messages: &[(Role, &str)]) -> PredictRequest {
        let messages = messages.iter().map(|(role, text)| ChatMessage::new(*role, *text)).collect();
        let mut request = PredictRequest::user("x", 8);
        request.prompt = Prompt::Chat(messages);
        request
    }

    #[test]
    fn the_key_covers_the_whole_conversation() {
        let preamble = "Extract the entities. ".repeat(30);
        let a = prefix_key(&chat(&[(Role::System, &preamble), (Role::User, &"Ada Lovelace worked in London with Babbage. ".repeat(8))]));
        let b = prefix_key(&chat(&[(Role::System, &preamble), (Role::User, &"Alan Turing studied at King's College. ".repeat(8))]));
        let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert!(shared >= preamble.len() / BLOCK_BYTES - 1 && shared < a.len().max(b.len()), "{shared}");
        // The same text as a user message instead of a system one is another prefix.
        let c = prefix_key(&chat(&[(Role::User, &preamble)]));
        assert_ne!(a[0], c[0]);
        // Same first message, different second turn: they part where the turns differ, not before.
        let d = prefix_key(&chat(&[(Role::System, &preamble), (Role::User, &"z".repeat(400))]));
        assert_eq!(a[..shared], d[..shared]);
    }

    #[test]
    fn matches_follow_what_was_sent_where() {
        let mut index = PrefixIndex::default();
        let key: Vec<u64> = (1..=10).collect();
        index.record("w1", &key, 100);
        assert_eq!(index.matched("w1", &key), 10);
        assert_eq!(index.matched("w1", &[1, 2, 99, 4]), 2);
        assert_eq!(index.matched("w2", &key), 0);
    }

    #[test]
    fn each_worker_keeps_a_bounded_number_of_blocks_oldest_out_first() {
        let mut index = PrefixIndex::default();
        index.record("w1", &(0..50).collect::<Vec<_>>(), 60);
        index.record("w1", &(100..130).collect::<Vec<_>>(), 60);
        assert_eq!(index.len(), 60);
        assert_eq!(index.matched("w1", &[100, 101]), 2, "the newest blocks stay");
        assert_eq!(index.matched("w1", &[0, 1]), 0, "the oldest went");
        // Sending a prefix again makes it recent.
        index.record("w1", &(20..50).collect::<Vec<_>>(), 60);
        index.record("w1", &(200..230).collect::<Vec<_>>(), 60);
        assert_eq!(index.matched("w1", &(20..50).collect::<Vec<_>>()), 30);
    }

    #[test]
    fn a_worker_that_leaves_takes_its_entries() {
        let mut index = PrefixIndex::default();
        index.record("w1", &[1, 2, 3], 10);
        index.record("w2", &[1, 2], 10);
        index.remove_worker("w1");
        assert_eq!(index.matched("w1", &[1, 2, 3]), 0);
        assert_eq!(index.len(), 2);
    }
}
