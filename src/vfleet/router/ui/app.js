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
  document.getElementById("up").textContent = `${up} / ${state.replicas.length}`;
  document.getElementById("held").textContent = String(held);

  fill(document.querySelector("#models tbody"), state.models.map((m) =>
    el("tr", { "data-model": m.name },
      el("td", {}, m.name), el("td", {}, m.policy),
      el("td", {}, `${m.healthy} / ${m.replicas}`), el("td", {}, m.held))));

  fill(document.querySelector("#replicas tbody"), state.replicas.map((r) => {
    const h = health(r);
    return el("tr", { class: "replica", "data-url": r.url, "data-health": h },
      el("td", {}, r.url), el("td", {}, r.models.join(", ")),
      el("td", { class: "health", "data-health": h }, h),
      el("td", {}, r.inflight), el("td", {}, r.running), el("td", {}, r.waiting),
      kvBar(r.kv_usage), el("td", {}, `${(r.prefix_hit_ratio * 100).toFixed(0)} %`));
  }));

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
