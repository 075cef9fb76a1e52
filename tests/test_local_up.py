"""`vfleet up` end to end: real supervisor, simulated engines and router processes on 127.0.0.1.

One quickstart fleet (2 chat + 4 embedding engines, one simulated GPU) is shared by the read-mostly
tests of this module; fleets that are stopped by a test are started by that test. Every fleet is
taken down afterwards, also on failure: the supervisor by SIGTERM (SIGKILL if it hangs), then any
process of the fleet that is still alive (listed in its state.json or found in /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import run_vfleet
from httpclient import Client, wait_for

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
SEED_000 = ROOT / "examples" / "seeds" / "000-embedding.yaml"
SEED_004 = ROOT / "examples" / "seeds" / "004-values-01-minimal-example.yaml"
UP_READY = re.compile(r"send requests to (http://127\.0\.0\.1:\d+)/v1")
START_S = 45.0  # bound on a fleet coming up on a busy 2-core machine

CHAT = "Qwen/Qwen3-0.6B"
EMBED = "Qwen/Qwen3-Embedding-0.6B"


# -- processes ---------------------------------------------------------------------------------


def alive(pid: Any) -> bool:
    """A process exists and is not a zombie (a reparented zombie is dead for our purposes)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def state_pids(state: dict[str, Any]) -> list[int]:
    pids = [e.get("pid") for e in state.get("engines", [])]
    pids += [(state.get("router") or {}).get("pid"), state.get("supervisor_pid")]
    return [p for p in pids if isinstance(p, int)]


def leftovers(run_dir: Path, state: dict[str, Any]) -> list[int]:
    """Live processes of a fleet: those its state lists, and any process whose command line
    serves one of its engine ports or reads its run dir (one spawned but never recorded)."""
    pids = {p for p in state_pids(state) if alive(p)}
    ports = {str(e["port"]) for e in state.get("engines", [])}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "vfleet" not in argv or int(proc.name) == os.getpid():
            continue
        port = argv[argv.index("--port") + 1] if "--port" in argv[:-1] else None
        if (port in ports or any(str(run_dir) in a for a in argv)) and alive(int(proc.name)):
            pids.add(int(proc.name))
    return sorted(pids)


def reap(run_dir: Path) -> None:
    """Stop a fleet's supervisor, then kill whatever of the fleet is still alive (the test's
    last resort, so that a failed test leaves nothing running)."""
    state = read_state(run_dir)
    sup = state.get("supervisor_pid")
    if alive(sup):
        with contextlib.suppress(ProcessLookupError):
            os.kill(sup, signal.SIGTERM)
        wait_for(lambda: not alive(sup), timeout_s=20)
    for pid in leftovers(run_dir, read_state(run_dir) or state):
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # engines and the router lead their own group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def vfleet(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return run_vfleet(*args, timeout_s=timeout_s)


@dataclass
class Up:
    """A foreground `vfleet up`, its output, and where its run dir is."""

    proc: subprocess.Popen[str]
    run_dir: Path
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    url: str = ""
    threads: list[threading.Thread] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return read_state(self.run_dir)

    def engine(self, key: str) -> dict[str, Any]:
        return next(e for e in self.state()["engines"] if e["key"] == key)

    def stop(self) -> int | None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            reap(self.run_dir)
            for t in self.threads:
                t.join(timeout=5)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        return self.proc.returncode


def _collect(pipe: Any, lines: list[str]) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in pipe:
            lines.append(line)


