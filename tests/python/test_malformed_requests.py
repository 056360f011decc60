"""Odd and malformed requests (api_fuzz.py) against the real pool: every answer a completion or a 4xx in
OpenAI's shape naming the field at fault, never a 5xx, a hang or a dropped connection; the pool still
serves afterwards."""

import json
import urllib.request

import api_fuzz


def test_odd_requests_get_completions_or_errors_that_name_their_field(pool):
    findings = api_fuzz.run(pool, count=150, seed=20261207, streams=20)
    assert not findings, "\n".join(findings)
    with urllib.request.urlopen(f"{pool}/ready", timeout=5) as response:
        assert json.load(response)["ready"]


def test_a_schema_no_value_matches_is_refused_before_it_runs(pool):
    # It compiled and was queued, then failed at the first token with a 500.
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}}
    status, answer = api_fuzz.send(pool, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400, answer
    assert json.loads(answer)["error"]["param"] == "response_format.json_schema.schema"


def test_the_finding_check_itself_catches_what_it_is_for():
    # A check that passes everything would make the fuzz test above pass whatever the pool answers.
    assert api_fuzz.finding(500, b'{"error": {"message": "x", "type": "y"}}', True)
    assert api_fuzz.finding(400, b'{"error": {"message": "bad", "type": "invalid_request_error", "param": null}}', True)
    assert api_fuzz.finding(400, b"not json", False)
    assert api_fuzz.finding(200, b'{"choices": []}', True)
    ok = b'{"error": {"message": "invalid max_tokens: -1", "type": "invalid_request_error", "param": "max_tokens"}}'
    assert api_fuzz.finding(400, ok, True) is None
    assert api_fuzz.finding(400, b'{"error": {"message": "invalid JSON body", "type": "t", "param": null}}', False) is None
