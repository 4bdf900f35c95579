// ocpp-appliance dashboard: live values over Server-Sent Events, controls through the
// JSON API (README "Web dashboard and API"). No build step, no inline script.
"use strict";

function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)oa_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

async function api(method, url, body) {
  const headers = { "x-csrftoken": csrfToken() };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
  return { status: response.status, data };
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "-";
  return digits === 0 ? String(Math.round(value)) : Number(value).toFixed(digits);
}

// the same text as the templates' `upstreams` filter (routes.py)
function upstreams(links) {
  return Object.keys(links || {}).sort().map((name) => {
    const link = links[name];
    let text = name + (link.connected ? ": connected" : ": not connected");
    if (!link.connected && link.reason) text += ` (${link.reason})`;
    if (link.waiting) text += `, ${link.waiting} waiting`;
    return text;
  }).join(" · ");
}

function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

const two = (n) => String(n).padStart(2, "0");

function duration(ms) {  // as routes.py's `_duration` says it
  const s = Math.floor(Math.max(0, ms) / 1000);
  const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (d) return `${d} d ${two(h % 24)} h`;
  if (h) return `${h} h ${two(m % 60)} min`;
  return m ? `${m} min` : `${s} s`;
}

function lasting(ms) {  // how long a session has run
  return ms ? duration(Date.now() - ms) : "";
}

// ------------------------------------------------------------------------ times

// The pages carry times as <time datetime="…Z"> with UTC text: only the browser knows
// the viewer's time zone. Shown as 2025-03-08 23:30:00 (the date first, 24 h: the same
// in every language); the title keeps the UTC.
function localText(date) {
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ` +
    `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const date = new Date(el.getAttribute("datetime"));
    if (isNaN(date)) continue;
    if (!el.title) el.title = el.textContent;
    el.textContent = localText(date);
  }
}

function timeElement(ms) {
  const el = document.createElement("time");
  const date = new Date(ms);
  el.dateTime = date.toISOString();
  el.title = date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  el.textContent = localText(date);
  return el;
}

// ---------------------------------------------------------------- live values

function applyStatus(root, row) {
  const set = (field, text) => {
    for (const el of root.querySelectorAll(`[data-field="${field}"]`)) {
      el.textContent = text;
      if (field === "state") el.className = "badge state-" + text;
    }
  };
  set("state", row.state || "offline");
  set("power_w", fmt(row.power_w, 0));
  set("energy_kwh", fmt(row.energy_kwh, 3));
  set("tx_energy_kwh", fmt(row.tx_energy_kwh, 3));
  set("tx_active", row.tx_active ? "· running for" : "");
  set("connected", row.connected ? "yes" : "no");
  set("upstreams", upstreams(row.upstreams));
  set("charge_limit", row.charge_limit === null ? "none" : `${row.charge_limit} ${row.charge_limit_unit || ""}`.trim());
  for (const el of root.querySelectorAll('[data-field="last_seen"]')) {
    el.dataset.ms = row.last_seen || "";
    el.textContent = ago(row.last_seen);
  }
  for (const el of root.querySelectorAll('[data-field="tx_duration"]')) {
    el.dataset.ms = row.tx_started || "";
    el.textContent = lasting(row.tx_started);
  }
}

function findByIdentity(identity) {
  return [...document.querySelectorAll("[data-identity]")].filter(
    (el) => el.dataset.identity === identity);
}

function listen(onStatus) {
  const source = new EventSource("/api/events");
  source.addEventListener("status", (e) => {
    const row = JSON.parse(e.data);
    for (const el of findByIdentity(row.identity)) applyStatus(el, row);
    if (onStatus) onStatus(row);
  });
  source.addEventListener("connection", (e) => {
    const event = JSON.parse(e.data);
    for (const el of findByIdentity(event.identity)) {
      for (const c of el.querySelectorAll('[data-field="connected"]')) c.textContent = event.connected ? "yes" : "no";
    }
  });
  setInterval(() => {
    for (const el of document.querySelectorAll('[data-field="last_seen"]')) {
      if (el.dataset.ms) el.textContent = ago(Number(el.dataset.ms));
    }
    for (const el of document.querySelectorAll('[data-field="tx_duration"]')) {
      if (el.dataset.ms) el.textContent = lasting(Number(el.dataset.ms));
    }
    for (const el of document.querySelectorAll("[data-since]")) {
      el.textContent = "running for " + lasting(Number(el.dataset.since));
    }
  }, 5000);
  return source;
}

// ---------------------------------------------------------------------- chart

