"""End-to-end tests of the pooling routes (embeddings, score, rerank) over HTTP."""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import SimProcess, start_sim
from httpclient import Client

DIM = 64  # embed_sim's --embedding-dim
SCORE_PATHS = ["/score", "/v1/score"]
RERANK_PATHS = ["/rerank", "/v1/rerank", "/v2/rerank"]
POOLING_PATHS = ["/v1/embeddings", *SCORE_PATHS, *RERANK_PATHS]
QUERY = "where does the red fox sleep at night"
RELATED = "the red fox sleeps in a den at night"
UNRELATED = "quarterly tax filing deadlines for corporations"
POOL_USAGE_KEYS = ["prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details"]


@pytest.fixture(scope="module")
def emb(embed_sim: SimProcess) -> Client:
    return Client(embed_sim.url)


@pytest.fixture(scope="module")
def classify_sim() -> Iterator[SimProcess]:
    sp = start_sim("--model", "scorer", "--task", "classify", "--profile", "instant")
    yield sp
    sp.stop()


def embed(c: Client, **body: Any) -> dict[str, Any]:
    resp = c.post("/v1/embeddings", body)
    assert resp.status == 200, resp.body
    out: dict[str, Any] = resp.json()
    return out


def vectors(out: dict[str, Any]) -> list[list[float]]:
    return [d["embedding"] for d in out["data"]]


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def token_ids(c: Client, text: str) -> list[int]:
    resp = c.post("/tokenize", {"prompt": text})
    assert resp.status == 200, resp.body
    ids: list[int] = resp.json()["tokens"]
    return ids


# -- embeddings -------------------------------------------------------------------------------


