//! The workload this project exists for: calls shaped like a DSPy ChatAdapter extraction program. Every
//! call of one program repeats the same long preamble (a system message describing the input and output
//! fields, the structure and the instructions, then three worked examples as user/assistant turns,
//! 1,000+ tokens with the default model's tokenizer) before one short chunk of text. Several programs
//! (different tasks, so different preambles) can be interleaved, as an application with several DSPy
//! modules sends them.

use modelpool::{ChatMessage, PredictRequest, Prompt, Role, SamplingParams};

/// One DSPy-style program: its task, its output fields and its worked examples.
struct Program {
    objective: &'static str,
    /// (name, type, description) of each output field.
    outputs: &'static [(&'static str, &'static str, &'static str)],
    /// (input text, one answer per output field).
    examples: &'static [(&'static str, &'static [&'static str])],
}

const PROGRAMS: &[Program] = &[
    Program {
        objective: "Extract a knowledge graph from the text: every named entity, then every relation between two of \
            them that the text states outright. Use the entity names exactly as the text writes them. Do not infer \
            relations the text does not state, and do not repeat a relation.",
        outputs: &[
            ("entities", "list[str]", "every named person, organisation, place, work and date in the text"),
            ("relations", "list[tuple[str, str, str]]", "(subject, relation, object) triples, subject and object from entities"),
        ],
        examples: &[
            (
                "Grace Hopper joined the Harvard Computation Lab in 1944, where she programmed the Mark I.",
                &[
                    r#"["Grace Hopper", "Harvard Computation Lab", "1944", "Mark I"]"#,
                    r#"[["Grace Hopper", "joined", "Harvard Computation Lab"], ["Grace Hopper", "programmed", "Mark I"], ["Grace Hopper", "joined in", "1944"]]"#,
                ],
            ),
            (
                "The Rhine rises in the Swiss Alps and flows through Basel, Strasbourg and Cologne to the North Sea.",
                &[
                    r#"["Rhine", "Swiss Alps", "Basel", "Strasbourg", "Cologne", "North Sea"]"#,
                    r#"[["Rhine", "rises in", "Swiss Alps"], ["Rhine", "flows through", "Basel"], ["Rhine", "flows through", "Strasbourg"], ["Rhine", "flows through", "Cologne"], ["Rhine", "flows into", "North Sea"]]"#,
                ],
            ),
            (
                "In 1976 Steve Wozniak and Steve Jobs founded Apple in Los Altos, California.",
                &[
                    r#"["Steve Wozniak", "Steve Jobs", "Apple", "Los Altos", "California", "1976"]"#,
                    r#"[["Steve Wozniak", "founded", "Apple"], ["Steve Jobs", "founded", "Apple"], ["Apple", "founded in", "Los Altos"], ["Los Altos", "located in", "California"], ["Apple", "founded in", "1976"]]"#,
                ],
            ),
        ],
    },
    Program {
        objective: "Build a timeline of the events in the text: each event that the text dates, with its date as \
            written and the actors involved. Keep the order of the text when two events share a date, and leave out \
            events that have no date.",
        outputs: &[
            ("events", "list[str]", "one short phrase per dated event, in the order the text gives them"),
            ("timeline", "list[tuple[str, str, list[str]]]", "(date, event, actors) for each event in events"),
        ],
        examples: &[
            (
                "Magellan's fleet left Seville in 1519; Elcano brought the Victoria home in 1522.",
                &[
                    r#"["fleet left Seville", "Victoria returned"]"#,
                    r#"[["1519", "fleet left Seville", ["Magellan"]], ["1522", "Victoria returned", ["Elcano"]]]"#,
                ],
            ),
            (
                "The Berlin Wall opened on 9 November 1989, and Germany was reunified on 3 October 1990.",
                &[
                    r#"["Berlin Wall opened", "Germany reunified"]"#,
                    r#"[["9 November 1989", "Berlin Wall opened", []], ["3 October 1990", "Germany reunified", ["Germany"]]]"#,
                ],
            ),
            (
                "Watson and Crick published the double helix in April 1953, using data Rosalind Franklin recorded in 1952.",
                &[
                    r#"["data recorded", "double helix published"]"#,
                    r#"[["1952", "data recorded", ["Rosalind Franklin"]], ["April 1953", "double helix published", ["Watson", "Crick"]]]"#,
                ],
            ),
        ],
    },
    Program {
        objective: "Find the people in the text and the organisations they belong to, with the role each person \
            holds there when the text says it. A person with no organisation in the text still appears, with an \
            empty list. Titles and honorifics are not part of a name.",
        outputs: &[
            ("people", "list[str]", "every person the text names"),
            ("affiliations", "list[tuple[str, str, str]]", "(person, organisation, role) with an empty role when none is given"),
        ],
        examples: &[
            (
                "Dr. Katalin Kariko worked with Drew Weissman at the University of Pennsylvania before joining BioNTech as a vice president.",
                &[
                    r#"["Katalin Kariko", "Drew Weissman"]"#,
                    r#"[["Katalin Kariko", "University of Pennsylvania", ""], ["Drew Weissman", "University of Pennsylvania", ""], ["Katalin Kariko", "BioNTech", "vice president"]]"#,
                ],
            ),
            (
                "Satya Nadella became chief executive of Microsoft in 2014, succeeding Steve Ballmer.",
                &[
                    r#"["Satya Nadella", "Steve Ballmer"]"#,
                    r#"[["Satya Nadella", "Microsoft", "chief executive"], ["Steve Ballmer", "Microsoft", "chief executive"]]"#,
                ],
            ),
            (
                "Tim Berners-Lee proposed the web while at CERN and later founded the World Wide Web Consortium.",
                &[
                    r#"["Tim Berners-Lee"]"#,
                    r#"[["Tim Berners-Lee", "CERN", ""], ["Tim Berners-Lee", "World Wide Web Consortium", "founder"]]"#,
                ],
            ),
        ],
    },
    Program {
        objective: "Describe the places in the text: each geographic place it names, what kind of place it is, and \
            which larger place contains it when the text or common knowledge of the text's own words makes that \
            clear. Do not add places the text does not name.",
        outputs: &[
            ("places", "list[str]", "every geographic place the text names"),
            ("containment", "list[tuple[str, str, str]]", "(place, kind, containing place) with an empty containing place when unknown"),
        ],
        examples: &[
            (
                "Kyoto lies west of Lake Biwa on the island of Honshu.",
                &[
                    r#"["Kyoto", "Lake Biwa", "Honshu"]"#,
                    r#"[["Kyoto", "city", "Honshu"], ["Lake Biwa", "lake", "Honshu"], ["Honshu", "island", ""]]"#,
                ],
            ),
            (
                "The Atacama Desert stretches along the Pacific coast of northern Chile.",
                &[
                    r#"["Atacama Desert", "Pacific", "Chile"]"#,
                    r#"[["Atacama Desert", "desert", "Chile"], ["Pacific", "ocean", ""], ["Chile", "country", ""]]"#,
                ],
            ),
            (
                "Lake Titicaca sits on the border between Peru and Bolivia, high in the Andes.",
                &[
                    r#"["Lake Titicaca", "Peru", "Bolivia", "Andes"]"#,
                    r#"[["Lake Titicaca", "lake", "Andes"], ["Peru", "country", ""], ["Bolivia", "country", ""], ["Andes", "mountain range", ""]]"#,
                ],
            ),
        ],
    },
];

