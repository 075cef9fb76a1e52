"""In-flight requests of the simulator: one job per HTTP request, told of progress by the engine.

A job owns its sequences until they finish, turns their progress into the HTTP answer (a whole
body, SSE chunks, or a pooling result) and releases everything when the client leaves. What a
job needs of the server is one `InFlight`: the engine, the table of jobs in flight and the
constants of every answer. The HTTP shell (`sim.server`) owns it and reads it; jobs change
nothing else of the server, and this module does not import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from vfleet.http.server import Connection
from vfleet.sim import api, responses
from vfleet.sim.engine import Engine
from vfleet.sim.errors import ApiError
from vfleet.sim.faults import FaultState
from vfleet.sim.scheduler import Finish, Sequence


class InFlight:
    """The jobs in flight on one engine, and what they answer with.

    `load` counts them for vLLM's `/load` when server load tracking is on (otherwise it stays
    0, as vLLM's does); `faults` is read at each stream flush, as `/sim/faults` may change it."""

    __slots__ = ("engine", "faults", "fingerprint", "jobs", "load", "track_load")

    def __init__(
        self, engine: Engine, faults: FaultState, fingerprint: str, track_load: bool
    ) -> None:
        self.engine = engine
        self.faults = faults
        self.fingerprint = fingerprint
        self.track_load = track_load
        self.jobs: set[Job] = set()
        self.load = 0

    def add(self, job: Job) -> None:
        self.jobs.add(job)
        if self.track_load:
            self.load += 1

    def remove(self, job: Job) -> bool:
        """Take `job` out of the table; False when it was not (or no longer) in it."""
        if job not in self.jobs:
            return False
        self.jobs.discard(job)
        if self.track_load:
            self.load -= 1
        return True


