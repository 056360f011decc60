//! Prompts to run: a built-in set that looks like the original application (short texts to turn into
//! entities and relations, plus short questions), or a JSONL file.

use std::path::Path;

use model_input::tokenizer::Tokenizer;
use modelpool::{ChatMessage, PoolError, PredictRequest, Prompt, Role, SamplingParams};

/// The system prompt of the extraction task, as the original DSPy program phrases it in spirit.
const EXTRACT_SYSTEM: &str = "Extract the entities and the relations between them from the text. \
Answer with one relation per line, as: subject | relation | object.";

const EXTRACT_TEXTS: &[&str] = &[
    "Marie Curie was born in Warsaw and moved to Paris, where she studied physics at the Sorbonne.",
    "Ada Lovelace worked with Charles Babbage on the Analytical Engine in London.",
    "The Danube flows through Vienna, Bratislava, Budapest and Belgrade before reaching the Black Sea.",
    "Alan Turing studied at King's College, Cambridge, and later worked at Bletchley Park.",
    "Tesla was founded in 2003 by Martin Eberhard and Marc Tarpenning; Elon Musk joined as chairman in 2004.",
    "The Eiffel Tower, designed by Gustave Eiffel's company, was completed in 1889 for the World's Fair in Paris.",
    "Linus Torvalds created Linux in 1991 while he was a student at the University of Helsinki.",
    "Amazon was started by Jeff Bezos in Seattle as an online bookstore.",
];

const QUESTIONS: &[&str] = &[
    "What is the capital of France?",
    "Name three primary colors.",
    "What does a compiler do? Answer in one sentence.",
    "Why is the sky blue? Answer briefly.",
];

/// The extraction task on `text`: the system prompt, then the text.
pub fn extraction_chat(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new(Role::System, EXTRACT_SYSTEM), ChatMessage::new(Role::User, format!("Text: {text}"))]
}

/// The built-in prompts, in a fixed order: extraction tasks and questions interleaved.
pub fn builtin_prompts() -> Vec<Vec<ChatMessage>> {
    let mut prompts = Vec::new();
    let mut questions = QUESTIONS.iter();
    for (i, text) in EXTRACT_TEXTS.iter().enumerate() {
        prompts.push(extraction_chat(text));
        if i % 2 == 1
            && let Some(q) = questions.next()
        {
            prompts.push(vec![ChatMessage::new(Role::User, *q)]);
        }
    }
    prompts
}

/// `count` greedy requests cycling through the built-in prompts.
pub fn builtin_workload(count: usize, max_tokens: u32) -> Vec<PredictRequest> {
    let prompts = builtin_prompts();
    (0..count)
        .map(|i| PredictRequest {
            request_id: format!("p{i}"),
            prompt: Prompt::Chat(prompts[i % prompts.len()].clone()),
            sampling: SamplingParams { max_tokens, ..SamplingParams::default() },
        })
        .collect()
}

/// Synthetic requests with a fixed shape: a raw prompt of exactly `input_tokens` tokens of the model's
/// own tokenizer, and exactly `output_tokens` generated (end-of-generation tokens do not stop them), so
/// that configurations are compared on identical work.
pub fn synthetic(tokenizer: &Tokenizer, input_tokens: usize, output_tokens: u32, count: usize) -> Result<Vec<PredictRequest>, PoolError> {
    if input_tokens == 0 || output_tokens == 0 {
        return Err(PoolError::invalid("synthetic", "input and output token counts must be at least 1"));
    }
    // " the" is one token in byte-level BPE vocabularies and the pre-tokenizer keeps repeats apart.
    let text = " the".repeat(input_tokens);
    let counted = tokenizer.encode(&text, false).len();
    if counted != input_tokens {
        return Err(PoolError::invalid(
            "synthetic",
            format!("could not build a {input_tokens}-token prompt (got {counted}) with this tokenizer"),
        ));
    }
    Ok((0..count)
        .map(|i| PredictRequest {
            request_id: format!("s{i}"),
            prompt: Prompt::Raw(text.clone()),
            sampling: SamplingParams { max_tokens: output_tokens, ignore_eos: true, ..SamplingParams::default() },
        })
        .collect())
}

/// Parses `IN:OUT` token counts, e.g. `128:64`.
pub fn parse_shape(shape: &str) -> Result<(usize, u32), String> {
    let (input, output) = shape.split_once(':').ok_or_else(|| format!("{shape:?}: expected IN:OUT, e.g. 128:64"))?;
    Ok((
        input.trim().parse().map_err(|e| format!("{shape:?}: input tokens: {e}"))?,
        output.trim().parse().map_err(|e| format!("{shape:?}: output tokens: {e}"))?,
    ))
}

