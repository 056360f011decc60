//! Property tests over what arrives from the network: any bytes decoded as a request, and any request
//! validated, end in a request or in a refusal that names a field; never a panic. Bounded by proptest's
//! case count (`PROPTEST_CASES`, 256 by default), so it runs in every CI build.

use modelpool::proto;
use modelpool::{PoolError, PredictRequest};
use proptest::prelude::*;
use prost::Message;

/// A refusal must say which field is wrong.
fn check(result: Result<PredictRequest, PoolError>) -> Result<(), TestCaseError> {
    match result {
        Ok(request) => {
            prop_assert!(request.sampling.max_tokens >= 1);
            prop_assert!((0.0..=modelpool::request::limits::MAX_TEMPERATURE).contains(&request.sampling.temperature));
            prop_assert!(request.sampling.top_p > 0.0 && request.sampling.top_p <= 1.0);
            prop_assert!(request.sampling.stop.len() <= modelpool::request::limits::MAX_STOP_STRINGS);
            let penalty = -modelpool::request::limits::MAX_PENALTY..=modelpool::request::limits::MAX_PENALTY;
            prop_assert!(penalty.contains(&request.sampling.frequency_penalty) && penalty.contains(&request.sampling.presence_penalty));
            let bias = &request.sampling.logit_bias;
            prop_assert!(bias.windows(2).all(|w| w[0].0 < w[1].0), "ids ascending, each once: {:?}", bias);
            prop_assert!(bias.iter().all(|(_, b)| b.abs() <= modelpool::request::limits::MAX_LOGIT_BIAS));
        }
        Err(PoolError::InvalidArgument { field, reason }) => {
            prop_assert!(!field.is_empty() && !reason.is_empty());
        }
        Err(other) => prop_assert!(false, "validation answered {other:?}, not INVALID_ARGUMENT"),
    }
    Ok(())
}

fn any_float() -> impl Strategy<Value = f32> {
    prop_oneof![any::<f32>(), -1.0f32..3.0, Just(f32::NAN), Just(f32::INFINITY), Just(0.0), Just(1.0)]
}

fn any_sampling() -> impl Strategy<Value = proto::SamplingParams> {
    (
        proptest::option::of(prop_oneof![Just(0u32), 1u32..4096, any::<u32>()]),
        proptest::option::of(any_float()),
        proptest::option::of(any_float()),
        proptest::option::of(prop_oneof![0u32..2000, any::<u32>()]),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(".{0,80}", 0..12),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any_response_format()),
        (
            proptest::option::of(any_float()),
            proptest::option::of(any_float()),
            proptest::collection::hash_map(prop_oneof![0u32..64, any::<u32>()], prop_oneof![any_float(), -150.0f32..150.0], 0..8),
        ),
    )
        .prop_map(|(max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos, strict_max_tokens, response_format, shaping)| {
            let (frequency_penalty, presence_penalty, logit_bias) = shaping;
            proto::SamplingParams {
                max_tokens,
                temperature,
                top_p,
                top_k,
                seed,
                stop,
                ignore_eos,
                strict_max_tokens,
                response_format,
                frequency_penalty,
                presence_penalty,
                logit_bias,
            }
        })
}

/// Schemas the compiler takes, ones it refuses, and text that is not JSON at all.
fn any_response_format() -> impl Strategy<Value = proto::ResponseFormat> {
    use proto::response_format::Format;
    let schema = prop_oneof![
        Just(r#"{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}"#.to_string()),
        Just(r#"{"type":"nope"}"#.to_string()),
        Just(r##"{"$ref":"#/$defs/x"}"##.to_string()),
        r#"[{}\[\]":,a-z0-9 ]{0,60}"#,
        ".{0,60}",
    ];
    proptest::option::of(prop_oneof![any::<bool>().prop_map(Format::JsonObject), schema.prop_map(Format::JsonSchema)])
        .prop_map(|format| proto::ResponseFormat { format })
}

fn any_input() -> impl Strategy<Value = Option<proto::predict_request::Input>> {
    let role = prop_oneof![Just("user".to_string()), Just("system".to_string()), Just("assistant".to_string()), ".{0,12}"];
    let message = (role, ".{0,200}").prop_map(|(role, content)| proto::ChatMessage { role, content });
    proptest::option::of(prop_oneof![
        proptest::collection::vec(message, 0..6).prop_map(|messages| proto::predict_request::Input::Chat(proto::ChatMessages { messages })),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(proto::predict_request::Input::Prompt),
        ".{0,300}".prop_map(|text| proto::predict_request::Input::Prompt(text.into_bytes())),
    ])
}

proptest! {
    #[test]
    fn any_structured_request_is_accepted_or_refused_naming_a_field(
        request_id in ".{0,200}",
        input in any_input(),
        sampling in proptest::option::of(any_sampling()),
    ) {
        check(PredictRequest::try_from(proto::PredictRequest { request_id, input, sampling, run_alone: false }))?;
    }

    #[test]
    fn any_bytes_decode_to_an_error_or_a_request_that_validates_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = proto::PredictRequest::decode(bytes.as_slice()) {
            check(PredictRequest::try_from(request))?;
        }
        // The membership messages a worker sends decode without panicking too.
        let _ = proto::RegisterRequest::decode(bytes.as_slice());
        let _ = proto::HeartbeatRequest::decode(bytes.as_slice());
        let _ = proto::PredictBatchRequest::decode(bytes.as_slice());
    }

    #[test]
    fn a_valid_request_survives_the_wire_unchanged(
        input in any_input(),
        sampling in proptest::option::of(any_sampling()),
    ) {
        let wire = proto::PredictRequest { request_id: "r".into(), input, sampling, run_alone: false };
        if let Ok(request) = PredictRequest::try_from(wire) {
            let again = PredictRequest::try_from(proto::PredictRequest::from(&request)).expect("a valid request stays valid");
            prop_assert_eq!(again, request);
        }
    }
}
