//! Which waiting prompt goes to which worker. Plain data in, assignments out: the scheduler applies
//! them. A worker is only ever given as many prompts as it has slots (waiting happens here, where any
//! worker that frees up can take the next prompt), which is also the load guard of prefix routing: a
//! worker that holds a prompt's prefix gets it only while it has a free slot, never a queue in front of
//! it (SGLang's router fell into a "death spiral" sending cache misses to an overloaded worker).

use crate::prefix_index::PrefixIndex;

/// How prompts are matched with workers (`--routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Routing {
    /// To the worker most likely to hold the prompt's longest prefix in its cache, while it has a free
    /// slot; prompts whose workers are busy wait while later prompts that fit a free worker go, and no
    /// worker idles while prompts wait.
    #[default]
    Prefix,
    /// In queue order, each to the least-loaded worker with a free slot.
    LeastLoaded,
}

/// A worker as routing sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub in_flight: u32,
    pub capacity: u32,
    /// Prefix keys of the prompts that finished on it since it was last given one: its free slots hold
    /// those prefixes.
    pub freed: Vec<Vec<u64>>,
}

impl Candidate {
    pub fn has_room(&self) -> bool {
        self.in_flight < self.capacity
    }

    fn load(&self) -> f64 {
        f64::from(self.in_flight) / f64::from(self.capacity.max(1))
    }
}

/// A waiting prompt as routing sees it: its prefix key, the workers it already failed on, and whether
/// it may still wait for the worker holding its prefix (see [`assign`]).
#[derive(Debug, Clone, Copy)]
pub struct Waiting<'a> {
    pub key: &'a [u64],
    pub tried: &'a [String],
    pub may_wait: bool,
}

/// Prompts further down the queue than this are not looked at for affinity in one round.
const LOOKAHEAD: usize = 256;
/// Blocks a waiting prompt must share with a freed slot's prefix to be given that slot first.
const SAME_PROGRAM_BLOCKS: usize = 4;
/// Blocks (1 KiB of conversation, a few hundred tokens) a prompt must share with a busy worker's
/// prefixes to wait for it: a shorter prefix is cheaper to compute than to wait for.
const WORTH_WAITING_BLOCKS: usize = 8;

/// Assigns waiting prompts (in queue order) to the live workers in `candidates` for one round; returns
/// (index in `waiting`, worker id) pairs, each prompt at most once, each worker at most its free slots.
pub fn assign(routing: Routing, candidates: &mut [Candidate], index: &PrefixIndex, waiting: &[Waiting]) -> Vec<(usize, String)> {
    let mut round = Round { assigned: Vec::new(), taken: vec![false; waiting.len()] };
    // Deferred prompts, with how many blocks their holder matched when pass one looked (None: not looked).
    let mut deferred: Vec<(usize, Option<usize>)> = Vec::new();
    if routing == Routing::Prefix {
        refill_freed_slots(candidates, waiting, &mut round);
    }
    for (position, prompt) in waiting.iter().enumerate() {
        if round.taken[position] {
            continue;
        }
        if !candidates.iter().any(Candidate::has_room) {
            break;
        }
        if routing == Routing::Prefix && position < LOOKAHEAD {
            match holder(candidates, index, prompt) {
                Some((worker, _)) if candidates[worker].has_room() => round.take(candidates, worker, position),
                // Its prefix is on a busy worker: later prompts may fit the free ones better.
                Some((_, matched)) => deferred.push((position, Some(matched))),
                // A prefix no worker holds goes where the fewest prefixes are, load being equal, so that
                // distinct programs spread over the workers' caches instead of piling on the first.
                None => match least_loaded_by(candidates, prompt, |c| index.blocks_of(&c.id)) {
                    Some(worker) => round.take(candidates, worker, position),
                    None => deferred.push((position, Some(0))),
                },
            }
        } else {
            deferred.push((position, None));
        }
    }
    // Whatever is still waiting goes to whichever worker has room, except a prompt whose prefix is on a
    // busy worker and which may still wait for it: a miss costs its whole prefix's prefill (seconds for a
    // DSPy preamble on a CPU), more than waiting a little for the holder's next free slot. Once its wait
    // is over (`--affinity-wait-ms`), no worker idles while it waits.
    for (position, held) in deferred {
        if !candidates.iter().any(Candidate::has_room) {
            break;
        }
        let prompt = &waiting[position];
        if routing == Routing::Prefix && prompt.may_wait {
            let held = held.unwrap_or_else(|| holder(candidates, index, prompt).map_or(0, |(_, matched)| matched));
            if held >= WORTH_WAITING_BLOCKS {
                continue;
            }
        }
        if let Some(worker) = least_loaded(candidates, prompt) {
            round.take(candidates, worker, position);
        }
    }
    round.assigned.sort_by_key(|(position, _)| *position);
    round.assigned
}

