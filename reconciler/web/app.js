// The reconciler dashboard. It reads only the HTTP API (/api/v1/...). Every value from the API is
// put in the page with textContent, never as HTML: model ids, log lines and commit messages come
// from git and engines, not from us.
"use strict";

const POLL_LIVE_MS = 10000; // a safety net while the event stream is connected
const POLL_OFFLINE_MS = 2000; // polling is the only source of updates without the stream
const MAX_EVENTS = 60;
const POLL_TRAFFIC_MS = 5000; // the gateway's figures move with every request, not with events

const state = {
  cursor: null,
  live: false,
  refreshing: null,
  again: false,
  timer: null,
  traffic: {}, // model id -> the gateway's figures over the last trafficWindow seconds
  trafficWindow: 0,
};

// ---- small helpers --------------------------------------------------------------------------

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    const error = new Error(`${path}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function mib(value) {
  if (value === null || value === undefined) return "";
  return value >= 10240 ? `${(value / 1024).toFixed(1)} GiB` : `${value} MiB`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

// A stable colour per model, so that a model keeps its colour across GPUs and refreshes.
function colour(id) {
  let hash = 0;
  for (const ch of id) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360}, 55%, 48%)`;
}

function setLive(mode) {
  const badge = document.getElementById("live");
  badge.dataset.state = mode;
  badge.textContent = { live: "live", polling: "polling", offline: "offline" }[mode] || mode;
  state.live = mode === "live";
}

// ---- rendering ------------------------------------------------------------------------------

function renderStatus(status) {
  const box = document.getElementById("revision");
  const rev = status.revision;
  const parts = [];
  if (rev.sha) {
    parts.push(el("span", { class: "muted", text: "applied " }));
    parts.push(el("code", { text: rev.short, title: rev.sha }));
    if (rev.dirty) parts.push(el("span", { class: "dirty", text: " + uncommitted edits" }));
    if (rev.subject) parts.push(el("span", { text: ` — ${rev.subject}`, title: rev.message }));
    if (rev.author) {
      const who = rev.author.replace(/\s*<.*>$/, "");
      const when = rev.time ? `, ${new Date(rev.time).toLocaleString()}` : "";
      parts.push(el("span", { class: "muted", text: ` (${who}${when})` }));
    }
  } else {
    parts.push(el("span", { class: "muted", text: "applied: the working tree (not in git)" }));
  }
  box.replaceChildren(...parts);

  const problems = document.getElementById("problems");
  problems.hidden = status.valid || status.problems.length === 0;
  document.getElementById("problem-list").replaceChildren(
    ...status.problems.map((p) => {
      const where = `${p.file}:${p.line}`;
      const field = p.field ? ` ${p.field}:` : "";
      return el("li", { text: `${where}: ${p.severity}:${field} ${p.message}` });
    }),
  );

  const counts = Object.entries(status.models)
    .map(([name, n]) => `${n} ${name}`)
    .join(", ");
  document.getElementById("model-counts").textContent = counts;
  const last = status.last_pass_at ? `last pass ${clock(status.last_pass_at)}` : "no pass yet";
  const plan = status.last_plan ? ` (${status.last_plan})` : "";
  document.getElementById("loop").textContent =
    `reconciler ${status.version} · ${status.passes} passes · ${last}${plan}`;
}

function modelRow(m) {
  const name = el("td", {}, [el("strong", { text: m.id })]);
  if (m.name) name.append(el("span", { class: "model-name", text: m.name }));
  // an engine that gave up: the plan's reason says so and quotes the error
  const failed = m.given_up ? m.reason || m.last_error : m.last_error || m.reason;
  const note = m.status === "error" ? failed : m.reason || "";
  const noteCell = el("td", { class: m.status === "error" ? "note failed" : "note", text: note || "" });
  if (m.last_error) noteCell.title = m.last_error;
  return el("tr", { "data-model": m.id, "data-status": m.status }, [
    name,
    el("td", { class: "status" }, [
      el("span", { class: `badge ${m.status}`, text: m.status }),
      // on-demand models: idle (nobody asks), wanted (a request waits), running
      ...(m.demand
        ? [el("span", { class: `demand ${m.demand}`, text: ` on demand: ${m.demand}` })]
        : []),
    ]),
    el("td", { class: "num", text: m.priority ?? "" }),
    // a remote model: the host its requests go to (no GPU, port or engine of this host)
    el("td", { text: m.endpoint ? `${m.framework} → ${m.endpoint}` : m.framework ?? "" }),
    el("td", { text: m.gpus.length ? m.gpus.join(", ") : "" }),
    el("td", { class: "num", text: mib(m.memory_mb) }),
    memoryCell(m.memory),
    el("td", { class: "num", text: m.port ?? "" }),
    el("td", { class: "num", text: String(m.restarts) }),
    el("td", { class: "num", text: duration(m.uptime_s) }),
    ...trafficCells(m.id),
    noteCell,
  ]);
}

