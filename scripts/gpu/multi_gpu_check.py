"""The checks of multi_gpu_check.sh on a running `vfleet up` fleet of real vLLM engines.

Subcommands (the shell script runs them in this order for each fleet):
  spec        the fleet file for this host: model paths filled in, NCCL_NVLS_ENABLE=0 in every
              model's env; --single-gpu: the part of it one GPU gets (tensor parallel 1, half the
              replicas), for a dry run on a one-GPU machine
  smi         nvidia-smi per GPU and its compute processes, as JSON (the baseline before `up`)
  check       against `vfleet status --json`: each engine's processes carry the planned
              CUDA_VISIBLE_DEVICES and NCCL_NVLS_ENABLE=0 and hold memory only on the planned
              GPUs; every engine and every model answers (directly and through the router);
              kill -9 of one engine per model, which must come back on the same GPUs
  after-down  nothing of the fleet is left: no process, no new compute process on any GPU

Standard library and PyYAML only (vfleet's own dependency); vfleet is run as a command, the way
a user runs it. Every wait is bounded. Results go to --out as JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDERS = {"/models/chat": "chat", "/models/embed": "embed"}
NVLS = "NCCL_NVLS_ENABLE"
# Seconds between `vfleet status` reads while waiting for a restart; the CI stand-in sets it lower.
POLL_S = float(os.environ.get("VFLEET_CHECK_POLL_S", "2"))

# -- spec ------------------------------------------------------------------------------------


def make_spec(
    doc: dict[str, Any], paths: dict[str, str], single_gpu: bool, eager: bool = False
) -> dict[str, Any]:
    """The check's fleet with real model paths; single_gpu: the TP1 share one GPU gets;
    eager: no CUDA graphs or torch.compile (faster cold starts)."""
    out = json.loads(json.dumps(doc))  # a deep copy of plain YAML data
    for m in out["models"]:
        src = m.get("source")
        if isinstance(src, str) and src in PLACEHOLDERS:
            m["source"] = paths[PLACEHOLDERS[src]]
        env = m.get("env") or {}
        if isinstance(env, list):
            env = {e["name"]: e.get("value", "") for e in env}
        env[NVLS] = "0"  # whatever the file says: NVLink multicast stays off
        m["env"] = env
        if eager:
            m.setdefault("vllm", {})["enforceEager"] = True
        if single_gpu:
            vllm = m.setdefault("vllm", {})
            if vllm.get("tensorParallelSize", 1) > 1:
                vllm["tensorParallelSize"] = 1
                m["gpu"] = 1
            elif 0 < float(m.get("gpu", 1)) < 1:
                m["replicas"] = math.ceil(int(m.get("replicas", 1)) / 2)
    if single_gpu:
        out["name"] = f"{out['name']}-1gpu"
    return out


# -- reading the machine ---------------------------------------------------------------------


def run(cmd: list[str], timeout: float = 60) -> str:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=True, stdin=subprocess.DEVNULL
    ).stdout


def smi() -> dict[str, Any]:
    """GPUs (index, uuid, memory used/total MiB) and compute processes (pid, gpu index, MiB)."""
    gpus = []
    query = "index,uuid,memory.used,memory.total"
    text = run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"])
    for line in text.strip().splitlines():
        idx, uuid, used, total = (x.strip() for x in line.split(","))
        gpus.append(
            {"index": int(idx), "uuid": uuid, "used_mib": int(used), "total_mib": int(total)}
        )
    by_uuid = {g["uuid"]: g["index"] for g in gpus}
    apps = []
    out = run(
        [
            "nvidia-smi",
            "--query-compute-apps=pid,gpu_uuid,used_memory",
            "--format=csv,noheader,nounits",
        ]
    )
    for line in out.strip().splitlines():
        if not line.strip() or "No running" in line:
            continue
        pid, uuid, used = (x.strip() for x in line.split(","))
        mib = int(used) if used.isdigit() else -1
        apps.append({"pid": int(pid), "gpu": by_uuid.get(uuid, -1), "used_mib": mib})
    return {"gpus": gpus, "apps": apps, "time": time.time()}


def session_of(pid: int) -> int | None:
    """The session of a live process; None when it is gone or a zombie (holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session
    return None if fields[0] == "Z" else int(fields[3])


def session_members(sid: int) -> list[int]:
    """Every live process of an engine: vfleet starts each engine in its own session."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and session_of(int(entry.name)) == sid:
            out.append(int(entry.name))
    return sorted(out)


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def status(run_dir: str) -> dict[str, Any]:
    text = run([sys.executable, "-m", "vfleet", "status", "--run-dir", run_dir, "--json"])
    return json.loads(text)


def call(url: str, body: dict[str, Any] | None = None, timeout: float = 120) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def is_embed(argv: list[str]) -> bool:
    """An engine serving embeddings, by its command line (vfleet's task -> vLLM flags)."""
    pairs = set(itertools.pairwise(argv))
    return bool(pairs & {("--runner", "pooling"), ("--convert", "embed"), ("--task", "embed")})


def ask(base: str, model: str, embed: bool, timeout: float = 120) -> str:
    """One request of the model's kind; '' when it answered as asked, else what went wrong."""
    try:
        if embed:
            out = call(f"{base}/v1/embeddings", {"model": model, "input": ["a", "b"]}, timeout)
            return "" if len(out.get("data", [])) == 2 else f"embeddings: {str(out)[:200]}"
        body = {
            "model": model,
            "max_tokens": 8,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "hello"}],
        }
        out = call(f"{base}/v1/chat/completions", body, timeout)
        got = out.get("usage", {}).get("completion_tokens")
        return "" if got == 8 else f"chat: completion_tokens {got}"
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        return f"{type(exc).__name__}: {exc}"[:300]


