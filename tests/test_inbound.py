"""What the router reads from a request: only the fields its policy declares it needs."""

from __future__ import annotations

import orjson
import pytest

from vfleet.errors import BadRequest
from vfleet.http.server import Request
from vfleet.router.inbound import read_body, route_key
from vfleet.router.policies import POLICY_NAMES, Field, make_policy, prefix_hashes
from vfleet.router.state import RouteKey

PROMPT = "p" * 600  # two full prefix chunks


def _req(body: bytes, path: str = "/v1/completions") -> Request:
    return Request("POST", path, "", {b"x-session-id": b"s1"}, body, True)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_the_key_carries_exactly_what_the_policy_needs(name: str) -> None:
    policy = make_policy(name)
    req = _req(orjson.dumps({"model": "m", "prompt": PROMPT}))
    model, fields = read_body(req)
    key = route_key(policy, "m", req, fields)
    assert model == "m"
    assert key == RouteKey(
        "m",
        "s1" if Field.SESSION in policy.needs else None,
        prefix_hashes(PROMPT, model="m") if Field.PREFIX in policy.needs else (),
    )
    assert (name == "session") == (key.session is not None)
    assert (name in ("prefix", "kv")) == bool(key.prefix)  # kv falls back on prefix


@pytest.mark.parametrize("body", [b"{", b"[1]", b'"m"'])
def test_a_body_that_is_not_a_json_object_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        read_body(_req(body))


def test_an_audio_form_names_its_model_and_has_no_json_fields() -> None:
    form = b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--x--\r\n'
    assert read_body(_req(form, "/v1/audio/transcriptions")) == ("whisper", {})