def spawn_up(run_dir: Path, *args: str) -> Up:
    """Start `vfleet up ARGS --port 0 --run-dir RUN_DIR` in the foreground, output collected."""
    cmd = [sys.executable, "-m", "vfleet", "up", *args, "--port", "0", "--grace", "5"]
    proc = subprocess.Popen(
        [*cmd, "--run-dir", str(run_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    up = Up(proc, run_dir)
    for pipe, lines in ((proc.stdout, up.out), (proc.stderr, up.err)):
        t = threading.Thread(target=_collect, args=(pipe, lines), daemon=True)
        t.start()
        up.threads.append(t)
    return up


def start_up(run_dir: Path, *args: str) -> Up:
    """`spawn_up`, then wait (bounded) for the ready line."""
    up = spawn_up(run_dir, *args)
    proc = up.proc
    try:
        ready = wait_for(
            lambda: any(UP_READY.search(ln) for ln in up.out) or proc.poll() is not None,
            timeout_s=START_S,
        )
        match = next((m for ln in up.out if (m := UP_READY.search(ln))), None)
        assert ready and match, f"vfleet up did not come up:\n{''.join(up.out + up.err)}"
        up.url = match.group(1)
    except BaseException:
        up.stop()
        raise
    return up


@pytest.fixture
def up_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Up] = []

    def make(*args: str, run_dir: Path | None = None) -> Up:
        up = start_up(run_dir or tmp_path / f"run{len(started)}", *args)
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = start_up(tmp_path_factory.mktemp("quickstart"), "-f", str(QUICKSTART))
    try:
        yield up
    finally:
        up.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=20)


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: "), res.stderr
    return lines[0]


# -- the shared quickstart fleet ---------------------------------------------------------------


def test_quickstart_comes_up(quickstart: Up) -> None:
    out = "".join(quickstart.out)
    assert "fleet 'quickstart' is up: 6 engine(s) on 1 simulated GPU(s)" in out
    assert f"send requests to {quickstart.url}/v1" in out
    state = quickstart.state()
    assert state["phase"] == "ready"
    assert state["router"]["url"] == quickstart.url
    assert alive(state["supervisor_pid"]) and alive(state["router"]["pid"])
    # A line per engine state change on stderr, ending healthy.
    err = "".join(quickstart.err)
    for key in ("chat-0", "chat-1", "embed-0", "embed-1", "embed-2", "embed-3"):
        assert re.search(rf"^{key}\s+healthy\s+gpu 0 \(\d+%\)", err, re.M), err


def test_openai_client_lists_chats_and_embeds_through_the_router(quickstart: Up) -> None:
    c = client(quickstart.url)
    assert sorted(m.id for m in c.models.list().data) == [CHAT, EMBED]
    chat = c.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hello there"}], max_tokens=8
    )
    assert chat.model == CHAT
    assert chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length")
    emb = c.embeddings.create(model=EMBED, input=["hello", "world"])
    assert len(emb.data) == 2
    assert len(emb.data[0].embedding) > 0


def test_status_json_shows_six_healthy_engines_on_one_simulated_gpu(quickstart: Up) -> None:
    res = vfleet("status", "--json", "--run-dir", str(quickstart.run_dir))
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout)
    assert state["phase"] == "ready"
    assert state["simulated_gpus"] is True
    assert state["devices"] == [0]
    engines = state["engines"]
    assert [e["key"] for e in engines] == [
        "chat-0",
        "chat-1",
        "embed-0",
        "embed-1",
        "embed-2",
        "embed-3",
    ]
    assert all(e["state"] == "healthy" for e in engines), engines
    assert all(e["devices"] == [0] for e in engines)
    assert [e["share_pct"] for e in engines] == [30, 30, 10, 10, 10, 10]
    assert all(e["running"] >= 0 and e["waiting"] >= 0 for e in engines)  # load was read
    assert len({e["port"] for e in engines}) == 6
    assert all(alive(e["pid"]) for e in engines)


def test_status_table_without_json(quickstart: Up) -> None:
    res = vfleet("status", "--run-dir", str(quickstart.run_dir))
    assert res.returncode == 0, res.stderr
    assert "fleet quickstart - ready" in res.stdout
    assert res.stdout.count("healthy") == 6


def test_logs_prints_one_engines_log(quickstart: Up) -> None:
    chat0 = quickstart.engine("chat-0")
    res = vfleet("logs", "chat-0", "--run-dir", str(quickstart.run_dir))
    assert res.returncode == 0, res.stderr
    assert f"ready on http://127.0.0.1:{chat0['port']}" in res.stdout
    assert f"--port {chat0['port']}" in res.stdout  # the start banner
    for other in quickstart.state()["engines"]:
        if other["key"] != "chat-0":
            assert f":{other['port']}" not in res.stdout


def test_logs_of_an_unknown_engine_is_an_error(quickstart: Up) -> None:
    line = one_error_line(vfleet("logs", "nope-7", "--run-dir", str(quickstart.run_dir)))
    assert "no log for 'nope-7'" in line
    assert "chat-0" in line  # the known names


