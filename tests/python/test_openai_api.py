"""The pool through the official OpenAI client: what a DSPy or Gradio app would do."""

import concurrent.futures
import json

import jsonschema
import openai
import pytest


@pytest.fixture()
def client(pool):
    # No retries: a 429 must reach the test, not be retried away.
    return openai.OpenAI(base_url=f"{pool}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, text, max_tokens=24, temperature=0.0, model="smollm2", **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=temperature, **extra
    )


def test_a_chat_completion_knows_paris(client):
    # The question carries its answer: unprompted, the 135M model's answer is a near-tie that the CPU
    # kernels' rounding decides.
    response = ask(client, "Paris is the capital of France. Which city is the capital of France?")
    assert "Paris" in response.choices[0].message.content
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streamed_pieces_concatenate_to_the_full_text(client):
    full = ask(client, "Write one sentence about rain.", max_tokens=32).choices[0].message.content
    stream = ask(client, "Write one sentence about rain.", max_tokens=32, stream=True, stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(pieces) > 1, "text arrived in several pieces"
    assert "".join(pieces) == full
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_text_completions_and_models(client):
    completion = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert completion.choices[0].text
    # The alias first, then the model file's name; each of the names users write is served.
    ids = [model.id for model in client.models.list().data]
    assert ids == ["smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"]
    for name in ids + ["SmolLM2-135M-Instruct.Q4_1"]:
        reply = ask(client, "Say hi.", max_tokens=2, model=name)
        assert reply.model == name and reply.choices[0].message.content is not None


def test_a_model_the_pool_does_not_serve_is_a_404_under_strict_model(client):
    with pytest.raises(openai.NotFoundError) as refused:
        ask(client, "Say hi.", max_tokens=2, model="gpt-4o")
    error = refused.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "gpt-4o" in error["message"] and "smollm2" in error["message"]


def test_an_invalid_request_is_a_400_in_openais_error_shape(client):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "hi", temperature=5.0)
    error = caught.value
    assert error.status_code == 400
    assert error.body["type"] == "invalid_request_error"
    assert error.body["param"] == "temperature"
    assert "temperature" in error.body["message"]


def test_a_saturated_queue_answers_429_with_retry_after(client):
    # One slot and a coordinator queue of one: of eight long requests at once, most are refused.
    def attempt(i):
        try:
            ask(client, f"Tell me a long story about the number {i}.", max_tokens=64)
            return "ok", None
        except openai.RateLimitError as error:
            return "429", error.response.headers.get("retry-after")

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    refused = [retry for kind, retry in outcomes if kind == "429"]
    assert refused, outcomes
    assert all(retry == "1" for retry in refused)
    assert any(kind == "ok" for kind, _ in outcomes), "admitted requests still complete"


def test_ignore_eos_generates_exactly_max_tokens(client):
    # A question the model answers in a few tokens: without ignore_eos it stops early.
    short = ask(client, "Which city is the capital of France?", max_tokens=48)
    assert short.usage.completion_tokens < 48, "the model ends this answer on its own"
    forced = ask(client, "Which city is the capital of France?", max_tokens=48, extra_body={"ignore_eos": True})
    assert forced.usage.completion_tokens == 48
    assert forced.choices[0].finish_reason == "length"


def test_usage_is_streamed_only_when_asked(client):
    # Without stream_options.include_usage OpenAI sends no usage at all.
    chunks = list(ask(client, "Write one sentence about snow.", max_tokens=16, stream=True))
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all("usage" not in chunk.model_dump(exclude_unset=True) for chunk in chunks)
    # With it: every chunk has usage null except one last chunk with no choices and the whole usage.
    chunks = list(ask(client, "Write one sentence about snow.", max_tokens=16, stream=True, stream_options={"include_usage": True}))
    *body, last = chunks
    assert all(chunk.usage is None and "usage" in chunk.model_dump(exclude_unset=True) for chunk in body)
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_a_repeated_prompt_reports_its_cached_tokens(client):
    messages = [
        {"role": "system", "content": "You extract entities. " * 40},
        {"role": "user", "content": "Text: Ada Lovelace worked in London."},
    ]
    first = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=4, temperature=0)
    again = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=4, temperature=0)
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    # The one worker kept the prompt's keys and values: all of it is reused but the last attention tile
    # (64 tokens, recomputed so that greedy text does not depend on the cache).
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert again.usage.prompt_tokens - 64 <= cached < again.usage.prompt_tokens
    assert again.choices[0].message.content == first.choices[0].message.content


def test_dspy_default_max_tokens_is_served_to_where_the_context_ends(client):
    # dspy.LM sends max_tokens 4000 unless told otherwise; a slot holds 2048 tokens. A short question is
    # answered as usual, ending on its own.
    short = ask(client, "Which city is the capital of France?", max_tokens=4000)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 100
    # A prompt that fills most of the slot generates up to the context's end and says "length".
    long = ask(client, "word " * 1900, max_tokens=4000, extra_body={"ignore_eos": True})
    assert long.choices[0].finish_reason == "length"
    assert long.usage.prompt_tokens + long.usage.completion_tokens == 2048


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "likes": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}, "maxItems": 3},
    },
    "required": ["name", "age", "likes"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_parses_and_validates(client, temperature, stream):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
    reply = ask(client, "Ann Berg is 31 and likes red. Describe her.", max_tokens=64, temperature=temperature,
                seed=3, response_format=response_format, stream=stream)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
    else:
        text = reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop", "the object was complete"
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_output_is_an_object_and_a_bad_schema_is_a_400_naming_it(client):
    reply = ask(client, "List two fruits.", max_tokens=48, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, "Hi.", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}})
    assert refused.value.body["param"] == "response_format.json_schema.schema"
    assert "strnig" in refused.value.body["message"]


def test_logit_bias_and_penalties_as_the_client_sends_them(client):
    # Token 28 is "," in the default model's vocabulary: +100 makes it every token, greedy or sampled.
    for temperature in (0.0, 0.9):
        forced = ask(client, "Name a color.", max_tokens=5, temperature=temperature, logit_bias={"28": 100}, seed=1)
        assert forced.choices[0].message.content == ",,,,,"
    looping = "Continue this list forever: apple, banana, cherry, apple, banana, cherry, apple,"
    plain = ask(client, looping, max_tokens=60).choices[0].message.content
    penalised = ask(client, looping, max_tokens=60, frequency_penalty=2.0).choices[0].message.content
    assert penalised.count("apple") < plain.count("apple"), (plain, penalised)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, "Hi.", logit_bias={"99999999": 5})
    assert refused.value.body["param"] == "logit_bias"


def test_what_the_pool_does_not_serve_is_refused_naming_it_not_ignored(client):
    for extra, param in [
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}, "tools"),
    ]:
        with pytest.raises(openai.BadRequestError) as refused:
            ask(client, "Hi.", **extra)
        assert refused.value.body["param"] == param
        assert "not supported" in refused.value.body["message"]
    # The "off" values clients send are served.
    assert ask(client, "Hi.", max_tokens=2, logprobs=False, tools=[]).choices[0].message.content