const PHASE_COLORS = { total: "#0b6bcb", L1: "#c0392b", L2: "#27ae60", L3: "#8e44ad" };
const RANGE_SEC = { hour: 3600, day: 86400, week: 604800 };
// readings further apart than this many typical intervals (at least BREAK_MIN_SEC) are
// not joined: nothing was reported in between, and a line would claim the old power
const BREAK_INTERVALS = 3, BREAK_MIN_SEC = 300;

function withEnds(points, ends) {  // a session's end: its power fell to 0 (README "Readings")
  const out = new Map(points);
  for (const t of ends) out.set(t, 0);
  return out;
}

function withBreaks(points) {  // a null (uPlot: a gap) inside each long silence
  const times = [...points.keys()].sort((a, b) => a - b);
  const steps = times.slice(1).map((t, i) => t - times[i]).sort((a, b) => a - b);
  if (!steps.length) return points;
  const longest = Math.max(BREAK_INTERVALS * steps[Math.floor(steps.length / 2)], BREAK_MIN_SEC);
  const out = new Map(points);
  for (let i = 1; i < times.length; i++) {
    if (times[i] - times[i - 1] > longest) out.set(Math.round((times[i - 1] + times[i]) / 2), null);
  }
  return out;
}

function powerRange(u, min, max) {  // from 0 W: 7.0 kW against 7.2 kW is not a swing
  const top = max > 0 ? uPlot.rangeNum(0, max, 0.1, true)[1] : 1000;
  return [min < 0 ? min : 0, top];
}

class PowerChart {
  constructor(el, identity) {
    this.el = el; this.identity = identity; this.range = "hour"; this.plot = null;
    this.series = {};  // phase -> Map(t -> value)
    this.ends = [];  // when sessions ended (s)
  }
  async load(range) {
    this.range = range;
    const url = `/api/charge-points/${encodeURIComponent(this.identity)}/meter-values` +
      `?measurand=Power.Active.Import&range=${range}&points=600`;
    const { data } = await api("GET", url);
    this.series = {};
    this.ends = (data.ends || []).map((ms) => Math.floor(ms / 1000));
    for (const p of data.points || []) {
      const phase = p.phase || "total";
      (this.series[phase] = this.series[phase] || new Map()).set(Math.floor(p.t / 1000), p.value);
    }
    this.draw();
  }
  add(row) {  // a live status row: append total and per-phase power (the hour view only)
    if (this.range !== "hour") return;
    const t = Math.floor(Date.now() / 1000);
    const live = { total: row.power_w, L1: row.power_l1, L2: row.power_l2, L3: row.power_l3 };
    let added = false;
    for (const [phase, value] of Object.entries(live)) {
      if (value === null || value === undefined) continue;
      // the series a phase was stored under: "L1", or "L1-N" as some chargers report it
      const key = Object.keys(this.series).find((k) => k === phase || k === phase + "-N") || phase;
      (this.series[key] = this.series[key] || new Map()).set(t, value);
      added = true;
    }
    // a page open for days keeps the hour it shows, not every point since it opened
    for (const points of Object.values(this.series)) {
      for (const old of points.keys()) if (old < t - RANGE_SEC.hour) points.delete(old);
    }
    if (added) this.draw();
  }
  draw() {
    const phases = Object.keys(this.series).sort();
    const lines = phases.map((p) => withBreaks(withEnds(this.series[p], this.ends)));
    const times = [...new Set(lines.flatMap((line) => [...line.keys()]))].sort((a, b) => a - b);
    // undefined where a series has no point at another's time (uPlot joins across it),
    // null where it breaks
    const data = [times, ...lines.map((line) => times.map((t) => line.get(t)))];
    const width = Math.max(280, this.el.clientWidth);
    // the axis spans the chosen range, however little of it has readings; uPlot's time
    // axis is in the browser's time zone (no tzDate)
    const span = RANGE_SEC[this.range] || 3600;
    const opts = {
      width, height: 260,
      scales: {
        x: { time: true, range: () => { const now = Date.now() / 1000; return [now - span, now]; } },
        y: { range: powerRange },
      },
      series: [{}, ...phases.map((p) => ({ label: p === "total" ? "Power W" : `${p} W`, stroke: PHASE_COLORS[p] || PHASE_COLORS[p.slice(0, 2)] || "#555", width: 2, spanGaps: false }))],
      axes: [{}, { size: 60 }],
    };
    if (this.plot && this.plot.series.length === phases.length + 1 && this.plotRange === this.range) {
      this.plot.setData(data);
    } else {
      if (this.plot) this.plot.destroy();
      this.plot = new uPlot(opts, data, this.el);
      this.plotRange = this.range;
    }
    // what a test (and a curious user in the inspector) reads: the newest value per series
    this.el.dataset.points = String(times.length);
    const newest = {};  // a series' newest point (a session's end: 0)
    phases.forEach((p, i) => {
      let last = null;
      for (const [t, value] of lines[i]) if (value !== null && (last === null || t > last)) last = t;
      newest[p] = last === null ? null : lines[i].get(last);
    });
    this.el.dataset.newest = JSON.stringify(newest);
    const last = newest.total === undefined ? null : newest.total;
    this.el.dataset.last = last === null ? "" : String(last);
  }
}

