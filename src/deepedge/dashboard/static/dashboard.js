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

async function poll() {
  try {
    const response = await fetch(`/api/${page}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    fillCells(data);
    if (lists[page]) lists[page](data);
    if (charts[page] && window.Plotly) charts[page](data);
    document.body.dataset.polled = String(Date.now());
  } catch (err) {
    document.getElementById("status").textContent = `not updating: ${err.message}`;
  }
}

if (document.querySelector("[data-k]") || charts[page] || lists[page]) {
  poll();
  setInterval(poll, POLL_MS);
}
