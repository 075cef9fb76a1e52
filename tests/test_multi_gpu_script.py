"""scripts/gpu/multi_gpu_check.sh run end to end without GPUs: `vllm` on PATH is a stand-in that
execs `vfleet sim` with the same served name and port, and `nvidia-smi` is a stand-in that
reports two GPUs and, as compute processes, every process started with a marker in its
environment, on the devices of its CUDA_VISIBLE_DEVICES. Everything else is real: `vfleet up
--detach` with its supervisor and router, kill -9 of engine process groups, restarts, `vfleet
down`. What this proves is the script's own logic (plan vs status vs /proc vs nvidia-smi,
restart and leftover checks) before it spends time on a GPU host; the GPU facts come from the
real run (docs/gpu-multi-check.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu" / "multi_gpu_check.sh"
MARK = "VFLEET_TEST_FAKE_GPU_ENGINE"

FAKE_VLLM = f"""#!{sys.executable}
import os, sys
a = sys.argv[1:]
if a[:1] == ["--version"]:
    print("0.26.0")
    sys.exit(0)
def opt(name):
    return a[a.index(name) + 1]
cmd = [sys.executable, "-m", "vfleet", "sim", "--model", a[1], "--host", opt("--host"),
       "--port", opt("--port"), "--served-model-name", opt("--served-model-name"),
       "--profile", "instant"]
if "pooling" in a:
    cmd += ["--task", "embed"]
os.environ["{MARK}"] = "1"
os.execv(sys.executable, cmd)
"""

FAKE_SMI = f"""#!{sys.executable}
import os, sys
n = int(os.environ.get("FAKE_GPUS", "2"))
query = next(x for x in sys.argv[1:] if x.startswith("--query"))
kind, _, cols = query.partition("=")
apps = []
for pid in os.listdir("/proc"):
    try:
        raw = open(f"/proc/{{pid}}/environ", "rb").read() if pid.isdigit() else b""
    except OSError:
        continue
    env = dict(e.decode().partition("=")[::2] for e in raw.split(b"\\0") if b"=" in e)
    if env.get("{MARK}") == "1":
        for d in env.get("CUDA_VISIBLE_DEVICES", "").split(","):
            d = "0" if os.environ.get("FAKE_ALL_ON_GPU0") else d  # a placement gone wrong
            apps.append({{"pid": pid, "gpu_uuid": f"GPU-{{d}}", "used_memory": "1000", "d": d}})
for i in range(n) if kind == "--query-gpu" else ():
    used = 5 + 1000 * sum(a["d"] == str(i) for a in apps)
    row = {{"index": str(i), "uuid": f"GPU-{{i}}", "memory.used": str(used),
           "memory.total": "143771", "name": "stand-in", "driver_version": "0"}}
    print(", ".join(row[c] for c in cols.split(",")))
for a in apps if kind == "--query-compute-apps" else ():
    print(", ".join(a[c] for c in cols.split(",")))
"""


def stand_ins(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("vllm", FAKE_VLLM), ("nvidia-smi", FAKE_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "model").mkdir()
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "VFLEET_STATE_DIR": str(tmp_path / "state"),
        # Stand-in engines hold no memory to allocate and restart in well under a second.
        "VFLEET_CHECK_SETTLE_S": "0",
        "VFLEET_CHECK_POLL_S": "0.2",
    }


def run_script(
    tmp_path: Path, env: dict[str, str], *flags: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *flags, str(tmp_path / "model"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.timeout(300)
def test_script_passes_both_fleets_on_two_stand_in_gpus(tmp_path: Path) -> None:
    done = run_script(tmp_path, stand_ins(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    out = tmp_path / "out"
    for fleet, killed in (("tp2", ["chat-tp2-0"]), ("mixed", ["chat-1", "embed-3"])):
        check = json.loads((out / fleet / "check.json").read_text())
        assert check["ok"] and [k["key"] for k in check["kills"]] == killed
        # each restarted engine is a new process with the planned devices
        for kill in check["kills"]:
            assert kill["after"]["pid"] != kill["old_pid"]
            planned = next(e for e in check["placement"] if e["key"] == kill["key"])
            assert kill["after"]["cuda_visible_devices"] == planned["cuda_visible_devices"]
            assert kill["after"]["gpus_seen"] == planned["gpus_seen"]
        assert json.loads((out / fleet / "down.json").read_text())["ok"]
    tp2 = json.loads((out / "tp2" / "check.json").read_text())
    assert tp2["placement"][0]["gpus_seen"] == [0, 1]
    mixed = json.loads((out / "mixed" / "check.json").read_text())
    seen = {p["key"]: p["gpus_seen"] for p in mixed["placement"]}
    assert seen == {
        "chat-0": [0],
        "chat-1": [1],
        "embed-0": [0],
        "embed-1": [0],
        "embed-2": [1],
        "embed-3": [1],
    }
    results = (out / "results.md").read_text()
    assert "## tp2: PASS" in results and "## mixed: PASS" in results
    assert "FAIL" not in results


@pytest.mark.timeout(200)
def test_script_fails_when_nvidia_smi_shows_an_engine_off_its_planned_gpus(
    tmp_path: Path,
) -> None:
    env = {**stand_ins(tmp_path), "FAKE_ALL_ON_GPU0": "1"}
    done = run_script(tmp_path, env, "--only", "tp2")
    assert done.returncode == 1
    check = json.loads((tmp_path / "out" / "tp2" / "check.json").read_text())
    failed = [c["check"] for c in check["checks"] if not c["ok"]]
    assert "up chat-tp2-0: holds GPU memory only on planned GPU(s) 0,1" in failed
    assert all("holds GPU memory" in c for c in failed), failed
    results = (tmp_path / "out" / "results.md").read_text()
    assert "## tp2: FAIL" in results and "## mixed" not in results


@pytest.mark.timeout(120)
def test_script_refuses_one_gpu_without_the_dry_run_flag(tmp_path: Path) -> None:
    env = {**stand_ins(tmp_path), "FAKE_GPUS": "1"}
    done = run_script(tmp_path, env)
    assert done.returncode == 2
    assert "--gpus 0,1 but nvidia-smi shows 1 GPU(s)" in done.stderr
