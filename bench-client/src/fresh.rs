//! Prompts that never repeat within a run, as an application's traffic does not: no server may answer
//! one from a cache of whole prompts. Each prompt is built from a short passage of facts chosen by its
//! index in mixed radix, so passage `k` differs from every other passage below [`DISTINCT_PASSAGES`];
//! a seed shifts where a run starts in that sequence, and a round's offset moves past the prompts
//! earlier rounds sent.
//!
//! - [`chats`]: short chats (the built-in prompts first, then extraction tasks and questions on new
//!   passages).
//! - [`dspy`]: DSPy-shaped calls ([`crate::shared_prefix`]): only the programs' preambles repeat, each
//!   call carries a passage of its own.

use modelpool::{ChatMessage, PredictRequest, Prompt, Role, SamplingParams};

use crate::{shared_prefix, workload};

const PEOPLE: &[&str] = &[
    "Amara Okafor",
    "Lars Henriksen",
    "Mei Tanaka",
    "Diego Alvarez",
    "Priya Raman",
    "Tomasz Nowak",
    "Fatima Haddad",
    "Johan de Vries",
    "Sofia Rossi",
    "Kwame Mensah",
    "Elena Petrova",
    "Hiroshi Sato",
    "Isabel Moreau",
    "Omar Farouk",
    "Greta Lindqvist",
    "Rafael Costa",
    "Anika Weber",
    "Samuel Adeyemi",
    "Ingrid Solberg",
    "Mateo Fernandez",
    "Leila Karimi",
    "Viktor Horvat",
    "Chloe Dubois",
    "Arjun Mehta",
];
const PLACES: &[&str] = &[
    "Lisbon",
    "Krakow",
    "Nairobi",
    "Osaka",
    "Montreal",
    "Valparaiso",
    "Tbilisi",
    "Bergen",
    "Marrakesh",
    "Hanoi",
    "Adelaide",
    "Ljubljana",
    "Cusco",
    "Tallinn",
    "Accra",
    "Porto",
    "Kyoto",
    "Bilbao",
    "Zanzibar",
    "Reykjavik",
    "Cordoba",
    "Gdansk",
    "Mumbai",
    "Halifax",
];
const ORGS: &[&str] = &[
    "the Royal Observatory",
    "a shipbuilding firm",
    "the national library",
    "a seed bank",
    "the city orchestra",
    "a glass works",
    "the geological survey",
    "a railway company",
    "the botanical garden",
    "a printing house",
    "the weather service",
    "a textile mill",
    "the natural history museum",
    "a telescope maker",
    "the harbour board",
    "a cartography office",
];
const FIELDS: &[&str] = &[
    "astronomy",
    "botany",
    "metallurgy",
    "linguistics",
    "hydraulics",
    "cartography",
    "chemistry",
    "seismology",
    "ornithology",
    "typography",
    "acoustics",
    "glaciology",
    "optics",
    "mycology",
    "navigation",
    "ceramics",
];
const YEARS: u64 = 200;

/// Passages that differ from one another (the product of the lists' lengths and the years).
pub const DISTINCT_PASSAGES: u64 = (PEOPLE.len() * PLACES.len() * ORGS.len() * FIELDS.len()) as u64 * YEARS;

/// The facts of passage `k`: one digit per list, so two indices below [`DISTINCT_PASSAGES`] differ in
/// at least one fact.
struct Facts {
    person: &'static str,
    place: &'static str,
    org: &'static str,
    field: &'static str,
    year: u64,
}

fn facts(k: u64) -> Facts {
    let mut rest = k % DISTINCT_PASSAGES;
    let mut digit = |radix: usize| {
        let d = (rest % radix as u64) as usize;
        rest /= radix as u64;
        d
    };
    let person = PEOPLE[digit(PEOPLE.len())];
    let place = PLACES[digit(PLACES.len())];
    let field = FIELDS[digit(FIELDS.len())];
    let org = ORGS[digit(ORGS.len())];
    let year = 1800 + digit(YEARS as usize) as u64;
    Facts { person, place, org, field, year }
}

/// Where a run with `seed` starts in the sequence of passages: far apart for different seeds.
fn start(seed: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) % DISTINCT_PASSAGES
}

/// Passage `k` of the run with `seed`: two or three sentences of facts, unique within the run.
pub fn passage(seed: u64, k: u64) -> String {
    let f = facts(start(seed) + k);
    format!(
        "{} was born in {} in {} and studied {} there. In {} {} joined {} in {}, where the work in {} went on for many years.",
        f.person,
        f.place,
        f.year,
        f.field,
        f.year + 24,
        f.person.split(' ').next().unwrap_or(f.person),
        f.org,
        f.place,
        f.field
    )
}

