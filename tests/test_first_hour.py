"""A new user's first hour, from a fresh clone: the README's set-up command shows progress at
once, and every README command that can run here (no GPU, cluster or network) runs as written,
in README order, with simulated engines.

"Fresh clone": the repository's files (tracked and new, not ignored) copied to a temporary
directory and committed there, so `scripts/quickstart.sh` sees a git revision as in a clone.
The quickstart's install (`pip install .`, minutes of compiling, and the network) is the one
step replaced: `.venv-quickstart` is made as pip would leave it (a venv whose `bin/vfleet` is
the console script), pointing at this interpreter's vfleet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from httpclient import wait_for
from test_local_up import START_S, reap

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
PROGRESS_S = 5.0  # the bound: the quickstart says what it is doing within 5 s

# Every README block, by its first line: run here, or why not (a new block must be added).
NOT_RUN = {
    "bash scripts/test.sh": "the whole CI, which this test is part of",
    "vfleet up -f examples/quickstart.yaml --engine vllm --gpus 0,1": "needs vLLM and GPUs",
    "vfleet k8s install -f examples/seeds/000-embedding.yaml --release vfleet": "a cluster",
    "vfleet download hf://Qwen/Qwen3-0.6B --to /models/qwen3 --shard 0/3": "the network",
    "python3 -m venv .venv && VFLEET_MYPYC=0 .venv/bin/pip install -e '.[dev]'": "the network",
}
QUICKSTART = "bash scripts/quickstart.sh"
RUN = {
    QUICKSTART,
    "curl -s localhost:8000/v1/models",
    ".venv-quickstart/bin/vfleet down",
    "source .venv-quickstart/bin/activate",
    "vfleet k8s render -f examples/seeds/000-embedding.yaml -o manifests/",
}


@dataclass(frozen=True)
class Block:
    kind: str  # "sh" (an indented block) or "python" (a fenced one)
    lines: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.lines[0]


def readme_blocks(text: str) -> list[Block]:
    """The README's command blocks in order: indented shell lines (a trailing backslash joins
    the next line) and ```python fences; other fences (the layout tree) are not commands."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = lines.index("```", i + 1)
            if line == "```python":
                blocks.append(Block("python", ("\n".join(lines[i + 1 : end]),)))
            i = end + 1
            continue
        if line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            cmds: list[str] = []
            while i < len(lines) and lines[i].startswith("    "):
                cmd = lines[i].strip()
                while cmd.endswith("\\"):
                    i += 1
                    cmd = cmd[:-1].rstrip() + " " + lines[i].strip()
                cmds.append(cmd)
                i += 1
            blocks.append(Block("sh", tuple(cmds)))
            continue
        i += 1
    return blocks


def fresh_copy(dest: Path, commit: bool) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if commit:
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
        subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
        subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
        subprocess.run([*git, "commit", "-q", "-m", "clone"], cwd=dest, check=True)
    return dest


def stream(proc: subprocess.Popen[str]) -> list[str]:
    """Collect the lines of both pipes as they come (reader threads end at EOF)."""
    lines: list[str] = []

    def read(pipe: object) -> None:
        with contextlib.suppress(ValueError, OSError):
            for ln in pipe:  # type: ignore[attr-defined]
                lines.append(ln)

    for pipe in (proc.stdout, proc.stderr):
        threading.Thread(target=read, args=(pipe,), daemon=True).start()
    return lines