def test_second_up_on_the_same_run_dir_is_an_error(quickstart: Up) -> None:
    before = quickstart.state()
    res = vfleet("up", "-f", str(QUICKSTART), "--port", "0", "--run-dir", str(quickstart.run_dir))
    line = one_error_line(res)
    assert "a fleet is already running" in line
    assert str(before["supervisor_pid"]) in line
    after = quickstart.state()
    assert after["supervisor_pid"] == before["supervisor_pid"]
    assert after["phase"] == "ready"
    assert [e["pid"] for e in after["engines"]] == [e["pid"] for e in before["engines"]]


def test_killed_chat_engine_restarts_while_requests_keep_succeeding(quickstart: Up) -> None:
    before = quickstart.engine("chat-0")
    assert before["state"] == "healthy" and before["restarts"] == 0
    router = Client(quickstart.url, timeout_s=20)
    results: list[int | str] = []
    stop = threading.Event()

    def send() -> None:
        i = 0
        while not stop.is_set():
            body = {
                "model": CHAT,
                "messages": [{"role": "user", "content": f"request {i}: say something"}],
                "max_tokens": 4,
            }
            try:
                resp = router.post("/v1/chat/completions", body)
                results.append(
                    resp.status if resp.status == 200 else f"{resp.status} {resp.body!r}"
                )
            except OSError as exc:
                results.append(repr(exc))
            i += 1

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        assert wait_for(lambda: len(results) >= 3, timeout_s=20), results
        os.kill(before["pid"], signal.SIGKILL)
        killed_at = len(results)

        def restarted() -> bool:
            e = quickstart.engine("chat-0")
            return e["restarts"] == 1 and e["state"] == "healthy" and e["pid"] != before["pid"]

        assert wait_for(restarted, timeout_s=30, interval_s=0.1), quickstart.engine("chat-0")
        healthy_at = len(results)
        assert wait_for(lambda: len(results) >= healthy_at + 5, timeout_s=20), results
    finally:
        stop.set()
        sender.join(timeout=30)
    assert len(results) > killed_at
    failed = [r for r in results if r != 200]
    assert failed == [], failed
    after = quickstart.engine("chat-0")
    assert after["restarts"] == 1
    assert alive(after["pid"]) and not alive(before["pid"])
    assert after["port"] == before["port"]
    assert quickstart.engine("chat-1")["restarts"] == 0
    # The supervisor reported the crash and the restart.
    err = "".join(quickstart.err)
    assert re.search(r"^chat-0\s+crashed", err, re.M), err
    assert re.search(r"^chat-0\s+restarting", err, re.M), err


def test_killed_router_is_restarted_on_the_same_url(quickstart: Up) -> None:
    before = quickstart.state()["router"]
    os.kill(before["pid"], signal.SIGKILL)

    def back() -> bool:
        r = quickstart.state()["router"]
        return r["pid"] != before["pid"] and r["restarts"] == before["restarts"] + 1

    assert wait_for(back, timeout_s=30, interval_s=0.1), quickstart.state()["router"]
    assert quickstart.state()["router"]["url"] == quickstart.url
    c = client(quickstart.url)
    assert wait_for(lambda: _models(c) == [CHAT, EMBED], timeout_s=20)
    assert alive(quickstart.state()["router"]["pid"])


def _models(c: openai.OpenAI) -> list[str]:
    try:
        return sorted(m.id for m in c.models.list().data)
    except openai.APIError:
        return []


def test_logs_of_a_model_prefix_each_replica(quickstart: Up) -> None:
    res = vfleet("logs", "chat", "-n", "5", "--run-dir", str(quickstart.run_dir))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert {ln.split(" | ", 1)[0] for ln in lines} == {"chat-0", "chat-1"}


# -- fleets a test starts and stops ------------------------------------------------------------


