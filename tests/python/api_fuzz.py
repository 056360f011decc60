"""Malformed and odd requests against a live pool's HTTP API, and what every answer must be.

Each case is a request built from a seeded random choice: a valid chat or text completion with some of
its fields replaced by values of the wrong type, out of range, huge or odd (roles, content parts, stop
lists, JSON Schemas that compile, that cannot and that no value matches), or a body that is not the JSON
a route takes at all. Whatever is sent, the answer must be a 200 whose body is a completion (or a
well-formed event stream), or a 4xx in OpenAI's error shape; a 400 for a JSON object names the field at
fault as `param`. A 5xx, a hang or a dropped connection is a finding.

The Python tests run a short seeded pass (test_malformed_requests.py); a longer one against any pool:

    python3 tests/python/api_fuzz.py --url http://127.0.0.1:8000 --requests 2000 --seed 7
"""

import argparse
import http.client
import json
import random
import sys
import urllib.parse

ROUTES = ("/v1/chat/completions", "/v1/completions")
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name"]}


def odd_value(rnd):
    """A JSON value of any type, often one no field takes."""
    return rnd.choice([
        None, True, 0, -1, 2**31, 2**64 + 5, -(2**63) - 1, 1e308, 0.5, "", "x", "a" * rnd.choice([100, 70_000]),
        "\u0000", "\U0001F600", "é" * 1000, [], ["x"] * rnd.choice([1, 5, 300]), {}, {"a": 1}, [[[[]]]],
    ])


def odd_message(rnd):
    message = {
        "role": rnd.choice(["user", "system", "assistant", "developer", "tool", "", "USER", None, 5]),
        "content": rnd.choice([
            "hi", "", None, 7, {"a": 1}, [{"type": "text", "text": "hello"}], [{"type": "text"}], [{"text": 5}],
            [{"type": "image_url", "image_url": {"url": "x"}}], "z" * rnd.choice([10, 10_000]),
        ]),
    }
    if rnd.random() < 0.1:
        del message["content"]
    if rnd.random() < 0.05:
        del message["role"]
    return message


