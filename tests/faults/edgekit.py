"""Helpers for the edge tests: a sim with chosen `EdgeLimits`, raw-socket reads, process RSS.

This package has an `__init__.py`, so its conftest is `faults.conftest` and `from conftest import`
in the parent's test modules keeps meaning `tests/conftest.py`.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

from conftest import SimProcess, start_ready

EDGESIM = Path(__file__).with_name("edgesim.py")
CLOSED = b"<closed>"


def start_edge_sim(limits: dict[str, Any], profile: str = "instant") -> SimProcess:
    """A `vfleet sim` equivalent whose HTTP edge has `EdgeLimits(**limits)` (bounded start)."""
    cmd = [sys.executable, str(EDGESIM), json.dumps(limits), profile]
    return start_ready(cmd, "edge sim")


def connect(url: str, timeout_s: float = 5.0) -> socket.socket:
    host, _, port = url.removeprefix("http://").partition(":")
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def read_all(sock: socket.socket, timeout_s: float = 5.0, limit: int = 1 << 20) -> bytes:
    """What the server sends until it closes (then CLOSED is appended) or `timeout_s` passes."""
    out = b""
    deadline = time.monotonic() + timeout_s
    while len(out) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        sock.settimeout(left)
        try:
            part = sock.recv(65536)
        except TimeoutError:
            return out
        except ConnectionResetError:
            return out + CLOSED
        if not part:
            return out + CLOSED
        out += part
    return out


def read_head(sock: socket.socket) -> bytes:
    """Bytes up to and including the first blank line (one response head, nothing after it)."""
    out = b""
    while b"\r\n\r\n" not in out:
        part = sock.recv(1)
        if not part:
            raise AssertionError(f"closed after {out!r}")
        out += part
    return out


def status_of(reply: bytes) -> int:
    """The status code of the first response in `reply` (0 when there is none)."""
    if not reply.startswith(b"HTTP/1.1 ") or len(reply) < 12 or not reply[9:12].isdigit():
        return 0
    return int(reply[9:12])


def error_of(reply: bytes) -> dict[str, Any]:
    """The OpenAI-shaped error object of a complete refusal (`connection: close`)."""
    head, _, body = reply.removesuffix(CLOSED).partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    err: dict[str, Any] = json.loads(body)["error"]
    assert list(err) == ["message", "type", "param", "code"], err
    assert err["code"] == status_of(reply), err
    return err


def send_until_answered(
    sock: socket.socket, first: bytes, filler: bytes, total: int
) -> tuple[int, bool]:
    """Send `first`, then `filler` repeatedly up to `total` bytes, stopping as soon as the server
    answers or stops reading. Returns (bytes sent, whether an answer is waiting)."""
    sock.sendall(first)
    sent = len(first)
    while sent < total:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            return sent, True
        try:
            sock.sendall(filler)
        except OSError:  # the server closed; its answer is in our receive buffer
            return sent, True
        sent += len(filler)
    return sent, False


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
