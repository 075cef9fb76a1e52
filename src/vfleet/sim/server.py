"""The simulator's HTTP shell: vLLM's routes over the engine.

Handlers parse with `api`, check the model and the API key, submit sequences to the `Engine` and
answer through a job object that the engine tells about each step's progress. Everything a
client can get wrong comes back in vLLM's error shapes; nothing raises out of a handler.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import random
import sys
import time
from array import array
from collections.abc import Callable
from itertools import count
from urllib.parse import parse_qs

import orjson

from vfleet.http.server import Connection, Request
from vfleet.sim import api, messages, responses, respstore, rich
from vfleet.sim.config import SimConfig
from vfleet.sim.embed import embed, relevance
from vfleet.sim.engine import Engine
from vfleet.sim.errors import (
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    UNAUTHORIZED,
    UNSUPPORTED_MEDIA,
    ApiError,
    invalid,
    not_found_model,
)
from vfleet.sim.faults import Action, FaultState
from vfleet.sim.jobs import (
    EventStreamJob,
    FullJob,
    InFlight,
    Job,
    PoolJob,
    StreamJob,
    StreamRenderer,
)
from vfleet.sim.scheduler import Sequence
from vfleet.sim.structured import AUTO_TOOLS_OFF, Extras
from vfleet.sim.tokenizer import PromptCodec

log = logging.getLogger("vfleet.sim")

GUARDED_PREFIXES = ("/v1", "/v2", "/inference")
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
TEXT_TYPE = b"text/plain; charset=utf-8"

Handler = Callable[[Request, Connection], None]

# POST routes that take no JSON body, so vLLM's application/json check does not apply.
NON_JSON_POSTS = frozenset({"/ping", "/sleep", "/wake_up", "/sim/faults"})


def _is_json(req: Request) -> bool:
    if req.headers.get(b"content-type") == b"application/json":
        return True
    media = req.header(b"content-type").split(";", 1)[0]
    return media.strip().lower() == "application/json"


class SimServer:
    """Routes and state of one simulated engine."""

    def __init__(self, cfg: SimConfig, engine: Engine, codec: PromptCodec) -> None:
        self.cfg = cfg
        self.engine = engine
        # how prompts become token ids (sim.tokenizer.Pieces, or sim.hftok with --tokenizer DIR)
        self.codec = codec
        self.faults = FaultState(cfg.faults, cfg.seed)
        self.loras: dict[str, str] = dict(cfg.lora_modules)
        self.inflight = InFlight(
            engine,
            self.faults,
            responses.fingerprint(cfg.model_path),
            cfg.enable_server_load_tracking,
        )
        self.store = respstore.ResponseStore(cfg.responses_store_size)
        self.routes = self._routes()
        self._rid_prefix = f"{random.getrandbits(32):08x}"
        self._rid_count = count()

    def new_request_id(self) -> str:
        """16 hex digits, like vLLM's random_uuid(): a random per-process half and a counter."""
        return f"{self._rid_prefix}{next(self._rid_count) & 0xFFFFFFFF:08x}"

    def _routes(self) -> dict[str, dict[str, Handler]]:
        r: dict[str, dict[str, Handler]] = {
            "/health": {"GET": self._health},
            "/ping": {"GET": self._health, "POST": self._health},
            "/version": {"GET": self._version},
            "/load": {"GET": self._load},
            "/metrics": {"GET": self._metrics},
            "/v1/models": {"GET": self._models},
            "/tokenize": {"POST": self._tokenize},
            "/detokenize": {"POST": self._detokenize},
            "/v1/load_lora_adapter": {"POST": self._load_lora},
            "/v1/unload_lora_adapter": {"POST": self._unload_lora},
            "/sleep": {"POST": self._sleep},
            "/wake_up": {"POST": self._wake_up},
            "/is_sleeping": {"GET": self._is_sleeping},
            "/sim/faults": {"GET": self._get_faults, "POST": self._set_faults},
            # Not a vLLM route: tells a router (the kv policy) to tokenize as the simulator does
            # (sim.tokenizer, ChatML chats) instead of looking for the model's own tokenizer;
            # with --tokenizer DIR it names DIR, and the router uses the card's root (DIR).
            "/sim/tokenizer": {"GET": self._tokenizer_info},
        }
        # vLLM registers only the routes of the model's task; the others are plain 404s.
        if self.cfg.generates:
            r["/v1/completions"] = {"POST": self._completions}
            r["/v1/chat/completions"] = {"POST": self._chat}
            r["/v1/messages"] = {"POST": self._messages}
            r["/v1/messages/count_tokens"] = {"POST": self._count_tokens}
            r["/v1/responses"] = {"POST": self._responses}
        else:
            for path in ("/score", "/v1/score"):
                r[path] = {"POST": self._score}
            for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
                r[path] = {"POST": self._rerank}
            if self.cfg.task == "embed":
                r["/v1/embeddings"] = {"POST": self._embeddings}
        return r

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, req: Request, conn: Connection) -> None:
        # vLLM's auth middleware runs before routing: unknown /v1 paths get 401 too.
        guarded = self.cfg.api_keys and req.path.startswith(GUARDED_PREFIXES)
        if guarded and not self._authorized(req):
            conn.respond(401, UNAUTHORIZED)
            return
        methods = self.routes.get(req.path)
        if methods is None:
            methods = self._path_routes(req.path)
        if methods is None:
            conn.respond(404, NOT_FOUND)
            return
        handler = methods.get(req.method)
        if handler is None:
            allow = ", ".join(sorted(methods)).encode()
            conn.respond(405, METHOD_NOT_ALLOWED, extra_headers=b"allow: %s\r\n" % allow)
            return
        if req.method == "POST" and req.path not in NON_JSON_POSTS and not _is_json(req):
            conn.respond(400, UNSUPPORTED_MEDIA.body())
            return
        if req.too_large:
            conn.keep_alive = False
            conn.respond(413, ApiError(413, "Request body too large", "BadRequestError").body())
            return
        try:
            handler(req, conn)
        except ApiError as exc:
            conn.respond(exc.status, exc.body())
        except Exception:
            log.exception("handler for %s %s failed", req.method, req.path)
            err = ApiError(500, "Internal server error", "InternalServerError")
            conn.respond(500, err.body())

    def _path_routes(self, path: str) -> dict[str, Handler] | None:
        """Routes with a path parameter (`/v1/responses/{id}`); looked up only on a miss."""
        if not self.cfg.generates or not path.startswith("/v1/responses/"):
            return None
        rest = path[len("/v1/responses/") :]
        if rest.endswith("/cancel") and rest.count("/") == 1:
            return {"POST": self._cancel_response}
        if rest and "/" not in rest:
            return {"GET": self._get_response}
        return None

    def _authorized(self, req: Request) -> bool:
        scheme, _, token = req.header(b"authorization").partition(" ")
        if scheme.lower() == "bearer":
            got = token.encode()
        else:
            # Anthropic clients send their key as `x-api-key`.
            got = req.header(b"x-api-key").encode()
            if not got:
                return False
        return any(hmac.compare_digest(got, k.encode()) for k in self.cfg.api_keys)

    def resolve_model(self, name: str | None) -> str | None:
        """The LoRA adapter a request's `model` names (None for the base model); 404 if neither."""
        if name is None or name in self.cfg.served_names:
            return None
        if name in self.loras:
            return name
        raise not_found_model(name)

    def _fault(self, conn: Connection) -> bool:
        """Carry out the injected fault for this request; True when the request is consumed."""
        action = self.faults.next_action()
        if action is Action.SERVE:
            return False
        if action is Action.CRASH:
            print("vfleet sim: crashing (fault injection)", file=sys.stderr, flush=True)
            os._exit(1)
        if action is Action.HANG:
            return True
        raise ApiError(500, "Internal server error", "InternalServerError")

    # -- small routes -----------------------------------------------------------------------

    def _health(self, req: Request, conn: Connection) -> None:
        conn.respond(503 if self.faults.config.health_failing else 200, b"", b"")

    def _version(self, req: Request, conn: Connection) -> None:
        conn.respond(200, orjson.dumps({"version": responses.VLLM_VERSION}))

    def _tokenizer_info(self, req: Request, conn: Connection) -> None:
        directory = self.codec.directory
        if directory is None:
            conn.respond(200, b'{"tokenizer":"vfleet-sim","chat_template":"chatml"}')
            return
        # --tokenizer DIR: a router tokenizes as for a real engine, from the card's root (DIR)
        conn.respond(200, orjson.dumps({"tokenizer": directory, "chat_template": "model"}))

    def _load(self, req: Request, conn: Connection) -> None:
        conn.respond(200, orjson.dumps({"server_load": self.inflight.load}))

    def _metrics(self, req: Request, conn: Connection) -> None:
        conn.respond(200, self.engine.render_metrics(), METRICS_TYPE)

    def _models(self, req: Request, conn: Connection) -> None:
        now = int(time.time())
        cfg = self.cfg
        max_len = cfg.scheduler.max_model_len
        directory = self.codec.directory
        # with --tokenizer DIR, `root` is DIR, as a real engine's is its model directory (where a
        # router's kv policy finds the tokenizer)
        root = cfg.model_path if directory is None else directory
        cards = [responses.model_card(n, root, None, max_len, now) for n in cfg.served_names]
        cards += [responses.model_card(n, p, cfg.name, None, now) for n, p in self.loras.items()]
        conn.respond(200, orjson.dumps({"object": "list", "data": cards}))

    def _tokenize(self, req: Request, conn: Connection) -> None:
        tr = api.parse_tokenize(api.parse_json(req.body), self.codec)
        self.resolve_model(tr.model)
        strs = [self.codec.piece(t) for t in tr.tokens] if tr.return_token_strs else None
        out = {
            "count": len(tr.tokens),
            "max_model_len": self.cfg.scheduler.max_model_len,
            "tokens": tr.tokens,
            "token_strs": strs,
        }
        conn.respond(200, orjson.dumps(out))

    def _detokenize(self, req: Request, conn: Connection) -> None:
        model, tokens = api.parse_detokenize(api.parse_json(req.body))
        self.resolve_model(model)
        conn.respond(200, orjson.dumps({"prompt": self.codec.decode(tokens)}))

    def _load_lora(self, req: Request, conn: Connection) -> None:
        body = api.parse_json(req.body)
        lora = api.parse_lora_load(body)
        if lora.name in self.loras and body.get("load_inplace") is not True:
            raise ApiError(
                400,
                f"The lora adapter '{lora.name}' has already been loaded. If you want to load "
                "the adapter in place, set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        self.loras[lora.name] = lora.path
        msg = f"Success: LoRA adapter '{lora.name}' added successfully."
        conn.respond(200, msg.encode(), TEXT_TYPE)

    def _unload_lora(self, req: Request, conn: Connection) -> None:
        name = api.parse_lora_unload(api.parse_json(req.body))
        if self.loras.pop(name, None) is None:
            raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        msg = f"Success: LoRA adapter '{name}' removed successfully."
        conn.respond(200, msg.encode(), TEXT_TYPE)

    def _sleep(self, req: Request, conn: Connection) -> None:
        q = parse_qs(req.query, keep_blank_values=True)
        level_s = q.get("level", ["1"])[0]
        mode = q.get("mode", ["abort"])[0]
        if level_s not in ("0", "1", "2"):
            raise ApiError(400, f"Invalid sleep level: {level_s}", param="level")
        if mode not in ("abort", "wait", "keep"):
            raise ApiError(400, f"Invalid sleep mode: {mode}", param="mode")
        if mode == "abort":
            for job in list(self.inflight.jobs):
                job.abort_all()
        self.engine.sleep(max(int(level_s), 0), pause_only=level_s == "0")
        conn.respond(200, b"", b"")

    def _wake_up(self, req: Request, conn: Connection) -> None:
        self.engine.wake_up()
        conn.respond(200, b"", b"")

    def _is_sleeping(self, req: Request, conn: Connection) -> None:
        conn.respond(200, orjson.dumps({"is_sleeping": self.engine.sleeping}))

    def _get_faults(self, req: Request, conn: Connection) -> None:
        out = {**self.faults.config.as_dict(), "requests_seen": self.faults.requests}
        conn.respond(200, orjson.dumps(out))

    def _set_faults(self, req: Request, conn: Connection) -> None:
        try:
            self.faults.config = self.faults.config.updated(api.parse_json(req.body))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        conn.respond(200, orjson.dumps(self.faults.config.as_dict()))

    # -- generation -------------------------------------------------------------------------

    def _chat(self, req: Request, conn: Connection) -> None:
        self._generate(req, conn, api.parse_chat(api.parse_json(req.body), self.codec))

    def _completions(self, req: Request, conn: Connection) -> None:
        self._generate(req, conn, api.parse_completion(api.parse_json(req.body), self.codec))

    def _generate(self, req: Request, conn: Connection, g: api.GenerateRequest) -> None:
        prepared = self.prepare(req, conn, g)
        if prepared is None:
            return
        seqs, rid, model = prepared
        job: Job
        if g.extras is not None:
            job = self._rich_job(conn, seqs, rid, model, g, g.extras)
        elif g.sampling.stream:
            job = StreamJob(self.inflight, conn, seqs, rid, model, g)
        else:
            job = FullJob(self.inflight, conn, seqs, rid, model, g)
        job.start()

    def _rich_job(
        self,
        conn: Connection,
        seqs: list[Sequence],
        rid: str,
        model: str,
        g: api.GenerateRequest,
        extras: Extras,
    ) -> Job:
        """Tool calls, forced JSON, logprobs: answered by `rich`, off the fast path."""
        s, fp = g.sampling, self.inflight.fingerprint
        if s.stream:
            render: StreamRenderer
            if g.chat:
                render = rich.ChatStream(rid, model, seqs, extras, s, fp)
            else:
                render = rich.CompletionStream(rid, model, seqs, s.n, extras, s.include_usage, fp)
            return EventStreamJob(self.inflight, conn, seqs, render)

        def answer(done: list[Sequence]) -> bytes:
            if g.chat:
                return orjson.dumps(rich.chat_body(rid, model, done, s.n, extras, fp))
            return rich.completion_body(rid, model, done, s.n, extras, fp)

        return PoolJob(self.inflight, conn, seqs, answer)

    def prepare(
        self, req: Request, conn: Connection, g: api.GenerateRequest
    ) -> tuple[list[Sequence], str, str] | None:
        """Checks a generate request as vLLM does and builds its sequences: (sequences, request
        id, model name), or None when an injected fault has consumed the request."""
        lora = self.resolve_model(g.model)
        extras = g.extras
        forced = extras.forced if extras is not None else None
        if extras is not None and extras.auto_tools and not self.cfg.enable_auto_tool_choice:
            raise ApiError(400, AUTO_TOOLS_OFF)
        s = g.sampling
        seqs: list[Sequence] = []
        stop = tuple([x.encode() for x in s.stop]) if s.stop else ()
        max_len = self.cfg.scheduler.max_model_len
        if s.max_tokens is not None and s.max_tokens > max_len:
            raise invalid(
                f"max_tokens={s.max_tokens} cannot be greater than max_model_len="
                f"max_total_tokens={max_len}. Please request fewer output tokens.",
                "max_tokens",
                s.max_tokens,
            )
        budgets: list[int] = []
        for prompt in g.prompts:
            if not prompt:
                raise ApiError(400, "Prompt cannot be empty", param="prompt")
            max_tokens = s.max_tokens if s.max_tokens is not None else max_len - len(prompt)
            if max_tokens < 1 or len(prompt) + max_tokens > max_len:
                raise _too_long(len(prompt), max(max_tokens, 1), max_len, g.prompts_are_text)
            budgets.append(max_tokens)
        # vLLM checks `n` when it builds SamplingParams, after every prompt has been measured
        # (_verify_num_sequences: a BadRequestError naming no parameter). `best_of` is no
        # field of vLLM 0.26 requests (vllm#29090 removed it): ignored there, and here too.
        cap = self.cfg.max_n_sequences
        if s.n < 1:
            raise ApiError(400, f"n must be at least 1, got {s.n}.")
        if s.n > cap:
            raise ApiError(
                400,
                f"n must be at most {cap}, got {s.n}. To increase this limit, set the "
                "VLLM_MAX_N_SEQUENCES environment variable.",
            )
        now = self.engine.now()
        for p_idx, (prompt, max_tokens) in enumerate(zip(g.prompts, budgets, strict=True)):
            # Picks where in the filler text the output starts. Python hashes int tuples the
            # same in every process (only str/bytes hashes are salted).
            h = hash((len(prompt), prompt[0], prompt[len(prompt) // 2], prompt[-1])) & 0xFFFFFFFF
            mean = self.cfg.output_len_mean
            eos = None if s.ignore_eos else 1 + h % (2 * mean - 1) if mean > 1 else 1
            seq_stop, seq_max = stop, max_tokens
            if forced is not None:
                # A grammar fixes the output: it ends when the value is complete, or is cut
                # short by max_tokens like any other output.
                eos, seq_stop, seq_max = forced.tokens, (), min(max_tokens, forced.tokens)
            for j in range(s.n):
                seqs.append(
                    Sequence(
                        prompt=prompt,
                        max_tokens=seq_max,
                        arrival=now,
                        eos_after=eos,
                        stop=seq_stop,
                        lora_name=lora,
                        seed=h + s.seed + j,
                        index=p_idx * s.n + j,
                        wants_tokens=s.stream,
                    )
                )
        if self._fault(conn):
            return None
        self.engine.metrics.observe_params(s.n, seqs[0].max_tokens)
        # vLLM names the base model by its first served name, whatever alias was asked for.
        model = lora or self.cfg.name
        rid = req.header(b"x-request-id") or s.request_id or self.new_request_id()
        return seqs, rid, model

    # -- Anthropic Messages -----------------------------------------------------------------

    def _messages(self, req: Request, conn: Connection) -> None:
        g = messages.parse(api.parse_json(req.body), self.codec)
        try:
            prepared = self.prepare(req, conn, g)
        except ApiError as exc:  # errors while serving come back in Anthropic's shape
            conn.respond(exc.status, messages.error_body(exc))
            return
        if prepared is None:
            return
        seqs, rid, model = prepared
        extras = g.extras
        if g.sampling.stream:
            render = messages.MessageStream(rid, model, extras)
            EventStreamJob(self.inflight, conn, seqs, render).start()
            return

        def answer(done: list[Sequence]) -> bytes:
            return messages.full(rid, model, done, extras)

        PoolJob(self.inflight, conn, seqs, answer).start()

    def _count_tokens(self, req: Request, conn: Connection) -> None:
        g = messages.parse(api.parse_json(req.body), self.codec, count_only=True)
        try:
            self.resolve_model(g.model)
        except ApiError as exc:
            conn.respond(exc.status, messages.error_body(exc))
            return
        conn.respond(200, messages.count_tokens(g))

    # -- Responses --------------------------------------------------------------------------

    def _responses(self, req: Request, conn: Connection) -> None:
        body = api.parse_json(req.body)
        model = body.get("model")
        self.resolve_model(model if isinstance(model, str) else None)
        r = respstore.parse(body, self.store, self.codec)
        prepared = self.prepare(req, conn, r.g)
        if prepared is None:
            return
        seqs, _, model_name = prepared
        response_id = respstore.new_id()
        store = self.store
        if r.g.sampling.stream:
            render = respstore.ResponseStream(response_id, model_name, r, store)
            EventStreamJob(self.inflight, conn, seqs, render).start()
            return

        def answer(done: list[Sequence]) -> bytes:
            raw, stored = respstore.answer(response_id, model_name, r, done)
            if r.store:
                store.put(response_id, stored)
            return raw

        PoolJob(self.inflight, conn, seqs, answer).start()

    def _stored(self, path: str) -> tuple[str, respstore.Stored]:
        response_id = path[len("/v1/responses/") :].split("/", 1)[0]
        if not response_id.startswith("resp"):
            raise respstore.invalid_id(response_id)
        stored = self.store.get(response_id)
        if stored is None:
            raise respstore.not_found(response_id)
        return response_id, stored

    def _get_response(self, req: Request, conn: Connection) -> None:
        conn.respond(200, self._stored(req.path)[1].body)

    def _cancel_response(self, req: Request, conn: Connection) -> None:
        self._stored(req.path)
        # Every stored response here was answered in the foreground (no background mode).
        raise ApiError(
            400, "Cannot cancel a synchronous response.", "invalid_request_error", "response_id"
        )

    # -- pooling ----------------------------------------------------------------------------

    def _embeddings(self, req: Request, conn: Connection) -> None:
        e = api.parse_embed(api.parse_json(req.body), self.codec)
        self.resolve_model(e.model)
        dim = self.cfg.embedding_dim
        if e.dimensions is not None and e.dimensions > dim:
            raise ApiError(400, f"dimensions must be <= {dim} for this model", param="dimensions")
        seqs = self._pooling_seqs(e.inputs)
        if self._fault(conn):
            return
        rid = req.header(b"x-request-id") or self.new_request_id()

        def answer(done: list[Sequence]) -> bytes:
            vectors: list[object] = []
            for seq in done:
                vec = embed(self.codec.decode(seq.prompt), dim)
                if e.dimensions is not None:
                    vec = _renormalise(vec[: e.dimensions])
                vectors.append(
                    base64.b64encode(array("f", vec).tobytes()).decode() if e.base64 else vec
                )
            tokens = sum(len(seq.prompt) for seq in done)
            return responses.embeddings(rid, int(time.time()), self.cfg.name, vectors, tokens)

        PoolJob(self.inflight, conn, seqs, answer).start()

    def _score(self, req: Request, conn: Connection) -> None:
        self._scoring(req, conn, api.parse_score(api.parse_json(req.body)))

    def _rerank(self, req: Request, conn: Connection) -> None:
        self._scoring(req, conn, api.parse_rerank(api.parse_json(req.body)))

    def _scoring(self, req: Request, conn: Connection, r: api.ScoreRequest) -> None:
        self.resolve_model(r.model)
        pairs = [
            (r.queries[0] if len(r.queries) == 1 else r.queries[i], d)
            for i, d in enumerate(r.documents)
        ]
        if not pairs:
            raise ApiError(400, "At least one document is required", param="documents")
        seqs = self._pooling_seqs(tuple(self.codec.encode(q + "\n" + d, True) for q, d in pairs))
        if self._fault(conn):
            return
        rid = req.header(b"x-request-id") or self.new_request_id()
        dim = self.cfg.embedding_dim

        def answer(done: list[Sequence]) -> bytes:
            values = [relevance(q, d, dim) for q, d in pairs]
            tokens = sum(len(seq.prompt) for seq in done)
            if r.rerank:
                return responses.rerank(rid, self.cfg.name, r.documents, values, r.top_n, tokens)
            return responses.scores(rid, int(time.time()), self.cfg.name, values, tokens)

        PoolJob(self.inflight, conn, seqs, answer).start()

    def _pooling_seqs(self, inputs: tuple[list[int], ...]) -> list[Sequence]:
        max_len = self.cfg.scheduler.max_model_len
        now = self.engine.now()
        seqs = []
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise ApiError(400, "Input cannot be empty", param="input")
            if len(tokens) > max_len:
                raise ApiError(
                    400,
                    f"This model's maximum context length is {max_len} tokens. However, you "
                    f"requested {len(tokens)} tokens in the input for embedding generation. "
                    "Please reduce the length of the input.",
                    param="input_tokens",
                )
            seqs.append(Sequence(prompt=tokens, max_tokens=0, arrival=now, index=i))
        return seqs


def _too_long(prompt_len: int, max_tokens: int, max_len: int, text: bool) -> ApiError:
    """vLLM's context-length error. vLLM tokenizes text prompts only up to one token past the
    room left, so for them it reports "at least" that many tokens."""
    room = max_len - max_tokens
    count = min(prompt_len, room + 1) if text else prompt_len
    at_least = "at least " if count == room + 1 else ""
    return invalid(
        f"This model's maximum context length is {max_len} tokens. However, you requested "
        f"{max_tokens} output tokens and your prompt contains {at_least}{count} input tokens, "
        f"for a total of {at_least}{count + max_tokens} tokens. Please reduce the length of "
        "the input prompt or the number of requested output tokens.",
        "input_tokens",
        count,
    )


def _renormalise(vec: list[float]) -> list[float]:
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]
