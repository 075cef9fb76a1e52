// vfleet router status page: polls /ui/state every second and redraws. No framework, no build
// step: the router serves this file as it is. Text from the server is set with textContent only
// (endpoint URLs and model names are never parsed as HTML).
"use strict";

const POLL_MS = 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function health(replica) {
  if (replica.healthy) return "up";
  return replica.starting ? "starting" : "down";
}

const BREAKER_WORDS = { closed: "closed", open: "open", half_open: "half open", trial: "trial" };

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString();
}

// The answering worker's breaker, and how many workers (all of them, from the shared table)
// hold the endpoint out of closed.
function breakerText(b, workers) {
  if (!b) return "off";
  const parts = [BREAKER_WORDS[b.state] || b.state];
  if (b.state !== "closed") {
    if (b.since !== null) parts[0] += ` since ${clock(b.since)}`;
    if (b.state === "open" && b.until !== null) parts.push(`cool-down to ${clock(b.until)}`);
    if (b.state === "half_open") parts.push("next request is a trial");
    if (b.tripped_total > 0) {
      parts.push(`tripped at ${b.tripped_failed}/${b.tripped_total} failed ` +
        `(${(b.tripped_rate * 100).toFixed(0)} %)`);
    }
  }
  const out = Object.entries(b.workers).filter(([, n]) => n > 0);
  if (workers > 1 && out.length) {
    parts.push(out.map(([s, n]) => `${BREAKER_WORDS[s] || s} in ${n} of ${workers} workers`)
      .join(", "));
  }
  return parts.join(" · ");
}

function breakerState(b) {
  if (!b) return "off";
  if (b.state !== "closed") return b.state;
  // closed here, but another worker holds it out: show the worst
  for (const s of ["open", "trial", "half_open"]) if (b.workers[s] > 0) return s;
  return "closed";
}

function ejected(b) {
  if (!b) return "no";
  return b.state === "open" || b.state === "trial" || b.workers.open > 0 ||
    b.workers.trial > 0 ? "yes" : "no";
}

function kvBar(usage) {
  const pct = Math.max(0, Math.min(100, usage * 100));
  const fillBar = el("span");
  fillBar.style.width = `${pct.toFixed(0)}%`; // CSSOM, which the page's CSP allows (no inline style)
  const bar = el("span", { class: "kv" }, fillBar);
  return el("td", { class: "kv-cell" }, bar, `${pct.toFixed(1)} %`);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function describe(ev) {
  switch (ev.kind) {
    case "down": return `${ev.endpoint} is down`;
    case "up": return `${ev.endpoint} is up`;
    case "rejected": return `${ev.count} refused by the router (${ev.reason})`;
    case "ejected": return `${ev.endpoint} ejected by the circuit breaker for its errors`;
    case "readmitted": return `${ev.endpoint} serves again: its trial request succeeded`;
    default: {
      const where = ev.endpoint && ev.endpoint !== "-" ? ` from ${ev.endpoint}` : "";
      return `${ev.count} × ${ev.status} for ${ev.model}${where}`;
    }
  }
}

function render(state) {
  const up = state.replicas.filter((r) => r.healthy).length;
  const held = state.models.reduce((n, m) => n + m.held, 0);
  document.getElementById("rps").textContent = state.requests_per_s.toFixed(1);
  document.getElementById("total").textContent = String(state.requests_total);
  const out = state.replicas.filter((r) => ejected(r.breaker) === "yes").length;
  document.getElementById("up").textContent =
    `${up} / ${state.replicas.length}${out ? ` (${out} ejected)` : ""}`;
  document.getElementById("held").textContent = String(held);

  fill(document.querySelector("#models tbody"), state.models.map((m) =>
    el("tr", { "data-model": m.name },
      el("td", {}, m.name), el("td", {}, m.policy),
      el("td", {}, `${m.healthy} / ${m.replicas}`), el("td", {}, m.held))));

  fill(document.querySelector("#replicas tbody"), state.replicas.map((r) => {
    const h = health(r);
    const b = breakerState(r.breaker);
    return el("tr", {
      class: "replica", "data-url": r.url, "data-health": h, "data-breaker": b,
      "data-ejected": ejected(r.breaker),
    },
      el("td", {}, r.url), el("td", {}, r.models.join(", ")),
      el("td", { class: "health", "data-health": h }, h),
      el("td", { class: "breaker", "data-breaker": b },
        breakerText(r.breaker, state.breaker.workers)),
      el("td", {}, r.inflight), el("td", {}, r.running), el("td", {}, r.waiting),
      kvBar(r.kv_usage), el("td", {}, `${(r.prefix_hit_ratio * 100).toFixed(0)} %`));
  }));

  const workers = state.breaker.workers;
  document.getElementById("breaker-note").textContent = !state.breaker.enabled
    ? "Circuit breaker off (--no-breaker)."
    : workers > 1
      ? `Breaker: the state, times and trip counts are those of the router worker that ` +
        `answered this refresh (each of the ${workers} workers judges the requests it ` +
        `forwards); "… in N of ${workers} workers" counts every worker.`
      : "Breaker: an engine whose requests fail too often is ejected for a cool-down, " +
        "then gets one trial request.";

  const events = state.events.map((ev) =>
    el("li", { class: `kind-${ev.kind}` },
      el("span", { class: "when" }, new Date(ev.time * 1000).toLocaleTimeString()),
      describe(ev)));
  const list = document.getElementById("events");
  if (events.length) list.replaceChildren(...events);
}

async function poll() {
  const conn = document.getElementById("conn");
  try {
    const resp = await fetch("/ui/state", { cache: "no-store", credentials: "same-origin" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    render(await resp.json());
    conn.dataset.state = "live";
    conn.textContent = "live";
  } catch (err) {
    conn.dataset.state = "lost";
    conn.textContent = `router unreachable (${err.message})`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
