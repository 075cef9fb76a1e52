"""The router's settings that come from a fleet spec's `router:` section. Pure.

One function for both ways a router starts: `vfleet up` writes these keys into the router's
config file, and the chart values (`vfleet.kube.values`) carry them as `routerSpec` keys, which
the chart's router Deployment turns into the router's flags. Settings at the router's defaults
are left out, so both sides stay as short as the spec. Also which models' engines publish
KV-cache events because their policy reads them (`kv_event_models`).
"""

from __future__ import annotations

from typing import Any

from vfleet.fleetspec.models import Fleet

# RouterConfig key -> routerSpec key of the chart. API keys are not here: the chart keeps them
# in a Secret (servingEngineSpec.vllmApiKey), never in the router's arguments.
CHART_KEYS = {
    "policy": "policy",
    "model_policies": "modelPolicies",
    "rate_limit_per_minute": "rateLimitPerMinute",
    "token_limit_per_minute": "tokenLimitPerMinute",
    "workers": "workers",
}


def router_options(fleet: Fleet) -> dict[str, Any]:
    """The router settings of `fleet`, as vfleet.router.config.RouterConfig keys.

    Per-model policies are keyed by served name (what requests carry): a policy written for a
    model applies to each of its served names; a key that names no model is taken as a served
    name already."""
    r = fleet.router
    out: dict[str, Any] = {"policy": r.policy}
    if r.model_policies:
        by_name = {m.name: m.served_names for m in fleet.models}
        out["model_policies"] = {
            served: policy
            for name, policy in r.model_policies.items()
            for served in by_name.get(name, (name,))
        }
    if r.api_keys:
        out["api_keys"] = list(r.api_keys)
    if r.rate_limit_per_minute:
        out["rate_limit_per_minute"] = r.rate_limit_per_minute
    if r.token_limit_per_minute:
        out["token_limit_per_minute"] = r.token_limit_per_minute
    if r.workers > 1:
        out["workers"] = r.workers
    return out


def kv_event_models(fleet: Fleet, policies: frozenset[str]) -> frozenset[str]:
    """The models whose engines publish KV events: those whose router policy is one of
    `policies` (engine rules' kvEvents.policies) for any of their served names (its per-model
    policy, else the fleet's: the router picks by served name), unless they pool (embed,
    classify, score: no prefix cache for the router to follow). A task left to `auto` counts as
    generating, as the chart sees it."""
    per_name = router_options(fleet).get("model_policies", {})
    out = set()
    for m in fleet.models:
        if m.task not in ("auto", "generate"):
            continue
        if any(per_name.get(n, fleet.router.policy) in policies for n in m.served_names):
            out.add(m.name)
    return frozenset(out)


def chart_router_values(fleet: Fleet) -> dict[str, Any]:
    """`router_options` as the chart's routerSpec keys (API keys left out, see CHART_KEYS)."""
    return {CHART_KEYS[k]: v for k, v in router_options(fleet).items() if k in CHART_KEYS}
