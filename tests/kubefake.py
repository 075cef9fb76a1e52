"""A fake Kubernetes API server on 127.0.0.1 that speaks the pod list+watch protocol.

Enough of the real protocol for discovery and chart tests, with the failures real clusters have:

- `GET /api/v1/namespaces/{ns}/pods` and `/api/v1/pods` (all namespaces): a PodList whose
  `metadata.resourceVersion` is the collection's version; `labelSelector` (`k=v`, `k==v`,
  `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`), `limit` and `continue` pages.
- `...&watch=1&resourceVersion=N`: a chunked stream of JSON lines, `{"type", "object"}`, replaying
  every change after N and then following live ones. An object that starts or stops matching
  the selector arrives as ADDED or DELETED, as the API server filters them. With
  `allowWatchBookmarks=true` the stream may carry BOOKMARK events (an object with only
  `metadata.resourceVersion`); `timeoutSeconds` ends the stream cleanly; a version older than
  the retained history gets an ERROR event holding a 410 Status ("too old resource version"),
  or a plain HTTP 410 with `gone_as_http=True`. Without a resourceVersion (or with "0") the
  watch starts with an ADDED event per current pod.
- A bearer token, when set, is required (401 Status otherwise).

Tests change pods (`add_pod`, `set_ready`, `terminate`, `delete`, `update`), and break things:
`drop_watches` (connections cut mid-chunk), `end_watches` (clean end, as a server timeout),
`compact` (old versions expire: 410 Gone), `send_error` (ERROR event on open watches),
`bookmark`, `lossy` (changes happen but open or resumed watches never see them: a silently
stale watch), `pause`/`resume` (requests wait unanswered: the client is disconnected while
pods change), `fail_with` (every request answers that HTTP status). `requests` records what
clients asked for. Simplification: `continue` pages come from the current state, not a snapshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Pod = dict[str, Any]
_PATH = re.compile(r"^/api/v1/(?:namespaces/([^/]+)/)?pods$")
_REQUIREMENT = re.compile(
    r"\s*(?:(!)\s*([\w./-]+)|([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)"
    r"|([\w./-]+)\s+(in|notin)\s*\(([^)]*)\)|([\w./-]+))\s*(?:,|$)"
)


# -- label selectors --------------------------------------------------------------------------


def parse_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """A label selector as a predicate over a label map (equality- and set-based forms)."""
    checks: list[Callable[[dict[str, str]], bool]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _REQUIREMENT.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"unable to parse requirement: {text[pos:]!r}")
        pos = m.end()
        neg, nkey, key, op, value, skey, sop, values, ekey = m.groups()
        if neg:
            checks.append(lambda labels, k=nkey: k not in labels)
        elif key:
            if op == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif skey:
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            if sop == "in":
                checks.append(lambda labels, k=skey, a=allowed: labels.get(k) in a)
            else:
                checks.append(lambda labels, k=skey, a=allowed: labels.get(k) not in a)
        else:
            checks.append(lambda labels, k=ekey: k in labels)
    return lambda labels: all(check(labels) for check in checks)


# -- pods -------------------------------------------------------------------------------------


def make_pod(
    name: str,
    *,
    namespace: str = "default",
    port: int | None = 8000,
    ip: str | None = "127.0.0.1",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ready: bool = True,
    phase: str = "Running",
) -> Pod:
    """A pod object shaped like the API server's (a vLLM container, `http` port when given)."""
    ports = [] if port is None else [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": _conditions(ready),
        "qosClass": "Burstable",
    }
    if ip is not None:
        status |= {"podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.1"}
    container = {"name": "vllm", "ready": ready, "restartCount": 0, "started": ready}
    status["containerStatuses"] = [container]
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.26.0", "ports": ports}],
            "restartPolicy": "Always",
        },
        "status": status,
    }