# -- check -----------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, what: str, ok: bool, detail: str = "") -> bool:
        self.rows.append({"check": what, "ok": ok, "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)
        return ok

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)


def placement(
    engine: dict[str, Any], snap: dict[str, Any], rep: Report, when: str
) -> dict[str, Any]:
    """CUDA_VISIBLE_DEVICES and NCCL_NVLS_ENABLE of the engine's processes, and the GPUs its
    compute processes hold memory on, against the planned devices."""
    planned = ",".join(map(str, engine["devices"]))
    pid = engine["pid"]
    members = session_members(pid) if pid else []
    env = environ(pid) if pid else {}
    key = engine["key"]
    rep.add(
        f"{when} {key}: CUDA_VISIBLE_DEVICES of pid {pid} is the plan's {planned}",
        env.get("CUDA_VISIBLE_DEVICES") == planned,
        f"found {env.get('CUDA_VISIBLE_DEVICES')!r}",
    )
    envs = {p: environ(p) for p in members}  # empty: gone, or not ours to read
    bad = [p for p, e in envs.items() if e and e.get(NVLS) != "0"]
    rep.add(
        f"{when} {key}: {NVLS}=0 in all {len(members)} processes of its session",
        bool(members) and not bad,
        f"missing in {bad}" if bad else "",
    )
    apps = [a for a in snap["apps"] if a["pid"] in members]
    gpus = sorted({a["gpu"] for a in apps})
    mib = {g: sum(a["used_mib"] for a in apps if a["gpu"] == g) for g in gpus}
    if apps:
        want = set(engine["devices"])
        rep.add(
            f"{when} {key}: holds GPU memory only on planned GPU(s) {planned}",
            set(gpus) <= want and (engine["share_pct"] < 100 or set(gpus) == want),
            f"nvidia-smi shows {mib} MiB",
        )
    else:  # e.g. nvidia-smi in another PID namespace: per-GPU totals are still recorded
        rep.add(f"{when} {key}: compute processes not matched to pids (recorded only)", True)
    return {
        "key": key,
        "pid": pid,
        "processes": members,
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        "gpus_seen": gpus,
        "mib_by_gpu": mib,
    }


def gpu_table(state: dict[str, Any], snap: dict[str, Any], seen: list[dict[str, Any]]) -> str:
    """Per GPU: what the plan put there (share, memory fraction) and what nvidia-smi shows."""
    lines = [
        "| GPU | planned engines | planned share | planned memory | nvidia-smi used / total "
        "MiB | used fraction | engines seen there (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key = {s["key"]: s for s in seen}
    for g in snap["gpus"]:
        idx = g["index"]
        on = [e for e in state["engines"] if idx in e["devices"] and e.get("state") != "idle"]
        share = sum(e["share_pct"] for e in on)
        mem = sum(e.get("memory") or 0.9 for e in on)  # vLLM's default 0.9 for whole GPUs
        seen_here = [
            f"{k} {s['mib_by_gpu'][idx]}" for k, s in by_key.items() if idx in s["mib_by_gpu"]
        ]
        lines.append(
            f"| {idx} | {', '.join(e['key'] for e in on) or '-'} | {share}% | {mem:.2f} | "
            f"{g['used_mib']} / {g['total_mib']} | {g['used_mib'] / g['total_mib']:.2f} | "
            f"{', '.join(seen_here) or '-'} |"
        )
    return "\n".join(lines)


def wait_restarted(run_dir: str, key: str, old_pid: int, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            row = next(e for e in status(run_dir)["engines"] if e["key"] == key)
        except (subprocess.SubprocessError, ValueError):  # a status read mid-write: next turn
            time.sleep(POLL_S)
            continue
        if row["restarts"] >= 1 and row["state"] == "healthy" and row["pid"] not in (None, old_pid):
            return row
        time.sleep(POLL_S)
    return None


def kill_one(
    args: argparse.Namespace,
    state: dict[str, Any],
    victim: dict[str, Any],
    plan: dict[str, Any],
    rep: Report,
) -> dict[str, Any]:
    """kill -9 the engine's process group while requests for its model keep coming through the
    router; it must come back healthy with the same GPUs."""
    url = state["router"]["url"]
    model, key = victim["served"][0], victim["key"]
    embed = is_embed(plan[key]["argv"])
    others = [
        e
        for e in state["engines"]
        if e["model"] == victim["model"] and e["key"] != key and e.get("state") == "healthy"
    ]
    counts = {"ok": 0, "fail": 0}
    errors: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            err = ask(url, model, embed, timeout=60)
            counts["fail" if err else "ok"] += 1
            if err and len(errors) < 5:
                errors.append(err)
            time.sleep(0.05)

    thread = threading.Thread(target=traffic, daemon=True)
    if others:  # with no other replica the router holds requests; checked after the restart
        thread.start()
        time.sleep(2)
    t0 = time.monotonic()
    os.killpg(victim["pid"], signal.SIGKILL)
    print(f"killed {key} (process group {victim['pid']})", flush=True)
    row = wait_restarted(args.run_dir, key, victim["pid"], args.restart_timeout)
    took = time.monotonic() - t0
    stop.set()
    if others:
        thread.join(90)
    orphans = session_members(victim["pid"])  # engine-core or TP workers outliving the kill
    rep.add(f"kill -9 {key}: no process of the killed engine left", not orphans, f"{orphans}")
    rep.add(
        f"kill -9 {key}: restarted and healthy",
        row is not None,
        f"after {took:.0f} s" if row else f"not within {args.restart_timeout:g} s",
    )
    result: dict[str, Any] = {"key": key, "old_pid": victim["pid"], "restart_s": round(took, 1)}
    if row is None:
        return result
    rep.add(
        f"kill -9 {key}: same GPU(s) in the plan after the restart",
        row["devices"] == victim["devices"] and row["share_pct"] == victim["share_pct"],
        f"{victim['gpu']} -> {row['gpu']}",
    )
    time.sleep(args.settle)  # the restarted engine allocates its cache before nvidia-smi looks
    result["after"] = placement(row, smi(), rep, "after restart")
    err = ask(row["url"], model, embed)
    rep.add(f"kill -9 {key}: the new engine answers", not err, err)
    err = ask(url, model, embed)
    rep.add(f"kill -9 {key}: {model} answers through the router after the restart", not err, err)
    if others:
        rep.add(
            f"kill -9 {key}: {model} served through the router meanwhile",
            counts["ok"] > 0 and counts["fail"] == 0,
            f"{counts['ok']} ok, {counts['fail']} failed {errors[:2]}",
        )
    result["requests_during"] = counts
    return result


def check(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report()
    plan_doc = json.loads(Path(args.plan).read_text())
    plan = {e["key"]: e for e in plan_doc["engines"]}
    state = status(args.run_dir)
    (out / "status-before.json").write_text(json.dumps(state, indent=1))
    running = [e for e in state["engines"] if e.get("state") != "idle"]
    for e in running:
        p = plan.get(e["key"], {})
        rep.add(
            f"{e['key']}: status shows the dry-run plan's GPUs",
            (e["devices"], e["share_pct"]) == (p.get("devices"), p.get("share_pct")),
            f"status {e['gpu']}, plan {p.get('gpu')}",
        )
        rep.add(f"{e['key']}: plan gives {NVLS}=0", p.get("env", {}).get(NVLS) == "0")
        e["memory"] = p.get("memory")
    snap = smi()
    (out / "smi-up.json").write_text(json.dumps(snap, indent=1))
    seen = [placement(e, snap, rep, "up") for e in running]
    table = gpu_table(state, snap, seen)
    url = state["router"]["url"]
    served = sorted({s for e in running for s in e["served"]})
    listed = sorted(m["id"] for m in call(f"{url}/v1/models")["data"])
    rep.add("router lists every served model", set(served) <= set(listed), f"{listed}")
    for e in running:
        err = ask(e["url"], e["served"][0], is_embed(plan[e["key"]]["argv"]))
        rep.add(f"{e['key']} answers directly", not err, err)
    for name in served:
        embed = any(is_embed(plan[e["key"]]["argv"]) for e in running if name in e["served"])
        n = 2 * sum(name in e["served"] for e in running)
        errs = [err for _ in range(n) if (err := ask(url, name, embed))]
        rep.add(f"{name}: {n} requests through the router", not errs, "; ".join(errs[:2]))
    kills = []
    for model in dict.fromkeys(e["model"] for e in running):  # one engine of each model
        victim = [e for e in running if e["model"] == model][-1]
        kills.append(kill_one(args, status(args.run_dir), victim, plan, rep))
    final = status(args.run_dir)
    (out / "status-after.json").write_text(json.dumps(final, indent=1))
    snap_after = smi()
    (out / "smi-after-restarts.json").write_text(json.dumps(snap_after, indent=1))
    for e in final["engines"]:
        e["memory"] = plan.get(e["key"], {}).get("memory")
    seen_after = [
        placement(e, snap_after, rep, "final") for e in final["engines"] if e.get("state") != "idle"
    ]
    result = {
        "fleet": state["fleet"],
        "ok": rep.ok,
        "checks": rep.rows,
        "kills": kills,
        "placement": seen,
        "placement_after": seen_after,
    }
    (out / "check.json").write_text(json.dumps(result, indent=1))
    (out / "gpus.md").write_text(
        f"After `up`:\n\n{table}\n\nAfter the restarts:\n\n"
        f"{gpu_table(final, snap_after, seen_after)}\n"
    )
    print(table)
    print("PASS" if rep.ok else "FAIL", flush=True)
    return 0 if rep.ok else 1


def after_down(args: argparse.Namespace) -> int:
    """No process of the fleet left and no compute process on a GPU that was not there
    before `up` (the baseline)."""
    rep = Report()
    base = json.loads(Path(args.baseline).read_text())
    pids: set[int] = set()
    for path in args.state:
        if not Path(path).exists():
            continue
        st = json.loads(Path(path).read_text())
        pids.add(st.get("supervisor_pid") or 0)
        pids.add((st.get("router") or {}).get("pid") or 0)
        pids.update(e.get("pid") or 0 for e in st.get("engines", []))
    pids.discard(0)
    live = sorted(p for p in pids if session_of(p) is not None)
    rep.add("no process of the fleet left (supervisor, router, engines)", not live, f"{live}")
    left = sorted(p for p in pids if session_members(p))
    rep.add("no engine session has a live process", not left, f"sessions {left}")
    deadline = time.monotonic() + args.timeout
    before = {a["pid"] for a in base["apps"]}
    while True:
        snap = smi()
        new = [a for a in snap["apps"] if a["pid"] not in before]
        if not new or time.monotonic() > deadline:
            break
        time.sleep(1)
    rep.add(
        "no new compute process on any GPU (nvidia-smi --query-compute-apps)", not new, f"{new}"
    )
    rows = ", ".join(
        f"GPU {g['index']} {g['used_mib']} MiB (before up: "
        f"{next((b['used_mib'] for b in base['gpus'] if b['index'] == g['index']), '?')})"
        for g in snap["gpus"]
    )
    rep.add("GPU memory after down", True, rows)
    Path(args.out).write_text(json.dumps({"ok": rep.ok, "checks": rep.rows, "smi": snap}, indent=1))
    return 0 if rep.ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("spec")
    sp.add_argument("fleet")
    sp.add_argument("--chat", required=True)
    sp.add_argument("--embed", required=True)
    sp.add_argument("--single-gpu", action="store_true")
    sp.add_argument("--eager", action="store_true")
    sub.add_parser("smi")
    ck = sub.add_parser("check")
    ck.add_argument("--run-dir", required=True)
    ck.add_argument("--plan", required=True, help="`vfleet up --dry-run` output")
    ck.add_argument("--out", required=True)
    ck.add_argument("--restart-timeout", type=float, default=900.0)
    ck.add_argument(
        "--settle", type=float, default=float(os.environ.get("VFLEET_CHECK_SETTLE_S", "5"))
    )
    dn = sub.add_parser("after-down")
    dn.add_argument("--baseline", required=True)
    dn.add_argument("--state", nargs="+", required=True)
    dn.add_argument("--out", required=True)
    dn.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    if args.cmd == "spec":
        doc = yaml.safe_load(Path(args.fleet).read_text())
        paths = {"chat": str(Path(args.chat).resolve()), "embed": str(Path(args.embed).resolve())}
        print(
            yaml.safe_dump(make_spec(doc, paths, args.single_gpu, args.eager), sort_keys=False),
            end="",
        )
        return 0
    if args.cmd == "smi":
        print(json.dumps(smi(), indent=1))
        return 0
    if args.cmd == "check":
        return check(args)
    return after_down(args)


if __name__ == "__main__":
    sys.exit(main())
