"""Runs a router benchmark: fake engines, each system in turn, the phases, one record per phase.

Layout on a 2-core machine: the system under test is pinned to the router core (0); the fake
engines, wrk, the Python load generator and this process to the load core (1). A router is thus
measured on one core, and its CPU microseconds per request are what scales to other machines.

Each repetition runs every system once, in an order rotated by the repetition number, so a
neighbour's burst or a slow drift of the host spreads over all systems instead of landing on
one. Phases, per system and repetition:

  probe      one request per route (`loadgen.py probe`)
  wrk        `wrk -t1 -c64` small non-streamed chat POSTs after a short warm-up: max req/s
  rate<R>    open-loop R req/s (`loadgen.py rate`): latency from each scheduled send; skipped
             when the system's max req/s is under 1.3 x R (it would only measure its queue)
  stream0    32 clients streaming 64-event chat answers with no gap: SSE events/s
  stream<G>  the same with G ms between events (~100 tokens/s at 10): time to first token

Every phase records the router's CPU seconds and peak RSS (whole process tree, from /proc), the
busy and steal time of each core, and the CPU other processes on the machine used meanwhile
(`foreign_cpu_pct`): a phase with a busy neighbour is flagged in the report, not hidden.
Records go to <out>/results.jsonl, one JSON object per line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procs, procstat
from . import systems as systems_mod
from . import wrk as wrk_mod

HERE = Path(__file__).resolve().parent
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RunConfig:
    out: Path
    vfleet_bin: str
    python: str  # interpreter of a vfleet venv: runs the fake engines and the load generator
    vllm_router: Path = systems_mod.VLLM_ROUTER
    systems: list[str] = field(default_factory=lambda: list(systems_mod.NAMES))
    reps: int = 3
    phases: list[str] = field(default_factory=lambda: ["probe", "wrk", "rate", "stream"])
    engines: int = 2
    wrk_s: float = 15.0  # seconds measured
    wrk_warmup_s: float = 3.0
    rates: list[float] = field(default_factory=lambda: [50.0, 300.0])  # requests per second
    rate_s: float = 10.0
    stream_s: float = 10.0
    warmup_s: float = 2.0  # before the measured window of a rate or stream phase
    stream_clients: int = 32
    stream_tokens: int = 64
    stream_gap_ms: float = 10.0
    router_core: int = 0
    load_core: int = 1


def log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.logs = cfg.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results = (cfg.out / "results.jsonl").open("a")
        self.load_pin = procstat.pin(cfg.load_core)
        self.engine_procs: list[subprocess.Popen[bytes]] = []
        self.engines: list[str] = []

    def record(self, rec: dict[str, Any]) -> dict[str, Any]:
        self.results.write(json.dumps(rec) + "\n")
        self.results.flush()
        return rec

    # processes
    def start_engines(self) -> None:
        for i in range(self.cfg.engines):
            log_path = self.logs / f"engine-{i}.log"
            proc, url = procs.spawn_engine(self.cfg.python, self.load_pin, log_path)
            self.engine_procs.append(proc)
            self.engines.append(url)
        log("engines:", " ".join(self.engines))

    def start(self, system: systems_mod.System, rep: int) -> subprocess.Popen[bytes] | None:
        if system.argv is None:
            return None
        for path, text in system.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        env = {**os.environ, **system.env}
        logf = (self.logs / f"{system.name}-rep{rep}.log").open("w")
        argv = [*procstat.pin(self.cfg.router_core), *system.argv]
        return subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, system: systems_mod.System, proc: subprocess.Popen[bytes] | None) -> bool:
        hello = [{"role": "user", "content": "hi"}]
        body = json.dumps({"model": "fake-model", "max_tokens": 4, "messages": hello}).encode()
        deadline = time.monotonic() + READY_TIMEOUT_S
        streak = 0
        while time.monotonic() < deadline and streak < 3:
            if proc is not None and proc.poll() is not None:
                return False
            ok = procs.http_status(system.url + "/v1/models") == 200
            ok = ok and procs.http_status(system.url + "/v1/chat/completions", body) == 200
            streak = streak + 1 if ok else 0
            time.sleep(0.2)
        return streak >= 3

    def split(self) -> list[int]:
        """Chat requests each engine has answered so far."""
        counts = []
        for url in self.engines:
            try:
                with urllib.request.urlopen(url + "/bench/stats", timeout=5) as r:
                    counts.append(json.loads(r.read())["counts"].get("/v1/chat/completions", 0))
            except (OSError, ValueError, KeyError):
                counts.append(-1)
        return counts

    # phases
    def phase(self, head: dict[str, Any], argv: list[str], watch: Any, limit_s: float) -> dict:
        """Run one load command on the load core (killed after `limit_s`), measuring the router
        around it."""
        others0, cores0 = procstat.all_cpu(), procstat.core_ticks()
        cpu0 = watch.cpu_s() if watch else 0.0
        if watch:
            watch.peak_rss = 0
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*self.load_pin, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        while True:
            if watch:
                watch.sample_rss()
            try:
                out, err = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - t0 > limit_s:
                    proc.kill()
                    out, err = proc.communicate()
                    break
        wall = time.monotonic() - t0
        ours = set(procstat.tree(os.getpid()))
        foreign = procstat.foreign_cpu_s(others0, procstat.all_cpu(), ours)
        rec = dict(head, wall_s=round(wall, 2), rc=proc.returncode)
        rec["cores"] = procstat.core_usage(cores0, procstat.core_ticks())
        rec["foreign_cpu_pct"] = round(100.0 * foreign / wall, 1)
        if watch:
            watch.sample_rss()
            rec["router_cpu_s"] = round(watch.cpu_s() - cpu0, 3)
            rec["router_cpu_pct"] = round(100.0 * rec["router_cpu_s"] / wall, 1)
            rec["router_rss_mb"] = round(watch.peak_rss / 2**20, 1)
        rec["stdout"] = out
        if proc.returncode:
            rec["stderr_tail"] = err[-1000:]
        return rec

    def run_wrk(self, head: dict, url: str, watch: Any) -> dict:
        cfg = self.cfg
        warm = wrk_mod.command(url + "/v1/chat/completions", cfg.wrk_warmup_s)
        subprocess.run([*self.load_pin, *warm], capture_output=True, check=False, timeout=120)
        before = self.split()
        argv = wrk_mod.command(url + "/v1/chat/completions", cfg.wrk_s, latency=True)
        rec = self.phase(head, argv, watch, cfg.wrk_s + 60)
        res = wrk_mod.parse(rec.pop("stdout"))
        rec["wrk"] = vars(res)
        rec["backend_split"] = [b - a for a, b in zip(before, self.split(), strict=True)]
        if watch and res.requests:
            rec["router_cpu_us_per_req"] = round(1e6 * rec["router_cpu_s"] / res.requests, 1)
        return rec

    def run_loadgen(self, head: dict, args: list[str], watch: Any) -> dict:
        cfg = self.cfg
        argv = [cfg.python, str(HERE / "loadgen.py"), *args]
        rec = self.phase(head, argv, watch, max(cfg.rate_s, cfg.stream_s) + cfg.warmup_s + 120)
        try:
            rec["result"] = json.loads(rec.pop("stdout").strip().splitlines()[-1])
        except (ValueError, IndexError):
            rec["result"] = None
            return rec
        res = rec["result"]
        if watch and res.get("ok"):
            rec["router_cpu_us_per_req"] = round(1e6 * rec["router_cpu_s"] / res["ok"], 1)
        if watch and res.get("events"):
            rec["router_cpu_us_per_event"] = round(1e6 * rec["router_cpu_s"] / res["events"], 2)
        return rec

    def run_system(self, system: systems_mod.System, rep: int) -> None:
        log(f"rep {rep} {system.name}: starting")
        proc = self.start(system, rep)
        try:
            ready = self.wait_ready(system, proc)
            start = {"system": system.name, "rep": rep, "phase": "start", "ready": ready}
            start |= {"version": system.version, "note": system.note, "argv": system.argv}
            watch = procstat.TreeWatch(proc.pid) if proc else None
            if watch:
                start["idle_rss_mb"] = round(watch.sample_rss() / 2**20, 1)
            self.record(start)
            if not ready:
                log(f"  {system.name} did not become ready; see {self.logs}")
                return
            self.run_phases(system, rep, watch)
        finally:
            procs.stop(proc)

    def run_phases(self, system: systems_mod.System, rep: int, watch: Any) -> None:
        cfg, url = self.cfg, system.url
        head = {"system": system.name, "rep": rep}
        lg = ["--url", url]
        if "probe" in cfg.phases:
            self.record(self.run_loadgen(head | {"phase": "probe"}, ["probe", *lg], watch))
        max_rps = None
        if "wrk" in cfg.phases:
            rec = self.record(self.run_wrk(head | {"phase": "wrk"}, url, watch))
            max_rps = rec["wrk"]["req_per_s"]
            log(f"  wrk {max_rps} req/s, {rec.get('router_cpu_us_per_req')} us/req")
        for rate in cfg.rates if "rate" in cfg.phases else ():
            h = head | {"phase": f"rate{rate:g}"}
            if system.argv and max_rps is not None and max_rps < 1.3 * rate:
                self.record(h | {"skipped": f"max {max_rps:.0f} req/s < 1.3 x {rate:g}"})
                continue
            args = ["rate", *lg, "--rate", f"{rate:g}", "--duration", f"{cfg.rate_s:g}"]
            rec = self.record(self.run_loadgen(h, [*args, "--warmup", f"{cfg.warmup_s:g}"], watch))
            log(f"  {h['phase']}: {((rec['result'] or {}).get('latency_ms') or {})}")
        for gap in (0.0, cfg.stream_gap_ms) if "stream" in cfg.phases else ():
            h = head | {"phase": f"stream{gap:g}"}
            args = ["stream", *lg, "--concurrency", str(cfg.stream_clients), "--gap-ms", f"{gap:g}"]
            args += ["--tokens", str(cfg.stream_tokens), "--duration", f"{cfg.stream_s:g}"]
            rec = self.record(self.run_loadgen(h, [*args, "--warmup", f"{cfg.warmup_s:g}"], watch))
            log(f"  {h['phase']}: {(rec['result'] or {}).get('events_per_s')} events/s")

    def run(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if self.load_pin:
            os.sched_setaffinity(0, {cfg.load_core})
        try:
            self.start_engines()
            systems = systems_mod.build(
                cfg.systems, self.engines, cfg.out, cfg.vfleet_bin, cfg.vllm_router
            )
            for rep in range(1, cfg.reps + 1):
                k = (rep - 1) % len(systems)
                for system in systems[k:] + systems[:k]:
                    self.run_system(system, rep)
        finally:
            for proc in self.engine_procs:
                procs.stop(proc, 5)
            self.results.close()
        return load(cfg.out)


def load(out: Path) -> list[dict[str, Any]]:
    """The records of a run folder."""
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line]
