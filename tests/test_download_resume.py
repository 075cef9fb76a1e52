"""Resume after a kill, and shards as separate processes whose union is the repo."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from downloadkit import clean_env, command, run, same_files
from hfserver import HubServer, Repo, Throttle, make_files
from vfleet.download.plan import FileEntry, shard_files

BIG = "model-00001-of-00001.safetensors"
# sha256 of make_files' 2 GiB sparse BIG (seed 0), so the server need not hash it every run.
BIG_SHA256 = "9308061b70dc6abc4fc1268d403c013803bb248717c3460cfa2e3c42e09cb3c7"


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 2 GiB sparse: costs no disk on the server side, real bytes on the client side.
    spec: dict[str, int | bytes] = {BIG: 2 * 2**30, "config.json": b"{}", "extra.bin": 2**20}
    return make_files(tmp_path_factory.mktemp("big"), spec)


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as srv:
        yield srv


def test_killed_download_resumes_and_verifies(
    hub: HubServer, big_repo: Path, tmp_path: Path
) -> None:
    hub.add(Repo.from_dir("org/big", big_repo, known_sha256={BIG: BIG_SHA256}))
    hub.state.throttle = Throttle(300e6)  # slow enough that the kill lands mid-file
    out = tmp_path / "out"
    env = clean_env(tmp_path, HF_ENDPOINT=hub.url)
    log = out / f".{BIG}.vfleet-part.chunks"
    proc = subprocess.Popen(
        command("hf://org/big", "--to", str(out), "--json", "--chunk-mib", "32"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 4:  # header + 3 chunks
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the download finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert not (out / BIG).exists()
    assert (out / f".{BIG}.vfleet-part").exists()
    hub.state.throttle = None
    before = hub.served_bytes(BIG)
    r = run("hf://org/big", "--to", str(out), "--chunk-mib", "32", env=env)
    assert r.code == 0, r.stderr
    fetched_again = hub.served_bytes(BIG) - before
    assert fetched_again <= 2 * 2**30 - 3 * 32 * 2**20  # the logged chunks were not fetched again
    assert r.last("start")["done_bytes"] >= 3 * 32 * 2**20  # type: ignore[operator]
    # The client checked the sha256 the server computed from its copy; spot-check the bytes
    # that differ from zero too, rather than reading 2 x 2 GiB again.
    assert same_files(big_repo, out, sample=True)
    assert not list(out.glob(".*vfleet-part*"))


SHARD_SPEC: dict[str, int | bytes] = {
    "a.safetensors": 23 * 2**20,
    "b.safetensors": 17 * 2**20,
    "c.safetensors": 11 * 2**20,
    "d.safetensors": 9 * 2**20,
    "e.safetensors": 5 * 2**20,
    "f/g.bin": 3 * 2**20,
    "config.json": b'{"x": 1}',
    "tokenizer.json": b"tok" * 5000,
    "README.md": b"hello",
}


def test_three_shard_processes_make_the_repo_and_waiters_see_it(
    hub: HubServer, tmp_path: Path
) -> None:
    repo_dir = make_files(tmp_path / "repo", SHARD_SPEC)
    repo = hub.add(Repo.from_dir("org/sharded", repo_dir))
    env = clean_env(tmp_path, HF_ENDPOINT=hub.url)
    out = tmp_path / "out"
    waiter = subprocess.Popen(
        command("--to", str(out), "--wait-all", "3", "--wait-timeout", "40", "--json"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    shards = []
    for i in range(3):
        # Shard 2 reads its index the way an Indexed Job pod does.
        args = ["--shard", f"{i}/3"] if i < 2 else []
        extra = {"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETION_TOTAL": "3"} if i == 2 else {}
        shards.append(
            subprocess.Popen(
                command("hf://org/sharded", "--to", str(out), "--json", *args),
                env={**env, **extra},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate(timeout=45) for p in shards]
    assert [p.returncode for p in shards] == [0, 0, 0], [e for _, e in results]
    w_out, w_err = waiter.communicate(timeout=45)
    assert waiter.returncode == 0, w_err
    assert "all 3 shard(s)" in w_out
    assert same_files(repo_dir, out)

    # Each process fetched exactly its byte-balanced share, and the same plan.
    entries = [FileEntry(p, f.size) for p, f in repo.files.items()]
    expected = shard_files(entries, 3)
    done = [json.loads(o.splitlines()[-1]) for o, _ in results]
    assert len({d["digest"] for d in done}) == 1
    for i, d in enumerate(done):
        assert d["shard"] == f"{i}/3"
        assert d["bytes"] == sum(e.size for e in expected[i])
    loads = [d["bytes"] for d in done]
    assert max(loads) - min(loads) <= max(f.size for f in repo.files.values())

    # A late waiter for a finished download returns at once.
    late = run("--to", str(out), "--wait-all", "3", "--wait-timeout", "0", env=env)
    assert late.code == 0, late.stderr
    early = run("--to", str(tmp_path / "empty"), "--wait-all", "2", "--wait-timeout", "0", env=env)
    assert early.code == 1 and "waiting for shard(s) 0, 1 of 2" in early.stderr
