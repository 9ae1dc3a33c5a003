// infercol's dashboard: reads /api/labels and /api/panels and draws the panels with uPlot.
// Filters, range and panel choices live in the page's URL, so a view can be shared as a link.
"use strict";

const REFRESH_MS = 5000;
const CLASS_COLORS = { "1xx": "#868e96", "2xx": "#2f9e44", "3xx": "#1c7ed6", "4xx": "#f59f00", "5xx": "#e03131" };
const QUANTILE_COLORS = { p50: "#1c7ed6", p90: "#7048e8", p95: "#f76707", p99: "#e03131" };
const PALETTE = ["#1c7ed6", "#f76707", "#2f9e44", "#7048e8", "#e03131", "#0ca678", "#d6336c", "#f59f00"];

const params = new URLSearchParams(location.search);
const state = {
  model: params.get("model") || "",
  environment: params.get("environment") || "",
  deployment: params.get("deployment") || "",
  // One replica picked in the replica table (`service.instance.id`).
  replica: params.get("replica") || "",
  range: params.get("range") || "1h",
  // A span picked by dragging over a chart (seconds since the epoch), instead of the range.
  from: params.get("from") || "",
  to: params.get("to") || "",
  latency: params.get("latency") || "request",
  size: params.get("size") || "request",
};
const charts = {};
// For tests and curious users: what the page last drew.
window.infercol = { updates: 0, panels: null, empty: null, partial: null, resolution: null, charts };

function saveUrl() {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) if (v) p.set(k, v);
  history.replaceState(null, "", "?" + p.toString());
}

function fmtNumber(v, digits) {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
  if (a >= 100 || a === 0) return v.toFixed(0);
  return v.toFixed(digits == null ? 2 : digits).replace(/\.?0+$/, "");
}

function fmt(unit, v) {
  if (v == null) return "–";
  if (v === 0) return "0";
  switch (unit) {
    case "s":
      if (Math.abs(v) < 1e-3) return fmtNumber(v * 1e6) + " µs";
      if (Math.abs(v) < 1) return fmtNumber(v * 1e3) + " ms";
      return fmtNumber(v) + " s";
    case "By": {
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0;
      while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
      return fmtNumber(v, 1) + " " + units[i];
    }
    case "%": return fmtNumber(v, 1) + "%";
    default: return fmtNumber(v) + (unit ? " " + unit : "");
  }
}

function colorOf(panel, s, i) {
  if (panel.id === "volume") {
    const base = CLASS_COLORS[s.class] || PALETTE[i % PALETTE.length];
    // Codes of one class (gRPC, WebSocket) in shades of the class colour.
    const same = panel.series.filter((x) => x.class === s.class);
    const k = same.indexOf(s);
    return k <= 0 ? base : shade(base, k / (same.length + 1));
  }
  return QUANTILE_COLORS[s.name] || PALETTE[i % PALETTE.length];
}

function shade(hex, f) {
  const n = parseInt(hex.slice(1), 16);
  const mix = (c) => Math.round(c + (255 - c) * f * 0.7).toString(16).padStart(2, "0");
  return "#" + mix(n >> 16) + mix((n >> 8) & 255) + mix(n & 255);
}

function panelElement(panel) {
  let el = document.getElementById("panel-" + panel.id);
  if (el) return el;
  el = document.createElement("div");
  el.className = "panel";
  el.id = "panel-" + panel.id;
  el.innerHTML = `<div class="head"><h3></h3></div><div class="chart"></div><div class="nodata hidden">No data in this range</div><ul class="advice"></ul>`;
  el.querySelector("h3").textContent = panel.title;
  if (panel.choice) {
    const sel = document.createElement("select");
    sel.className = "choice";
    sel.dataset.key = panel.choice.key;
    for (const [value, label] of panel.choice.options) {
      const o = document.createElement("option");
      o.value = value;
      o.textContent = label;
      sel.appendChild(o);
    }
    sel.value = panel.choice.selected;
    sel.addEventListener("change", () => { state[sel.dataset.key] = sel.value; saveUrl(); refresh(); });
    el.querySelector(".head").appendChild(sel);
  }
  const note = document.createElement("span");
  note.className = "note";
  el.querySelector(".head").appendChild(note);
  document.getElementById("grid").appendChild(el);
  return el;
}

// Where a model panel's figures come from, and how precise a percentile can be: quantiles from spans are within
// the sketch's bound (about 0.5%); quantiles scraped from a server's classic buckets only within its layout's.
function sourceNotes(panel) {
  const from = (panel.sources || []).filter((s) => s !== "metrics");
  const notes = [];
  if (from.length === 0) return notes;
  const scraped = from.includes("scraped");
  const prometheus = from.includes("prometheus");
  if (prometheus) notes.push("from Prometheus");
  else notes.push(scraped ? (from.includes("spans") ? "from spans and scraped /metrics" : "scraped /metrics") : "from spans");
  if (panel.relative_error != null) {
    const pct = panel.relative_error * 100;
    const bound = (pct >= 10 ? pct.toFixed(0) : pct.toFixed(1)) + "%";
    notes.push(scraped ? `from the server's buckets: within ${bound}` : prometheus ? `from the buckets: within ${bound}` : `within ${bound}`);
  }
  return notes;
}

