//! Which tokens each sequence's KV cache holds, kept after its request ends, and where a new prompt
//! should run so that it computes as little of itself as possible. Engine-agnostic bookkeeping: the
//! engine moves the actual keys and values as a [`Placement`] says.
//!
//! A new prompt goes to the free sequence whose cached tokens share the longest prefix with it (as
//! llama-server's slots do). Beyond that: when another sequence (free or running) holds a longer prefix,
//! that prefix is copied into the chosen sequence, so a shared preamble is computed once per worker
//! rather than once per slot. A sequence whose cache helps nobody is taken least recently used first.
//! And when the longer prefix is still being computed by a running sequence (prompts that arrive
//! together), the new prompt waits for it and copies it then, instead of computing it a second time.
//!
//! What a chosen sequence held and the new prompt does not keep is handed back ([`Displaced`]) so the
//! loop can save it in the host-memory prompt store first ([`super::prompt_store`]).

/// Where a new prompt runs and what of it is already computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The sequence (slot) it runs in.
    pub seq: usize,
    /// Prompt tokens whose keys and values are reused: only the rest is computed.
    pub reuse: usize,
    /// Copy the first `reuse` tokens' keys and values from this sequence first; `None` means the chosen
    /// sequence already holds them.
    pub copy_from: Option<usize>,
    /// `copy_from` is still computing the prefix: copy it once [`PrefixCache::holds`] says it has.
    pub wait: bool,
}

/// What a placement overwrites in its sequence: tokens worth saving before the sequence takes the new
/// prompt (see [`PrefixCache::take_displaced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Displaced {
    pub seq: usize,
    pub tokens: Vec<i32>,
    /// Length of the prompt whose run filled the sequence (the rest of `tokens` were generated).
    pub prompt_len: usize,
}

/// See [`PrefixCache::wait_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Ready,
    Pending,
    GiveUp,
}

/// How much of a match an engine can reuse without changing greedy output: given the tokens matched, the
/// length of the prompt that filled the cache and the length of the new prompt, the reuse point (at most
/// the match). Engines compute a prompt in chunks whose shape can decide the floating-point rounding of
/// its keys and values; reused ones must have been computed as a run without reuse would compute them.
pub type ReusePolicy = fn(matched: usize, cached_prompt_len: usize, prompt_len: usize) -> usize;

#[derive(Debug, Clone, Default)]
struct Entry {
    /// The tokens whose keys and values this sequence's cache holds, in position order.
    tokens: Vec<i32>,
    /// The prompt whose run fills this cache (the rest of `tokens` were generated).
    prompt: Vec<i32>,
    busy: bool,
    /// Waiting to copy a prefix another sequence is computing: computing nothing itself.
    waiting: bool,
    last_used: u64,
}

#[derive(Debug, Clone)]
pub struct PrefixCache {
    entries: Vec<Entry>,
    clock: u64,
    policy: ReusePolicy,
    /// Off: every prompt is computed in full (the sequences are still handed out as above).
    enabled: bool,
    /// What the last placement overwrote, if worth keeping.
    displaced: Option<Displaced>,
}

/// Fewer shared tokens than this are not worth keeping a sequence for: the template's opening words
/// alone match that much. Below it a prompt takes the least recently used free sequence (so the caches
/// of other prefixes survive), and copying a prefix from another sequence, which costs a copy of its KV
/// buffer (tens of MB, milliseconds), is not worth it either.
pub const MIN_USEFUL_PREFIX: usize = 32;
/// Free sequences whose own matches are this close count as equally good; the lowest id then wins,
/// which keeps running sequence ids contiguous (llama.cpp batches consecutive ids together).
const TIE_TOKENS: usize = 16;