// estimated from the model's files vs what its engine was measured to use (RSS on declared GPUs)
function memoryCell(memory) {
  if (!memory) return el("td", { class: "num memory" });
  const estimated = memory.estimated_mb == null ? "?" : mib(memory.estimated_mb);
  const measured = memory.measured_mb == null ? "not measured" : mib(memory.measured_mb);
  const cell = el("td", { class: "num memory", text: `${estimated} / ${measured}` });
  if (memory.peak_mb != null) cell.title = `peak ${mib(memory.peak_mb)} (${memory.measured_by})`;
  return cell;
}

// what the gateway measured over the last minute; blank without a gateway or without requests
function trafficCells(id) {
  const t = state.traffic[id];
  const rate = el("td", { class: "num rps", text: t ? perSecond(t.requests_per_s) : "" });
  const p95 = el("td", { class: "num p95", text: t ? milliseconds(t.p95_ms) : "" });
  if (t) {
    const errors = t.errors_per_s ? `, ${perSecond(t.errors_per_s)} errors/s` : "";
    const title = `${t.requests} requests in ${state.trafficWindow}s, p50 ${milliseconds(t.p50_ms)}${errors}`;
    rate.title = title;
    p95.title = title;
  }
  return [rate, p95];
}

function perSecond(value) {
  if (value >= 100) return value.toFixed(0);
  return value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

function milliseconds(value) {
  if (value >= 1000) return `${(value / 1000).toFixed(2)} s`;
  return value >= 10 ? `${value.toFixed(0)} ms` : `${value.toFixed(1)} ms`;
}

function renderTraffic(report) {
  state.traffic = report ? report.models : {};
  state.trafficWindow = report ? report.window_s : 0;
  for (const row of document.querySelectorAll("#models tbody tr")) {
    const [rate, p95] = trafficCells(row.dataset.model);
    row.querySelector(".rps").replaceWith(rate);
    row.querySelector(".p95").replaceWith(p95);
  }
}

async function refreshTraffic() {
  try {
    renderTraffic(await api("/api/v1/traffic"));
  } catch (error) {
    renderTraffic(null); // an API too old to have it, or offline: no figures rather than stale ones
  }
  setTimeout(refreshTraffic, POLL_TRAFFIC_MS);
}

function renderModels(models) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...models.map(modelRow));
  document.getElementById("no-models").hidden = models.length > 0;
}

function gpuBlock(gpu) {
  const total = Math.max(gpu.memory_total_mb, 1);
  const bar = el("div", { class: "bar" });
  const legend = el("div", { class: "legend" });
  for (const m of gpu.models) {
    const segment = el("span", { class: "segment", text: m.id, title: `${m.id}: ${mib(m.memory_mb)} (${m.status})` });
    segment.style.width = `${(100 * m.memory_mb) / total}%`;
    segment.style.backgroundColor = colour(m.id);
    bar.append(segment);
    const swatch = el("i", { class: "swatch" });
    swatch.style.backgroundColor = colour(m.id);
    legend.append(el("span", {}, [swatch, `${m.id} ${mib(m.memory_mb)}`]));
  }
  const others = gpu.memory_used_mb - gpu.reserved_mb;
  if (others > 0) {
    const segment = el("span", { class: "segment unmanaged", text: "other", title: `other processes: ${mib(others)}` });
    segment.style.width = `${(100 * others) / total}%`;
    bar.append(segment);
  }
  const kind = gpu.declared ? "declared" : "NVML";
  const label = el("div", { class: "gpu-label" }, [
    el("span", {}, [el("strong", { text: `GPU ${gpu.index}` }), ` ${gpu.name} `, el("span", { class: "muted", text: `(${kind})` })]),
    el("span", { class: "muted", text: `${mib(gpu.memory_used_mb)} used of ${mib(gpu.memory_total_mb)}` }),
  ]);
  return el("div", { class: "gpu", "data-gpu": String(gpu.index) }, [label, bar, legend]);
}

