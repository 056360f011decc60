//! The host-memory prompt store (`worker --prompt-cache-mib`): states of finished sequences saved before
//! their sequence is taken by another prompt, so that a worker remembers far more prompts than it has
//! slots (llama-server's `--cache-ram`). A new prompt whose longest cached prefix is here is restored
//! into its sequence instead of computed. Bounded in bytes; the least recently used entry leaves first.
//!
//! Engine-agnostic: `S` is the engine's saved state (llama.cpp's serialized sequence, MLX's shared
//! cache arrays), its size in bytes given by the engine.

use super::prefix_cache::{ReusePolicy, common_prefix};

struct Entry<S> {
    /// The tokens whose keys and values `state` holds, in position order.
    tokens: Vec<i32>,
    /// Length of the prompt whose run filled it (the rest of `tokens` were generated).
    prompt_len: usize,
    state: S,
    bytes: usize,
    last_used: u64,
}

/// What the store has done since the worker started (reported in the worker's load and /metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub entries: u32,
    pub bytes: u64,
    /// Prompts restored from the store.
    pub hits: u64,
    /// Sequence states saved into it.
    pub saved: u64,
    /// Entries dropped to make room (or because a newer entry holds all they held).
    pub evicted: u64,
}

pub struct PromptStore<S> {
    entries: Vec<Entry<S>>,
    capacity_bytes: usize,
    clock: u64,
    stats: StoreStats,
}

/// A stored prefix that a prompt can start from: the entry and how many of its tokens to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreMatch {
    entry: usize,
    pub reuse: usize,
}

impl<S> PromptStore<S> {
    /// A store of at most `capacity_bytes` (0: the store is off).
    pub fn new(capacity_bytes: usize) -> Self {
        Self { entries: Vec::new(), capacity_bytes, clock: 0, stats: StoreStats::default() }
    }

    pub fn is_enabled(&self) -> bool {
        self.capacity_bytes > 0
    }

    /// The entry sharing the longest reusable prefix with `prompt`, reusing at most `limit` tokens.
    pub fn best_match(&self, prompt: &[i32], limit: usize, policy: ReusePolicy) -> Option<StoreMatch> {
        self.entries
            .iter()
            .enumerate()
            .map(|(entry, e)| StoreMatch { entry, reuse: policy(common_prefix(&e.tokens, prompt).min(limit), e.prompt_len, prompt.len()) })
            .max_by_key(|m| m.reuse)
            .filter(|m| m.reuse > 0)
    }

    /// The state of a match, made the most recently used.
    pub fn state(&mut self, found: StoreMatch) -> &S {
        self.clock += 1;
        let entry = &mut self.entries[found.entry];
        entry.last_used = self.clock;
        &entry.state
    }

    /// A prompt was restored from the store.
    pub fn record_hit(&mut self) {
        self.stats.hits += 1;
    }

    /// Whether saving a sequence holding `tokens` would add nothing: an entry already holds them all.
    pub fn holds(&self, tokens: &[i32]) -> bool {
        self.entries.iter().any(|e| e.tokens.starts_with(tokens))
    }

    /// Keeps `state` (of `bytes` bytes, holding `tokens`), dropping the entries it makes redundant and
    /// then the least recently used until it fits. A state larger than the whole store is not kept.
    pub fn insert(&mut self, tokens: Vec<i32>, prompt_len: usize, state: S, bytes: usize) {
        if bytes > self.capacity_bytes {
            return;
        }
        let before = self.entries.len();
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        while self.bytes_of_entries() + bytes > self.capacity_bytes {
            let oldest = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used).expect("bytes held means an entry");
            self.entries.swap_remove(oldest);
        }
        // Entries only leave through the two steps above.
        self.stats.evicted += (before - self.entries.len()) as u64;
        self.clock += 1;
        self.entries.push(Entry { tokens, prompt_len, state, bytes, last_used: self.clock });
        self.stats.saved += 1;
    }

    fn bytes_of_entries(&self) -> usize {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats { entries: self.entries.len() as u32, bytes: self.bytes_of_entries() as u64, ..self.stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::prefix_cache::reuse_all;

    fn tokens(program: i32, len: usize) -> Vec<i32> {
        (0..len as i32).map(|i| program * 1000 + i).collect()
    }

    #[test]
    fn the_longest_stored_prefix_is_found() {
        let mut store = PromptStore::new(1000);
        store.insert(tokens(1, 50), 50, "one", 100);
        store.insert(tokens(2, 80), 80, "two", 100);
        let mut prompt = tokens(2, 60);
        prompt.push(7);
        let found = store.best_match(&prompt, prompt.len() - 1, reuse_all).unwrap();
        assert_eq!(found.reuse, 60);
        assert_eq!(*store.state(found), "two");
        store.record_hit();
        assert_eq!(store.best_match(&tokens(3, 10), 9, reuse_all), None);
        assert_eq!(store.stats().hits, 1);
    }

    #[test]
    fn it_is_bounded_in_bytes_least_recently_used_out_first() {
        let mut store = PromptStore::new(300);
        for program in 1..=3 {
            store.insert(tokens(program, 40), 40, program, 100);
        }
        // Program 1 is used, so program 2 is now the least recently used.
        let hit = store.best_match(&tokens(1, 41), 40, reuse_all).unwrap();
        store.state(hit);
        store.insert(tokens(4, 40), 40, 4, 100);
        let stats = store.stats();
        assert_eq!((stats.entries, stats.bytes, stats.evicted, stats.saved), (3, 300, 1, 4));
        assert!(store.best_match(&tokens(2, 41), 40, reuse_all).is_none(), "program 2 left first");
        assert!(store.best_match(&tokens(1, 41), 40, reuse_all).is_some());
        // Larger than the whole store: not kept, nothing evicted for it.
        store.insert(tokens(5, 40), 40, 5, 301);
        assert_eq!(store.stats().entries, 3);
    }

    #[test]
    fn a_longer_state_replaces_the_entries_it_contains() {
        let mut store = PromptStore::new(1000);
        store.insert(tokens(1, 40), 40, "short", 100);
        assert!(store.holds(&tokens(1, 30)));
        assert!(!store.holds(&tokens(1, 50)));
        store.insert(tokens(1, 50), 40, "long", 120);
        let stats = store.stats();
        assert_eq!((stats.entries, stats.bytes, stats.evicted), (1, 120, 1));
    }
}