/// How many leading tokens `a` and `b` share.
pub fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// One cache per sequence (slot).
    pub fn new(sequences: usize, enabled: bool, policy: ReusePolicy) -> Self {
        Self { entries: vec![Entry::default(); sequences.max(1)], clock: 0, policy, enabled, displaced: None }
    }

    /// Whether another prompt may start now.
    pub fn has_free(&self) -> bool {
        self.entries.iter().any(|e| !e.busy)
    }

    /// Chooses a free sequence for `prompt` and marks it busy; `None` when as many run as may. At
    /// least the prompt's last token is always left to compute: its logits give the first new token.
    pub fn place(&mut self, prompt: &[i32]) -> Option<Placement> {
        if !self.has_free() {
            return None;
        }
        let limit = if self.enabled { prompt.len().saturating_sub(1) } else { 0 };
        let policy = self.policy;
        let matched = |e: &Entry| policy(common_prefix(&e.tokens, prompt).min(limit), e.prompt.len(), prompt.len());
        // What a running sequence will hold once its prompt is in, if it has not got that far yet.
        let pending = |e: &Entry| {
            let will_hold = policy(common_prefix(&e.prompt, prompt).min(limit), e.prompt.len(), prompt.len());
            if e.busy && !e.waiting && e.tokens.len() < will_hold { will_hold } else { 0 }
        };
        let free: Vec<usize> = (0..self.entries.len()).filter(|&i| !self.entries[i].busy).collect();
        let best_own = free.iter().map(|&i| matched(&self.entries[i])).max()?;
        let (source, best_any) = (0..self.entries.len())
            .map(|i| (i, matched(&self.entries[i])))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .expect("at least one sequence");
        let (computing, best_pending) = (0..self.entries.len())
            .map(|i| (i, pending(&self.entries[i])))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .expect("at least one sequence");
        let least_recently_used = || *free.iter().min_by_key(|&&i| (self.entries[i].last_used, i)).expect("a free sequence");
        let placement = if best_pending >= best_any.max(best_own) + MIN_USEFUL_PREFIX {
            let seq = least_recently_used();
            Placement { seq, reuse: best_pending, copy_from: Some(computing), wait: true }
        } else if best_any >= best_own + MIN_USEFUL_PREFIX {
            // The target's own cache is overwritten: take the one used least recently.
            let seq = least_recently_used();
            Placement { seq, reuse: best_any, copy_from: Some(source).filter(|&s| s != seq), wait: false }
        } else if !self.enabled {
            Placement { seq: free[0], reuse: 0, copy_from: None, wait: false }
        } else if best_own < MIN_USEFUL_PREFIX {
            let seq = least_recently_used();
            Placement { seq, reuse: matched(&self.entries[seq]), copy_from: None, wait: false }
        } else {
            let seq = *free.iter().find(|&&i| matched(&self.entries[i]) + TIE_TOKENS >= best_own).expect("the best is free");
            Placement { seq, reuse: matched(&self.entries[seq]), copy_from: None, wait: false }
        };
        let tokens = if placement.wait { Vec::new() } else { prompt[..placement.reuse].to_vec() };
        self.clock += 1;
        let entry = &mut self.entries[placement.seq];
        let old =
            std::mem::replace(entry, Entry { tokens, prompt: prompt.to_vec(), busy: true, waiting: placement.wait, last_used: self.clock });
        // What of the sequence's cache survives: the reused prefix when it is its own, nothing when a
        // prefix is copied in from elsewhere.
        let kept = if placement.copy_from.is_none() && !placement.wait { placement.reuse } else { 0 };
        // Worth saving when most of it is lost (llama-server saves a slot taken with low similarity): a
        // new call of the same program keeps the preamble, and what it drops (the last call's own text)
        // is not asked for again, so copying the whole sequence out would buy nothing.
        let lost = old.tokens.len().saturating_sub(kept);
        self.displaced = (self.enabled && lost >= MIN_USEFUL_PREFIX && lost * 2 > old.tokens.len()).then_some(Displaced {
            seq: placement.seq,
            tokens: old.tokens,
            prompt_len: old.prompt.len(),
        });
        Some(placement)
    }

    /// What the last [`place`](Self::place) overwrote in its sequence, when most of it (and at least
    /// [`MIN_USEFUL_PREFIX`] tokens) is not kept: the engine still holds it until the sequence is
    /// readied for the new prompt.
    pub fn take_displaced(&mut self) -> Option<Displaced> {
        self.displaced.take()
    }

    /// Whether `seq`'s cache now holds `prefix`.
    pub fn holds(&self, seq: usize, prefix: &[i32]) -> bool {
        self.entries[seq].tokens.starts_with(prefix)
    }

    /// What a sequence waiting for `source` to compute `prefix` does now: copy it once `source` holds
    /// it; keep waiting while `source` is still computing a prompt; compute everything itself when
    /// `source` stopped short of it (its request failed, was cancelled, or it moved on to another).
    pub fn wait_for(&self, source: usize, prefix: &[i32]) -> Wait {
        let entry = &self.entries[source];
        if self.holds(source, prefix) {
            Wait::Ready
        } else if entry.busy && entry.tokens.len() < entry.prompt.len() {
            Wait::Pending
        } else {
            Wait::GiveUp
        }
    }

    /// A waiting sequence got its prefix copied (or gave up waiting, with an empty `prefix`): its cache
    /// holds `prefix` and it computes the rest itself.
    pub fn stop_waiting(&mut self, seq: usize, prefix: &[i32]) {
        let entry = &mut self.entries[seq];
        entry.waiting = false;
        entry.tokens = prefix.to_vec();
    }

    /// Records tokens whose keys and values just entered `seq`'s cache.
    pub fn extend(&mut self, seq: usize, tokens: &[i32]) {
        self.entries[seq].tokens.extend_from_slice(tokens);
    }

    /// The request in `seq` ended; its cache stays for the next prompt that shares its prefix.
    pub fn release(&mut self, seq: usize) {
        self.clock += 1;
        let entry = &mut self.entries[seq];
        entry.busy = false;
        entry.waiting = false;
        entry.last_used = self.clock;
    }

    /// The cache of `seq` can no longer be trusted (a failed decode): it holds nothing.
    pub fn forget(&mut self, seq: usize) {
        self.entries[seq].tokens.clear();
    }

    /// Tokens held in every sequence's cache, running or idle.
    pub fn cached_tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }
}