// ------------------------------------------------------------------- controls

function writesOf(form) {
  const kind = form.dataset.kind;
  const get = (name) => form.elements[name].value;
  if (kind === "limit") {
    return {
      "control.chargeLimitType": get("unit"),
      "control.numberOfPhases": Number(get("phases")),
      "control.chargeLimit": Number(get("limit")),
    };
  }
  if (kind === "start") {
    return { "control.requestStartTransaction.idToken": get("idToken"),
             "control.requestStartTransaction.trigger": 1 };
  }
  if (kind === "value") return { [form.dataset.id]: get("value") };
  return JSON.parse(form.dataset.writes);
}

function setupControls(identity) {
  const outcome = document.getElementById("outcome");
  for (const form of document.querySelectorAll("#cp form")) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
      const writes = writesOf(form);
      const names = Object.keys(writes).join(", ");
      if (outcome) { outcome.className = "outcome"; outcome.textContent = `${names}: sent, waiting for the answer…`; }
      const { status, data } = await api("POST", `/api/charge-points/${encodeURIComponent(identity)}/controls`, { writes });
      if (!outcome) return;
      if (status === 200 && data.ok) {
        outcome.className = "outcome good";
        outcome.textContent = `${names}: done`;
      } else {
        outcome.className = "outcome bad";
        outcome.textContent = `${names}: ${data.error || "failed (" + status + ")"}`;
      }
    });
  }
}

async function loadFrames(identity) {
  const table = document.getElementById("frames");
  const select = document.getElementById("frame-action");
  if (!table || !select) return;
  const action = select.value;
  const { status, data } = await api("GET", `/api/charge-points/${encodeURIComponent(identity)}/frames?limit=50&action=${encodeURIComponent(action)}`);
  if (status !== 200) return;
  if (select.options.length === 1) {
    for (const a of data.actions) { const o = document.createElement("option"); o.value = a; o.textContent = a; select.appendChild(o); }
  }
  table.replaceChildren();
  for (const f of data.frames) {
    const tr = table.insertRow();
    tr.insertCell().append(timeElement(f.ts));
    for (const text of [f.direction, f.action || "", f.payload]) {
      tr.insertCell().textContent = text;
    }
  }
}

// ----------------------------------------------------------------------- pages

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const tz = document.getElementById("tz");
  if (tz) tz.textContent = "times: " + (Intl.DateTimeFormat().resolvedOptions().timeZone || "local");
  const logout = document.getElementById("logout");
  if (logout) logout.addEventListener("click", async () => { await api("POST", "/api/logout"); location.href = "/"; });

  const loginForm = document.getElementById("login-form");
  if (loginForm) {
    loginForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const { status, data } = await api("POST", "/api/login", { password: loginForm.elements.password.value });
      if (status === 200) { location.href = "/"; return; }
      const out = document.getElementById("login-outcome");
      out.className = "outcome bad"; out.textContent = data.error || "failed";
    });
  }

  const cp = document.getElementById("cp");
  if (cp) {
    const identity = cp.dataset.identity;
    const chart = new PowerChart(document.getElementById("chart"), identity);
    window.powerChart = chart;  // for tests and the console: powerChart.plot is the uPlot
    chart.load("hour");
    for (const b of document.querySelectorAll("#ranges button")) {
      b.addEventListener("click", () => {
        for (const o of document.querySelectorAll("#ranges button")) o.classList.toggle("on", o === b);
        chart.load(b.dataset.range);
      });
    }
    listen((row) => {
      if (row.identity !== identity) return;
      chart.add(row);
      if (!row.tx_active) {  // the table's running session ended: its figures need a reload
        for (const el of document.querySelectorAll("[data-since]")) {
          delete el.dataset.since;
          el.textContent = "ended (reload for the figures)";
        }
      }
    });
    setupControls(identity);
    const select = document.getElementById("frame-action");
    if (select) { select.addEventListener("change", () => loadFrames(identity)); loadFrames(identity); }
  } else if (document.getElementById("overview")) {
    listen(null);
  }
});
