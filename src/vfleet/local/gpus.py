"""What this machine has: GPUs, free ports, the installed vLLM."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import socket
import subprocess

from vfleet.engines.vllm import Version, parse_version


def detect_gpus() -> tuple[int, ...]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(int(x) for x in visible.split(",") if x.strip().isdigit())
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(int(x) for x in out.split() if x.isdigit())


def parse_gpus(text: str) -> tuple[int, ...]:
    """`0,1,3` -> (0, 1, 3); `4` alone means four GPUs 0..3 only with a trailing 'x' (4x)."""
    text = text.strip()
    if text.endswith("x") and text[:-1].isdigit():
        return tuple(range(int(text[:-1])))
    ids = [p.strip() for p in text.split(",") if p.strip()]
    if not ids or not all(p.isdigit() for p in ids):
        raise ValueError(f"--gpus {text!r}: expected device ids like 0,1 (or 4x for four GPUs)")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {text!r} names a device twice")
    return tuple(int(p) for p in ids)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """N distinct ports the kernel says are free now (held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(host: str, port: int) -> str | None:
    """None when `host:port` can be bound, else the reason."""
    if port == 0:
        return None
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def vllm_version(executable: str) -> Version | None:
    """The installed vLLM's version: from this environment's metadata, else `vllm --version`."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return parse_version(importlib.metadata.version("vllm"))
    try:
        out = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=120, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(out.strip().splitlines()[-1] if out.strip() else None)