#[derive(serde::Deserialize)]
struct JsonlMessage {
    role: String,
    content: String,
}

#[derive(serde::Deserialize)]
struct JsonlLine {
    messages: Option<Vec<JsonlMessage>>,
    prompt: Option<String>,
    max_tokens: Option<u32>,
}

/// Reads prompts from a JSONL file: one object per line, `{"messages": [{"role", "content"}...]}` or
/// `{"prompt": "..."}`, each with an optional `max_tokens` (else `default_max_tokens`).
pub fn load_jsonl(path: &Path, default_max_tokens: u32) -> Result<Vec<PredictRequest>, PoolError> {
    let text = std::fs::read_to_string(path).map_err(|e| PoolError::invalid("prompts", format!("reading {}: {e}", path.display())))?;
    let mut requests = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let field = format!("{}:{}", path.display(), n + 1);
        let parsed: JsonlLine = serde_json::from_str(line).map_err(|e| PoolError::invalid(field.clone(), e.to_string()))?;
        let prompt = match (parsed.messages, parsed.prompt) {
            (Some(messages), None) => Prompt::Chat(
                messages
                    .into_iter()
                    .map(|m| {
                        let role = match m.role.as_str() {
                            "system" => Role::System,
                            "user" => Role::User,
                            "assistant" => Role::Assistant,
                            other => return Err(PoolError::invalid(field.clone(), format!("unknown role {other:?}"))),
                        };
                        Ok(ChatMessage::new(role, m.content))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (None, Some(prompt)) => Prompt::Raw(prompt),
            _ => return Err(PoolError::invalid(field, "give exactly one of \"messages\" or \"prompt\"")),
        };
        let max_tokens = parsed.max_tokens.unwrap_or(default_max_tokens);
        let request = PredictRequest {
            request_id: format!("p{}", requests.len()),
            prompt,
            sampling: SamplingParams { max_tokens, ..SamplingParams::default() },
        };
        // Refuse bad lines here, with the line number, rather than as failed requests later.
        PredictRequest::try_from(modelpool::proto::PredictRequest::from(&request))
            .map_err(|e| PoolError::invalid(field.clone(), e.to_string()))?;
        requests.push(request);
    }
    if requests.is_empty() {
        return Err(PoolError::invalid("prompts", format!("{} holds no prompts", path.display())));
    }
    Ok(requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_workload_cycles_and_numbers_requests() {
        let prompts = builtin_prompts();
        let workload = builtin_workload(prompts.len() + 2, 32);
        assert_eq!(workload.len(), prompts.len() + 2);
        assert_eq!(workload[0].prompt, workload[prompts.len()].prompt);
        assert_eq!(workload[3].request_id, "p3");
        assert!(workload.iter().all(|r| r.sampling.max_tokens == 32 && r.sampling.is_greedy()));
    }

    #[test]
    fn jsonl_reads_both_shapes_and_names_bad_lines() {
        let dir = std::env::temp_dir().join(format!("modelpool-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(&good, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":5}\n\n{\"prompt\":\"Once\"}\n")
            .unwrap();
        let requests = load_jsonl(&good, 9).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].sampling.max_tokens, 5);
        assert_eq!(requests[1].prompt, Prompt::Raw("Once".into()));
        assert_eq!(requests[1].sampling.max_tokens, 9);

        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"prompt\":\"ok\"}\n{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}\n").unwrap();
        let error = load_jsonl(&bad, 9).unwrap_err().to_string();
        assert!(error.contains("bad.jsonl:2") && error.contains("robot"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn synthetic_prompts_have_the_exact_token_count() {
        let path = model_input::model_cache::ensure_default_model().unwrap();
        let tokenizer = Tokenizer::from_gguf(&model_input::gguf::GgufFile::open(&path).unwrap()).unwrap();
        let requests = synthetic(&tokenizer, 100, 32, 3).unwrap();
        assert_eq!(requests.len(), 3);
        let Prompt::Raw(text) = &requests[0].prompt else { panic!("a raw prompt") };
        assert_eq!(tokenizer.encode(text, false).len(), 100);
        assert!(requests.iter().all(|r| r.sampling.max_tokens == 32 && r.sampling.ignore_eos));
        assert_eq!(parse_shape("128:64"), Ok((128, 64)));
        assert!(parse_shape("128").is_err() && parse_shape("a:1").is_err());
    }
}