def test_seed_000_runs_four_replicas_on_one_gpu_and_sigterm_stops_everything(
    up_factory: Any,
) -> None:
    up: Up = up_factory("-f", str(SEED_000), "--engine", "sim")
    state = up.state()
    engines = state["engines"]
    assert [e["key"] for e in engines] == [f"qwen3embed-{i}" for i in range(4)]
    assert all(e["devices"] == [0] for e in engines), engines
    assert all(e["share_pct"] == 20 for e in engines), engines
    assert state["simulated_gpus"] is True
    assert state["devices"] == [0]
    assert all(e["served"] == ["Qwen3-Embedding-0.6B"] for e in engines)
    # the seed's own memory fraction, not one derived from the share
    log = vfleet("logs", "qwen3embed-0", "--run-dir", str(up.run_dir)).stdout
    assert "--gpu-memory-utilization 0.15" in log
    emb = client(up.url).embeddings.create(model="Qwen3-Embedding-0.6B", input="hi")
    assert len(emb.data[0].embedding) > 0
    # CUDA_VISIBLE_DEVICES from the values is replaced by the GPU vfleet assigns.
    assert "CUDA_VISIBLE_DEVICES=0 replaced" in "".join(up.err)

    assert len(leftovers(up.run_dir, state)) == 4 + 2  # engines, router, supervisor
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=30) == 0, "".join(up.err)
    stopped = up.state()
    assert stopped["phase"] == "stopped"
    assert all(e["state"] == "stopped" for e in stopped["engines"])
    assert leftovers(up.run_dir, state) == []
    assert "stopping" in "".join(up.err)


def test_seed_004_minimal_values_run_on_sim(up_factory: Any) -> None:
    up: Up = up_factory("-f", str(SEED_004), "--engine", "sim")
    (engine,) = up.state()["engines"]
    assert engine["key"] == "opt125m-0"
    assert engine["served"] == ["facebook/opt-125m"]
    assert engine["devices"] == [0] and engine["share_pct"] == 100
    c = client(up.url)
    assert [m.id for m in c.models.list().data] == ["facebook/opt-125m"]
    out = c.completions.create(model="facebook/opt-125m", prompt="Hello", max_tokens=4)
    assert out.choices[0].text
    # Ctrl-C stops it like SIGTERM does.
    state = up.state()
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=30) == 0, "".join(up.err)
    assert up.state()["phase"] == "stopped"
    assert leftovers(up.run_dir, state) == []


def test_sigterm_during_start_up_stops_what_was_started(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    up = spawn_up(run_dir, "-f", str(QUICKSTART))
    proc = up.proc
    try:
        # The first engine is spawned: the supervisor's signal handlers are in place.
        assert wait_for(lambda: " starting " in "".join(up.err), timeout_s=START_S), up.err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
        for t in up.threads:
            t.join(timeout=5)
        err = "".join(up.err)
        assert "Traceback" not in err, err
        errors = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
        assert errors == ["Error: interrupted during start-up"], err
        assert "send requests" not in "".join(up.out)
        state = read_state(run_dir)
        assert state["phase"] == "failed"
        assert leftovers(run_dir, state) == []
    finally:
        up.stop()


def test_engines_and_router_die_with_a_killed_supervisor(up_factory: Any) -> None:
    up: Up = up_factory("-f", str(SEED_004), "--engine", "sim")
    state = up.state()
    children = [e["pid"] for e in state["engines"]] + [state["router"]["pid"]]
    assert all(alive(p) for p in children)
    up.proc.kill()
    up.proc.wait(timeout=10)
    # Nobody is left holding a GPU with no supervisor watching.
    assert wait_for(lambda: not leftovers(up.run_dir, state), timeout_s=15), leftovers(
        up.run_dir, state
    )
    res = vfleet("status", "--json", "--run-dir", str(up.run_dir))
    assert json.loads(res.stdout)["phase"] == "supervisor gone"
    # The run dir is free again.
    again: Up = up_factory("-f", str(SEED_004), "--engine", "sim", run_dir=up.run_dir)
    assert again.state()["phase"] == "ready"


def test_engine_failing_at_start_up_stops_the_fleet_with_one_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        "engine: sim\nmodels:\n"
        "  - {name: good, source: org/good, gpu: 0.5}\n"
        "  - {name: bad, source: org/bad, gpu: 0.2, sim: {extraArgs: [--bogus-flag]}}\n"
    )
    try:
        res = vfleet("up", "-f", str(spec), "--port", "0", "--run-dir", str(run_dir))
        assert res.returncode != 0
        assert "Traceback" not in res.stderr, res.stderr
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]
        assert len(errors) == 1, res.stderr
        assert errors[0].startswith("Error: engine bad-0 exited with code 2")
        assert "--bogus-flag" in errors[0]
        assert f"log: {run_dir / 'logs' / 'bad-0.log'}" in errors[0]
        assert "send requests" not in res.stdout
        state = read_state(run_dir)
        assert state["phase"] == "failed"
        assert state["error"] in errors[0]
        assert leftovers(run_dir, state) == []
    finally:
        reap(run_dir)


