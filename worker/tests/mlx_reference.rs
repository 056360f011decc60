//! mlx-lm is the reference for what an mlx-lm model folder means. scripts/mlx-fixture.sh builds the
//! folders (the default model converted; random Qwen2, Qwen3 and Llama 3 models, quantized and not, made
//! and saved by mlx-lm's own classes) and records what Python mlx-lm, `tokenizers` and transformers make
//! of them (scripts/mlx/make_fixtures.py). Here the worker's MLX engine and its tokenizer and template
//! must give exactly the same: ids for hard strings, rendered chats, and the first 32 greedy tokens of
//! eight prompts in every folder.

use model_input::chat_template::TemplateMessage;
use model_input::prompt_format::PromptFormat;
use modelpool::{ChatMessage, PredictRequest, Prompt, Role, SamplingParams};
use serde_json::Value;
use worker::engine::Completion;
use worker::engine::batch_loop::PassShape;
use worker::engine::mlx::MlxConfig;
use worker::engine::queue::generate_blocking;
use worker::engine::served::ServedEngine;

use test_support::mlx_fixtures::fixtures;

fn reference(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn messages(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
        .collect()
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

#[test]
fn token_ids_are_the_tokenizers_packages_on_hard_strings() {
    let dir = fixtures();
    let reference = reference(&dir);
    let format = PromptFormat::load(&dir.join("smollm2-135m-q4")).unwrap();
    // The GGUF's tokenizer, built here from its vocabulary, must be the same tokenizer.
    let gguf = PromptFormat::load(&model_input::model_cache::ensure_default_model().unwrap()).unwrap();
    for row in reference["tokenizer"].as_array().unwrap() {
        let text = row["text"].as_str().unwrap();
        let shown: String = text.chars().take(40).collect();
        for tokenizer in [&format.tokenizer, &gguf.tokenizer] {
            assert_eq!(tokenizer.encode(text, true), ids(&row["ids"]), "{shown:?}, markers parsed");
            assert_eq!(tokenizer.encode(text, false), ids(&row["ids_special_as_text"]), "{shown:?}, markers as text");
            assert_eq!(tokenizer.decode(&ids(&row["ids"]), true), row["decoded"].as_str().unwrap(), "{shown:?}, decoded");
        }
    }
}

#[test]
fn rendered_chats_are_transformers_renderings() {
    let dir = fixtures();
    let reference = reference(&dir);
    for (name, folder) in reference["folders"].as_object().unwrap() {
        let format = PromptFormat::load(&dir.join(name)).unwrap();
        let chat_template = format.template().unwrap();
        for chat in folder["chats"].as_array().unwrap() {
            let conversation = messages(&chat["messages"]);
            let conversation: Vec<TemplateMessage<'_>> =
                conversation.iter().map(|(role, content)| TemplateMessage { role, content }).collect();
            let generation_prompt = chat["add_generation_prompt"].as_bool().unwrap();
            let ours = chat_template.render(&conversation, generation_prompt).unwrap();
            assert_eq!(ours, chat["text"].as_str().unwrap(), "{name}: {conversation:?}");
        }
        if let Some(expected) = folder["bad_conversation_error"].as_str() {
            let conversation = messages(&folder["bad_conversation"]);
            let conversation: Vec<TemplateMessage<'_>> =
                conversation.iter().map(|(role, content)| TemplateMessage { role, content }).collect();
            let error = chat_template.render(&conversation, true).unwrap_err().to_string();
            assert!(error.contains(expected), "{name}: {error} should carry {expected:?}");
        }
        // Every EOS id the folder declares ends a generation.
        assert_eq!(format.tokenizer.eos, ids(&folder["eos_token_ids"]), "{name}: EOS ids");
    }
}

/// One greedy generation through the engine's queue and batch loop, as the worker serves it.
fn generate(engine: &ServedEngine, messages: &[ChatMessage], max_tokens: u32) -> (Vec<u32>, Completion) {
    let request = PredictRequest {
        request_id: String::new(),
        prompt: Prompt::Chat(messages.to_vec()),
        sampling: SamplingParams { max_tokens, ..SamplingParams::default() },
    };
    let (tokens, completion) =
        generate_blocking(engine, "reference", &request).unwrap_or_else(|error| panic!("generation failed: {error}"));
    (tokens.iter().map(|&t| t as u32).collect(), completion)
}

#[test]
fn greedy_tokens_are_mlx_lms_in_every_fixture_folder() {
    let dir = fixtures();
    let reference = reference(&dir);
    let chunk = reference["prefill_step_size"].as_u64().unwrap() as usize;
    assert_eq!(chunk, worker::engine::mlx::PREFILL_CHUNK, "mlx-lm prefilled in steps of the engine's chunk");
    let mut failures = Vec::new();
    for (name, folder) in reference["folders"].as_object().unwrap() {
        let engine = worker::engine::mlx::load(MlxConfig {
            model_path: dir.join(name),
            slots: 1,
            context_per_slot: 1024,
            queue_capacity: 4,
            prefix_cache: false,
            prompt_store_bytes: 0,
            dense: false,
            // mlx-lm prefills in chunks of PREFILL_CHUNK, as the batch-invariant passes do.
            shape: PassShape::BatchInvariant,
            batch_tokens: 32,
            threads: 2,
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut agreeing = 0;
        let prompts = folder["prompts"].as_array().unwrap();
        for prompt in prompts {
            let question = prompt["messages"][0]["content"].as_str().unwrap();
            let (prompt_ids, completion) = generate(&engine, &[ChatMessage::new(Role::User, question)], 32);
            assert_eq!(prompt_ids, ids(&prompt["prompt_ids"]), "{name}: prompt ids of {question:?}");
            let expected = ids(&prompt["generated"]);
            if completion.token_ids == expected {
                agreeing += 1;
            } else {
                let same = completion.token_ids.iter().zip(&expected).take_while(|(a, b)| a == b).count();
                failures.push(format!("{name}, {question:?}: first {same} of {} tokens agree", expected.len()));
            }
        }
        println!("{name}: {agreeing}/{} prompts give mlx-lm's 32 greedy tokens", prompts.len());
    }
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
}