class Job:
    """Base of the in-flight request kinds; `finish()` answers once every sequence is done."""

    __slots__ = ("conn", "done", "inflight", "seqs")

    def __init__(self, inflight: InFlight, conn: Connection, seqs: list[Sequence]) -> None:
        self.inflight = inflight
        self.conn = conn
        self.seqs = seqs
        self.done = 0

    def start(self) -> None:
        for seq in self.seqs:
            seq.tag = self
        self.inflight.add(self)
        self.conn.on_close = self.cancel
        self.begin()
        self.inflight.engine.submit(self.seqs)

    def begin(self) -> None:
        """Called before the sequences are submitted (streams send their headers here)."""

    def on_progress(self, seq: Sequence) -> None:
        if seq.finish is not None:
            self.done += 1

    def flush(self) -> None:
        if self.done == len(self.seqs) and self in self.inflight.jobs:
            self._release()
            self.finish()

    def finish(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        """The client went away: stop computing for it."""
        self._release()
        self.inflight.engine.abort(self.seqs)

    def abort_all(self) -> None:
        """Sleep with mode=abort: end the request now with what it has."""
        live = [seq for seq in self.seqs if seq.finish is None]
        self.inflight.engine.abort(live)
        for seq in live:
            self.on_progress(seq)
        self.flush()

    def _release(self) -> None:
        if self.inflight.remove(self):
            # Break the job <-> sequence cycle so both are freed by reference counting,
            # without waiting for (and paying for) the cyclic garbage collector.
            for seq in self.seqs:
                seq.tag = None


def _visible(seq: Sequence) -> str:
    return seq.text_bytes(0, seq.safe_bytes()).decode("utf-8", errors="replace")


def _prompt_tokens(seqs: list[Sequence], n: int) -> int:
    return sum(len(seq.prompt) for seq in seqs[::n])


class FullJob(Job):
    """A non-streamed completion or chat completion."""

    __slots__ = ("g", "model", "rid")

    def __init__(
        self,
        inflight: InFlight,
        conn: Connection,
        seqs: list[Sequence],
        rid: str,
        model: str,
        g: api.GenerateRequest,
    ) -> None:
        super().__init__(inflight, conn, seqs)
        self.rid, self.model, self.g = rid, model, g

    def finish(self) -> None:
        choices = [
            responses.Choice(
                s.index, _visible(s), s.finish.value if s.finish else "abort", s.stop_reason
            )
            for s in self.seqs
        ]
        use = responses.usage(
            _prompt_tokens(self.seqs, self.g.sampling.n), sum(s.n_out for s in self.seqs)
        )
        build = responses.chat_completion if self.g.chat else responses.completion
        body = build(
            self.rid, int(time.time()), self.model, choices, use, self.inflight.fingerprint
        )
        self.conn.respond(200, body)


class StreamJob(Job):
    """A streamed completion: SSE chunks written once per engine burst."""

    __slots__ = ("chunks", "enc", "g", "pending", "prompt_len", "sent", "started")

    def __init__(
        self,
        inflight: InFlight,
        conn: Connection,
        seqs: list[Sequence],
        rid: str,
        model: str,
        g: api.GenerateRequest,
    ) -> None:
        super().__init__(inflight, conn, seqs)
        self.g = g
        self.enc = responses.ChunkEncoder(g.chat, rid, int(time.time()), model)
        self.sent = [0] * len(seqs)  # output bytes sent per choice
        self.pending: list[bytes] = []
        self.chunks = 0
        self.started = False  # chat: role chunks for every choice go out with the first output
        self.prompt_len = len(seqs[0].prompt)

    def begin(self) -> None:
        self.conn.start_stream()

    def on_progress(self, seq: Sequence) -> None:
        enc = self.enc
        if not self.started:
            self.started = True
            if self.g.chat:
                for i in range(len(self.seqs)):
                    self._add(enc.role(i), 0)
        i = seq.index
        start = self.sent[i]
        safe = seq.safe_bytes()
        text = seq.text_bytes(start, safe).decode("utf-8", errors="replace")
        self.sent[i] = max(start, safe)
        if seq.finish is None:
            if text:
                self._add(enc.delta(i, text), seq.n_out)
            return
        self.done += 1
        fp = None if self.g.sampling.include_usage else self.inflight.fingerprint
        self._add(enc.final(i, text, seq.finish.value, seq.stop_reason, fp), seq.n_out)

    def _add(self, chunk: bytes, completion_tokens: int) -> None:
        if self.g.sampling.continuous_usage:
            chunk = responses.with_usage(chunk, self.prompt_len, completion_tokens)
        self.pending.append(chunk)

    def flush(self) -> None:
        if not self.pending or self not in self.inflight.jobs:
            return
        limit = self.inflight.faults.config.drop_stream_after_chunks
        if limit and self.chunks + len(self.pending) >= limit:
            # Fault injection: deliver exactly `limit` events, then cut the connection.
            self.conn.send(b"".join(self.pending[: limit - self.chunks]))
            self.pending.clear()
            self._release()
            self.inflight.engine.abort(self.seqs)
            self.conn.close()
            return
        data = b"".join(self.pending)
        self.chunks += len(self.pending)
        self.pending.clear()
        if self.done < len(self.seqs):
            self.conn.send(data)
            return
        if self.g.sampling.include_usage:
            prompt = _prompt_tokens(self.seqs, self.g.sampling.n)
            completion = sum(s.n_out for s in self.seqs)
            data += self.enc.usage(prompt, completion, self.inflight.fingerprint)
        self._release()
        self.conn.end_stream(data + responses.DONE)


class StreamRenderer(Protocol):
    """The events of a stream whose chunks are not plain text deltas (tool calls, logprobs,
    Anthropic and Responses events): rendered by the API module that owns the shape."""

    def progress(self, seq: Sequence) -> bytes:
        """Events for what `seq` produced since the last call (b"" when none)."""
        ...

    def end(self, seqs: list[Sequence]) -> bytes:
        """Events after every sequence has finished."""
        ...


class EventStreamJob(Job):
    """A streamed request rendered by a `StreamRenderer`, written once per engine burst."""

    __slots__ = ("pending", "render")

    def __init__(
        self, inflight: InFlight, conn: Connection, seqs: list[Sequence], render: StreamRenderer
    ) -> None:
        super().__init__(inflight, conn, seqs)
        self.render = render
        self.pending: list[bytes] = []

    def begin(self) -> None:
        self.conn.start_stream()

    def on_progress(self, seq: Sequence) -> None:
        if seq.finish is not None:
            self.done += 1
        data = self.render.progress(seq)
        if data:
            self.pending.append(data)

    def flush(self) -> None:
        if self not in self.inflight.jobs:
            return
        if self.done < len(self.seqs):
            if self.pending:
                self.conn.send(b"".join(self.pending))
                self.pending.clear()
            return
        data = b"".join(self.pending) + self.render.end(self.seqs)
        self.pending.clear()
        self._release()
        self.conn.end_stream(data)


class PoolJob(Job):
    """A request answered once every sequence is done, by a callback: embeddings, scores and
    reranks (prefill-only), and generations whose body an API module renders (tool calls,
    logprobs, Anthropic messages, stored responses)."""

    __slots__ = ("answer",)

    def __init__(
        self,
        inflight: InFlight,
        conn: Connection,
        seqs: list[Sequence],
        answer: Callable[[list[Sequence]], bytes],
    ) -> None:
        super().__init__(inflight, conn, seqs)
        self.answer = answer

    def finish(self) -> None:
        if any(s.finish is Finish.ABORT for s in self.seqs):
            err = ApiError(500, "Request was aborted", "InternalServerError")
            self.conn.respond(500, err.body())
            return
        self.conn.respond(200, self.answer(self.seqs))
