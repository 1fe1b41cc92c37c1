// Live updates for the dashboard's pages: poll the page's JSON each second, refill the
// cells the server rendered (same formatting) and draw the series with plotly.js.
"use strict";

const POLL_MS = 1000;
const page = document.body.dataset.page;

function get(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

function fmt(value, digits, kind) {
  if (value === null || value === undefined) return "–";
  if (kind === "time") return new Date(value * 1000).toISOString().slice(11, 19) + " UTC";
  if (typeof value === "number") return value.toFixed(digits);
  return String(value);
}

function fillCells(data) {
  for (const cell of document.querySelectorAll("[data-k]")) {
    const text = fmt(get(data, cell.dataset.k), Number(cell.dataset.d || 2), cell.dataset.f);
    if (cell.textContent !== text) cell.textContent = text;
  }
}

const times = (ts) => ts.map((t) => new Date(t * 1000));
const LAYOUT = { margin: { t: 30, r: 10, b: 40, l: 50 }, height: 260 };

const charts = {
  cluster(data) {
    const div = document.getElementById("chart-cluster");
    if (!div) return;
    const traces = data.devices.map((d) => ({
      name: d.device, x: times(d.cpu_series.t), y: d.cpu_series.cores, mode: "lines",
    }));
    Plotly.react(div, traces, { ...LAYOUT, title: { text: "CPU in use (host cores)" } });
  },
  training(data) {
    const gantt = document.getElementById("chart-gantt");
    const planned = data.devices.filter((d) => d.predicted_compute_s !== null);
    if (gantt && planned.length) {
      const names = planned.map((d) => d.device);
      const bar = (name, x, color) => ({
        name, type: "bar", orientation: "h", y: names, x, marker: { color },
      });
      const comm = planned.map(() => data.comm_s || 0);
      Plotly.react(gantt, [
        bar("compute", planned.map((d) => d.predicted_compute_s), "#60a5fa"),
        bar("waits for the slowest", planned.map((d) => d.wait_s), "#e5e7eb"),
        bar("all-reduce", comm, "#f59e0b"),
      ], {
        ...LAYOUT, barmode: "stack",
        title: { text: `one step of ${data.policy} as planned (s)` },
      });
    }
    const div = document.getElementById("chart-compute");
    if (div) {
      const traces = data.devices.map((d) => ({
        name: d.device, x: times(d.series.t), y: d.series.s, mode: "lines",
      }));
      Plotly.react(div, traces, { ...LAYOUT, title: { text: "compute per step (s)" } });
    }
  },
  serving(data) {
    data.policies.forEach((p, i) => {
      const div = document.getElementById(`chart-serving-${i}`);
      if (!div) return;
      const traces = Object.entries(p.series).map(([name, s]) => ({
        name, x: times(s.t), y: s.rps, mode: "lines",
        line: name === "capacity" ? { dash: "dot" } : {},
      }));
      Plotly.react(div, traces, { ...LAYOUT, title: { text: `${p.policy}: requests per second` } });
    });
  },
  apps(data) {
    data.apps.forEach((a, i) => {
      const div = document.getElementById(`chart-app-${i}`);
      if (!div) return;
      const traces = ["p50", "p95", "p99"].map((q) => ({
        name: q, x: times(a.series[q].t), y: a.series[q].ms, mode: "lines",
      }));
      if (a.deadline_ms !== null) {
        const all = times(a.series.p95.t);
        traces.push({
          name: "deadline", x: [all[0], all[all.length - 1]],
          y: [a.deadline_ms, a.deadline_ms], mode: "lines", line: { dash: "dash", color: "red" },
        });
        traces.push({
          name: "p95 over deadline", x: times(a.violated_t),
          y: a.violated_t.map(() => a.deadline_ms), mode: "markers",
          marker: { color: "red", symbol: "x" },
        });
      }
      Plotly.react(div, traces, { ...LAYOUT, title: { text: `${a.app}: latency (ms)` } });
    });
  },
};

function clock(t) {
  return fmt(t, 0, "time");
}

const lists = {
  // the events table grows: rebuilt from the JSON (text only, never HTML)
  events(data) {
    const body = document.querySelector("#events tbody");
    const rows = data.events.map((e) => {
      const tr = document.createElement("tr");
      for (const text of [clock(e.t), e.state || "", e.kind, e.message]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    });
    if (rows.length) body.replaceChildren(...rows);
  },
};

const WINDOW_S = 600; // the history the charts keep, as the server's first answer has
const INCREMENTAL = new Set(["cluster", "apps", "training", "serving"]);
let state = null; // the page's data, its series grown by each poll's new points

function isSeries(v) {
  return v && typeof v === "object" && Array.isArray(v.t);
}

function appendSeries(old, fresh) {
  // an answer overlaps the last one by a few seconds (late rows): keep only what is newer
  const held = old.t.length ? old.t[old.t.length - 1] : -Infinity;
  const from = fresh.t.findIndex((x) => x > held);
  if (from >= 0) {
    for (const k of Object.keys(fresh)) old[k] = (old[k] || []).concat(fresh[k].slice(from));
  }
  const t = old.t;
  if (!t.length) return;
  let i = 0;
  while (i < t.length && t[i] < t[t.length - 1] - WINDOW_S) i++;
  if (i) for (const k of Object.keys(old)) old[k] = old[k].slice(i);
}

// Merge an incremental answer into the state; false when its lists changed shape (a
// device or app came or went), and the page then asks for everything again.
function merge(old, fresh) {
  for (const [k, v] of Object.entries(fresh)) {
    if (Array.isArray(v) && v.length && typeof v[0] === "object") {
      if (!Array.isArray(old[k]) || old[k].length !== v.length) return false;
      for (let i = 0; i < v.length; i++) {
        const name = (x) => x.device ?? x.app ?? x.policy;
        if (name(old[k][i]) !== name(v[i]) || !merge(old[k][i], v[i])) return false;
      }
    } else if (isSeries(v)) {
      if (!isSeries(old[k])) return false;
      appendSeries(old[k], v);
    } else if (k === "violated_t") {
      const held = old[k]?.length ? old[k][old[k].length - 1] : -Infinity;
      old[k] = (old[k] || []).concat(v.filter((t) => t > held));
    } else if (v && typeof v === "object" && !Array.isArray(v)) {
      if (!old[k] || typeof old[k] !== "object" || !merge(old[k], v)) return false;
    } else {
      old[k] = v;
    }
  }
  return true;
}

function afterMerge(data) {
  for (const a of data.apps || []) {
    const last = a.series.p95.t[a.series.p95.t.length - 1] ?? 0;
    a.violated_t = a.violated_t.filter((t) => t >= last - WINDOW_S);
    a.violated_windows = a.violated_t.length;
  }
}

function draw() {
  if (state && charts[page] && window.Plotly) charts[page](state);
}

// The chart library is 4.8 MB of script: parsing it holds the page's only thread for
// about a second here, so it is fetched once the first poll has filled the numbers.
let chartLibrary = null;
function loadCharts() {
  if (chartLibrary || !charts[page]) return;
  chartLibrary = document.createElement("script");
  chartLibrary.src = "/static/vendor/plotly.min.js";
  chartLibrary.onload = draw;
  document.head.appendChild(chartLibrary);
}

async function fetchData(since) {
  const query = since === undefined ? "" : `?since=${since}`;
  const response = await fetch(`/api/${page}${query}`, { cache: "no-store" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

let polling = false; // a slow answer must not let two polls merge the same points

async function poll() {
  if (polling) return;
  polling = true;
  try {
    const incremental = state && INCREMENTAL.has(page) && state.updated != null;
    const data = await fetchData(incremental ? state.updated : undefined);
    if (!incremental) state = data;
    else if (!merge(state, data)) state = await fetchData();
    afterMerge(state);
    fillCells(state);
    if (lists[page]) lists[page](state);
    draw();
    document.body.dataset.polled = String(Date.now());
    loadCharts();
  } catch (err) {
    document.getElementById("status").textContent = `not updating: ${err.message}`;
  } finally {
    polling = false;
  }
}

if (document.querySelector("[data-k]") || charts[page] || lists[page]) {
  poll();
  setInterval(poll, POLL_MS);
}

// --allow-control: the cluster page's form adds a device to the watched spec (JSON POST)
const form = document.getElementById("add-device");
if (form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = Object.fromEntries(new FormData(form));
    const out = document.getElementById("control-result");
    const response = await fetch("/api/control/devices", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(fields),
    });
    const json = (response.headers.get("content-type") || "").includes("json");
    const answer = json ? await response.json() : { error: await response.text() };
    out.textContent = response.ok
      ? `added ${answer.added}: ${answer.devices} devices in the spec`
      : `refused: ${answer.error}`;
  });
}