/// The chunks of text that calls carry after the preamble.
const CHUNKS: &[&str] = &[
    "Marie Curie was born in Warsaw in 1867 and moved to Paris, where she studied physics at the Sorbonne.",
    "Ada Lovelace worked with Charles Babbage on the Analytical Engine in London in 1843.",
    "The Danube flows through Vienna, Bratislava, Budapest and Belgrade before reaching the Black Sea.",
    "Alan Turing studied at King's College, Cambridge, and worked at Bletchley Park from 1939.",
    "Linus Torvalds created Linux in 1991 while he was a student at the University of Helsinki.",
    "Amazon was started by Jeff Bezos in Seattle in 1994 as an online bookstore.",
    "The Eiffel Tower, built by Gustave Eiffel's company, was completed in 1889 for the World's Fair in Paris.",
    "Frida Kahlo was born in Coyoacan, near Mexico City, and married Diego Rivera in 1929.",
];

/// How many distinct programs there are to interleave.
pub const MAX_PROGRAMS: usize = PROGRAMS.len();

fn field_list(fields: &[(&str, &str, &str)]) -> String {
    fields.iter().enumerate().map(|(i, (name, kind, about))| format!("{}. `{name}` ({kind}): {about}\n", i + 1)).collect()
}

/// The system message: the fields, the structure every answer follows, and the objective.
fn system_message(program: &Program) -> String {
    let mut text = String::from("Your input fields are:\n1. `text` (str): a passage to analyse\n");
    text.push_str("Your output fields are:\n");
    text.push_str(&field_list(program.outputs));
    text.push_str("All interactions will be structured in the following way, with the appropriate values filled in.\n\n");
    text.push_str("[[ ## text ## ]]\n{text}\n\n");
    for (name, kind, _) in program.outputs {
        text.push_str(&format!("[[ ## {name} ## ]]\n{{{name}}}        # note: the value you produce must be a valid Python {kind}\n\n"));
    }
    text.push_str("[[ ## completed ## ]]\n");
    text.push_str("In adhering to this structure, your objective is: \n        ");
    text.push_str(program.objective);
    text
}