// The replicas one by one; picking one filters the page to it (the panels of series that carry the replica).
function drawReplicaTable(el, rows) {
  let table = el.querySelector("table.replicas");
  if (!table) {
    table = document.createElement("table");
    table.className = "replicas";
    el.appendChild(table);
  }
  const head = "<tr><th>replica</th><th>state</th><th>since</th><th>req/s</th><th>p95 end-to-end</th><th>CPU</th>" +
    "<th>memory</th><th>GPU memory</th></tr>";
  table.innerHTML = head;
  el.dataset.replicas = rows.map((r) => r.id).join("|");
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.className = r.id === state.replica ? "picked" : "";
    const cells = [r.id, r.state, new Date(r.since * 1000).toLocaleString(), fmt("req/s", r.requests_per_s),
      fmt("s", r.p95), fmt("%", r.cpu), fmt("By", r.memory), fmt("By", r.gpu_memory)];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    tr.dataset.replica = r.id;
    tr.addEventListener("click", () => {
      state.replica = state.replica === r.id ? "" : r.id;
      saveUrl();
      refresh();
    });
    table.appendChild(tr);
  }
  document.getElementById("replica-filter").classList.toggle("hidden", !state.replica);
  document.getElementById("replica-picked").textContent = state.replica;
}

// The considerations for this panel, each with its evidence: the figure, the threshold and since when.
function drawAdvice(el, panel) {
  const list = el.querySelector(".advice");
  list.innerHTML = "";
  const mine = (window.infercol.considerations || []).filter((c) => c.panel === panel.id);
  el.dataset.advice = mine.map((c) => c.id).join(",");
  for (const c of mine) {
    const e = c.evidence;
    const figure = e.unit === "ratio" ? fmt("%", e.figure * 100) : fmtNumber(e.figure);
    const threshold = e.unit === "ratio" ? fmt("%", e.threshold * 100) : fmtNumber(e.threshold);
    const li = document.createElement("li");
    li.textContent = `${c.advice} (${figure} against ${threshold}, for ${Math.round(e.for_seconds / 60)} min since ${new Date(e.since * 1000).toLocaleTimeString()})`;
    list.appendChild(li);
  }
}

function chartData(panel, times) {
  const data = [times];
  if (panel.stacked) {
    // Stacked: each series drawn on top of the ones before it.
    let below = times.map(() => null);
    for (const s of panel.series) {
      const top = s.values.map((v, i) => (v == null ? below[i] : (below[i] || 0) + v));
      data.push(top);
      below = top;
    }
  } else {
    for (const s of panel.series) data.push(s.values);
  }
  return data;
}

function draw(panel, data) {
  const el = panelElement(panel);
  const chartEl = el.querySelector(".chart");
  const points = panel.series.reduce((n, s) => n + s.values.filter((v) => v != null).length, 0);
  el.dataset.series = String(panel.series.length);
  el.dataset.points = String(points);
  el.dataset.names = panel.series.map((s) => s.name).join("|");
  el.querySelector(".nodata").classList.toggle("hidden", points > 0);
  chartEl.classList.toggle("hidden", points === 0);
  const notes = sourceNotes(panel);
  if (panel.id === "volume" && window.infercol.partial) notes.push("last step in progress");
  if (panel.combined > 1) notes.push(`${panel.combined} series combined (count-weighted)`);
  if (panel.source === "host") notes.push("host (no replica processes reported)");
  el.querySelector(".note").textContent = notes.join(" · ");
  el.dataset.sources = (panel.sources || []).join(",");
  drawAdvice(el, panel);
  if (panel.table) drawReplicaTable(el, panel.table);
  el.dataset.relativeError = panel.relative_error == null ? "" : String(panel.relative_error);
  if (points === 0) {
    if (charts[panel.id]) { charts[panel.id].destroy(); delete charts[panel.id]; }
    return;
  }
  const signature = panel.series.map((s) => s.name).join("|");
  const existing = charts[panel.id];
  if (existing && existing._signature === signature) {
    existing.setData(data);
    return;
  }
  if (existing) existing.destroy();
  const hasRight = panel.series.some((s) => s.axis === "right");
  const unitOf = (s) => s.unit || panel.unit;
  const series = [{ value: (u, t) => (t == null ? "" : new Date(t * 1000).toLocaleTimeString()) }];
  panel.series.forEach((s, i) => {
    const color = colorOf(panel, s, i);
    // A series of a few points draws them: a line needs two, and one or two points would not show otherwise.
    const shown = s.values.filter((v) => v != null).length;
    series.push({
      label: s.name,
      stroke: color,
      width: 1.5,
      points: { show: shown <= 3 || undefined, size: 6, fill: color },
      fill: panel.stacked ? color + "99" : undefined,
      scale: s.axis === "right" ? "right" : "y",
      spanGaps: !panel.stacked,
      value: (u, v) => fmt(unitOf(s), panel.stacked && v != null ? s.values[u.cursor.idx] : v),
    });
  });
  const axes = [
    {},
    { scale: "y", size: 70, values: (u, vals) => vals.map((v) => fmt(panel.unit, v)) },
  ];
  if (hasRight) axes.push({ scale: "right", side: 1, size: 70, grid: { show: false },
    values: (u, vals) => vals.map((v) => fmt(panel.right_unit, v)) });
  const opts = {
    width: Math.max(300, chartEl.clientWidth || el.clientWidth - 24),
    height: 230,
    series,
    axes,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
      right: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    legend: { live: true },
    // Dragging over a chart zooms the whole page to that span.
    cursor: { drag: { x: true, y: false, setScale: false } },
    hooks: { setSelect: [(u) => {
      if (u.select.width < 5) return;
      const from = Math.floor(u.posToVal(u.select.left, "x"));
      const to = Math.ceil(u.posToVal(u.select.left + u.select.width, "x"));
      u.setSelect({ left: 0, width: 0 }, false);
      if (to - from >= 60) { state.from = String(from); state.to = String(to); saveUrl(); refresh(); }
    }] },
  };
  if (panel.stacked) {
    // Fill each band between a series and the one below it.
    opts.bands = panel.series.slice(1).map((_, i) => ({ series: [i + 2, i + 1] }));
  }
  const chart = new uPlot(opts, data, chartEl);
  chart._signature = signature;
  charts[panel.id] = chart;
}