def test_embedding_of_a_string(emb: Client) -> None:
    out = embed(emb, model="embedder", input="hello world")
    assert list(out) == ["id", "object", "created", "model", "data", "usage"]
    assert out["id"].startswith("embd-")
    assert out["object"] == "list"
    assert out["model"] == "embedder"
    assert isinstance(out["created"], int)
    [item] = out["data"]
    assert list(item) == ["index", "object", "embedding"]
    assert item["index"] == 0 and item["object"] == "embedding"
    vec = item["embedding"]
    assert len(vec) == DIM
    assert all(isinstance(x, float) for x in vec)
    assert abs(norm(vec) - 1.0) < 1e-6
    use = out["usage"]
    assert list(use) == POOL_USAGE_KEYS
    n = len(token_ids(emb, "hello world"))
    assert use == {
        "prompt_tokens": n,
        "total_tokens": n,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


def test_embedding_of_a_list_of_strings(emb: Client) -> None:
    texts = ["alpha", "beta gamma", "delta epsilon zeta"]
    out = embed(emb, input=texts)
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    vecs = vectors(out)
    assert all(len(v) == DIM and abs(norm(v) - 1.0) < 1e-6 for v in vecs)
    assert len({tuple(v) for v in vecs}) == 3
    for text, vec in zip(texts, vecs, strict=True):
        assert vectors(embed(emb, input=text)) == [vec]
    assert out["usage"]["prompt_tokens"] == sum(len(token_ids(emb, t)) for t in texts)


def test_embedding_of_token_ids(emb: Client) -> None:
    ids = token_ids(emb, "hello world")
    by_text = vectors(embed(emb, input="hello world"))
    assert vectors(embed(emb, input=ids)) == by_text
    other = token_ids(emb, "another text")
    out = embed(emb, input=[ids, other])
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert vectors(out)[0] == by_text[0]
    assert vectors(out)[1] == vectors(embed(emb, input="another text"))[0]
    assert out["usage"]["prompt_tokens"] == len(ids) + len(other)


def test_embeddings_are_deterministic_across_processes(
    emb: Client, sim_factory: Callable[..., SimProcess]
) -> None:
    twin = sim_factory(
        "--model",
        "embedder",
        "--task",
        "embed",
        "--profile",
        "instant",
        "--embedding-dim",
        str(DIM),
    )
    texts = ["same text, same vector", "another sentence"]
    a = vectors(embed(emb, input=texts))
    b = vectors(embed(Client(twin.url), input=texts))
    assert a == b


def test_similar_texts_embed_closer(emb: Client) -> None:
    q, rel, unrel = vectors(embed(emb, input=[QUERY, RELATED, UNRELATED]))

    def cos(x: list[float], y: list[float]) -> float:
        return sum(a * b for a, b in zip(x, y, strict=True))

    assert cos(q, rel) > cos(q, unrel)


def test_dimensions_truncates_to_a_unit_vector(emb: Client) -> None:
    out = embed(emb, input="shorter please", dimensions=16)
    [vec] = vectors(out)
    assert len(vec) == 16
    assert abs(norm(vec) - 1.0) < 1e-6
    resp = emb.post("/v1/embeddings", {"input": "too long", "dimensions": DIM + 1})
    assert resp.status == 400
    assert resp.error["type"] == "BadRequestError"


def test_base64_encoding(emb: Client) -> None:
    floats = vectors(embed(emb, input=["b64 one", "b64 two"]))
    out = embed(emb, input=["b64 one", "b64 two"], encoding_format="base64")
    for item, ref in zip(out["data"], floats, strict=True):
        assert isinstance(item["embedding"], str)
        arr = array("f")
        arr.frombytes(base64.b64decode(item["embedding"]))
        assert len(arr) == DIM
        assert all(abs(x - y) < 1e-6 for x, y in zip(arr, ref, strict=True))


def test_embedding_x_request_id(emb: Client) -> None:
    resp = emb.post("/v1/embeddings", {"input": "x"}, headers={"X-Request-Id": "emb-rid"})
    assert resp.json()["id"] == "embd-emb-rid"


def test_embedding_missing_input_is_400(emb: Client) -> None:
    resp = emb.post("/v1/embeddings", {"model": "embedder"})
    assert resp.status == 400
    err = resp.error
    assert err["type"] == "Bad Request"
    assert err["param"] is not None and err["param"].startswith("body")


@pytest.mark.parametrize("bad", [5, {"text": "x"}, [1.5, 2.5], ["ok", 3]])
def test_embedding_wrong_input_type_is_400(emb: Client, bad: object) -> None:
    resp = emb.post("/v1/embeddings", {"input": bad})
    assert resp.status == 400, resp.body
    assert resp.error["type"] == "Bad Request"


def test_embedding_invalid_json_is_400(emb: Client) -> None:
    resp = emb.post("/v1/embeddings", data=b"[1, 2")
    assert resp.status == 400
    assert resp.error["type"] == "Bad Request"


def test_embedding_unknown_model_is_404(emb: Client) -> None:
    resp = emb.post("/v1/embeddings", {"model": "nope", "input": "x"})
    assert resp.status == 404
    assert resp.error == {
        "message": "The model `nope` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_embedding_input_over_max_model_len_is_400(emb: Client) -> None:
    resp = emb.post("/v1/embeddings", {"input": [5] * 5000})
    assert resp.status == 400
    assert "maximum context length" in resp.error["message"]


# -- score ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SCORE_PATHS)
@pytest.mark.parametrize(
    ("left", "right"), [("queries", "documents"), ("text_1", "text_2"), ("data_1", "data_2")]
)
def test_score_forms(emb: Client, path: str, left: str, right: str) -> None:
    resp = emb.post(path, {"model": "embedder", left: QUERY, right: [UNRELATED, RELATED]})
    assert resp.status == 200, resp.body
    out = resp.json()
    assert list(out) == ["id", "object", "created", "model", "data", "usage"]
    assert out["id"].startswith("score-") and out["object"] == "list"
    assert out["model"] == "embedder"
    assert [list(d) for d in out["data"]] == [["index", "object", "score"]] * 2
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert all(d["object"] == "score" for d in out["data"])
    unrel, rel = (d["score"] for d in out["data"])
    assert rel > unrel
    assert list(out["usage"]) == POOL_USAGE_KEYS
    assert out["usage"]["completion_tokens"] == 0
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0


def test_score_is_symmetric_in_the_pair_forms(emb: Client) -> None:
    a = emb.post("/score", {"queries": QUERY, "documents": RELATED}).json()["data"]
    b = emb.post("/score", {"text_1": QUERY, "text_2": RELATED}).json()["data"]
    assert a[0]["score"] == b[0]["score"]


def test_score_pairwise_lists(emb: Client) -> None:
    resp = emb.post("/v1/score", {"queries": [QUERY, UNRELATED], "documents": [RELATED, UNRELATED]})
    assert resp.status == 200, resp.body
    scores = [d["score"] for d in resp.json()["data"]]
    single = [
        emb.post("/v1/score", {"queries": q, "documents": d}).json()["data"][0]["score"]
        for q, d in ((QUERY, RELATED), (UNRELATED, UNRELATED))
    ]
    assert scores == single


def test_score_missing_fields_is_400(emb: Client) -> None:
    resp = emb.post("/v1/score", {"queries": QUERY})
    assert resp.status == 400
    assert resp.error["type"] == "Bad Request"


def test_score_unknown_model_is_404(emb: Client) -> None:
    resp = emb.post("/score", {"model": "ghost", "queries": "a", "documents": ["b"]})
    assert resp.status == 404
    assert resp.error["message"] == "The model `ghost` does not exist."


# -- rerank -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RERANK_PATHS)
def test_rerank_sorts_by_relevance(emb: Client, path: str) -> None:
    docs = [UNRELATED, RELATED, "completely different words about cooking pasta"]
    resp = emb.post(path, {"model": "embedder", "query": QUERY, "documents": docs})
    assert resp.status == 200, resp.body
    out = resp.json()
    assert list(out) == ["id", "model", "usage", "results"]
    assert out["id"].startswith("score-") and out["model"] == "embedder"
    assert list(out["usage"]) == ["prompt_tokens", "total_tokens"]
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0
    results = out["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert results[0]["index"] == 1
    for r in results:
        assert list(r) == ["index", "document", "relevance_score"]
        assert r["document"] == {"text": docs[r["index"]], "multi_modal": None}


def test_rerank_scores_match_score_route(emb: Client) -> None:
    docs = [UNRELATED, RELATED]
    ranked = emb.post("/rerank", {"query": QUERY, "documents": docs}).json()["results"]
    scored = emb.post("/score", {"queries": QUERY, "documents": docs}).json()["data"]
    assert {r["index"]: r["relevance_score"] for r in ranked} == {
        d["index"]: d["score"] for d in scored
    }


@pytest.mark.parametrize(("top_n", "expected"), [(1, 1), (2, 2), (0, 4), (10, 4)])
def test_rerank_top_n(emb: Client, top_n: int, expected: int) -> None:
    docs = ["a fox", "the red fox at night", "pasta", "taxes"]
    full = emb.post("/v1/rerank", {"query": QUERY, "documents": docs}).json()["results"]
    resp = emb.post("/v1/rerank", {"query": QUERY, "documents": docs, "top_n": top_n})
    assert resp.status == 200, resp.body
    assert resp.json()["results"] == full[:expected]


def test_rerank_ignores_return_documents(emb: Client) -> None:
    body = {"query": QUERY, "documents": [RELATED], "return_documents": False}
    resp = emb.post("/v1/rerank", body)
    assert resp.status == 200, resp.body
    assert resp.json()["results"][0]["document"]["text"] == RELATED


@pytest.mark.parametrize(
    "body",
    [
        {"documents": ["a"]},
        {"query": "q"},
        {"query": "q", "documents": ["a"], "top_n": -1},
        {"query": "q", "documents": ["a"], "top_n": "all"},
        {"query": 3, "documents": ["a"]},
    ],
)
def test_rerank_bad_requests_are_400(emb: Client, body: dict[str, Any]) -> None:
    resp = emb.post("/v1/rerank", body)
    assert resp.status == 400, resp.body
    assert resp.error["type"] == "Bad Request"


def test_rerank_x_request_id(emb: Client) -> None:
    resp = emb.post(
        "/v1/rerank", {"query": "q", "documents": ["a"]}, headers={"X-Request-Id": "rr-1"}
    )
    assert resp.json()["id"] == "score-rr-1"


# -- which model serves which routes ----------------------------------------------------------


def test_classify_model_serves_score_and_rerank_only(classify_sim: SimProcess) -> None:
    c = Client(classify_sim.url)
    for path in SCORE_PATHS:
        resp = c.post(path, {"queries": QUERY, "documents": [UNRELATED, RELATED]})
        assert resp.status == 200, resp.body
        unrel, rel = (d["score"] for d in resp.json()["data"])
        assert rel > unrel
    for path in RERANK_PATHS:
        resp = c.post(path, {"query": QUERY, "documents": [UNRELATED, RELATED]})
        assert resp.status == 200, resp.body
        assert resp.json()["results"][0]["index"] == 1
    resp = c.post("/v1/embeddings", {"input": "x"})
    assert resp.status == 404
    assert resp.json() == {"detail": "Not Found"}
    resp = c.post("/v1/completions", {"prompt": "x"})
    assert resp.status == 404


@pytest.mark.parametrize("path", POOLING_PATHS)
def test_pooling_routes_404_on_generate_model(gen_sim: SimProcess, path: str) -> None:
    body = {"input": "x", "queries": "a", "documents": ["b"], "query": "a"}
    resp = Client(gen_sim.url).post(path, body)
    assert resp.status == 404
    assert resp.json() == {"detail": "Not Found"}


def test_embedding_model_lists_itself(emb: Client) -> None:
    out = emb.get("/v1/models").json()
    assert [m["id"] for m in out["data"]] == ["embedder"]
    assert out["data"][0]["max_model_len"] == 4096
