"""The pure side of Kubernetes discovery: which pods serve, and the list+watch pod table."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubefake import make_pod
from vfleet.router.kubepods import (
    PodEndpoint,
    PodRules,
    PodTable,
    WatchError,
    apply_event,
    changes,
    from_list,
    list_page,
    pod_endpoint,
)

RULES = PodRules(port=8000, model_label="vfleet.io/model")


def pod(name: str = "p", uid: str = "u1", version: str = "7", **kw: Any) -> dict[str, Any]:
    p = make_pod(name, **kw)
    p["metadata"] |= {"uid": uid, "resourceVersion": version}
    return p


def with_meta(p: dict[str, Any], **meta: Any) -> dict[str, Any]:
    p["metadata"] |= meta
    return p


def without_ready(p: dict[str, Any]) -> dict[str, Any]:
    p["status"]["conditions"] = [c for c in p["status"]["conditions"] if c["type"] != "Ready"]
    return p


def table(*eps: tuple[str, PodEndpoint], version: str = "1") -> PodTable:
    return PodTable(dict(eps), version)


# -- which pods serve, where, and what ---------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "url"),
    [
        (pod(port=9001), "http://127.0.0.1:9001"),
        (pod(ready=False), None),
        (without_ready(pod()), None),
        (pod(phase="Pending", ip=None), None),
        (pod(ip=None), None),
        (pod(phase="Succeeded"), None),
        (pod(phase="Failed"), None),
        (with_meta(pod(), deletionTimestamp="2026-01-01T00:01:00Z"), None),
        (pod(port=None), "http://127.0.0.1:8000"),
        (pod(port=9001, annotations={"vfleet.io/port": "9100"}), "http://127.0.0.1:9100"),
        (pod(port=9001, annotations={"vfleet.io/port": "nope"}), "http://127.0.0.1:9001"),
        (pod(port=None, annotations={"vfleet.io/port": "70000"}), "http://127.0.0.1:8000"),
        (pod(ip="fd00::12", port=9001), "http://[fd00::12]:9001"),
        ({"metadata": {"name": "bare"}}, None),
        ({"metadata": None, "spec": None, "status": None}, None),
    ],
    ids=[
        "ready",
        "not-ready",
        "no-ready-condition",
        "pending",
        "no-ip",
        "succeeded",
        "failed",
        "terminating",
        "default-port",
        "port-annotation",
        "bad-port-annotation",
        "out-of-range-port",
        "ipv6",
        "bare",
        "nulls",
    ],
)
def test_serving_pods_and_their_url(obj: dict[str, Any], url: str | None) -> None:
    ep = pod_endpoint(obj, RULES)
    assert (ep.url if ep else None) == url


def test_port_of_a_container_named_http_among_others() -> None:
    p = pod(port=None)
    p["spec"]["containers"] = [
        {"name": "sidecar", "ports": [{"name": "metrics", "containerPort": 9090}]},
        {
            "name": "vllm",
            "ports": [{"containerPort": 1234}, {"name": "http", "containerPort": 8123}],
        },
    ]
    ep = pod_endpoint(p, RULES)
    assert ep is not None and ep.url == "http://127.0.0.1:8123"


@pytest.mark.parametrize(
    ("labels", "annotations", "rules", "models"),
    [
        ({}, {}, RULES, ()),
        ({"vfleet.io/model": "demo"}, {}, RULES, ("demo",)),
        ({"vfleet.io/model": ""}, {}, RULES, ()),
        ({"model": "llama3"}, {}, RULES, ()),  # vllm-stack's label names the spec, not the model
        ({"model": "llama3"}, {}, PodRules(model_label="model"), ("llama3",)),
        (
            {"vfleet.io/model": "demo"},
            {"vfleet.io/models": "Qwen/Qwen3-8B, lora-a,lora-a"},
            RULES,
            ("Qwen/Qwen3-8B", "lora-a"),
        ),
        ({}, {"vfleet.io/models": " , "}, RULES, ()),
    ],
    ids=[
        "engine-decides",
        "label",
        "empty-label",
        "vllm-stack-label-ignored",
        "vllm-stack-label-chosen",
        "annotation-wins",
        "blank-annotation",
    ],
)
def test_models_from_annotation_then_label(
    labels: dict[str, str], annotations: dict[str, str], rules: PodRules, models: tuple[str, ...]
) -> None:
    ep = pod_endpoint(pod(labels=labels, annotations=annotations), rules)
    assert ep is not None and ep.models == models
    assert ep.name == "default/p"


# -- lists and events -------------------------------------------------------------------------


def test_list_page_reads_version_items_and_continue() -> None:
    body = {
        "kind": "PodList",
        "metadata": {"resourceVersion": "42", "continue": "tok"},
        "items": [pod("a"), "junk", pod("b")],
    }
    items, version, token = list_page(body)
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    assert (version, token) == ("42", "tok")
    assert list_page({"metadata": {"resourceVersion": "1"}, "items": None}) == ([], "1", None)


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"items": []},
        {"metadata": {"resourceVersion": ""}, "items": []},
        {"metadata": {"resourceVersion": "1"}, "items": {}},
    ],
)
def test_list_page_rejects_what_is_not_a_pod_list(body: Any) -> None:
    with pytest.raises(ValueError):
        list_page(body)


def test_a_list_replaces_everything_known_before() -> None:
    t = from_list([pod("a", uid="ua", port=1), pod("b", uid="ub", ready=False)], "10", RULES)
    assert t.version == "10"
    assert [ep.url for ep in t.pods.values()] == ["http://127.0.0.1:1"]
    assert from_list([], "11", RULES).pods == {}


def test_events_add_modify_delete_and_advance_the_version() -> None:
    t = from_list([], "10", RULES)
    t1 = apply_event(t, {"type": "ADDED", "object": pod(uid="u", version="11", port=1)}, RULES)
    assert isinstance(t1, PodTable) and t1.version == "11" and set(t1.pods) == {"u"}
    not_ready = pod(uid="u", version="12", port=1, ready=False)
    t2 = apply_event(t1, {"type": "MODIFIED", "object": not_ready}, RULES)
    assert isinstance(t2, PodTable) and t2.pods == {} and t2.version == "12"
    t3 = apply_event(t2, {"type": "MODIFIED", "object": pod(uid="u", version="13", port=1)}, RULES)
    assert isinstance(t3, PodTable) and set(t3.pods) == {"u"}
    t4 = apply_event(t3, {"type": "DELETED", "object": pod(uid="u", version="14", port=1)}, RULES)
    assert isinstance(t4, PodTable) and t4.pods == {} and t4.version == "14"


def test_deleted_removes_even_a_pod_whose_last_state_looked_ready() -> None:
    t = from_list([pod(uid="u", port=1)], "10", RULES)
    gone = apply_event(t, {"type": "DELETED", "object": pod(uid="u", version="11", port=1)}, RULES)
    assert isinstance(gone, PodTable) and gone.pods == {}


def test_a_pod_recreated_under_the_same_name_is_another_pod() -> None:
    t = from_list([pod("p", uid="old", port=1)], "10", RULES)
    t = apply_event(
        t, {"type": "ADDED", "object": pod("p", uid="new", version="11", port=2)}, RULES
    )
    assert isinstance(t, PodTable) and set(t.pods) == {"old", "new"}
    late = {"type": "DELETED", "object": pod("p", uid="old", version="12", port=1)}
    t = apply_event(t, late, RULES)
    assert isinstance(t, PodTable) and set(t.pods) == {"new"}


def test_bookmarks_move_only_the_version_and_keep_the_same_pods() -> None:
    t = from_list([pod(uid="u", port=1)], "10", RULES)
    bookmark = {
        "type": "BOOKMARK",
        "object": {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "99", "creationTimestamp": None},
            "spec": {"containers": None},
            "status": {},
        },
    }
    after = apply_event(t, bookmark, RULES)
    assert isinstance(after, PodTable) and after.version == "99" and after.pods is t.pods


def test_an_event_that_changes_nothing_keeps_the_pods_object() -> None:
    t = from_list([pod(uid="u", port=1)], "10", RULES)
    same = pod(uid="u", version="11", port=1, annotations={"note": "x"})
    after = apply_event(t, {"type": "MODIFIED", "object": same}, RULES)
    assert isinstance(after, PodTable) and after.pods is t.pods and after.version == "11"
    other = apply_event(t, {"type": "DELETED", "object": pod(uid="x", version="12")}, RULES)
    assert isinstance(other, PodTable) and other.pods is t.pods


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (
            {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "code": 410,
                    "reason": "Expired",
                    "message": "too old resource version: 1 (5)",
                },
            },
            410,
        ),
        (
            {"type": "ERROR", "object": {"kind": "Status", "code": 500, "reason": "InternalError"}},
            500,
        ),
        ({"type": "ERROR", "object": None}, 0),
        ({"type": "SURPRISE", "object": {}}, 0),
        (["not", "an", "event"], 0),
    ],
    ids=["gone", "internal", "no-status", "unknown-type", "not-an-object"],
)
def test_errors_and_nonsense_ask_for_a_list(event: Any, code: int) -> None:
    t = from_list([pod(uid="u", port=1)], "10", RULES)
    result = apply_event(t, event, RULES)
    assert isinstance(result, WatchError) and result.code == code


def test_changes_name_what_appeared_and_what_went() -> None:
    a = PodEndpoint("ns/a", "http://10.0.0.1:8000", ())
    b = PodEndpoint("ns/b", "http://10.0.0.2:8000", ())
    b2 = PodEndpoint("ns/b", "http://10.0.0.2:8000", ("m",))
    assert changes({"a": a, "b": b}, {"b": b2}) == ([b2], [a])


# -- property: watch events converge on what a list says -------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "ready", "unready", "terminate", "delete", "relabel"]),
        st.integers(0, 4),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS)
def test_watch_events_converge_on_what_a_list_says(ops: list[tuple[str, int, bool]]) -> None:
    """A random pod history applied as watch events ends where a fresh list of it starts."""
    cluster: dict[str, dict[str, Any]] = {}
    version = 100
    uids = iter(range(10_000))
    seen = from_list([], str(version), RULES)
    for op, i, ready in ops:
        name = f"p{i}"
        current = cluster.get(name)
        if op == "add" and current is None:
            new = pod(name, uid=f"u{next(uids)}", port=9000 + i, ready=ready)
            kind = "ADDED"
        elif current is None:
            continue
        elif op == "delete":
            new, kind = copy.deepcopy(current), "DELETED"
        else:
            new, kind = copy.deepcopy(current), "MODIFIED"
            if op in ("ready", "unready"):
                flag = "True" if op == "ready" else "False"
                for c in new["status"]["conditions"]:
                    if c["type"] == "Ready":
                        c["status"] = flag
            elif op == "terminate":
                new["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            else:
                new["metadata"]["labels"] = {"vfleet.io/model": f"m{version}"}
        version += 1
        new["metadata"]["resourceVersion"] = str(version)
        if kind == "DELETED":
            del cluster[name]
        else:
            cluster[name] = new
        event = {"type": kind, "object": new}
        step = apply_event(seen, event, RULES)
        assert isinstance(step, PodTable)
        seen = step
    truth = from_list(list(cluster.values()), str(version), RULES)
    assert dict(seen.pods) == dict(truth.pods)
    assert seen.version == str(version)
    served = {p["metadata"]["uid"] for p in cluster.values() if pod_endpoint(p, RULES)}
    assert set(truth.pods) == served