fn greedy(request_id: String, messages: Vec<ChatMessage>, max_tokens: u32) -> PredictRequest {
    PredictRequest { request_id, prompt: Prompt::Chat(messages), sampling: SamplingParams { max_tokens, ..SamplingParams::default() } }
}

/// Chat `k` of the run with `seed`: the built-in prompts first (`k` below their count), then by turns
/// an extraction task on passage `k` and a question about its facts.
fn chat(seed: u64, k: u64, builtin: &[Vec<ChatMessage>]) -> Vec<ChatMessage> {
    if let Some(prompt) = builtin.get(k as usize) {
        return prompt.clone();
    }
    let k = k - builtin.len() as u64;
    if k.is_multiple_of(2) {
        workload::extraction_chat(&passage(seed, k / 2))
    } else {
        let f = facts(start(seed) + k / 2);
        let question = format!(
            "In a short paragraph, say what {} in {} around {} might have been like for {}, who worked at {}.",
            f.field, f.place, f.year, f.person, f.org
        );
        vec![ChatMessage::new(Role::User, question)]
    }
}

/// `count` greedy chats, numbers `offset..offset + count` of the run with `seed`: none repeats within
/// the run, and rounds that take successive offsets never send a chat twice.
pub fn chats(seed: u64, offset: u64, count: usize, max_tokens: u32) -> Vec<PredictRequest> {
    let builtin = workload::builtin_prompts();
    (0..count as u64).map(|i| greedy(format!("chat{}", offset + i), chat(seed, offset + i, &builtin), max_tokens)).collect()
}

/// `count` greedy DSPy-shaped calls, numbers `offset..offset + count`: call `k` runs program
/// `k mod programs` on passage `k`, so only the programs' preambles repeat.
pub fn dspy(seed: u64, offset: u64, count: usize, programs: usize, max_tokens: u32) -> Vec<PredictRequest> {
    let programs = programs.clamp(1, shared_prefix::MAX_PROGRAMS);
    (0..count as u64)
        .map(|i| {
            let k = offset + i;
            greedy(format!("dspy{k}"), shared_prefix::call_on(k as usize % programs, &passage(seed, k)), max_tokens)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn texts(requests: &[PredictRequest]) -> Vec<String> {
        requests
            .iter()
            .map(|r| match &r.prompt {
                Prompt::Chat(messages) => messages.iter().map(|m| format!("{}:{}\n", m.role.as_str(), m.content)).collect(),
                Prompt::Raw(text) => text.clone(),
            })
            .collect()
    }

    fn all_distinct(texts: &[String]) -> bool {
        texts.iter().collect::<HashSet<_>>().len() == texts.len()
    }

    #[test]
    fn no_chat_repeats_within_a_run_and_another_offset_gives_others() {
        let first = texts(&chats(7, 0, 2000, 16));
        assert!(all_distinct(&first));
        let next = texts(&chats(7, 2000, 2000, 16));
        let both: Vec<String> = first.iter().chain(&next).cloned().collect();
        assert!(all_distinct(&both), "round 2 sends nothing round 1 sent");
        // The built-in prompts come first; another seed changes the generated ones only.
        assert_eq!(first[0], texts(&chats(8, 0, 1, 16))[0]);
        assert_ne!(first[100], texts(&chats(8, 100, 1, 16))[0]);
        assert_eq!(first[100], texts(&chats(7, 100, 1, 16))[0], "the same seed and number: the same chat");
    }

    #[test]
    fn dspy_calls_repeat_only_their_preambles() {
        let calls = dspy(3, 0, 400, 4, 16);
        assert!(all_distinct(&texts(&calls)));
        let more = dspy(3, 400, 400, 4, 16);
        assert!(all_distinct(&texts(&calls).into_iter().chain(texts(&more)).collect::<Vec<_>>()));
        // Calls of one program share everything before the passage.
        let system = |r: &PredictRequest| match &r.prompt {
            Prompt::Chat(m) => m[0].content.clone(),
            Prompt::Raw(_) => unreachable!(),
        };
        assert_eq!(system(&calls[0]), system(&calls[4]));
        assert_ne!(system(&calls[0]), system(&calls[1]));
    }

    #[test]
    fn passages_differ_across_the_whole_range() {
        let seen: HashSet<String> = (0..50_000).map(|k| passage(1, k * 97)).collect();
        assert_eq!(seen.len(), 50_000);
    }
}