def stop_group(proc: subprocess.Popen[str]) -> None:
    """End the command's whole process group (SIGTERM, then SIGKILL) and close its pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                pipe.close()


def test_first_run_shows_progress_at_once(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "vfleet", commit=False)
    proc = subprocess.Popen(
        ["bash", "-c", QUICKSTART],
        cwd=clone,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "VFLEET_STATE_DIR": str(tmp_path / "state")},
    )
    out = stream(proc)
    try:
        said = wait_for(lambda: any("couple of minutes" in ln for ln in out), PROGRESS_S)
    finally:
        stop_group(proc)  # the install itself needs the network: not part of this test
    assert said, "".join(out)
    assert out[0] == (
        "quickstart: installing vfleet into .venv-quickstart (first run only; compiling the "
        "hot path with mypyc takes a couple of minutes, progress below every 15 s)\n"
    )


def port_8000_free() -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8000))
        except OSError:
            return False
    return True


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh clone whose `.venv-quickstart` is installed, and the environment of a terminal."""
    repo = fresh_copy(tmp_path / "vfleet", commit=True)
    venv = repo / ".venv-quickstart"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    script = venv / "bin" / "vfleet"  # what pip writes for [project.scripts]
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom vfleet.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    rev = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    )
    (venv / ".vfleet-rev").write_text(rev.stdout)
    state = tmp_path / "state"
    env = {**os.environ, "VFLEET_STATE_DIR": str(state)}
    for name in ("VFLEET_RUN_DIR", "VFLEET_API_KEYS", "VIRTUAL_ENV"):
        env.pop(name, None)
    yield repo, env
    for run_dir in (state / "fleets").glob("*"):
        reap(run_dir)


def sh(repo: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=START_S + 30,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def start_quickstart(repo: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """The README's set-up command, as written; returns once it says the fleet is up."""
    proc = subprocess.Popen(
        ["bash", "-c", QUICKSTART],
        cwd=repo,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    out = stream(proc)
    try:
        ready = wait_for(
            lambda: any("send requests to" in ln for ln in out) or proc.poll() is not None,
            START_S,
        )
        text = "".join(out)
        assert ready and "send requests to http://127.0.0.1:8000/v1" in text, text
        # the exact next commands, with the real path of the executable
        exe = repo / ".venv-quickstart" / "bin" / "vfleet"
        for cmd in ("status", "logs chat-0", "down"):
            assert f"  {exe} {cmd}" in text, text
    except BaseException:
        stop_group(proc)
        raise
    return proc


def test_readme_commands_as_written(clone: tuple[Path, dict[str, str]]) -> None:
    if not port_8000_free():
        pytest.skip("the README's fleets serve on port 8000, which is taken here")
    repo, env = clone
    blocks = readme_blocks(README.read_text())
    unknown = [b.first for b in blocks if b.kind == "sh" and b.first not in RUN | set(NOT_RUN)]
    assert not unknown, f"README blocks this test does not know: {unknown}"
    quickstart: subprocess.Popen[str] | None = None
    activated = False  # after the README's `source .venv-quickstart/bin/activate`
    ran: list[str] = []
    try:
        for block in blocks:
            if block.first in NOT_RUN:
                continue
            if block.first == QUICKSTART:
                quickstart = start_quickstart(repo, env)
                ran.append(block.first)
                continue
            if block.kind == "python":
                res = subprocess.run(
                    [sys.executable, "-c", block.first],
                    cwd=repo,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    env=env,
                )
                assert res.returncode == 0, res.stderr
                assert "ChatCompletion(" in res.stdout and "embedding=" in res.stdout
                ran.append("python")
                continue
            if block.first == "source .venv-quickstart/bin/activate":
                activated = True
            prefix = "source .venv-quickstart/bin/activate\n" if activated else ""
            for cmd in block.lines:
                res = sh(repo, env, prefix + cmd)
                assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
                assert "command not found" not in res.stderr
                ran.append(cmd)
                if cmd.startswith("curl"):
                    assert res.stdout.startswith("{"), res.stdout
                if cmd == ".venv-quickstart/bin/vfleet down":
                    assert quickstart is not None
                    assert "vfleet: fleet 'quickstart' stopped" in res.stdout
                    quickstart.wait(30)  # `down` returned: the foreground fleet has exited
                    assert quickstart.returncode == 0
                if cmd == "vfleet status":
                    assert "fleet 000-embedding - ready" in res.stdout
                if cmd.startswith("vfleet k8s render"):
                    assert "under HAMi" in res.stderr
    finally:
        if quickstart is not None:
            stop_group(quickstart)
    assert QUICKSTART in ran and "python" in ran and "vfleet down" in ran
    assert (repo / "manifests").is_dir()


def test_readme_blocks_are_read_in_order() -> None:
    text = "a\n\n    one \\\n      two\n    three\n\n```python\nx = 1\n```\n\n```\ntree\n```\n"
    assert readme_blocks(text) == [
        Block("sh", ("one two", "three")),
        Block("python", ("x = 1",)),
    ]