/// A slot that just freed holds the prefix of the prompt that finished in it: the first waiting prompt
/// of that prefix goes there. Otherwise, on a worker with as many hot prefixes as slots, a prompt of
/// another prefix would take the freed slot (copying its prefix from the slot running it) and evict the
/// freed one's, and the prompts of that prefix would find it gone.
fn refill_freed_slots(candidates: &mut [Candidate], waiting: &[Waiting], round: &mut Round) {
    for worker in 0..candidates.len() {
        for freed in std::mem::take(&mut candidates[worker].freed) {
            if !candidates[worker].has_room() {
                break;
            }
            let same = waiting.iter().enumerate().take(LOOKAHEAD).find(|(position, prompt)| {
                let shared = prompt.key.iter().zip(&freed).take_while(|(a, b)| a == b).count();
                shared >= SAME_PROGRAM_BLOCKS && !prompt.tried.contains(&candidates[worker].id) && !round.taken[*position]
            });
            if let Some((position, _)) = same {
                round.take(candidates, worker, position);
            }
        }
    }
}

/// The assignments of one round so far.
struct Round {
    assigned: Vec<(usize, String)>,
    /// By position in the waiting list: whether that prompt has a worker already.
    taken: Vec<bool>,
}

impl Round {
    fn take(&mut self, candidates: &mut [Candidate], worker: usize, position: usize) {
        candidates[worker].in_flight += 1;
        self.taken[position] = true;
        self.assigned.push((position, candidates[worker].id.clone()));
    }
}

/// The workers a prompt may go to: those it has not failed on, or any once it has failed on all.
fn eligible<'c>(candidates: &'c [Candidate], prompt: &Waiting<'c>) -> impl Iterator<Item = usize> + 'c {
    let tried = prompt.tried;
    let untried_left = candidates.iter().any(|c| !tried.contains(&c.id));
    (0..candidates.len()).filter(move |&i| !untried_left || !tried.contains(&candidates[i].id))
}

/// The eligible worker with the longest match for the prompt's prefix (the less loaded on a tie) and
/// the blocks it matched, if any worker matches at all.
fn holder(candidates: &[Candidate], index: &PrefixIndex, prompt: &Waiting) -> Option<(usize, usize)> {
    eligible(candidates, prompt)
        .map(|i| (i, index.matched(&candidates[i].id, prompt.key)))
        .filter(|&(_, matched)| matched > 0)
        .max_by(|a, b| a.1.cmp(&b.1).then(candidates[b.0].load().total_cmp(&candidates[a.0].load())))
}

/// The least-loaded eligible worker with a free slot. A prompt that failed somewhere waits for an
/// untried worker rather than going back to one it failed on, while an untried one is alive.
fn least_loaded(candidates: &[Candidate], prompt: &Waiting) -> Option<usize> {
    least_loaded_by(candidates, prompt, |_| 0)
}

/// [`least_loaded`], with `tie` deciding between equally loaded workers before their ids do.
fn least_loaded_by(candidates: &[Candidate], prompt: &Waiting, tie: impl Fn(&Candidate) -> usize) -> Option<usize> {
    eligible(candidates, prompt).filter(|&i| candidates[i].has_room()).min_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        ca.load().total_cmp(&cb.load()).then(ca.in_flight.cmp(&cb.in_flight)).then(tie(ca).cmp(&tie(cb))).then(ca.id.cmp(&cb.id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(slots: &[u32]) -> Vec<Candidate> {
        slots
            .iter()
            .enumerate()
            .map(|(i, &capacity)| Candidate { id: format!("w{i}"), in_flight: 0, capacity, freed: Vec::new() })
            .collect()
    }

    fn waiting<'a>(keys: &'a [Vec<u64>], tried: &'a [String]) -> Vec<Waiting<'a>> {
        keys.iter().map(|key| Waiting { key, tried, may_wait: false }).collect()
    }

    /// Keys of `count` prompts of program `p`: a shared preamble of 20 blocks, then their own block.
    fn program(p: u64, count: u64) -> Vec<Vec<u64>> {
        (0..count).map(|i| (0..20).map(|b| p * 1000 + b).chain([p * 1000 + 500 + i]).collect()).collect()
    }

    #[test]
    fn a_prompt_goes_where_its_prefix_was_sent() {
        let mut index = PrefixIndex::default();
        index.record("w1", &program(7, 1)[0], 1000);
        let mut candidates = workers(&[4, 4]);
        let keys = program(7, 1);
        assert_eq!(assign(Routing::Prefix, &mut candidates, &index, &waiting(&keys, &[])), vec![(0, "w1".to_string())]);
        // Least-loaded routing ignores the index.
        let mut candidates = workers(&[4, 4]);
        assert_eq!(assign(Routing::LeastLoaded, &mut candidates, &index, &waiting(&keys, &[])), vec![(0, "w0".to_string())]);
    }

    #[test]
    fn interleaved_programs_stay_with_their_workers_and_no_worker_idles() {
        let mut index = PrefixIndex::default();
        index.record("w0", &program(1, 1)[0], 1000);
        index.record("w1", &program(2, 1)[0], 1000);
        let (one, two) = (program(1, 4), program(2, 4));
        let keys: Vec<Vec<u64>> = one.iter().zip(&two).flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
        let mut candidates = workers(&[2, 2]);
        let assigned = assign(Routing::Prefix, &mut candidates, &index, &waiting(&keys, &[]));
        // Two slots each: the first two of each program go to their holder.
        assert_eq!(assigned, vec![(0, "w0".into()), (1, "w1".into()), (2, "w0".into()), (3, "w1".into())]);

        // A worker with room takes a prompt of another program rather than idle.
        let keys = program(1, 3);
        let mut candidates = workers(&[2, 2]);
        let assigned = assign(Routing::Prefix, &mut candidates, &index, &waiting(&keys, &[]));
        assert_eq!(assigned, vec![(0, "w0".into()), (1, "w0".into()), (2, "w1".into())]);
    }

    #[test]
    fn a_prompt_may_wait_a_while_for_its_busy_holder() {
        let mut index = PrefixIndex::default();
        index.record("w0", &program(1, 1)[0], 1000);
        let keys = program(1, 1);
        let mut candidates = workers(&[1, 1]);
        candidates[0].in_flight = 1;
        let waits = [Waiting { key: &keys[0], tried: &[], may_wait: true }];
        assert!(assign(Routing::Prefix, &mut candidates, &index, &waits).is_empty(), "waits for w0");
        let done_waiting = [Waiting { may_wait: false, ..waits[0] }];
        assert_eq!(assign(Routing::Prefix, &mut candidates, &index, &done_waiting), vec![(0, "w1".to_string())]);
    }

    #[test]
    fn a_prefix_nobody_holds_goes_to_the_emptiest_cache() {
        let mut index = PrefixIndex::default();
        index.record("w0", &program(1, 1)[0], 1000);
        let keys = program(2, 1);
        let mut candidates = workers(&[1, 1]);
        assert_eq!(assign(Routing::Prefix, &mut candidates, &index, &waiting(&keys, &[])), vec![(0, "w1".to_string())]);
    }

    #[test]
    fn a_freed_slot_gets_a_prompt_of_the_prefix_it_holds() {
        // w0 runs programs 1 and 2 in its two slots; program 1's call finished, freeing its slot.
        let mut index = PrefixIndex::default();
        index.record("w0", &program(1, 1)[0], 1000);
        index.record("w0", &program(2, 1)[0], 1000);
        let mut candidates = workers(&[2]);
        candidates[0].in_flight = 1;
        candidates[0].freed = vec![program(1, 1)[0].clone()];
        // Program 2's call waits first in the queue, but the freed slot holds program 1.
        let keys = vec![program(2, 2)[1].clone(), program(1, 2)[1].clone()];
        assert_eq!(assign(Routing::Prefix, &mut candidates, &index, &waiting(&keys, &[])), vec![(1, "w0".to_string())]);
    }

    #[test]
    fn the_load_guard_never_gives_a_busy_holder_more_than_its_slots() {
        let mut index = PrefixIndex::default();
        index.record("w0", &program(1, 1)[0], 1000);
        let mut candidates = workers(&[1, 1]);
        candidates[0].in_flight = 1;
        let keys = program(1, 1);
        assert_eq!(assign(Routing::Prefix, &mut candidates, &index, &waiting(&keys, &[])), vec![(0, "w1".to_string())]);
        // Every worker full: nothing is assigned, the prompt waits.
        candidates[1].in_flight = 1;
        assert!(assign(Routing::Prefix, &mut candidates, &index, &waiting(&keys, &[])).is_empty());
    }

    #[test]
    fn a_prompt_avoids_a_worker_it_failed_on_and_a_worker_that_left() {
        let mut index = PrefixIndex::default();
        index.record("w0", &program(1, 1)[0], 1000);
        let keys = program(1, 1);
        let tried = ["w0".to_string()];
        let mut candidates = workers(&[1, 1]);
        assert_eq!(assign(Routing::Prefix, &mut candidates, &index, &waiting(&keys, &tried)), vec![(0, "w1".to_string())]);
        // The holder left: its entries went with it, and the prompt goes to the one that is there.
        index.remove_worker("w0");
        let mut candidates = vec![Candidate { id: "w2".into(), in_flight: 0, capacity: 1, freed: Vec::new() }];
        assert_eq!(assign(Routing::Prefix, &mut candidates, &index, &waiting(&keys, &[])), vec![(0, "w2".to_string())]);
    }
}
