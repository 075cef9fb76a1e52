"""The router's status page (/ui): its JSON state over real HTTP, the admin gate in front of it,
the pure rate/event tracker, and the page itself in headless Chromium (Debian's `chromium`,
driven by Playwright through `executable_path`: no browser download).

The browser test runs a router over two simulator engines, checks the page lists both replicas
as up, kills one engine and polls the DOM (bounded) until the page shows it down: the issue asks
for that within 5 s of the kill. A screenshot is written to the test's tmp dir; set
VFLEET_UI_SCREENSHOT=docs/img/ui.png to refresh the one in the docs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SimProcess
from httpclient import Client, Conn, wait_for
from test_router import assert_openai_error
from vfleet.prom import labels
from vfleet.router.breaker import Breaker, BreakerPolicy
from vfleet.router.ui import (
    MAX_EVENTS,
    Tracker,
    breaker_view,
    by_label,
    by_upstream,
    parse_labels,
    request_counts,
)

Factory = Callable[..., SimProcess]
HEALTH = ("--health-interval", "0.2")
ENGINE = ("--model", "demo", "--profile", "instant")
COMPLETION = {"model": "demo", "prompt": "hello there", "max_tokens": 4}
SHOWN_DOWN_WITHIN_S = 5.0  # the bound: a killed engine shows as down within 5 s
# Eject after 4 failures; a cool-down (60 s) longer than any test here: it stays ejected.
BREAKER = (
    "--retry-5xx",
    "--breaker-min-requests",
    "4",
    "--breaker-window",
    "60",
    "--breaker-cooldown",
    "60",
    "--breaker-max-cooldown",
    "60",
)
MAX_REQUESTS = 400  # the ejection loop sends at most this many requests
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_tracker_rate_and_events() -> None:
    t = Tracker()
    t.observe(0.0, 100.0, [(("m", "a", 200), 5)], {}, {"a": True, "b": True})
    assert t.rate() == 0.0 and not t.events  # the first look is only a baseline
    t.observe(2.0, 102.0, [(("m", "a", 200), 15), (("m", "a", 500), 2)], {"auth": 1}, {"a": True})
    t.observe(4.0, 104.0, [(("m", "a", 200), 25), (("m", "a", 500), 2)], {"auth": 1}, {"a": False})
    assert t.rate() == (27 - 5) / 4.0
    kinds = [(e.kind, e.status, e.reason, e.count) for e in t.events]
    assert kinds == [("error", 500, "", 2), ("rejected", 0, "auth", 1), ("down", 0, "", 1)]
    for i in range(200):  # the event list stays bounded
        t.observe(5.0 + i, 105.0 + i, [(("m", "a", 503), i + 1)], {}, {"a": i % 2 == 0})
    assert len(t.events) == MAX_EVENTS
    assert len(t.samples) <= t.samples.maxlen  # type: ignore[operator]


def test_tracker_shows_breaker_openings_and_recoveries() -> None:
    t = Tracker()
    t.observe(0.0, 100.0, [], {}, {"a": True}, {("a", "opened"): 1})
    t.observe(1.0, 101.0, [], {}, {"a": True}, {("a", "opened"): 3, ("a", "half_opened"): 2})
    t.observe(2.0, 102.0, [], {}, {"a": True}, {("a", "opened"): 3, ("a", "closed"): 1})
    assert [(e.kind, e.endpoint, e.count) for e in t.events] == [
        ("ejected", "a", 2),
        ("readmitted", "a", 1),
    ]


def test_breaker_view_in_wall_clock_time() -> None:
    policy = BreakerPolicy(min_requests=4, cooldown_s=5.0)
    b = Breaker()
    view = breaker_view(b, 50.0, 1050.0, {})
    assert view["state"] == "closed" and view["since"] is None and view["until"] is None
    assert view["workers"] == {"open": 0, "half_open": 0, "trial": 0}
    b.ok()
    for _ in range(3):
        b.record(False, 10.0, policy)
    b.open(10.0, policy)
    view = breaker_view(b, 12.0, 1012.0, {"open": 2})
    assert (view["state"], view["since"], view["until"]) == ("open", 1010.0, 1015.0)
    assert (view["tripped_failed"], view["tripped_total"], view["tripped_rate"]) == (3, 4, 0.75)
    assert view["trips"] == 1 and view["workers"] == {"open": 2, "half_open": 0, "trial": 0}
    series = {labels({"upstream": "http://e", "state": "open"})[1:-1]: [2.0]}
    assert by_upstream(series, "state") == {"http://e": {"open": 2}}


def test_shared_series_labels_read_back() -> None:
    odd = 'a "quoted" \\ name\nnext'
    text = labels({"model": odd, "upstream": "http://e:1", "status": "503"})[1:-1]
    assert parse_labels(text) == {"model": odd, "upstream": "http://e:1", "status": "503"}
    assert request_counts({text: [2.0]}) == {(odd, "http://e:1", 503): 2}
    assert by_label({labels({"reason": "auth"})[1:-1]: [3.0]}, "reason") == {"auth": 3}


def test_state_lists_models_and_replicas(sim_factory: Factory, router_factory: Factory) -> None:
    x = sim_factory(*ENGINE)
    y = sim_factory(*ENGINE)
    # two workers: whichever answers /ui/state, the counts are the whole router's
    rp = router_factory("--backend", x.url, "--backend", y.url, "--workers", "2", *HEALTH)
    for _ in range(3):  # a connection each: the kernel spreads them over the workers
        assert Client(rp.url).post("/v1/completions", COMPLETION).status == 200
    c = Client(rp.url)
    state = c.get("/ui/state").json()
    assert {r["url"] for r in state["replicas"]} == {x.url, y.url}
    assert all(r["healthy"] and r["models"] == ["demo"] for r in state["replicas"])
    assert state["models"] == [
        {"name": "demo", "policy": "least_load", "replicas": 2, "healthy": 2, "held": 0}
    ]
    assert state["requests_total"] == 3
    page = c.get("/ui")
    assert page.status == 200 and b'src="/ui/app.js"' in page.body
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert c.get("/ui/app.js").status == 200 and c.get("/ui/style.css").status == 200
    assert_openai_error(c.get("/ui/nothing-here"), 404)
    # An error shows up as a recent event on the next refresh. One connection: one worker,
    # whose tracker took its baseline on the first refresh (each worker keeps its own events).
    with Conn(rp.url, 10.0) as page:
        assert page.request("GET", "/ui/state").status == 200
        assert c.post("/v1/completions", {**COMPLETION, "max_tokens": -1}).status == 400
        events = page.request("GET", "/ui/state").json()["events"]
    assert [(e["kind"], e["status"], e["model"]) for e in events] == [("error", 400, "demo")]


def test_ui_needs_the_admin_key(
    sim_factory: Factory, router_factory: Factory, tmp_path: Path
) -> None:
    x = sim_factory(*ENGINE)
    admin = tmp_path / "admin"
    admin.write_text("sk-admin\n")
    rp = router_factory("--backend", x.url, "--api-key", "sk-client", "--admin-key-file", admin)
    c = Client(rp.url)
    for path in ("/ui", "/ui/state", "/ui/app.js"):
        assert_openai_error(c.get(path, {"authorization": "Bearer sk-client"}), 401)
    state = c.get("/ui/state", {"authorization": "Bearer sk-admin"})
    assert state.status == 200 and state.json()["replicas"][0]["url"] == x.url


def _eject_in_both_workers(sim_factory: Factory, router_factory: Factory) -> tuple[str, str, str]:
    """A router with two workers over a good and a bad engine (answering 500s), each worker's
    breaker ejecting the bad one; (router URL, good URL, bad URL)."""
    good = sim_factory(*ENGINE)
    bad = sim_factory(*ENGINE)
    rp = router_factory(
        *("--backend", good.url, "--backend", bad.url, "--workers", "2"),
        *("--policy", "round_robin", *HEALTH, *BREAKER),
    )
    assert Client(bad.url).post("/sim/faults", {"error_rate": 1.0}).status == 200

    def open_in() -> float:  # workers whose breaker holds the bad engine open, all workers
        text = Client(rp.url).get("/metrics").body.decode()
        want = f'vfleet_router_breaker_workers{{state="open",upstream="{bad.url}"}} '
        return next((float(ln[len(want) :]) for ln in text.splitlines() if ln.startswith(want)), 0)

    sent = 0
    while open_in() < 2 and sent < MAX_REQUESTS:
        for _ in range(10):  # a connection each: the kernel spreads them over both workers
            assert Client(rp.url).post("/v1/completions", COMPLETION).status == 200
        sent += 10
    assert open_in() == 2, sent
    return rp.url, good.url, bad.url


@pytest.mark.timeout(90)
def test_state_shows_an_engine_ejected_by_the_breaker(
    sim_factory: Factory, router_factory: Factory
) -> None:
    url, good, bad = _eject_in_both_workers(sim_factory, router_factory)
    for _ in range(6):  # a connection each: whichever worker answers, it shows the ejection
        state = Client(url).get("/ui/state").json()
        assert state["breaker"] == {"enabled": True, "workers": 2}
        replicas = {r["url"]: r for r in state["replicas"]}
        b = replicas[bad]["breaker"]
        assert replicas[bad]["healthy"]  # its probes pass: only the breaker keeps it out
        assert b["state"] == "open" and b["workers"] == {"open": 2, "half_open": 0, "trial": 0}
        assert b["since"] <= state["time"] < b["until"]
        assert (b["tripped_failed"], b["tripped_total"], b["tripped_rate"]) == (4, 4, 1.0)
        g = replicas[good]["breaker"]
        assert g["state"] == "closed" and g["workers"] == {"open": 0, "half_open": 0, "trial": 0}
    # the page's fleet-wide count is the one /metrics gives
    assert Client(url).metric("vfleet_router_breaker_workers", upstream=bad, state="open") == 2


def test_state_without_the_breaker(sim_factory: Factory, router_factory: Factory) -> None:
    x = sim_factory(*ENGINE)
    rp = router_factory("--backend", x.url, "--no-breaker")
    state = Client(rp.url).get("/ui/state").json()
    assert state["breaker"] == {"enabled": False, "workers": 1}
    assert state["replicas"][0]["breaker"] is None


@pytest.mark.timeout(120)
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/test.sh installs it via apt)")
def test_page_shows_an_engine_ejected_by_the_breaker(
    sim_factory: Factory, router_factory: Factory, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    url, good, bad = _eject_in_both_workers(sim_factory, router_factory)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 760})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(f"{url}/ui")
            ejected = f'#replicas tr[data-url="{bad}"][data-ejected="yes"][data-breaker="open"]'
            page.locator(ejected).wait_for(timeout=10_000)
            assert page.locator(f'#replicas tr[data-url="{good}"][data-ejected="no"]').count() == 1
            cell = page.inner_text(f'#replicas tr[data-url="{bad}"] td.breaker')
            assert "open since" in cell and "4/4 failed (100 %)" in cell, cell
            assert "open in 2 of 2 workers" in cell, cell
            note = page.inner_text("#breaker-note")
            assert "worker that answered" in note and "2 workers" in note, note
            assert page.inner_text(f'#replicas tr[data-url="{bad}"] td.health') == "up"
            assert page.inner_text("#up") == "2 / 2 (1 ejected)"
            assert not problems, problems
            page.screenshot(path=str(tmp_path / "ui-breaker.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.timeout(90)
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/test.sh installs it via apt)")
def test_page_shows_a_killed_engine_down(
    sim_factory: Factory, router_factory: Factory, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    x = sim_factory(*ENGINE)
    y = sim_factory(*ENGINE)
    rp = router_factory("--backend", x.url, "--backend", y.url, *HEALTH)
    c = Client(rp.url)
    for _ in range(4):
        assert c.post("/v1/completions", COMPLETION).status == 200

    def row(url: str, health: str) -> str:
        # a CSS selector (the page's CSP forbids the string eval wait_for_function would need)
        return f'#replicas tr[data-url="{url}"][data-health="{health}"]'

    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; a
        # container's small /dev/shm would crash its renderer
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            problems: list[str] = []  # script errors, CSP refusals, failed fetches
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(f"{rp.url}/ui")
            page.locator(row(x.url, "up")).wait_for(timeout=10_000)
            page.locator(row(y.url, "up")).wait_for(timeout=10_000)
            assert page.locator("#replicas tr.replica").count() == 2
            assert page.locator("#models tr[data-model=demo]").count() == 1
            for _ in range(8):  # traffic while the page watches: a request rate to show
                assert c.post("/v1/completions", COMPLETION).status == 200

            x.proc.kill()  # SIGKILL: no goodbye, the probes find out
            x.proc.wait(timeout=10)
            page.locator(row(x.url, "down")).wait_for(timeout=SHOWN_DOWN_WITHIN_S * 1000)
            assert page.locator(row(y.url, "up")).count() == 1
            page.locator("#events .kind-down").wait_for(timeout=5_000)
            assert x.url in page.inner_text("#events")
            assert page.inner_text("#total") == "12"
            assert not problems, problems
            shot = tmp_path / "ui.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
            if target := os.environ.get("VFLEET_UI_SCREENSHOT"):
                shutil.copyfile(shot, target)
        finally:
            browser.close()
    assert wait_for(lambda: c.post("/v1/completions", COMPLETION).status == 200)
