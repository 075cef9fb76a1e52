"""Build hook: compiles the hot-path modules with mypyc when a C compiler is available.

The simulator's scheduler, KV cache, metrics, API parsing and the HTTP protocol run once per
request or per token; compiled with mypyc (the same type annotations `mypy --strict` checks)
they run about twice as fast, which benchmarks/sim_speed.py measures. Without a compiler, or
with VFLEET_MYPYC=0 (use it for editable installs, so edits are not shadowed by stale
extension modules), the package installs as plain Python and behaves the same.

It also ships the Helm chart inside the package (`vfleet/chart`): `vfleet k8s` renders it and
`vfleet up` reads its engine rules file, from any directory, after a plain `pip install`.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

COMPILED = [
    "src/vfleet/http/server.py",
    "src/vfleet/prom.py",
    "src/vfleet/router/activator.py",
    # the circuit breaker's bookkeeping runs on every forwarded request: ~10x faster compiled
    "src/vfleet/router/breaker.py",
    "src/vfleet/router/demand.py",
    "src/vfleet/router/ejection.py",
    "src/vfleet/router/endpoints.py",
    # forward, inbound and routes came out of proxy.py: the same per-request code, still compiled
    "src/vfleet/router/forward.py",
    "src/vfleet/router/inbound.py",
    # the kv policy's index lookup: 2x faster compiled (benchmarks/kv_decision.py)
    "src/vfleet/router/kvindex.py",
    "src/vfleet/router/metrics.py",
    "src/vfleet/router/policies.py",
    "src/vfleet/router/proxy.py",
    "src/vfleet/router/ratelimit.py",
    "src/vfleet/router/routes.py",
    # tenancy (sharedlimits, tenants, usage): limit windows and the usage meter run on every keyed
    # request; compiled, limit checks ~4x and metering ~1.7x faster (tenancy_overhead.py --micro)
    "src/vfleet/router/sharedlimits.py",
    "src/vfleet/router/sharedmetrics.py",
    "src/vfleet/router/state.py",
    "src/vfleet/router/tenants.py",
    "src/vfleet/router/tracing.py",
    "src/vfleet/router/upstream.py",
    "src/vfleet/router/usage.py",
    "src/vfleet/sim/api.py",
    "src/vfleet/sim/engine.py",
    "src/vfleet/sim/errors.py",
    "src/vfleet/sim/jobs.py",
    "src/vfleet/sim/kvcache.py",
    "src/vfleet/sim/metrics.py",
    "src/vfleet/sim/profiles.py",
    "src/vfleet/sim/responses.py",
    "src/vfleet/sim/scheduler.py",
    "src/vfleet/sim/server.py",
    "src/vfleet/sim/tokenizer.py",
]


def _want_mypyc() -> bool:
    setting = os.environ.get("VFLEET_MYPYC", "auto")
    if setting == "0":
        return False
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return setting == "1" or shutil.which(compiler) is not None


ext_modules = []
if _want_mypyc():
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3")


class BuildWithChart(build_py):
    """build_py, plus charts/vfleet copied into the package as `vfleet/chart`."""

    def run(self) -> None:
        super().run()
        chart = Path(__file__).resolve().parent / "charts" / "vfleet"
        target = Path(self.build_lib) / "vfleet" / "chart"
        if chart.is_dir():  # absent only when building from an sdist without charts/
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(chart, target)


setup(ext_modules=ext_modules, cmdclass={"build_py": BuildWithChart})
