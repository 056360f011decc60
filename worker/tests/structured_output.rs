//! Structured outputs on real workers of both engines (the default model; MLX on its CPU backend): the
//! text of a `json_schema` request parses and validates against its schema (checked with a validator
//! that is not the one constraining it), greedy and sampled; the constraint is per sequence (a free-text
//! request batched beside it stays free text); a constrained request still reuses a cached prefix; a
//! schema that does not compile is refused naming the field.

mod common;

use common::{TestWorker, config};
use modelpool::proto;
use modelpool::response_format::ResponseFormat;
use modelpool::{ChatMessage, PredictRequest, Prompt, Role, SamplingParams};
use serde_json::{Value, json};
use worker::engine::EngineKind;

/// Every string and list bounded, so a complete object always fits in [`MAX_TOKENS`].
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "colors": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}, "maxItems": 3}
        },
        "required": ["name", "age", "colors"],
        "additionalProperties": false
    })
}

const MAX_TOKENS: u32 = 64;
const SYSTEM: &str = "You extract facts about people from short notes and answer with JSON only. The notes come \
    from a village register kept by hand over many years, so names may be spelled in several ways.";

fn request(note: &str, format: ResponseFormat, temperature: f32) -> proto::PredictRequest {
    let sampling = SamplingParams { max_tokens: MAX_TOKENS, temperature, seed: 7, response_format: format, ..SamplingParams::default() };
    let messages = vec![ChatMessage::new(Role::System, SYSTEM), ChatMessage::new(Role::User, note)];
    proto::PredictRequest::from(&PredictRequest { request_id: String::new(), prompt: Prompt::Chat(messages), sampling })
}

fn schema_format() -> ResponseFormat {
    ResponseFormat::json_schema(person_schema()).unwrap()
}

/// The reply's text is JSON valid against the person schema, and the output ended because it was complete.
fn assert_valid(reply: &proto::PredictResponse, what: &str) {
    let value: Value = serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", reply.text));
    let validator = jsonschema::validator_for(&person_schema()).unwrap();
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{what}: {value} breaks the schema: {errors:?}");
    assert_eq!(reply.finish_reason(), proto::FinishReason::Eos, "{what}: ended complete, not cut: {reply:?}");
}

async fn predict(worker: &TestWorker, request: proto::PredictRequest) -> proto::PredictResponse {
    worker.client.clone().predict(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_json_schema_output_validates_greedy_and_sampled_and_the_constraint_is_per_sequence() {
    let worker = TestWorker::start(config(2).await).await;
    let note = "Ann Berg, aged 31, likes red and blue.";
    let greedy = predict(&worker, request(note, schema_format(), 0.0)).await;
    assert_valid(&greedy, "greedy");
    for seed_note in ["Tom Hale is 58 and likes green.", "Mia, 7 years old, likes every color."] {
        assert_valid(&predict(&worker, request(seed_note, schema_format(), 0.9)).await, "sampled");
    }
    // The same system prompt again: the constrained request reuses its cached prefix.
    let again = predict(&worker, request("Olle Nord, 44, likes green.", schema_format(), 0.0)).await;
    assert_valid(&again, "after a cached prefix");
    assert!(again.cached_tokens >= 30, "the preamble was reused: {again:?}");

    // Batched beside a free-text request: only the constrained one is held to JSON.
    let json_object = request("Describe Ann Berg, aged 31.", ResponseFormat::JsonObject, 0.0);
    let free = request("Say in one plain English sentence who Ann Berg is, without JSON.", ResponseFormat::Text, 0.0);
    let (constrained, unconstrained) = tokio::join!(predict(&worker, json_object), predict(&worker, free));
    let object: Value = serde_json::from_str(&constrained.text).unwrap_or_else(|e| panic!("json_object: {e}: {:?}", constrained.text));
    assert!(object.is_object(), "{object}");
    assert!(serde_json::from_str::<Value>(&unconstrained.text).is_err(), "free text stayed free: {:?}", unconstrained.text);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_does_not_compile_is_refused_naming_the_field() {
    let worker = TestWorker::start(config(1).await).await;
    let mut bad = request("Ann, 31.", ResponseFormat::Text, 0.0);
    bad.sampling.as_mut().unwrap().response_format =
        Some(proto::ResponseFormat { format: Some(proto::response_format::Format::JsonSchema(r#"{"type": "strnig"}"#.into())) });
    let status = worker.client.clone().predict(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("sampling.response_format.json_schema") && status.message().contains("strnig"), "{status:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlx_json_schema_output_validates_greedy_and_sampled() {
    let mut config = config(1).await;
    config.engine = EngineKind::Mlx;
    let worker = TestWorker::start(config).await;
    assert_valid(&predict(&worker, request("Ann Berg, aged 31, likes red and blue.", schema_format(), 0.0)).await, "mlx greedy");
    assert_valid(&predict(&worker, request("Tom Hale is 58 and likes green.", schema_format(), 0.9)).await, "mlx sampled");
    worker.stop().await;
}