function renderGpus(gpus) {
  document.getElementById("gpus").replaceChildren(...gpus.map(gpuBlock));
  document.getElementById("no-gpus").hidden = gpus.length > 0;
}

function eventItem(e) {
  return el("li", { "data-kind": e.kind }, [
    el("time", { text: clock(e.time) }),
    el("span", { class: `kind ${e.kind}`, text: e.kind }),
    el("span", { text: e.model ?? "" }),
    el("span", { text: e.message ?? "" }),
  ]);
}

function addEvents(events, replace = false) {
  const list = document.getElementById("events");
  const items = events.slice().reverse().map(eventItem); // newest first
  if (replace) list.replaceChildren(...items);
  else list.prepend(...items);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  document.getElementById("no-events").hidden = list.children.length > 0;
  if (events.length) state.cursor = events[events.length - 1].id;
}

// ---- updates --------------------------------------------------------------------------------

// One refresh at a time; a request for another while one runs makes exactly one more.
async function refresh() {
  if (state.refreshing) {
    state.again = true;
    return state.refreshing;
  }
  state.refreshing = (async () => {
    try {
      const [status, models, gpus] = await Promise.all([
        api("/api/v1/status"),
        api("/api/v1/models"),
        api("/api/v1/gpus").catch(() => []),
      ]);
      document.getElementById("first-pass").hidden = true;
      renderStatus(status);
      renderModels(models);
      renderGpus(gpus);
      if (!state.live) setLive("polling");
    } catch (error) {
      if (error.status === 503) {
        // the API does not know yet what runs: say so, rather than show an empty host
        waitingForFirstPass();
      } else {
        setLive("offline");
      }
      console.warn(error);
    }
  })();
  await state.refreshing;
  state.refreshing = null;
  if (state.again) {
    state.again = false;
    return refresh();
  }
}

function waitingForFirstPass() {
  document.querySelector("#models tbody").replaceChildren();
  document.getElementById("no-models").hidden = true;
  document.getElementById("first-pass").hidden = false;
  document.getElementById("loop").textContent = "waiting for the first pass";
  if (!state.live) setLive("polling");
  clearTimeout(soon); // the first pass may bring no event: ask again soon, live or not
  soon = setTimeout(refresh, 1000);
}

let soon = null;
function refreshSoon() {
  // events come in bursts (a pass stops and starts several engines): one refresh per burst
  clearTimeout(soon);
  soon = setTimeout(refresh, 150);
}

function schedulePoll() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    await refresh();
    schedulePoll();
  }, state.live ? POLL_LIVE_MS : POLL_OFFLINE_MS);
}

function connectStream() {
  if (!window.EventSource) return; // polling only
  const after = state.cursor === null ? "" : `?after=${state.cursor}`;
  const stream = new EventSource(`/api/v1/events/stream${after}`);
  stream.onopen = () => {
    setLive("live");
    schedulePoll();
    refreshSoon(); // what happened while we were away
  };
  stream.onmessage = (message) => {
    try {
      addEvents([JSON.parse(message.data)]);
    } catch (error) {
      console.warn("bad event", error);
    }
    refreshSoon();
  };
  stream.onerror = () => {
    // EventSource reconnects by itself (with Last-Event-ID); poll quickly meanwhile
    setLive("polling");
    schedulePoll();
  };
}

async function start() {
  await refresh();
  try {
    addEvents(await api(`/api/v1/events?limit=${MAX_EVENTS}`), true);
  } catch (error) {
    console.warn(error);
  }
  if (state.cursor === null) state.cursor = 0; // no event yet: the stream starts at the beginning
  connectStream();
  schedulePoll();
  refreshTraffic();
}

document.addEventListener("DOMContentLoaded", start);
