"""Tenancy end to end (issue 16 item 6): a router with two workers (SO_REUSEPORT) in front of two
`vfleet sim` engines, a tenants file of named keys, and the official `openai` client.

Each key sees and may use only its allowlisted models; token budgets are charged what the engines
report in `usage` (streams included, whether or not the client asked for usage); budgets and
request limits hold across both workers; the per-key token counter in /metrics is the sum over
workers; editing the file changes who gets in without a restart; no secret ever shows.

Requests meant to spread over both workers go on fresh connections (the kernel picks a worker per
connection); a test waits for each request's charge to show in /metrics before the next, since a
charge is settled when the answer ends and the next request may reach the other worker first.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import SimProcess, start_router, start_sim
from httpclient import Client, metric_value, wait_for
from vfleet.router.affinity import Owners
from vfleet.router.inbound import estimated_tokens
from vfleet.router.locator import Locator

pytestmark = pytest.mark.timeout(120)

ADMIN = "sk-admin-tenancy"
SIM = ("--profile", "instant", "--max-model-len", "1024", "--num-gpu-blocks", "256")
ASK: Any = [{"role": "user", "content": "Say something about the sea."}]


def tenants_yaml(extra: str = "") -> str:
    b_digest = hashlib.sha256(b"sk-team-b").hexdigest()
    return (
        "keys:\n"
        "  - {name: team-a, key: sk-team-a, models: [alpha]}\n"
        f"  - {{name: team-b, key_sha256: {b_digest}}}\n"
        "  - {name: tiny, key: sk-tiny, models: [alpha], tokens_per_minute: 60}\n"
        "  - {name: once, key: sk-once, requests_per_minute: 1}\n"
        "  - {name: counted, key: sk-counted, models: [alpha]}\n"
        "  - {name: counted-once, key: sk-counted-once, requests_per_minute: 1}\n"
        "  - {name: beta-only, key: sk-beta-only, models: [beta]}\n" + extra
    )


@pytest.fixture(scope="module")
def sims() -> Iterator[list[SimProcess]]:
    started = [start_sim("--model", name, *SIM) for name in ("alpha", "beta")]
    yield started
    for s in started:
        s.stop()


def _router(sims: list[SimProcess], tenants: Path, admin: Path) -> SimProcess:
    backends = [a for s in sims for a in ("--backend", s.url)]
    rp = start_router(
        *backends,
        *("--workers", "2", "--health-interval", "0.2"),
        *("--tenants-file", str(tenants), "--admin-key-file", str(admin)),
    )
    assert wait_for(lambda: sum("ready on" in line for line in rp.log) == 2, timeout_s=20)
    return rp


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tenancy")
    tenants = d / "tenants.yaml"
    tenants.write_text(tenants_yaml())
    admin = d / "admin.txt"
    admin.write_text(ADMIN + "\n")
    return tenants, admin


@pytest.fixture(scope="module")
def router(sims: list[SimProcess], files: tuple[Path, Path]) -> Iterator[SimProcess]:
    rp = _router(sims, *files)
    yield rp
    rp.stop()


def oai(router: SimProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0, timeout=20)


def post(router: SimProcess, key: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """One request on a fresh connection (so on either worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=20)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data)
    finally:
        conn.close()


def scrape(router: SimProcess) -> str:
    resp = Client(router.url).get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status == 200
    return resp.body.decode()


def key_tokens(text: str, key: str, kind: str, model: str = "alpha") -> float:
    """The counter's value for one (key, model, kind); 0 before it is first counted."""
    try:
        return metric_value(text, "vfleet_router_key_tokens_total", key=key, model=model, kind=kind)
    except AssertionError:
        return 0.0


def charged_is(router: SimProcess, key: str, total: int) -> bool:
    text = scrape(router)
    return key_tokens(text, key, "prompt") + key_tokens(text, key, "completion") == total


def test_each_key_sees_and_uses_only_its_models(router: SimProcess) -> None:
    a = oai(router, "sk-team-a")
    assert [m.id for m in a.models.list()] == ["alpha"]
    assert a.models.retrieve("alpha").id == "alpha"
    with pytest.raises(openai.NotFoundError) as missing:
        a.models.retrieve("beta")
    assert missing.value.status_code == 404
    with pytest.raises(openai.NotFoundError) as refused:
        a.chat.completions.create(model="beta", messages=ASK, max_tokens=4)
    body: Any = refused.value.body
    # The same answer as for a model that does not exist: nothing learnt about other keys.
    assert body["type"] == "not_found_error" and body["param"] == "model", body
    assert body["message"] == "The model `beta` does not exist."
    b = oai(router, "sk-team-b")  # a key given by its SHA-256 only: every model
    assert sorted(m.id for m in b.models.list()) == ["alpha", "beta"]
    out = b.chat.completions.create(model="beta", messages=ASK, max_tokens=4)
    assert out.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        oai(router, "sk-nobody").models.list()