fn user_message(program: &Program, text: &str) -> String {
    let fields: Vec<String> = program
        .outputs
        .iter()
        .map(|(name, kind, _)| format!("`[[ ## {name} ## ]]` (must be formatted as a valid Python {kind})"))
        .collect();
    format!(
        "[[ ## text ## ]]\n{text}\n\nRespond with the corresponding output fields, starting with the field {}, and then ending with the marker for `[[ ## completed ## ]]`.",
        fields.join(", then ")
    )
}

fn assistant_message(program: &Program, answers: &[&str]) -> String {
    let mut text = String::new();
    for ((name, _, _), answer) in program.outputs.iter().zip(answers) {
        text.push_str(&format!("[[ ## {name} ## ]]\n{answer}\n\n"));
    }
    text.push_str("[[ ## completed ## ]]");
    text
}

/// One call of program `program` (modulo the number of programs) on chunk `chunk` (modulo the chunks):
/// the system message, the worked examples, then the chunk.
pub fn call(program: usize, chunk: usize) -> Vec<ChatMessage> {
    call_on(program, CHUNKS[chunk % CHUNKS.len()])
}

/// One call of program `program` (modulo the number of programs) on `text`.
pub fn call_on(program: usize, text: &str) -> Vec<ChatMessage> {
    let program = &PROGRAMS[program % PROGRAMS.len()];
    let mut messages = vec![ChatMessage::new(Role::System, system_message(program))];
    for (example, answers) in program.examples {
        messages.push(ChatMessage::new(Role::User, user_message(program, example)));
        messages.push(ChatMessage::new(Role::Assistant, assistant_message(program, answers)));
    }
    messages.push(ChatMessage::new(Role::User, user_message(program, text)));
    messages
}

/// `count` greedy calls, `programs` distinct programs interleaved (call i runs program i mod programs),
/// each on the next chunk of its own.
pub fn workload(count: usize, programs: usize, max_tokens: u32) -> Vec<PredictRequest> {
    let programs = programs.clamp(1, PROGRAMS.len());
    (0..count)
        .map(|i| PredictRequest {
            request_id: format!("sp{i}"),
            prompt: Prompt::Chat(call(i % programs, i / programs)),
            sampling: SamplingParams { max_tokens, ..SamplingParams::default() },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(messages: &[ChatMessage]) -> String {
        messages.iter().map(|m| format!("{}\n{}\n", m.role.as_str(), m.content)).collect()
    }

    #[test]
    fn calls_of_one_program_share_everything_but_the_chunk() {
        let (a, b) = (call(0, 0), call(0, 1));
        assert_eq!(a.len(), 8, "system, three examples as user/assistant pairs, the chunk");
        assert_eq!(a[..7], b[..7]);
        assert_ne!(a[7], b[7]);
        // The preamble is long: the point of the workload.
        assert!(text(&a[..7]).len() > 3000, "{}", text(&a[..7]).len());
    }

    #[test]
    fn programs_differ_from_the_first_message_and_interleave() {
        assert_ne!(call(0, 0)[0], call(1, 0)[0]);
        let calls = workload(8, 4, 16);
        assert_eq!(calls.len(), 8);
        let first = |r: &PredictRequest| match &r.prompt {
            Prompt::Chat(m) => m[0].content.clone(),
            Prompt::Raw(_) => unreachable!(),
        };
        assert_eq!(first(&calls[0]), first(&calls[4]));
        assert_ne!(first(&calls[0]), first(&calls[1]));
        assert!(calls.iter().all(|c| c.sampling.max_tokens == 16));
    }
}
