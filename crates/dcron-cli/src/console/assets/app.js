// dcron console: renders /api/state and /api/timeline, refreshes them on the server-sent
// events of /api/events, and sends actions as POSTs carrying the page's CSRF token.
"use strict";

const CSRF = document.querySelector('meta[name="dcron-csrf"]').content;
const SVG = "http://www.w3.org/2000/svg";
const $ = (sel) => document.querySelector(sel);

let state = null;       // last /api/state answer
let timeline = null;    // last /api/timeline answer
let skew = 0;           // server clock minus this browser's clock, in ms
let refreshTimer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function now() { return Date.now() + skew; }

function span(ms) {
  const neg = ms < 0; let s = Math.round(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60; s %= 60;
  const t = d ? `${d}d${h}h` : h ? `${h}h${m}m` : m ? `${m}m${s}s` : `${s}s`;
  return neg ? "-" + t : t;
}

function relative(iso) {
  if (!iso) return "-";
  const ms = Date.parse(iso) - now();
  if (Math.abs(ms) < 1000) return "now";
  return ms > 0 ? `in ${span(ms)}` : `${span(-ms)} ago`;
}

// A relative time that the one-second tick keeps current without rebuilding the tables.
function rel(iso) { return el("span", { "data-rel": iso || "" }, relative(iso)); }

function tick() {
  for (const e of document.querySelectorAll("[data-rel]")) e.textContent = relative(e.dataset.rel);
  if (timeline) renderChart();
}

// Replaces the children of `body` with the rows for `items`, keeping the element of every row
// whose data did not change (so a row being clicked is not swapped under the pointer).
function keyedRows(body, items, key, build) {
  const old = new Map([...body.children].filter((r) => r._key !== undefined).map((r) => [r._key, r]));
  const rows = items.map((item) => {
    const sig = JSON.stringify(item);
    const prev = old.get(key(item));
    if (prev && prev._sig === sig) return prev;
    const row = build(item);
    row._key = key(item); row._sig = sig;
    return row;
  });
  body.replaceChildren(...rows);
  return rows;
}

// An instant as its time of day when it is within a day of now, else with its date.
function short(iso) {
  const c = clock(iso);
  return Math.abs(Date.parse(iso) - now()) < 86400000 ? c.slice(11) : c.slice(0, 16) + "Z";
}

function clock(iso) {
  if (!iso) return "-";
  return new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function flash(text, isError) {
  const f = $("#flash");
  f.textContent = text; f.hidden = false;
  f.className = isError ? "error" : "";
}

async function getJSON(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await r.json().catch(() => ({ ok: false, error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function renderNodes() {
  const body = $("#nodes tbody");
  keyedRows(body, state.nodes, (n) => n.id, (n) => el("tr", { "data-node": n.id, "data-status": n.status },
    el("td", { class: "mono" }, n.id, n.name ? el("span", { class: "tag" }, n.name) : null),
    el("td", {}, n.hostname || "-", n.ip ? ` (${n.ip})` : ""),
    el("td", { class: `status status-${n.status}` }, n.status),
    el("td", {}, n.weight),
    el("td", { class: "lease", title: clock(n.last_alive) }, "alive, written ", rel(n.last_alive)),
    el("td", { class: "owned" }, n.owned_tasks),
    el("td", { class: "running" }, n.running.length
      ? n.running.map((r) => `${r.task} @ ${clock(r.instant)}`).join(", ") : "0")));
  $("#node-count").textContent = `${state.nodes.length} live`;
  if (!state.nodes.length) body.append(el("tr", {}, el("td", { colSpan: 7, class: "muted" }, "no live nodes in this namespace")));
}

function actionsFor(t) {
  const b = (action, label, danger) => el("button", { type: "button", "data-action": action, class: danger ? "danger" : "" }, label);
  if (t.state === "deleted") return [b("reuse", "Reuse")];
  return [
    t.state === "paused" ? b("resume", "Resume") : b("pause", "Pause"),
    b("trigger", "Trigger now"),
    b("delete", "Mark deleted", true),
  ];
}

function taskMatches(t) {
  const q = $("#search").value.trim().toLowerCase();
  const st = $("#state-filter").value;
  if (st && t.state !== st) return false;
  if (!q) return true;
  return [t.name, t.owner, t.schedule, t.zone, t.origin, t.cadence].some((v) => v && String(v).toLowerCase().includes(q));
}

function resultClass(r) { return !r ? "" : r === "ok" ? "result-ok" : "result-bad"; }

function renderTasks() {
  const body = $("#tasks tbody");
  const rows = keyedRows(body, state.tasks.filter(taskMatches), (t) => t.name, (t) => el("tr", { "data-task": t.name, "data-state": t.state, "data-origin": t.origin },
    el("td", { class: "name mono" }, t.name,
      t.origin === "static" ? el("span", { class: "tag" }, "static") : null,
      t.one_shot ? el("span", { class: "tag" }, "one-shot") : null),
    el("td", { class: "schedule" }, t.schedule === null ? el("span", { class: "muted" }, "in code") : el("span", { class: "mono" }, t.schedule),
      t.cadence ? el("div", { class: "muted" }, t.cadence) : null,
      t.error ? el("div", { class: "result-bad" }, t.error) : null),
    el("td", {}, t.zone),
    el("td", { class: `state state-${t.state}` }, t.state, t.deleted_at ? el("div", { class: "muted" }, clock(t.deleted_at)) : null),
    el("td", { class: "owner mono" }, t.owner || "-"),
    el("td", {}, t.next_fires.length
      ? el("ul", { class: "fires" }, t.next_fires.map((f) => el("li", { title: clock(f) }, short(f), " (", rel(f), ")")))
      : el("span", { class: "muted" }, t.origin === "static" ? "in code" : "-")),
    el("td", { class: "last-fire" }, t.last_fire ? [rel(t.last_fire.instant), el("div", { class: "muted mono" }, t.last_fire.node)] : "-"),
    el("td", { class: "last-result " + resultClass(t.last_result) }, t.last_result || "-",
      t.run_count !== null ? el("div", { class: "muted" }, `runs ${t.run_count}, failures ${t.failure_count}`) : null),
    el("td", { class: "actions" }, actionsFor(t))));
  $("#task-count").textContent = `${rows.length} of ${state.tasks.length}`;
  if (!state.tasks.length) body.append(el("tr", {}, el("td", { colSpan: 9, class: "muted" }, "no tasks")));
}

function renderChart() {
  const entries = timeline.entries;
  const minutes = Number($("#span").value) || 60;
  const end = now(), start = end - minutes * 60000;
  const tasks = [...new Set(entries.map((e) => e.task))].sort();
  const left = 160, right = 16, top = 18, rowH = 20;
  const width = Math.max(600, $("#chart").clientWidth || 900);
  const height = top + Math.max(1, tasks.length) * rowH + 8;
  const x = (ms) => left + ((ms - start) / (end - start)) * (width - left - right);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", String(height));
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  const step = minutes <= 5 ? 1 : minutes <= 15 ? 3 : 10;
  for (let m = minutes; m >= 0; m -= step) {
    const gx = x(end - m * 60000);
    add("line", { x1: gx, x2: gx, y1: top - 4, y2: height, class: "grid" });
    add("text", { x: gx, y: 11, "text-anchor": "middle" }, m ? `-${m}m` : "now");
  }
  if (!tasks.length) add("text", { x: left, y: top + 14 }, "no fires seen yet");
  tasks.forEach((task, i) => {
    const y = top + i * rowH + rowH / 2;
    add("text", { x: left - 8, y: y + 4, "text-anchor": "end", class: "task-label" }, task.length > 22 ? task.slice(0, 21) + "…" : task);
    for (const e of entries.filter((e) => e.task === task)) {
      const t = Date.parse(e.instant || e.seen_at);
      if (!(t >= start && t <= end)) continue;
      const title = e.kind === "fire"
        ? `fire ${task} @ ${clock(e.instant)} on ${e.node} (token ${e.token})`
        : `run ${task} @ ${clock(e.instant)} on ${e.node || "-"}: ${e.result}`;
      const shape = e.kind === "fire"
        ? add("circle", { cx: x(t), cy: y - 3, r: 3.5, class: "fire" })
        : add("rect", { x: x(t) - 3, y: y + 1, width: 6, height: 6, class: e.result === "ok" ? "run-ok" : "run-bad" });
      const tip = document.createElementNS(SVG, "title"); tip.textContent = title; shape.append(tip);
    }
  });
  $("#chart").replaceChildren(svg);
}

function renderTimelineList() {
  const items = timeline.entries.slice(-200).reverse().map((e) => el("li", { "data-task": e.task, "data-kind": e.kind },
    e.kind === "fire"
      ? `${clock(e.instant)}  fire  ${e.task} on ${e.node} (token ${e.token})${e.source === "claim" ? " [retained claim]" : ""}`
      : `${clock(e.instant)}  run   ${e.task} on ${e.node || "-"}: ${e.result}`));
  $("#timeline-list").replaceChildren(...items);
}

function render() {
  if (state) {
    $("#strategy").textContent = `strategy ${state.strategy}`;
    renderNodes(); renderTasks();
    const w = $("#warning");
    w.hidden = !state.warning; w.textContent = state.warning || "";
  }
  if (timeline) { renderChart(); renderTimelineList(); }
}

async function refresh() {
  try {
    const [s, t] = await Promise.all([getJSON("/api/state"), getJSON("/api/timeline")]);
    skew = Date.parse(s.now) - Date.now();
    state = s; timeline = t;
    document.body.dataset.loaded = "true";
    render();
  } catch (err) {
    flash(`cannot read the cluster: ${err.message}`, true);
  }
}

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 200);
}

function logEvent(text) {
  const list = $("#events");
  list.prepend(el("li", {}, text));
  while (list.children.length > 100) list.lastChild.remove();
}

function connect() {
  const es = new EventSource("/api/events");
  const live = $("#live");
  es.onopen = () => { live.textContent = "live"; live.className = "badge on"; scheduleRefresh(); };
  es.onerror = () => { live.textContent = "reconnecting"; live.className = "badge off"; };
  es.addEventListener("dcron", (m) => {
    const ev = JSON.parse(m.data);
    logEvent(ev.line || JSON.stringify(ev));
    scheduleRefresh();
  });
  es.addEventListener("warning", (m) => { const w = JSON.parse(m.data); logEvent(`warning: ${w.warning}`); });
  es.addEventListener("ready", scheduleRefresh);
  es.addEventListener("resync", scheduleRefresh);
}

const VERBS = {
  pause: "Pause task “%”? Its fires are skipped on every node until it is resumed.",
  resume: "Resume task “%”? Fires skipped while it was paused are not caught up.",
  trigger: "Run task “%” once now on its owner, in addition to its schedule?",
  delete: "Mark task “%” deleted? It fires nowhere until it is reused.",
  reuse: "Reuse task “%”? It is scheduled again.",
};

function ask(text) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => { d.close(); $("#confirm-yes").onclick = null; $("#confirm-no").onclick = null; resolve(answer); };
    $("#confirm-yes").onclick = () => done(true);
    $("#confirm-no").onclick = () => done(false);
    d.oncancel = () => resolve(false);
    d.showModal();
  });
}

async function act(task, action, isStatic) {
  if (!(await ask(VERBS[action].replace("%", task)))) return;
  const path = `/api/tasks/${encodeURIComponent(task)}/${action}${isStatic ? "?static=true" : ""}`;
  try {
    const r = await fetch(path, { method: "POST", credentials: "same-origin", headers: { "x-dcron-csrf": CSRF } });
    const body = await r.json().catch(() => ({ ok: false, error: `HTTP ${r.status}` }));
    if (!r.ok || !body.ok) { flash(body.error || `HTTP ${r.status}`, true); return; }
    flash(body.message + (body.warning ? ` (warning: ${body.warning})` : ""), false);
  } catch (err) {
    flash(`${action} failed: ${err.message}`, true);
  }
  refresh();
}

$("#tasks").addEventListener("click", (e) => {
  const b = e.target.closest("button[data-action]");
  if (!b) return;
  const row = b.closest("tr[data-task]");
  act(row.dataset.task, b.dataset.action, row.dataset.origin === "static");
});
$("#search").addEventListener("input", () => state && renderTasks());
$("#state-filter").addEventListener("change", () => state && renderTasks());
$("#span").addEventListener("change", () => timeline && renderChart());
setInterval(tick, 1000);            // ages and "in 3s" stay current between events
setInterval(scheduleRefresh, 15000); // next-fire previews move on even when nothing happens
refresh();
connect();