function fillSelect(id, values, allLabel) {
  const sel = document.getElementById(id);
  const want = state[id];
  const options = [""].concat(values);
  if (want && !options.includes(want)) options.push(want);
  const current = Array.from(sel.options).map((o) => o.value).join("\n");
  if (current !== options.join("\n")) {
    sel.innerHTML = "";
    for (const v of options) {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = v || allLabel;
      sel.appendChild(o);
    }
  }
  sel.value = want;
}

let inflight = false;
async function refresh() {
  if (inflight) return;
  inflight = true;
  const status = document.getElementById("status");
  try {
    const labels = await (await fetch("/api/labels")).json();
    fillSelect("model", labels.labels.model || [], "All models");
    fillSelect("environment", labels.labels.environment || [], "All environments");
    fillSelect("deployment", labels.labels.deployment || [], "All deployments");
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v) q.set(k, v);
    const res = await fetch("/api/panels?" + q.toString());
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || res.statusText);
    document.getElementById("empty").classList.toggle("hidden", !body.empty);
    // Host and GPU samples can arrive before any span: their panels show beneath the empty state.
    document.getElementById("grid").classList.toggle("hidden", body.series === 0);
    window.infercol.considerations = body.considerations;
    if (body.series > 0) for (const panel of body.panels) draw(panel, chartData(panel, body.times));
    window.infercol.panels = body.panels;
    window.infercol.empty = body.empty;
    window.infercol.partial = body.partial;
    window.infercol.resolution = body.resolution;
    const zoomed = Boolean(state.from && state.to);
    document.getElementById("zoom").classList.toggle("hidden", !zoomed);
    if (zoomed) {
      const t = (s) => new Date(Number(s) * 1000).toLocaleString();
      document.getElementById("zoom-span").textContent = `${t(state.from)} – ${t(state.to)} (${body.resolution} s points)`;
    }
    window.infercol.updates += 1;
    status.textContent = "live · updated " + new Date().toLocaleTimeString();
    status.className = "live";
  } catch (e) {
    status.textContent = "cannot reach infercol: " + e.message;
    status.className = "";
  } finally {
    inflight = false;
  }
}

for (const id of ["model", "environment", "deployment"]) {
  document.getElementById(id).addEventListener("change", (e) => { state[id] = e.target.value; saveUrl(); refresh(); });
}
for (const b of document.querySelectorAll("#ranges button")) {
  b.classList.toggle("on", b.dataset.range === state.range);
  b.addEventListener("click", () => {
    state.range = b.dataset.range;
    state.from = state.to = "";
    for (const x of document.querySelectorAll("#ranges button")) x.classList.toggle("on", x === b);
    saveUrl();
    refresh();
  });
}
document.getElementById("replica-clear").addEventListener("click", () => {
  state.replica = "";
  saveUrl();
  refresh();
});
document.getElementById("zoom-out").addEventListener("click", () => {
  state.from = state.to = "";
  saveUrl();
  refresh();
});
window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(charts)) {
    const el = document.querySelector(`#panel-${id} .chart`);
    chart.setSize({ width: Math.max(300, el.clientWidth), height: 230 });
  }
});
refresh();
setInterval(refresh, REFRESH_MS);