def test_detach_returns_and_the_fleet_runs_until_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    try:
        res = vfleet(
            "up",
            "-f",
            str(SEED_004),
            "--engine",
            "sim",
            "--port",
            "0",
            "--grace",
            "5",
            "--run-dir",
            str(run_dir),
            "--detach",
            timeout_s=START_S + 15,
        )
        assert res.returncode == 0, res.stderr
        match = UP_READY.search(res.stdout)
        assert match and "is up in the background" in res.stdout, res.stdout
        url = match.group(1)
        state = read_state(run_dir)
        assert state["phase"] == "ready"
        assert state["router"]["url"] == url
        pids = state_pids(state)
        assert all(alive(p) for p in pids), state
        assert leftovers(run_dir, state) == sorted(pids)
        # The command has returned; the fleet keeps serving.
        c = client(url)
        assert [m.id for m in c.models.list().data] == ["facebook/opt-125m"]
        status = vfleet("status", "--json", "--run-dir", str(run_dir))
        assert json.loads(status.stdout)["engines"][0]["state"] == "healthy"

        down = vfleet("down", "--run-dir", str(run_dir))
        assert down.returncode == 0, down.stderr
        assert "stopped" in down.stdout
        final = read_state(run_dir)
        assert final["phase"] == "stopped"
        assert leftovers(run_dir, state) == []
        with pytest.raises(openai.APIConnectionError):
            c.models.list()
    finally:
        reap(run_dir)


def test_down_without_a_fleet_is_an_error(tmp_path: Path) -> None:
    line = one_error_line(vfleet("down", "--run-dir", str(tmp_path / "nothing")))
    assert "no fleet found" in line


def test_run_dir_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "VFLEET_RUN_DIR": str(tmp_path / "nothing")}
    res = subprocess.run(
        [sys.executable, "-m", "vfleet", "status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert res.returncode != 0
    assert f"no fleet found in {tmp_path / 'nothing'}" in res.stderr


# -- bad input: one line, non-zero exit, nothing left running ----------------------------------


def assert_nothing_started(run_dir: Path) -> None:
    assert leftovers(run_dir, read_state(run_dir)) == []
    assert not (run_dir / "logs").exists() or not any((run_dir / "logs").glob("*-0.log"))


def test_router_port_in_use(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = vfleet("up", "-f", str(QUICKSTART), "--port", str(port), "--run-dir", str(run_dir))
    try:
        line = one_error_line(res)
        assert f"router port 127.0.0.1:{port} is not available" in line
        assert res.stdout == ""
        assert_nothing_started(run_dir)
    finally:
        reap(run_dir)


def test_local_model_path_that_does_not_exist(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        f"engine: sim\nmodels:\n  - name: chat\n    source: {tmp_path}/no-such-model\n"
        "    gpu: 0.5\n"
    )
    res = vfleet("up", "-f", str(spec), "--port", "0", "--run-dir", str(run_dir))
    try:
        line = one_error_line(res)
        assert f"chat: model path {tmp_path}/no-such-model does not exist" in line
        assert_nothing_started(run_dir)
    finally:
        reap(run_dir)


def test_replicas_that_do_not_fit_the_given_gpu(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        "models:\n"
        "  - {name: chat, source: org/chat, gpu: 0.6, replicas: 2}\n"
        "  - {name: embed, source: org/embed, gpu: 0.1, replicas: 2}\n"
    )
    res = vfleet(
        "up",
        "-f",
        str(spec),
        "--gpus",
        "0",
        "--engine",
        "sim",
        "--port",
        "0",
        "--run-dir",
        str(run_dir),
    )
    try:
        line = one_error_line(res)
        assert "replicas of chat do not fit on 1 GPU(s) [0]" in line
        assert "chat 2 x 0.6 GPU" in line and "embed 2 x 0.1 GPU" in line
        assert_nothing_started(run_dir)
    finally:
        reap(run_dir)


def test_bad_spec_via_up(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text("models:\n  - name: chat\n    source: org/chat\n    gpu: 1.5\n")
    line = one_error_line(vfleet("up", "-f", str(spec), "--run-dir", str(tmp_path / "run")))
    assert line.startswith(f"Error: {spec}:4: models[0].gpu: ")