def odd_response_format(rnd):
    def schema(body):
        return {"type": "json_schema", "json_schema": {"name": "x", "schema": body}}

    return rnd.choice([
        {"type": "json_object"}, {"type": "text"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {}},
        {"type": "weird"}, 5, schema(SCHEMA), schema({"$ref": "#"}), schema(False), schema({"type": "strnig"}),
        schema({"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}),
        schema({"type": "integer", "minimum": 10, "maximum": 1}), schema({"enum": list(range(3000))}),
        schema({"type": "string", "pattern": "(((a*)*)*)*["}), schema({"type": "string", "minLength": 100_000}),
        {"type": "json_object", "schema": SCHEMA},
    ])


# The fields both endpoints take, each with values a client might send by mistake.
FIELDS = {
    "max_tokens": lambda rnd: rnd.choice([1, 3, 0, -1, 2**40, 1.5, "4", None]),
    "max_completion_tokens": lambda rnd: rnd.choice([2, 0, -3, 9e99]),
    "temperature": lambda rnd: rnd.choice([0, 0.7, -1, 3, 100, 1e308, "hot", None]),
    "top_p": lambda rnd: rnd.choice([0, 1, 0.5, 2, -1, None]),
    "top_k": lambda rnd: rnd.choice([0, 1, 40, -5]),
    "stop": lambda rnd: rnd.choice(["\n", "", [""], ["a"] * 10, ["b"] * 1000, "s" * 5000, 5, [5], None]),
    "seed": lambda rnd: rnd.choice([0, -1, 2**64, 1.5, "x"]),
    "n": lambda rnd: rnd.choice([1, 2, 0, -1]),
    "stream": lambda rnd: rnd.choice([False, "yes", 1, None]),
    "stream_options": lambda rnd: rnd.choice([{"include_usage": True}, {"include_usage": "x"}, 5, None]),
    "model": lambda rnd: rnd.choice(["x", "", 5, None]),
    "ignore_eos": lambda rnd: rnd.choice([True, "no", 3]),
    "response_format": odd_response_format,
    "logit_bias": lambda rnd: rnd.choice([{"1": 100}, {"28": -100, "29": 5.5}, {"x": 1}, {"1": 101}, {"99999999": 1},
                                          {str(i): 1 for i in range(2000)}, {"1": "a"}, 5]),
    "frequency_penalty": lambda rnd: rnd.choice([0, 1.5, -2, 2.5, "x", None]),
    "presence_penalty": lambda rnd: rnd.choice([0, 2, -0.5, -3, 1e39]),
    "logprobs": lambda rnd: rnd.choice([False, True, 3, None]),
    "tools": odd_value,
    "tool_choice": lambda rnd: rnd.choice(["none", "auto", 5]),
    "best_of": lambda rnd: rnd.choice([1, 2, None]),
}


def request_object(rnd, mutation_rate):
    """A completion request with some fields made odd; `mutation_rate` is each field's chance."""
    route = rnd.choice(ROUTES)
    body = {"max_tokens": rnd.choice([1, 2, 4])}
    if route == "/v1/chat/completions":
        if rnd.random() < mutation_rate:
            body["messages"] = rnd.choice([[odd_message(rnd) for _ in range(rnd.choice([0, 1, 3, 300]))], odd_value(rnd)])
        elif rnd.random() > mutation_rate / 4:
            body["messages"] = [{"role": "user", "content": "Say hi"}]
    elif rnd.random() < mutation_rate:
        body["prompt"] = rnd.choice([odd_value(rnd), ["a", "b"], [1, 2, 3], "q" * 50_000])
    else:
        body["prompt"] = "Once upon a time"
    for field, make in FIELDS.items():
        if rnd.random() < mutation_rate:
            body[field] = make(rnd)
    return route, body


def raw_body(rnd):
    """A body that is not a JSON object of the route's shape at all."""
    nested = "[" * 100_000 + "]" * 100_000
    return rnd.choice([
        b"", b"{", b"null", b"[]", b"\xff\xfe{}", nested.encode(), b'{"messages": ' + nested[:20_000].encode() + b"}",
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} trailing',
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2',
    ])


def cases(seed, count, mutation_rate=0.15):
    """`count` requests: (route, body bytes, whether the body is a JSON object, a description)."""
    rnd = random.Random(seed)
    for _ in range(count):
        if rnd.random() < 0.1:
            body = raw_body(rnd)
            yield rnd.choice(ROUTES), body, False, repr(body[:120])
            continue
        route, body = request_object(rnd, mutation_rate)
        text = json.dumps(body).encode()
        yield route, text, True, text[:400].decode(errors="replace")


def send(url, route, body, timeout=120.0):
    """POSTs `body`; (status, response bytes). Reads whatever the server answers even when it answers
    before reading a body over its limit."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.putrequest("POST", route)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        try:
            connection.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def finding(status, answer, body_is_object):
    """What is wrong with an answer, or None."""
    if status >= 500:
        return f"{status} {answer[:300]!r}"
    if status == 200:
        try:
            reply = json.loads(answer)
        except ValueError:
            return f"200 that is not JSON: {answer[:300]!r}"
        if not reply.get("choices"):
            return f"200 without choices: {answer[:300]!r}"
        return None
    try:
        error = json.loads(answer)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} not in OpenAI's error shape: {answer[:300]!r}"
    if not isinstance(error.get("message"), str) or not error["message"] or not isinstance(error.get("type"), str):
        return f"{status} without a message and type: {answer[:300]!r}"
    if status == 400 and body_is_object and not error.get("param"):
        return f"400 naming no field: {error['message'][:300]!r}"
    return None


def stream_finding(url, seed):
    """One streamed request, valid but for odd text and stops; what is wrong with its events, or None."""
    rnd = random.Random(seed)
    body = {
        "stream": True, "max_tokens": rnd.choice([1, 4, 16]), "temperature": rnd.choice([0, 0.8]),
        "messages": [{"role": "user", "content": rnd.choice(["Hi", "ünïcödé 😀", "\u0000\u0001", "<|im_end|>"])}],
    }
    if rnd.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    if rnd.random() < 0.3:
        body["stop"] = rnd.choice([["\n"], "e", ["😀", "a"]])
    if rnd.random() < 0.3:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    status, answer = send(url, "/v1/chat/completions", json.dumps(body).encode())
    if status != 200:
        return f"stream answered {status}: {answer[:300]!r} for {body}"
    events = [line[6:] for line in answer.decode().split("\n") if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return f"stream not ended by [DONE]: {answer[-300:]!r}"
    text, finish, usage = "", None, None
    for event in events[:-1]:
        chunk = json.loads(event)
        if "error" in chunk:
            return f"stream error event: {event[:300]}"
        for choice in chunk.get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
        usage = chunk.get("usage") or usage
    if finish not in ("stop", "length"):
        return f"stream without a finish reason: {answer[-300:]!r}"
    if "stream_options" in body and not usage:
        return f"stream without the usage it was asked for: {answer[-300:]!r}"
    stops = [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop", [])
    if any(stop in text for stop in stops):
        return f"stream text {text!r} holds a stop string of {stops}"
    if "response_format" in body and finish == "stop" and not stops:
        try:
            json.loads(text)
        except ValueError:
            return f"constrained stream ended on its own with text that is not JSON: {text!r}"
    return None


def run(url, count, seed, streams=0, mutation_rate=0.15):
    """The findings of `count` odd requests and `streams` streamed ones; a list of strings."""
    findings = []
    for route, body, is_object, description in cases(seed, count, mutation_rate):
        try:
            status, answer = send(url, route, body)
        except (OSError, http.client.HTTPException) as error:
            findings.append(f"no answer ({error}) to {route} {description}")
            continue
        problem = finding(status, answer, is_object)
        if problem:
            findings.append(f"{problem} to {route} {description}")
    for index in range(streams):
        problem = stream_finding(url, seed * 1000 + index)
        if problem:
            findings.append(problem)
    return findings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the coordinator's HTTP API, e.g. http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mutation-rate", type=float, default=0.15, help="each field's chance of an odd value")
    args = parser.parse_args()
    findings = run(args.url, args.requests, args.seed, args.streams, args.mutation_rate)
    for line in findings:
        print(line)
    print(f"api_fuzz: {args.requests} requests, {args.streams} streams, seed {args.seed}: {len(findings)} findings")
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
