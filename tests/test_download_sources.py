"""Plain URL lists and git+LFS repositories, served by the local hub (no internet)."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from downloadkit import clean_env, run, tree
from hfserver import HubServer, Repo, make_files

SPEC: dict[str, int | bytes] = {
    "config.json": b'{"a": 1}',
    "model.safetensors": 5 * 2**20 + 3,
}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[HubServer, Path]]:
    repo_dir = make_files(tmp_path / "repo", SPEC)
    with HubServer() as srv:
        srv.add(Repo.from_dir("org/model", repo_dir))
        yield srv, repo_dir


def test_url_list_with_digest_fragment(hub: tuple[HubServer, Path], tmp_path: Path) -> None:
    srv, repo_dir = hub
    base = f"{srv.url}/org/model/resolve/main"
    sha = hashlib.sha256((repo_dir / "model.safetensors").read_bytes()).hexdigest()
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# weights\n{base}/model.safetensors#sha256={sha}\n\n")
    env = clean_env(tmp_path)
    out = tmp_path / "out"
    r = run(f"@{urls}", f"{base}/config.json", "--to", str(out), "--chunk-mib", "1", env=env)
    assert r.code == 0, r.stderr
    assert tree(out) == {p: (repo_dir / p).read_bytes() for p in SPEC}
    wrong = run(f"{base}/config.json#sha256={'0' * 64}", "--to", str(tmp_path / "o2"), env=env)
    assert wrong.code == 1 and "sha256 mismatch" in wrong.stderr
    assert not (tmp_path / "o2" / "config.json").exists()
    missing = run(f"{base}/nope.bin", "--to", str(tmp_path / "o3"), env=env)
    assert missing.code == 1 and "not found" in missing.stderr


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_git_repo_with_lfs_pointers(hub: tuple[HubServer, Path], tmp_path: Path) -> None:
    srv, repo_dir = hub
    weights = srv.state.repos[("model", "org/model")].files["model.safetensors"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.json").write_bytes(SPEC["config.json"])  # type: ignore[arg-type]
    (work / "big.txt").write_bytes(b"plain git blob " * 200)  # not LFS, over the pointer size
    (work / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{weights.sha256}\nsize {weights.size}\n"
    )
    (work / ".lfsconfig").write_text(f'[lfs]\n\turl = "{srv.url}/org/model.git/info/lfs"\n')
    _git(work, "init", "-q", "-b", "main")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "weights")
    _git(work, "tag", "v1")
    env = clean_env(tmp_path)
    out = tmp_path / "out"
    r = run(f"git+file://{work}", "--revision", "v1", "--to", str(out), env=env)
    assert r.code == 0, r.stderr
    got = tree(out)
    assert got["model.safetensors"] == (repo_dir / "model.safetensors").read_bytes()
    assert got["big.txt"] == b"plain git blob " * 200
    assert got["config.json"] == SPEC["config.json"]
    bad = run(f"git+file://{work}", "--revision", "v9", "--to", str(out), env=env)
    assert bad.code == 1 and "revision 'v9' not found" in bad.stderr


def test_modelscope_through_its_sdk(hub: tuple[HubServer, Path], tmp_path: Path) -> None:
    srv, repo_dir = hub
    env = clean_env(tmp_path, MODELSCOPE_ENDPOINT=srv.url)
    out = tmp_path / "out"
    r = run("modelscope://org/model", "--to", str(out), "--chunk-mib", "2", env=env)
    assert r.code == 0, r.stderr
    assert tree(out) == {p: (repo_dir / p).read_bytes() for p in SPEC}
    missing = run("modelscope://org/nope", "--to", str(tmp_path / "o"), env=env)
    assert missing.code == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr
