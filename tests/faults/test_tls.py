"""TLS on the router (`--tls-cert/--tls-key`): real TLS clients (the openai SDK, http.client)
against a router process with self-signed certificates made here, the certificate replaced on
disk while it serves, and unusable files refused before serving."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from conftest import SimProcess, start_sim
from tlskit import (
    Pair,
    TlsRouter,
    client_context,
    make_pair,
    replace,
    start_tls_router,
    write_pair,
)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    sp = start_sim("--model", "demo", "--profile", "instant")
    yield sp
    sp.stop()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Pair]:
    first = make_pair("first")
    cert, key = write_pair(tmp_path, "tls", first)
    return cert, key, first


@pytest.fixture
def tls_router(
    sim: SimProcess, files: tuple[Path, Path, Pair], tmp_path: Path
) -> Iterator[TlsRouter]:
    cert, key, _ = files
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": [sim.url],
                "host": "127.0.0.1",
                "port": 0,
                "tls_cert": str(cert),
                "tls_key": str(key),
                "tls_reload_s": 0.05,
                "health_interval_s": 0.5,
            }
        )
    )
    router = start_tls_router(config)
    yield router
    router.stop()


def test_the_openai_sdk_over_tls(tls_router: TlsRouter, files: tuple[Path, Path, Pair]) -> None:
    trusted = client_context(files[2])
    http_client = openai.DefaultHttpx2Client(verify=trusted)
    with openai.OpenAI(
        base_url=f"https://127.0.0.1:{tls_router.port}/v1",
        api_key="unused",
        max_retries=0,
        timeout=10,
        http_client=http_client,
    ) as client:
        assert [m.id for m in client.models.list()] == ["demo"]
        chat = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert chat.choices[0].message.content
        stream = client.completions.create(
            model="demo", prompt="hi", max_tokens=4, stream=True, extra_body={"ignore_eos": True}
        )
        assert sum(1 for _ in stream) == 4


def test_an_untrusted_client_and_plain_http_get_nothing(
    tls_router: TlsRouter, files: tuple[Path, Path, Pair]
) -> None:
    stranger = client_context(make_pair("stranger"))
    conn = http.client.HTTPSConnection("127.0.0.1", tls_router.port, timeout=10, context=stranger)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/health")
    conn.close()
    plain = http.client.HTTPConnection("127.0.0.1", tls_router.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("GET", "/health")
        plain.getresponse()
    plain.close()


def _get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_a_renewed_certificate_is_served_to_new_connections(
    tls_router: TlsRouter, files: tuple[Path, Path, Pair]
) -> None:
    cert, key, first = files
    second = make_pair("second")
    assert tls_router.served_fingerprint() == first.fingerprint
    kept = http.client.HTTPSConnection(
        "127.0.0.1", tls_router.port, timeout=10, context=client_context(first)
    )
    assert _get(kept, "/health")[0] == 200

    # Half a rotation (the certificate before its key) fails to load: the old pair serves on.
    replace(cert, second.cert)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("TLS reload failed" in x for x in tls_router.log):
        time.sleep(0.05)
    assert any("TLS reload failed" in line for line in tls_router.log), tls_router.log
    assert tls_router.served_fingerprint() == first.fingerprint

    replace(key, second.key)  # the rotation completes
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and tls_router.served_fingerprint() != second.fingerprint:
        time.sleep(0.05)
    assert tls_router.served_fingerprint() == second.fingerprint
    fresh = http.client.HTTPSConnection(
        "127.0.0.1", tls_router.port, timeout=10, context=client_context(second)
    )
    status, body = _get(fresh, "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "demo"
    fresh.close()
    # the connection opened before the renewal keeps its session
    assert _get(kept, "/health")[0] == 200
    kept.close()


@pytest.mark.parametrize("problem", ["missing", "mismatched", "one_only"])
def test_unusable_tls_files_are_refused_before_serving(
    problem: str, sim: SimProcess, files: tuple[Path, Path, Pair], tmp_path: Path
) -> None:
    cert, key, _ = files
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    if problem == "missing":
        args[1] = str(tmp_path / "nope.crt")
    elif problem == "mismatched":
        other = tmp_path / "other.key"
        other.write_bytes(make_pair("other").key)
        args[3] = str(other)
    else:
        args = args[:2]
    out = subprocess.run(
        [sys.executable, "-m", "vfleet", "router", "--backend", sim.url, "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    assert "Traceback" not in out.stderr
    assert "TLS" in lines[0]
