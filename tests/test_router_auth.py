"""Router keys: verification by identity (not header spelling), the admin key for /metrics, keys
kept off the command line. Pure checks of vfleet.router.auth, then real routers in front of a
real sim on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import SimProcess, start_sim
from httpclient import Client
from vfleet.router import auth

Factory = Callable[..., SimProcess]
KEYS = (b"sk-alpha", b"sk-beta")
COMPLETION = {"model": "demo", "prompt": "Hi", "max_tokens": 1}
FLAG_WARNING = "visible to every local user"


# -- pure -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer sk-beta",
        b"bearer sk-beta",
        b"BEARER sk-beta",
        b"bEaReR sk-beta",
        b"Bearer  sk-beta",
        b"Bearer\tsk-beta",
        b"  Bearer sk-beta  ",
        b"Bearer sk-beta\t",
    ],
)
def test_spellings_of_one_credential_verify_to_one_identity(header: bytes) -> None:
    assert auth.verify(header, KEYS) == 1
    assert (
        auth.limit_key(header, KEYS) == auth.identity(1) == auth.limit_key(b"Bearer sk-beta", KEYS)
    )


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"Bearer",
        b"Bearer ",
        b"Bearersk-beta",
        b"Basic sk-beta",
        b"sk-beta",
        b"Bearer sk-bet",
        b"Bearer sk-beta2",
        b"Bearer sk-beta sk-alpha",
        b"Token sk-alpha",
    ],
)
def test_anything_else_is_refused(header: bytes) -> None:
    assert auth.verify(header, KEYS) is None


def test_identities_are_per_key_and_never_the_key() -> None:
    a = auth.limit_key(b"Bearer sk-alpha", KEYS)
    b = auth.limit_key(b"Bearer sk-beta", KEYS)
    assert a != b
    assert b"sk-" not in a + b
    # without keys everyone shares one bucket, whatever they send
    assert auth.limit_key(b"Bearer anything", ()) == auth.limit_key(b"", ()) == auth.NO_KEYS


# -- a router in front of a sim ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    sp = start_sim("--model", "demo", "--profile", "instant")
    yield sp
    sp.stop()


def _key_file(tmp_path: Path, name: str, *keys: str) -> str:
    path = tmp_path / name
    path.write_text("# keys\n" + "".join(k + "\n" for k in keys))
    path.chmod(0o600)
    return str(path)


def test_spelling_variants_share_one_rate_limit(
    router_factory: Factory, sim: SimProcess, tmp_path: Path
) -> None:
    keys = _key_file(tmp_path, "keys", "sk-alpha", "sk-beta")
    router = router_factory("--backend", sim.url, "--api-key-file", keys, "--rate-limit", "60")
    c = Client(router.url)
    spellings = [
        "Bearer sk-alpha",
        "bearer sk-alpha",
        "BEARER sk-alpha",
        "Bearer  sk-alpha",
        "Bearer\tsk-alpha",
        "bEARER sk-alpha",
        "BeArEr sk-alpha",
    ]
    # 60 a minute: a burst of 6, then 429, however the scheme is spelt
    statuses = [
        c.post("/v1/completions", COMPLETION, headers={"Authorization": h}).status
        for h in spellings
    ]
    assert statuses == [200] * 6 + [429]
    other = c.post("/v1/completions", COMPLETION, headers={"Authorization": "bearer sk-beta"})
    assert other.status == 200  # another key, its own bucket


def test_metrics_need_the_admin_key_and_ready_names_no_engine(
    router_factory: Factory, sim: SimProcess, tmp_path: Path
) -> None:
    keys = _key_file(tmp_path, "keys", "sk-client")
    admin = _key_file(tmp_path, "admin", "sk-admin")
    router = router_factory("--backend", sim.url, "--api-key-file", keys, "--admin-key-file", admin)
    c = Client(router.url)
    for headers in (None, {"Authorization": "Bearer sk-client"}, {"Authorization": "sk-admin"}):
        resp = c.get("/metrics", headers=headers)
        assert resp.status == 401
        assert resp.error["type"] == "authentication_error"
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert sim.url.encode() not in resp.body
        assert c.get("/ui", headers=headers).status == 401
        demand = c.get("/vfleet/demand", headers=headers)  # names engine URLs too
        assert demand.status == 401 and sim.url.encode() not in demand.body
    assert c.get("/vfleet/demand", headers={"Authorization": "Bearer sk-admin"}).status == 200
    scraped = c.get("/metrics", headers={"Authorization": "bearer sk-admin"})
    assert scraped.status == 200
    assert sim.url in scraped.body.decode()  # the admin sees everything
    ready = c.get("/ready")  # open (readiness probes carry no key), and names no engine
    assert ready.status == 200 and ready.json()["ready"] is True
    assert sim.url.encode() not in ready.body
    assert str(sim.port).encode() not in ready.body
    # the admin key is not a client key
    admin_as_client = c.post(
        "/v1/completions", COMPLETION, headers={"Authorization": "Bearer sk-admin"}
    )
    assert admin_as_client.status == 401
    assert (
        c.post("/v1/completions", COMPLETION, headers={"Authorization": "Bearer sk-client"}).status
        == 200
    )


def test_admin_key_from_the_environment(router_factory: Factory, sim: SimProcess) -> None:
    env = {"VFLEET_API_KEYS": "sk-client", "VFLEET_ADMIN_KEY": "sk-env-admin"}
    router = router_factory("--backend", sim.url, env=env)
    c = Client(router.url)
    assert c.get("/metrics", headers={"Authorization": "Bearer sk-client"}).status == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer sk-env-admin"}).status == 200


def test_with_client_keys_and_no_admin_key_metrics_are_closed(
    router_factory: Factory, sim: SimProcess
) -> None:
    router = router_factory("--backend", sim.url, env={"VFLEET_API_KEYS": "sk-client"})
    c = Client(router.url)
    for headers in (None, {"Authorization": "Bearer sk-client"}):
        resp = c.get("/metrics", headers=headers)
        assert resp.status == 401
        assert "admin key" in resp.error["message"]
    assert c.get("/health").status == 200


def test_without_keys_metrics_stay_open(router_factory: Factory, sim: SimProcess) -> None:
    router = router_factory("--backend", sim.url)
    assert Client(router.url).get("/metrics").status == 200
    assert not any(FLAG_WARNING in line for line in router.log)


def test_a_key_on_the_command_line_works_with_a_warning(
    router_factory: Factory, sim: SimProcess
) -> None:
    router = router_factory("--backend", sim.url, "--api-key", "sk-flag")
    c = Client(router.url)
    assert (
        c.post("/v1/completions", COMPLETION, headers={"Authorization": "Bearer sk-flag"}).status
        == 200
    )
    warnings = [line for line in router.log if FLAG_WARNING in line]
    assert len(warnings) == 1, router.log
    assert "sk-flag" not in warnings[0]


def test_a_key_file_gives_no_warning_and_keys_stay_off_argv(
    router_factory: Factory, sim: SimProcess, tmp_path: Path
) -> None:
    keys = _key_file(tmp_path, "keys", "sk-secret")
    router = router_factory("--backend", sim.url, "--api-key-file", keys)
    assert not any(FLAG_WARNING in line for line in router.log), router.log
    if sys.platform.startswith("linux"):
        argv = Path(f"/proc/{router.proc.pid}/cmdline").read_bytes()
        assert b"sk-secret" not in argv