def test_token_budget_is_charged_real_usage_then_429_with_retry_after(router: SimProcess) -> None:
    body = {"model": "alpha", "messages": ASK, "max_tokens": 5, "ignore_eos": True}
    estimate = int(estimated_tokens(body))
    used = 0
    for _ in range(30):
        status, headers, answer = post(router, "sk-tiny", body)
        if status == 429:
            break
        assert status == 200, answer
        used += answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
        # the charge is settled (on whichever worker) before the next request
        assert wait_for(partial(charged_is, router, "tiny", used), timeout_s=10)
    assert status == 429, "the budget never ran out"
    err = answer["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == 429, answer
    assert err["message"] == "Token rate limit reached for this API key."
    assert int(headers["retry-after"]) >= 1
    # Admitted while what it had used (the engines' usage) plus this estimate fit in 60.
    assert used + estimate > 60 >= used - answer_tokens(body, router) + estimate


def answer_tokens(body: dict[str, Any], router: SimProcess) -> int:
    """What one such request uses (the engine is deterministic for the same prompt)."""
    _, _, answer = post(router, "sk-team-a", body)
    return int(answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"])


def test_streams_are_charged_their_usage_and_relayed_without_an_extra_event(
    router: SimProcess,
) -> None:
    a = oai(router, "sk-team-a")
    reference = a.chat.completions.create(
        model="alpha", messages=ASK, max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert reference.usage is not None
    prompt = reference.usage.prompt_tokens
    before = scrape(router)
    chunks = list(
        a.chat.completions.create(
            model="alpha", messages=ASK, max_tokens=6, stream=True, extra_body={"ignore_eos": True}
        )
    )
    # The router asked the engine for usage; the client, which did not, gets no usage event.
    assert all(c.choices and c.usage is None for c in chunks), chunks[-1]
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    asked = list(
        a.chat.completions.create(
            model="alpha",
            messages=ASK,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 6
    assert asked[-1].usage.prompt_tokens == prompt

    def charged() -> bool:
        after = scrape(router)
        return (
            key_tokens(after, "team-a", "completion") - key_tokens(before, "team-a", "completion")
            == 12
            and key_tokens(after, "team-a", "prompt") - key_tokens(before, "team-a", "prompt")
            == 2 * prompt
        )

    assert wait_for(charged, timeout_s=10)


def test_usage_counter_is_the_sum_over_workers_and_names_no_secret(router: SimProcess) -> None:
    before = key_tokens(scrape(router), "team-b", "completion", "beta")
    body = {"model": "beta", "messages": ASK, "max_tokens": 3, "ignore_eos": True}
    for _ in range(16):  # fresh connections: both workers answer some
        status, _, answer = post(router, "sk-team-b", body)
        assert status == 200 and answer["usage"]["completion_tokens"] == 3
    # Every scrape, on whichever worker, shows all 16 requests' tokens.
    for _ in range(6):
        assert wait_for(
            lambda: key_tokens(scrape(router), "team-b", "completion", "beta") - before == 48,
            timeout_s=10,
        )
    text = scrape(router)
    for secret in ("sk-team-a", "sk-team-b", "sk-tiny", "sk-once"):
        assert secret not in text
        assert not any(secret in line for line in router.log)


def key_requests(text: str, key: str, model: str, code: int) -> float:
    try:
        return metric_value(
            text, "vfleet_router_key_requests_total", key=key, model=model, code=str(code)
        )
    except AssertionError:
        return 0.0


def test_requests_are_counted_per_key_model_and_code_over_workers(router: SimProcess) -> None:
    series = [
        ("counted", "alpha", 200),
        ("counted", "-", 404),
        ("counted-once", "alpha", 200),
        ("counted-once", "-", 429),
    ]
    text = scrape(router)
    before = {s: key_requests(text, *s) for s in series}
    alpha = {"model": "alpha", "messages": ASK, "max_tokens": 1}
    for _ in range(6):  # fresh connections: both workers answer some
        assert post(router, "sk-counted", alpha)[0] == 200
    for _ in range(2):  # off its allowlist: the client's model name is not a label
        status, _, answer = post(router, "sk-counted", {**alpha, "model": "beta"})
        assert status == 404 and answer["error"]["param"] == "model"
    assert post(router, "sk-counted", {**alpha, "model": "no-such/model"})[0] == 404
    once = [post(router, "sk-counted-once", alpha)[0] for _ in range(4)]
    assert set(once) <= {200, 429} and once.count(429) >= 3, once
    want = {
        ("counted", "alpha", 200): 6,
        ("counted", "-", 404): 3,
        ("counted-once", "alpha", 200): once.count(200),
        ("counted-once", "-", 429): once.count(429),
    }

    def counted() -> bool:
        text = scrape(router)
        return all(key_requests(text, *s) - before[s] == n for s, n in want.items())

    for _ in range(6):  # whichever worker answers the scrape sums both
        assert wait_for(counted, timeout_s=10)
    text = scrape(router)
    assert "no-such/model" not in text and 'model="beta",code' not in text


def call(router: SimProcess, method: str, path: str, key: str) -> tuple[int, Any]:
    """One request without a body on a fresh connection (so on either worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=20)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_stored_response_is_only_for_keys_allowed_its_model(router: SimProcess) -> None:
    made = oai(router, "sk-team-a").responses.create(model="alpha", input="hi", max_output_tokens=2)
    path = f"/v1/responses/{made.id}"
    # Each call on a fresh connection: the worker that relayed the answer knows the model from
    # it; the other learns it from the engine's stored response when it finds the engine.
    for _ in range(4):
        status, body = call(router, "GET", path, "sk-team-a")
        assert status == 200 and body["id"] == made.id and body["model"] == "alpha"
        status, body = call(router, "GET", path, "sk-team-b")  # every model
        assert status == 200 and body["id"] == made.id
        for method, where in (("GET", path), ("DELETE", path), ("POST", path + "/cancel")):
            status, body = call(router, method, where, "sk-beta-only")
            assert status == 404, (method, body)
            assert body["error"] == {
                "message": f"No engine has a stored response `{made.id}`.",
                "type": "not_found_error",
                "param": "response_id",
                "code": 404,
            }
    # A key allowed the model may follow the conversation; the other is refused its model.
    for key, allowed in (("sk-team-a", True), ("sk-beta-only", False)):
        try:
            follow = oai(router, key).responses.create(
                model="alpha", input="and?", previous_response_id=made.id
            )
            assert allowed and follow.previous_response_id == made.id
        except openai.NotFoundError:
            assert not allowed


def test_a_router_process_that_did_not_relay_it_learns_the_model_from_the_engine(
    sims: list[SimProcess],
) -> None:
    alpha, beta = sims
    made = openai.OpenAI(base_url=alpha.url + "/v1", api_key="x", max_retries=0, timeout=20)
    rid = made.responses.create(model="alpha", input="hi", max_output_tokens=2).id
    owners = Owners()

    async def locate() -> str | None:
        return await Locator(owners).locate(rid, [beta.url, alpha.url], b"")

    assert asyncio.run(locate()) == alpha.url
    assert owners.get(rid) == alpha.url and owners.model(rid) == "alpha"


def test_a_request_limit_holds_across_workers(router: SimProcess) -> None:
    body = {"model": "alpha", "messages": ASK, "max_tokens": 1}
    statuses = [post(router, "sk-once", body)[0] for _ in range(12)]  # on both workers
    assert statuses.count(200) == 1 and statuses.count(429) == 11, statuses


def test_editing_the_file_takes_effect_without_a_restart(
    sims: list[SimProcess], tmp_path: Path
) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(tenants_yaml())
    admin = tmp_path / "admin.txt"
    admin.write_text(ADMIN + "\n")
    rp = _router(sims, tenants, admin)
    try:
        body = {"model": "alpha", "messages": ASK, "max_tokens": 1}
        assert post(rp, "sk-team-c", body)[0] == 401
        # team-b leaves, team-c arrives; written whole in one rename, as config tools do
        edited = tenants_yaml().replace("team-b", "team-old") + (
            "  - {name: team-c, key: sk-team-c, models: [beta]}\n"
        )
        edited = "\n".join(line for line in edited.splitlines() if "team-old" not in line) + "\n"
        staged = tmp_path / "tenants.new"
        staged.write_text(edited)
        staged.replace(tenants)

        def both_workers_agree() -> bool:  # eight fresh connections in a row
            return all(
                post(rp, "sk-team-c", {**body, "model": "beta"})[0] == 200
                and post(rp, "sk-team-b", body)[0] == 401
                for _ in range(8)
            )

        assert wait_for(both_workers_agree, timeout_s=15, interval_s=0.2)
        status, _, answer = post(rp, "sk-team-c", body)  # alpha is not on its list
        assert status == 404 and answer["error"]["type"] == "not_found_error"
        # A broken edit keeps the keys in force (and says so without quoting the file).
        tenants.write_text("keys: [ {name: team-c, key: sk-team-c\n")
        assert wait_for(lambda: any("keys in force stay" in line for line in rp.log), timeout_s=10)
        assert post(rp, "sk-team-c", {**body, "model": "beta"})[0] == 200
        assert not any("sk-team-c" in line for line in rp.log)
    finally:
        rp.stop()


def test_a_bad_tenants_file_is_a_one_line_error(sims: list[SimProcess], tmp_path: Path) -> None:
    from conftest import run_vfleet

    bad = tmp_path / "tenants.yaml"
    bad.write_text("keys:\n  - {name: x, key: sk-secret-x, tokens_per_minute: lots}\n")
    out = run_vfleet("router", "--backend", sims[0].url, "--tenants-file", str(bad))
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "tokens_per_minute must be a number" in lines[0], out.stderr
    assert "sk-secret-x" not in out.stderr
