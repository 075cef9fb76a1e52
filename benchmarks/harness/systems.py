"""The systems a router benchmark compares, and how each is started.

  direct       no router: the client talks to the first fake engine (the floor for latency, and
               about the harness's own ceiling for throughput)
  nginx        Debian's nginx, one worker, keep-alive to the engines, no buffering: what a plain
               reverse proxy costs
  vllm-router  the Rust router from PyPI (`vllm-router`, version pinned in setup.sh), round robin
  vfleet       `vfleet router`, one process, round robin, the engines as static backends

Every system gets the same engines and listens on a free loopback port; nothing reaches outside
127.0.0.1 (the Rust router's model-hub lookups are pointed at a closed local port).
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ("direct", "nginx", "vllm-router", "vfleet")
BENCH_ROOT = Path(os.environ.get("VFLEET_BENCH_ROOT", "/tmp/vfleet-bench"))
VLLM_ROUTER = BENCH_ROOT / "venv-vllm-router" / "bin" / "vllm-router"

# what the Rust router inherits: offline, no telemetry, loopback never proxied
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}

# One worker so that nginx, like the others, is measured on the one core it is pinned to;
# upstream keep-alive so that it does not pay a TCP handshake per request.
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream engines {{
{servers}
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://engines;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class System:
    name: str
    url: str  # where clients send requests
    argv: list[str] | None  # None: nothing to start (direct)
    version: str
    note: str
    env: dict[str, str] = field(default_factory=dict)
    files: dict[Path, str] = field(default_factory=dict)  # written before the start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"? ({exc.strerror})"
    lines = (out.stdout.strip() or out.stderr.strip()).splitlines()
    return lines[-1] if lines else "?"


def _pip_version(venv_bin: Path, dist: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    return _version([str(venv_bin.parent / "python"), "-c", code])


def build(
    names: list[str], engines: list[str], workdir: Path, vfleet_bin: str, vllm_router: Path
) -> list[System]:
    """The systems in `names` (a subset of NAMES), in front of the engine URLs `engines`."""
    out = []
    for name in names:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if name == "direct":
            out.append(System(name, engines[0], None, "fakeengine.py", "client -> first engine"))
        elif name == "nginx":
            conf_dir = workdir / "nginx"
            servers = "\n".join(f"        server {u.removeprefix('http://')};" for u in engines)
            text = NGINX_CONF.format(dir=conf_dir, servers=servers, port=port)
            conf = conf_dir / "nginx.conf"
            argv = ["nginx", "-p", str(conf_dir), "-c", str(conf)]
            version = _version(["nginx", "-v"]).rpartition("/")[2]
            note = "1 worker, round robin, upstream keep-alive, no buffering"
            out.append(System(name, url, argv, version, note, files={conf: text}))
        elif name == "vllm-router":
            argv = [str(vllm_router), "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--worker-urls", *engines, "--policy", "round_robin", "--log-level", "warning"]
            argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
            version = _pip_version(vllm_router, "vllm-router")
            note = "PyPI vllm-router (Rust), round robin"
            out.append(System(name, url, argv, version, note, env=QUIET_ENV))
        elif name == "vfleet":
            argv = [vfleet_bin, "router", "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--policy", "round_robin"]
            argv += [f"--backend={u}=fake-model" for u in engines]
            version = _version([vfleet_bin, "--version"])
            out.append(System(name, url, argv, version, "vfleet router, 1 process, round robin"))
        else:
            raise ValueError(f"unknown system {name!r} (known: {', '.join(NAMES)})")
    return out
