"""`vfleet download hf://...` as a process against the local Hub-compatible server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from downloadkit import clean_env, run, same_files, tree
from hfserver import HubFile, HubServer, Repo, make_files

SPEC: dict[str, int | bytes] = {
    "config.json": b'{"model_type": "qwen3"}',
    "README.md": b"# a model\n",
    "model-00001-of-00002.safetensors": 48 * 2**20 + 17,
    "model-00002-of-00002.safetensors": 20 * 2**20,
    "tokenizer/tokenizer.json": b"t" * 30000,
    "nested/deep/weights.bin": 3 * 2**20,
}


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_files(tmp_path_factory.mktemp("repo"), SPEC)


@pytest.fixture
def hub(repo_dir: Path) -> Iterator[HubServer]:
    with HubServer() as srv:
        srv.state.redirect_lfs = True
        srv.add(Repo.from_dir("org/model", repo_dir))
        yield srv


def test_download_matches_repo_and_rerun_skips(
    hub: HubServer, repo_dir: Path, tmp_path: Path
) -> None:
    env = clean_env(tmp_path, HF_ENDPOINT=hub.url)
    out = tmp_path / "out"
    r = run("hf://org/model", "--to", str(out), "--chunk-mib", "8", env=env)
    assert r.code == 0, r.stderr
    assert same_files(repo_dir, out)
    done = r.last("done")
    assert done["files"] == len(SPEC) and done["downloaded_bytes"] == sum(
        len(v) if isinstance(v, bytes) else v for v in SPEC.values()
    )
    assert done["revision"] == hub.state.repos[("model", "org/model")].commit
    assert not list(out.rglob("*.vfleet-part*"))
    again = run("hf://org/model", "--to", str(out), env=env)
    assert again.code == 0, again.stderr
    assert again.last("done")["downloaded_bytes"] == 0
    assert again.last("done")["skipped_files"] == len(SPEC)


def test_include_exclude(hub: HubServer, tmp_path: Path) -> None:
    env = clean_env(tmp_path, HF_ENDPOINT=hub.url)
    out = tmp_path / "out"
    r = run(
        "hf://org/model",
        "--to",
        str(out),
        "--include",
        "*.json",
        "--exclude",
        "tokenizer/*",
        env=env,
    )
    assert r.code == 0, r.stderr
    assert list(tree(out)) == ["config.json"]
    none = run("hf://org/model", "--to", str(out), "--include", "*.gguf", env=env)
    assert none.code == 1 and "no file matches" in none.stderr


def test_private_repo_needs_the_token_and_it_never_reaches_the_cdn(
    hub: HubServer, repo_dir: Path, tmp_path: Path
) -> None:
    hub.state.token = "hf_secret"
    hub.add(Repo.from_dir("org/private", repo_dir, private=True))
    out = tmp_path / "out"
    anon = run("hf://org/private", "--to", str(out), env=clean_env(tmp_path, HF_ENDPOINT=hub.url))
    assert anon.code == 1
    assert "repository not found" in anon.stderr and "HF_TOKEN" in anon.stderr
    assert "Traceback" not in anon.stderr
    bad = run(
        "hf://org/private",
        "--to",
        str(out),
        env=clean_env(tmp_path, HF_ENDPOINT=hub.url, HF_TOKEN="hf_wrong"),
    )
    assert bad.code == 1 and "access denied" in bad.stderr
    # The token file, as `hf auth login` writes it, works as well as HF_TOKEN.
    (tmp_path / "hf").mkdir(exist_ok=True)
    (tmp_path / "hf" / "token").write_text("hf_secret\n")
    ok = run("hf://org/private", "--to", str(out), env=clean_env(tmp_path, HF_ENDPOINT=hub.url))
    assert ok.code == 0, ok.stderr
    assert same_files(repo_dir, out)
    served = [s for s in hub.state.log if s.method == "GET"]
    lfs = {p for p, f in hub.state.repos[("model", "org/private")].files.items() if f.lfs}
    assert {s.path for s in served} >= lfs
    # LFS bytes come from the CDN port after a redirect; the token must not follow them there.
    assert all(s.auth is None for s in served if s.path in lfs)
    assert all(s.auth == "Bearer hf_secret" for s in served if s.path not in lfs)


def test_unknown_repo_and_revision(hub: HubServer, tmp_path: Path) -> None:
    env = clean_env(tmp_path, HF_ENDPOINT=hub.url)
    r = run("hf://org/nope", "--to", str(tmp_path / "o"), env=env)
    assert r.code == 1 and "repository not found" in r.stderr
    assert r.last("error")["message"]
    r = run("hf://org/model", "--revision", "v9", "--to", str(tmp_path / "o"), env=env)
    assert r.code == 1 and "revision 'v9' not found" in r.stderr
    r = run("hf://org", "--to", str(tmp_path / "o"), env=env)
    assert r.code == 1 and "expected hf://org/name" in r.stderr


def test_path_traversal_is_refused_before_anything_is_written(
    hub: HubServer, repo_dir: Path, tmp_path: Path
) -> None:
    repo = hub.add(Repo.from_dir("org/evil", repo_dir))
    good = repo.files["config.json"]
    repo.files["../escape.json"] = HubFile(
        "../escape.json", good.disk, good.size, good.sha256, good.git_sha1, good.lfs
    )
    out = tmp_path / "sub" / "out"
    r = run("hf://org/evil", "--to", str(out), env=clean_env(tmp_path, HF_ENDPOINT=hub.url))
    assert r.code == 1 and "would escape the target directory" in r.stderr
    assert not (tmp_path / "sub" / "escape.json").exists()
    assert not out.exists() or not tree(out)


def test_checksum_mismatch_leaves_no_file(hub: HubServer, tmp_path: Path) -> None:
    hub.state.corrupt = {"model-00002-of-00002.safetensors"}
    out = tmp_path / "out"
    r = run("hf://org/model", "--to", str(out), env=clean_env(tmp_path, HF_ENDPOINT=hub.url))
    assert r.code == 1
    assert "model-00002-of-00002.safetensors: sha256 mismatch" in r.stderr
    assert not (out / "model-00002-of-00002.safetensors").exists()
    assert not list(out.glob(".model-00002*"))


def test_dropped_connections_are_retried(hub: HubServer, repo_dir: Path, tmp_path: Path) -> None:
    hub.state.drop_after = {"model-00001-of-00002.safetensors": 5 * 2**20, "README.md": 3}
    out = tmp_path / "out"
    r = run("hf://org/model", "--to", str(out), env=clean_env(tmp_path, HF_ENDPOINT=hub.url))
    assert r.code == 0, r.stderr
    assert same_files(repo_dir, out)
    assert hub.state.drop_after == {}  # both faults did fire


def test_no_room_is_reported_before_downloading(
    hub: HubServer, repo_dir: Path, tmp_path: Path
) -> None:
    repo = hub.add(Repo.from_dir("org/huge", repo_dir))
    some = repo.files["config.json"]
    # Listed at 1 PiB: more than any test machine has free; never actually served.
    repo.files["huge.bin"] = HubFile("huge.bin", some.disk, 2**50, "0" * 64, "0" * 40, True)
    out = tmp_path / "out"
    r = run("hf://org/huge", "--to", str(out), env=clean_env(tmp_path, HF_ENDPOINT=hub.url))
    assert r.code == 1 and "not enough space" in r.stderr
    assert not [s for s in hub.state.log if s.method == "GET"]


def test_write_failure_is_one_line_and_leaves_no_final_file(hub: HubServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "nested").write_bytes(b"a file where the repo has a directory")
    r = run("hf://org/model", "--to", str(out), env=clean_env(tmp_path, HF_ENDPOINT=hub.url))
    assert r.code == 1
    assert "cannot write" in r.stderr and "Traceback" not in r.stderr
    assert (out / "nested").read_bytes().startswith(b"a file")


def test_datasets_and_python_api(hub: HubServer, repo_dir: Path, tmp_path: Path) -> None:
    from vfleet.download import download

    hub.add(Repo.from_dir("org/data", repo_dir, repo_type="dataset"))
    res = download("hf://datasets/org/data", tmp_path / "d", endpoint=hub.url, workers=2)
    assert res.files == len(SPEC) and res.shard == "0/1"
    assert same_files(repo_dir, tmp_path / "d")
    digest = hashlib.sha256((tmp_path / "d" / "README.md").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(SPEC["README.md"]).hexdigest()  # type: ignore[arg-type]