def _conditions(ready: bool) -> list[dict[str, str]]:
    flag = "True" if ready else "False"
    return [
        {"type": "PodReadyToStartContainers", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": flag},
        {"type": "ContainersReady", "status": flag},
        {"type": "PodScheduled", "status": "True"},
    ]


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


# -- the server -------------------------------------------------------------------------------


@dataclass
class _Change:
    version: int
    kind: str  # ADDED, MODIFIED, DELETED
    old: Pod | None
    new: Pod  # for DELETED: the final state


@dataclass
class _Watch:
    namespace: str | None
    matches: Callable[[dict[str, str]], bool]
    bookmarks: bool
    lines: list[bytes] = field(default_factory=list)
    ending: str | None = None  # "drop" | "end"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, str]

    @property
    def is_watch(self) -> bool:
        return self.params.get("watch") in ("1", "true")


class FakeKube:
    """The fake API server; use as a context manager or call start() and close()."""

    def __init__(
        self, *, token: str | None = None, gone_as_http: bool = False, port: int = 0
    ) -> None:
        self.port = port  # 0: an ephemeral one
        self.token = token
        self.gone_as_http = gone_as_http
        self.lossy = False
        self.fail_with: int | None = None
        self.requests: list[Request] = []
        self._cond = threading.Condition()
        self._version = 1000
        self._oldest = 0  # watches from versions below this get 410 Gone
        self._pods: dict[tuple[str, str], Pod] = {}
        self._history: list[_Change] = []
        self._watches: list[_Watch] = []
        self._paused = False
        self._uids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            kube = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self.resume()
        self.end_watches()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeKube:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state changes

    @property
    def version(self) -> str:
        with self._cond:
            return str(self._version)

    def add_pod(self, name: str, **kw: Any) -> Pod:
        """Create a pod (see make_pod for the arguments); returns a copy of what was stored."""
        pod = make_pod(name, **kw)
        key = (pod["metadata"]["namespace"], name)
        with self._cond:
            if key in self._pods:
                raise ValueError(f"pod {key} exists")
            pod["metadata"]["uid"] = f"00000000-0000-4000-8000-{next(self._uids):012d}"
            self._record("ADDED", None, pod)
            return json.loads(json.dumps(pod))  # type: ignore[no-any-return]

    def update(self, name: str, change: Callable[[Pod], None], namespace: str = "default") -> None:
        with self._cond:
            old = self._pods[(namespace, name)]
            new = json.loads(json.dumps(old))
            change(new)
            self._record("MODIFIED", old, new)

    def set_ready(self, name: str, ready: bool, namespace: str = "default") -> None:
        def change(pod: Pod) -> None:
            pod["status"]["conditions"] = _conditions(ready)
            pod["status"]["containerStatuses"][0]["ready"] = ready

        self.update(name, change, namespace)

    def set_labels(self, name: str, labels: dict[str, str], namespace: str = "default") -> None:
        self.update(
            name, lambda pod: pod["metadata"].__setitem__("labels", dict(labels)), namespace
        )

    def terminate(self, name: str, namespace: str = "default") -> None:
        """Start a graceful deletion: deletionTimestamp set, the pod still exists."""
        self.update(
            name,
            lambda pod: pod["metadata"].update(
                deletionTimestamp="2026-01-01T00:01:00Z", deletionGracePeriodSeconds=30
            ),
            namespace,
        )

    def delete(self, name: str, namespace: str = "default") -> None:
        with self._cond:
            old = self._pods[(namespace, name)]
            self._record("DELETED", old, json.loads(json.dumps(old)))

    def _record(self, kind: str, old: Pod | None, new: Pod) -> None:
        self._version += 1
        new["metadata"]["resourceVersion"] = str(self._version)
        key = (new["metadata"]["namespace"], new["metadata"]["name"])
        if kind == "DELETED":
            del self._pods[key]
        else:
            self._pods[key] = new
        change = _Change(self._version, kind, old, new)
        self._history.append(change)
        if not self.lossy:
            for w in self._watches:
                w.lines += _filtered(change, w)
        self._cond.notify_all()

    # -- failures

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no terminating chunk)."""
        self._end("drop")

    def end_watches(self) -> None:
        """End every open watch cleanly, as a server-side timeout does."""
        self._end("end")

    def _end(self, how: str) -> None:
        with self._cond:
            for w in self._watches:
                w.ending = how
            self._cond.notify_all()

    def compact(self) -> None:
        """Forget history: a watch from any version before now gets 410 Gone."""
        with self._cond:
            self._oldest = self._version
            self._history.clear()

    def send_error(self, code: int = 410) -> None:
        """An ERROR event on every open watch (a 410 as when the watch falls out of history)."""
        if code == 410:
            line = _line("ERROR", status_body(410, "Expired", "too old resource version"))
        else:
            line = _line("ERROR", status_body(code, "InternalError", "injected"))
        with self._cond:
            for w in self._watches:
                w.lines.append(line)
                w.ending = "end"  # the API server closes a watch after its ERROR event
            self._cond.notify_all()

    def bookmark(self) -> str:
        """A BOOKMARK at the current version on every watch that allows them; the version."""
        with self._cond:
            version = str(self._version)
            line = _line(
                "BOOKMARK",
                {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": version, "creationTimestamp": None},
                    "spec": {"containers": None},
                    "status": {},
                },
            )
            for w in self._watches:
                if w.bookmarks:
                    w.lines.append(line)
            self._cond.notify_all()
            return version

    def pause(self) -> None:
        """Hold new requests unanswered until resume() (the client is cut off meanwhile)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    # -- observation

    def open_watches(self) -> int:
        with self._cond:
            return len(self._watches)

    def wait_watches(self, n: int, timeout_s: float = 10.0) -> bool:
        """Wait (bounded) until at least n watches are open."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._watches) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def lists(self) -> list[Request]:
        return [r for r in self.requests if not r.is_watch]

    def watches(self) -> list[Request]:
        return [r for r in self.requests if r.is_watch]

    # -- serving (called from handler threads)

    def _gate(self) -> None:
        with self._cond:
            while self._paused:
                self._cond.wait(0.1)

    def _list(
        self,
        namespace: str | None,
        selector: str,
        limit: int,
        token: str | None,
    ) -> tuple[int, dict[str, Any]]:
        matches = parse_selector(selector)
        with self._cond:
            start = 0
            version = self._version
            if token:
                state = json.loads(base64.b64decode(token))
                version, start = int(state["rv"]), int(state["start"])
                if version < self._oldest:
                    return 410, status_body(410, "Expired", "continue token expired")
            pods = sorted((k, p) for k, p in self._pods.items() if _selected(p, namespace, matches))
            page = pods[start : start + limit] if limit else pods[start:]
            meta: dict[str, Any] = {"resourceVersion": str(version)}
            if limit and start + limit < len(pods):
                state = json.dumps({"rv": version, "start": start + limit}).encode()
                meta["continue"] = base64.b64encode(state).decode()
            body = {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": meta,
                "items": [json.loads(json.dumps(p)) for _, p in page],
            }
            return 200, body

    def _open_watch(
        self, namespace: str | None, selector: str, version: str | None, bookmarks: bool
    ) -> tuple[int, _Watch | None]:
        w = _Watch(namespace, parse_selector(selector), bookmarks)
        with self._cond:
            if version not in (None, "") and not version.isdigit():
                return 400, None
            if version in (None, "", "0"):
                for pod in sorted(self._pods.values(), key=lambda p: p["metadata"]["name"]):
                    if _selected(pod, namespace, w.matches):
                        w.lines.append(_line("ADDED", pod))
            elif int(version) < self._oldest:
                if self.gone_as_http:
                    return 410, None
                message = f"too old resource version: {version} ({self._oldest})"
                w.lines.append(_line("ERROR", status_body(410, "Expired", message)))
                w.ending = "end"
            elif not self.lossy:
                for change in self._history:
                    if change.version > int(version):
                        w.lines += _filtered(change, w)
            self._watches.append(w)
            self._cond.notify_all()
            return 200, w

    def _next(self, w: _Watch, deadline: float) -> tuple[list[bytes], str | None]:
        """Wait for lines or an ending; (lines, ending) where ending is drop, end or None."""
        with self._cond:
            while not w.lines and w.ending is None and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            lines, w.lines = w.lines, []
            ending = w.ending or ("end" if time.monotonic() >= deadline else None)
            return lines, ending

    def _close_watch(self, w: _Watch) -> None:
        with self._cond:
            if w in self._watches:
                self._watches.remove(w)
            self._cond.notify_all()


def _selected(pod: Pod, namespace: str | None, matches: Callable[[dict[str, str]], bool]) -> bool:
    meta = pod["metadata"]
    return (namespace is None or meta["namespace"] == namespace) and matches(meta["labels"] or {})


def _filtered(change: _Change, w: _Watch) -> list[bytes]:
    """The event a watch with this namespace and selector sees for one change (maybe none)."""
    was = change.old is not None and _selected(change.old, w.namespace, w.matches)
    now = change.kind != "DELETED" and _selected(change.new, w.namespace, w.matches)
    if change.kind == "DELETED":
        return [_line("DELETED", change.new)] if was else []
    if was and now:
        return [_line("MODIFIED", change.new)]
    if now:
        return [_line("ADDED", change.new)]
    if was:  # it left the selector: watchers see it go
        return [_line("DELETED", change.new)]
    return []


def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    kube: FakeKube

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        kube = self.kube
        kube.requests.append(Request("GET", url.path, params))
        kube._gate()
        if kube.fail_with is not None:
            self._json(kube.fail_with, status_body(kube.fail_with, "InternalError", "injected"))
            return
        if kube.token is not None and self.headers.get("Authorization") != f"Bearer {kube.token}":
            self._json(401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        m = _PATH.match(url.path)
        if m is None:
            self._json(404, status_body(404, "NotFound", f"the server could not find {url.path}"))
            return
        namespace, selector = m.group(1), params.get("labelSelector", "")
        try:
            parse_selector(selector)
        except ValueError as exc:
            self._json(400, status_body(400, "BadRequest", str(exc)))
            return
        if params.get("watch") in ("1", "true"):
            self._watch(namespace, selector, params)
        else:
            self._json(
                *kube._list(
                    namespace, selector, int(params.get("limit") or 0), params.get("continue")
                )
            )

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _watch(self, namespace: str | None, selector: str, params: dict[str, str]) -> None:
        kube = self.kube
        status, w = kube._open_watch(
            namespace,
            selector,
            params.get("resourceVersion"),
            params.get("allowWatchBookmarks") == "true",
        )
        if w is None:
            reason = "Expired" if status == 410 else "BadRequest"
            self._json(status, status_body(status, reason, "too old or invalid resource version"))
            return
        timeout = float(params.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for lines, ending in _stream(kube, w, deadline):
                for line in lines:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                if ending == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if ending == "end":
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
        except OSError:  # the client went away
            self.close_connection = True
        finally:
            kube._close_watch(w)


def _stream(kube: FakeKube, w: _Watch, deadline: float) -> Iterator[tuple[list[bytes], str | None]]:
    while True:
        lines, ending = kube._next(w, deadline)
        yield lines, ending
        if ending is not None:
            return
