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

async function poll() {
  try {
    const response = await fetch(`/api/${page}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    fillCells(data);
    if (charts[page] && window.Plotly) charts[page](data);
    document.body.dataset.polled = String(Date.now());
  } catch (err) {
    document.getElementById("status").textContent = `not updating: ${err.message}`;
  }
}

if (document.querySelector("[data-k]") || charts[page]) {
  poll();
  setInterval(poll, POLL_MS);
}