/// Where the prefill chunk that starts at `prefilled` ends. A prompt's body (all but its last token) is
/// computed in chunks covering positions [k·chunk, (k+1)·chunk), and its last token alone: so a prompt
/// computed in full and the same prompt with all but its last token reused compute every position in
/// chunks of the same shape (engines' kernels can round by shape), and reusing a whole repeated prompt
/// leaves one token to compute.
pub fn chunk_end(prefilled: usize, prompt_len: usize, chunk: usize) -> usize {
    let body = prompt_len.saturating_sub(1);
    if prefilled >= body { prompt_len } else { ((prefilled / chunk + 1) * chunk).min(body) }
}

/// For engines whose computation of a token does not depend on how the prompt was chunked.
pub fn reuse_all(matched: usize, _cached_prompt_len: usize, _prompt_len: usize) -> usize {
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(prefix: i32, len: usize, tail: i32) -> Vec<i32> {
        let mut p: Vec<i32> = (0..len as i32).map(|i| prefix * 1000 + i).collect();
        p.push(tail);
        p
    }

    #[test]
    fn a_free_sequence_holding_the_prefix_is_reused() {
        let mut cache = PrefixCache::new(2, true, reuse_all);
        let first = cache.place(&prompt(1, 100, 7)).unwrap();
        assert_eq!(first, Placement { seq: 0, reuse: 0, copy_from: None, wait: false });
        cache.extend(0, &prompt(1, 100, 7));
        cache.release(0);
        let second = cache.place(&prompt(1, 100, 8)).unwrap();
        assert_eq!(second, Placement { seq: 0, reuse: 100, copy_from: None, wait: false });
    }

    #[test]
    fn a_cold_sequence_gets_the_prefix_copied_from_a_busy_one() {
        let mut cache = PrefixCache::new(2, true, reuse_all);
        cache.place(&prompt(1, 100, 7)).unwrap();
        cache.extend(0, &prompt(1, 100, 7));
        // Sequence 0 is still running; the next prompt with the same preamble copies it into 1.
        let second = cache.place(&prompt(1, 100, 8)).unwrap();
        assert_eq!(second, Placement { seq: 1, reuse: 100, copy_from: Some(0), wait: false });
        assert!(!cache.has_free());
        assert_eq!(cache.place(&prompt(1, 100, 9)), None);
    }

    #[test]
    fn a_prompt_waits_for_a_prefix_another_sequence_is_computing() {
        let mut cache = PrefixCache::new(3, true, reuse_all);
        let first = prompt(1, 100, 7);
        cache.place(&first).unwrap();
        cache.extend(0, &first[..10]);
        // Arrived together: the first has 10 of its 100 preamble tokens in; the second waits for it.
        let second = cache.place(&prompt(1, 100, 8)).unwrap();
        assert_eq!(second, Placement { seq: 1, reuse: 100, copy_from: Some(0), wait: true });
        // A third does not wait on the waiting one, but on the one computing.
        assert_eq!(cache.place(&prompt(1, 100, 9)).unwrap().copy_from, Some(0));
        assert!(!cache.holds(0, &first[..100]));
        assert_eq!(cache.wait_for(0, &first[..100]), Wait::Pending);
        cache.extend(0, &first[10..]);
        assert!(cache.holds(0, &first[..100]));
        assert_eq!(cache.wait_for(0, &first[..100]), Wait::Ready);
        // Had the first request ended short of the preamble, the waiting ones compute it themselves.
        let mut short = PrefixCache::new(2, true, reuse_all);
        short.place(&first).unwrap();
        short.extend(0, &first[..10]);
        short.place(&prompt(1, 100, 8)).unwrap();
        short.release(0);
        assert_eq!(short.wait_for(0, &first[..100]), Wait::GiveUp);
        cache.stop_waiting(1, &first[..100]);
        assert_eq!(cache.cached_tokens(), 101 + 100);
    }

    #[test]
    fn a_small_gain_is_computed_not_copied() {
        let mut cache = PrefixCache::new(2, true, reuse_all);
        cache.place(&prompt(1, MIN_USEFUL_PREFIX - 1, 7)).unwrap();
        cache.extend(0, &prompt(1, MIN_USEFUL_PREFIX - 1, 7));
        let second = cache.place(&prompt(1, MIN_USEFUL_PREFIX - 1, 8)).unwrap();
        assert_eq!(second, Placement { seq: 1, reuse: 0, copy_from: None, wait: false });
    }

    #[test]
    fn the_least_recently_used_sequence_is_evicted_when_none_matches() {
        let mut cache = PrefixCache::new(3, true, reuse_all);
        for (seq, program) in [(0, 1), (1, 2), (2, 3)] {
            let p = prompt(program, 50, 0);
            assert_eq!(cache.place(&p).unwrap().seq, seq);
            cache.extend(seq, &p);
        }
        // Released in the order 1, 0, 2: sequence 1 is the least recently used.
        for seq in [1, 0, 2] {
            cache.release(seq);
        }
        let fourth = cache.place(&prompt(4, 50, 0)).unwrap();
        assert_eq!(fourth, Placement { seq: 1, reuse: 0, copy_from: None, wait: false });
        // Programs 1 and 3 are still cached where they were.
        cache.extend(1, &prompt(4, 50, 0));
        cache.release(1);
        assert_eq!(cache.place(&prompt(3, 50, 5)).unwrap(), Placement { seq: 2, reuse: 50, copy_from: None, wait: false });
        assert_eq!(cache.place(&prompt(1, 50, 5)).unwrap(), Placement { seq: 0, reuse: 50, copy_from: None, wait: false });
    }

    #[test]
    fn what_a_placement_overwrites_is_handed_back_once() {
        let mut cache = PrefixCache::new(1, true, reuse_all);
        let first = prompt(1, 100, 7);
        cache.place(&first).unwrap();
        assert_eq!(cache.take_displaced(), None, "an empty sequence displaces nothing");
        cache.extend(0, &first);
        cache.extend(0, &[55, 56]);
        cache.release(0);
        // Another program takes the only sequence: everything it held is displaced, generated tokens too.
        cache.place(&prompt(2, 100, 7)).unwrap();
        let displaced = cache.take_displaced().expect("the first program's cache");
        assert_eq!((displaced.seq, displaced.tokens.len(), displaced.prompt_len), (0, 103, 101));
        assert_eq!(cache.take_displaced(), None);
        cache.extend(0, &prompt(2, 100, 7));
        cache.release(0);
        // The same program again keeps all but what follows the shared prefix: too little to save.
        assert_eq!(cache.place(&prompt(2, 100, 8)).unwrap().reuse, 100);
        assert_eq!(cache.take_displaced(), None);
        cache.extend(0, &(500..560).collect::<Vec<i32>>());
        cache.release(0);
        // It keeps 100 of 160: most of it survives, so nothing is saved either.
        assert_eq!(cache.place(&prompt(2, 100, 9)).unwrap().reuse, 100);
        assert_eq!(cache.take_displaced(), None, "a new call of the same program keeps the preamble");
    }

    #[test]
    fn prefixes_extensions_and_divergence() {
        let mut cache = PrefixCache::new(1, true, reuse_all);
        let held: Vec<i32> = (0..64).collect();
        cache.place(&held).unwrap();
        cache.extend(0, &held);
        cache.release(0);
        // A strict prefix of what is cached: all but its last token are reused.
        let shorter: Vec<i32> = (0..40).collect();
        assert_eq!(cache.place(&shorter).unwrap().reuse, 39);
        cache.extend(0, &shorter[39..]);
        cache.release(0);
        // The cache now holds exactly `shorter`; the same prompt again reuses all but one token.
        assert_eq!(cache.place(&shorter).unwrap().reuse, 39);
        cache.extend(0, &shorter[39..]);
        cache.release(0);
        // One that extends it: the whole cached part is reused.
        let longer: Vec<i32> = (0..80).collect();
        assert_eq!(cache.place(&longer).unwrap().reuse, 40);
        cache.extend(0, &longer[40..]);
        cache.release(0);
        // One that diverges mid-way.
        let mut diverging: Vec<i32> = (0..80).collect();
        diverging[25] = -1;
        assert_eq!(cache.place(&diverging).unwrap().reuse, 25);
    }

    #[test]
    fn equally_good_sequences_go_to_the_lowest_id() {
        let mut cache = PrefixCache::new(3, true, reuse_all);
        let shared = prompt(1, 200, 0);
        for seq in 0..3 {
            let p = [&shared[..200], &[seq as i32 + 10]].concat();
            cache.place(&p).unwrap();
            cache.extend(seq, &p);
        }
        for seq in [2, 0, 1] {
            cache.release(seq);
        }
        assert_eq!(cache.place(&prompt(1, 200, 99)).unwrap().seq, 0);
        assert_eq!(cache.place(&prompt(1, 200, 98)).unwrap().seq, 1);
    }

    #[test]
    fn a_short_shared_opening_does_not_evict_another_prefix() {
        let mut cache = PrefixCache::new(2, true, reuse_all);
        let opening: Vec<i32> = (-10..0).collect();
        let a = [&opening[..], &prompt(1, 100, 0)].concat();
        let b = [&opening[..], &prompt(2, 100, 0)].concat();
        cache.place(&a).unwrap();
        cache.extend(0, &a);
        cache.release(0);
        assert_eq!(cache.place(&b).unwrap(), Placement { seq: 1, reuse: 0, copy_from: None, wait: false });
    }

    #[test]
    fn the_engines_policy_bounds_the_reuse() {
        fn whole_tens(matched: usize, cached_prompt_len: usize, _: usize) -> usize {
            matched.min(cached_prompt_len) / 10 * 10
        }
        let mut cache = PrefixCache::new(1, true, whole_tens);
        let first = prompt(1, 55, 0);
        cache.place(&first).unwrap();
        cache.extend(0, &first);
        cache.release(0);
        assert_eq!(cache.place(&prompt(1, 55, 1)).unwrap().reuse, 50);
    }

    #[test]
    fn a_prompt_body_goes_in_aligned_chunks_and_its_last_token_alone() {
        let ends: Vec<usize> = std::iter::successors(Some(0), |&p| (p < 600).then(|| chunk_end(p, 600, 256))).skip(1).collect();
        assert_eq!(ends, vec![256, 512, 599, 600]);
        assert_eq!(chunk_end(300, 600, 256), 512, "a reused prefix ends mid-chunk: the chunk's rest");
        assert_eq!(chunk_end(0, 1, 256), 1);
    }

    #[test]
    fn a_disabled_cache_reuses_nothing() {
        let mut cache = PrefixCache::new(1, false, reuse_all);
        let p = prompt(1, 100, 0);
        cache.place(&p).unwrap();
        cache.extend(0, &p);
        cache.release(0);
        assert_eq!(cache.place(&p).unwrap(), Placement { seq: 0, reuse: 0, copy_from: None, wait: false });
    }

    #[test]
    fn a_forgotten_cache_is_not_reused() {
        let mut cache = PrefixCache::new(1, true, reuse_all);
        let p = prompt(1, 100, 0);
        cache.place(&p).unwrap();
        cache.extend(0, &p);
        cache.forget(0);
        cache.release(0);
        assert_eq!(cache.place(&p).unwrap().reuse, 0);
        assert_eq!(cache.cached_tokens(), 0);
    }
}
