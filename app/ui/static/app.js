// The stillhouse dashboard: reads the /v1 API from the browser and redraws on a timer while anything is live.
//   #/            the tenant's jobs, live status (every 2 s)
//   #/jobs/<id>   one job: progress, loss and accuracy charts, events, report and downloads (every 2 s until it ends)
// All text from the API goes in through textContent, never as HTML.
"use strict";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 2000;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
let timer = null;
let view = null; // state of the page shown: {kind, ...}

// ---- API ------------------------------------------------------------------------------------------------------
function apiKey() { return localStorage.getItem("stillhouse.apiKey") || ""; }

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  const headers = {Accept: "application/json"};
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const resp = await fetch(url, {headers});
  const body = resp.headers.get("content-type")?.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) {
    const err = new Error(body?.error?.message || `${resp.status} ${resp.statusText}`);
    err.status = resp.status; err.code = body?.error?.code;
    throw err;
  }
  setConn(true);
  return body;
}

async function post(path) {
  const headers = {};
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const resp = await fetch(path, {method: "POST", headers});
  if (!resp.ok) throw new Error((await resp.json())?.error?.message || resp.statusText);
  return resp.json();
}

// Every page of a cursor-paginated list after `after` (metrics, events).
async function allAfter(path, after, extra) {
  const out = [];
  for (;;) {
    const page = await api(path, {limit: path.endsWith("/metrics") ? 10000 : 100, after, ...(extra || {})});
    out.push(...page.data);
    if (!page.has_more || !page.data.length) return out;
    after = page.data[page.data.length - 1].id;
  }
}

function setConn(ok, message) {
  const el = document.getElementById("conn");
  el.textContent = ok ? `connected · updated ${new Date().toLocaleTimeString()}` : message;
  el.className = ok ? "" : "error";
}

// ---- helpers ------------------------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) el.append(c instanceof Node ? c : String(c));
  return el;
}

const pct = v => (v === null || v === undefined) ? "–" : `${(100 * v).toFixed(1)}%`;
const num = (v, digits = 3) => (v === null || v === undefined) ? "–" : (+v).toLocaleString(undefined, {maximumSignificantDigits: digits});
function bytes(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1024) return `${v} B`;
  if (v < 1024 ** 2) return `${(v / 1024).toFixed(1)} KiB`;
  if (v < 1024 ** 3) return `${(v / 1024 ** 2).toFixed(1)} MiB`;
  return `${(v / 1024 ** 3).toFixed(2)} GiB`;
}
function ago(iso) {
  if (!iso) return "–";
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}
function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
const badge = status => h("span", {class: `badge ${status}`, "data-status": status}, status);
const bar = (fraction, big) => h("div", {class: big ? "bar big" : "bar", title: pct(fraction)},
                                 h("span", {style: `width:${Math.round(100 * (fraction || 0))}%`}));

function schedule(fn) {
  clearTimeout(timer);
  timer = setTimeout(fn, POLL_MS);
}

function showError(e) {
  if (e.status === 401) {
    setConn(false, "this server needs an API key: enter one above");
  } else {
    setConn(false, `error: ${e.message}`);
  }
}

// ---- the jobs list ------------------------------------------------------------------------------------------------
async function renderJobs() {
  const main = document.getElementById("main");
  const status = view.status || "";
  let page;
  try {
    page = await api("/v1/jobs", {limit: 100, status});
  } catch (e) {
    showError(e);
    schedule(renderJobs);
    return;
  }
  if (view.kind !== "jobs") return;
  const filter = h("select", {id: "status-filter", onchange: ev => { view.status = ev.target.value; renderJobs(); }},
    ["", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"].map(s =>
      h("option", {value: s, selected: s === status ? "selected" : null}, s || "all statuses")));
  const rows = page.data.map(j => h("tr", {class: "job", "data-job": j.id, onclick: () => { location.hash = `#/jobs/${j.id}`; }},
    h("td", {class: "mono"}, h("a", {href: `#/jobs/${j.id}`}, j.id)),
    h("td", {}, j.name || h("span", {class: "muted"}, "–")),
    h("td", {}, badge(j.status)),
    h("td", {}, j.status === "running" ? (j.phase || "") : (j.waiting ? h("span", {class: "warn", title: j.waiting.message}, "no worker") :
                 (j.error ? h("span", {class: "error", title: j.error.message}, j.error.code) : ""))),
    h("td", {}, bar(j.progress.fraction)),
    h("td", {class: "num"}, j.progress.epoch ? `${j.progress.epoch}/${j.progress.epochs}` : "–"),
    h("td", {}, j.queue || ""),
    h("td", {title: j.created_at}, ago(j.created_at)),
    h("td", {class: "num"}, duration(j.timings.running_s))));
  const table = rows.length ? h("table", {id: "jobs"},
      h("thead", {}, h("tr", {}, ["job", "name", "status", "phase / error", "progress", "epoch", "queue", "created", "running"]
        .map((c, i) => h("th", {class: i === 5 || i === 8 ? "num" : ""}, c)))),
      h("tbody", {}, rows))
    : h("p", {class: "muted"}, status ? `no ${status} jobs` : "no jobs yet: submit one with `stillhouse submit job.yaml` or POST /v1/jobs");
  const live = page.data.filter(j => !FINAL.has(j.status)).length;
  main.replaceChildren(
    h("div", {class: "toolbar"}, h("h1", {}, "Jobs"), h("span", {class: "spacer"}),
      h("span", {class: "muted"}, `${page.data.length}${page.has_more ? "+" : ""} shown, ${live} live`), filter),
    h("div", {class: "card"}, table));
  schedule(renderJobs);
}

// ---- one job ------------------------------------------------------------------------------------------------------
function seriesFrom(metrics, pick) {
  const by = new Map();
  for (const m of metrics) {
    const key = pick(m);
    if (!key) continue;
    if (!by.has(key.name)) by.set(key.name, []);
    by.get(key.name).push([key.x, m.value]);
  }
  return [...by.entries()].map(([name, points], i) => ({name, points, color: COLORS[i % COLORS.length]}));
}

function lossSeries(metrics) {
  return seriesFrom(metrics, m => {
    if (!m.name.startsWith("loss/")) return null;
    if (m.split === "train") return {name: m.name.slice(5), x: m.step};
    return null;
  });
}

function accuracySeries(metrics) {
  return seriesFrom(metrics, m => {
    if (m.name === "top1" && m.split.endsWith("val")) return {name: `${m.split.replace("_val", "")} top-1`.replace(/^val /, "val "), x: m.epoch};
    if (m.name === "top1" && m.split.endsWith("train")) return {name: `${m.split} top-1`, x: m.epoch};
    if (m.name === "agreement" || m.name === "cosine") return {name: `${m.split} ${m.name}`, x: m.epoch};
    return null;
  });
}

function reportCard(job, report) {
  if (!report) return null;
  const t = report.teacher || {}, s = report.student || {};
  const rows = [
    ["top-1 (validation)", pct(t.val_top1), pct(s.val_top1)],
    ["parameters", num(t.parameters, 6), num(s.parameters, 6)],
    ["size", bytes(t.bytes), bytes(s.bytes)],
  ];
  for (const bs of Object.keys(t.latency_ms || {})) {
    const tl = t.latency_ms[bs] || {}, sl = (s.latency_ms || {})[bs] || {};
    rows.push([`latency p50 / p95 @ batch ${bs}`, `${num(tl.p50)} / ${num(tl.p95)} ms`, `${num(sl.p50)} / ${num(sl.p95)} ms`]);
  }
  const extra = [["compression ratio", report.compression_ratio ? `${num(report.compression_ratio)}×` : "–"],
                 ["agreement with the teacher", pct(report.agreement)],
                 ...Object.entries(report.speedup || {}).map(([bs, v]) => [`speedup @ batch ${bs}`, `${num(v)}×`])];
  const htmlLink = h("a", {href: `/v1/jobs/${job.id}/report?format=html`, target: "_blank", rel: "noopener",
                           onclick: ev => openWithKey(ev, `/v1/jobs/${job.id}/report?format=html`, null)}, "full report (HTML, with plots)");
  return h("div", {class: "card", id: "report"}, h("h2", {}, "Report"),
    report.summary ? h("p", {}, report.summary) : null,
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {class: "num"}, "teacher"), h("th", {class: "num"}, "student"))),
      h("tbody", {}, rows.map(r => h("tr", {}, h("td", {}, r[0]), h("td", {class: "num"}, r[1]), h("td", {class: "num"}, r[2]))))),
    h("dl", {class: "kv", style: "margin-top:10px"}, extra.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("p", {}, htmlLink));
}

// Links to the API carry no Authorization header: with a key set, fetch the bytes and hand the browser a blob.
async function openWithKey(ev, url, filename) {
  if (!apiKey()) return; // the plain link works
  ev.preventDefault();
  const resp = await fetch(url, {headers: {Authorization: "Bearer " + apiKey()}});
  if (!resp.ok) { setConn(false, `download failed: ${resp.status}`); return; }
  const blobUrl = URL.createObjectURL(await resp.blob());
  if (filename) {
    const a = h("a", {href: blobUrl, download: filename});
    document.body.append(a); a.click(); a.remove();
  } else {
    window.open(blobUrl, "_blank", "noopener");
  }
  setTimeout(() => URL.revokeObjectURL(blobUrl), 60000);
}

function downloadsCard(job, artifacts) {
  if (!artifacts || !artifacts.length) return null;
  return h("div", {class: "card", id: "downloads"}, h("h2", {}, "Downloads"),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "artifact"), h("th", {class: "num"}, "size"), h("th", {}, "sha256"))),
      h("tbody", {}, artifacts.map(a => h("tr", {},
        h("td", {}, h("a", {href: a.url, download: a.name, onclick: ev => openWithKey(ev, a.url, a.name)}, a.name)),
        h("td", {class: "num"}, bytes(a.bytes)),
        h("td", {class: "mono", title: a.sha256}, a.sha256.slice(0, 16) + "…"))))));
}

function statusCard(job) {
  const p = job.progress;
  const kv = [
    ["status", badge(job.status)],
    ["phase", job.phase || "–"],
    ["epoch", p.epoch ? `${p.epoch} / ${p.epochs}` : "–"],
    ["step", p.step ? `${p.step} / ${p.total_steps}` : "–"],
    ["time left", p.eta_s !== null && !FINAL.has(job.status) ? duration(p.eta_s) : "–"],
    ["queue", job.queue || "–"],
    ["attempt", job.handbacks ? `${job.attempt} (${job.handbacks} hand-back${job.handbacks > 1 ? "s" : ""})` : String(job.attempt)],
    ["created", `${new Date(job.created_at).toLocaleString()} (${ago(job.created_at)})`],
    ["running time", duration(job.timings.running_s)],
  ];
  for (const [name, r] of Object.entries(job.registry || {})) {
    kv.push([`registry (${name})`, r.status === "registered"
      ? `${r.model_name} version ${r.version}${r.alias ? ` (alias ${r.alias})` : ""}` : `${r.status}${r.error ? ": " + r.error : ""}`]);
  }
  const live = !FINAL.has(job.status);
  return h("div", {class: "card", id: "status"},
    h("div", {class: "toolbar"}, h("h2", {}, "Progress"), h("span", {class: "spacer"}),
      live ? h("button", {class: "btn", id: "cancel", onclick: async () => {
        try { await post(`/v1/jobs/${job.id}/cancel`); } catch (e) { showError(e); } }}, "cancel") : null),
    bar(p.fraction, true),
    h("p", {class: "muted", id: "fraction"}, p.fraction !== null ? `${(100 * p.fraction).toFixed(1)}% of training` : "not started"),
    job.waiting ? h("p", {class: "warn", id: "waiting"}, job.waiting.message) : null,
    job.error ? h("p", {class: "error", id: "error"}, `${job.error.code}: ${job.error.message}`) : null,
    h("dl", {class: "kv"}, kv.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {"data-field": k}, v)])));
}

async function renderJob() {
  const id = view.id;
  let job;
  try {
    job = await api(`/v1/jobs/${id}`);
    const [metrics, events] = await Promise.all([
      allAfter(`/v1/jobs/${id}/metrics`, view.metricsAfter), allAfter(`/v1/jobs/${id}/events`, view.eventsAfter)]);
    if (view.kind !== "job" || view.id !== id) return;
    view.metrics.push(...metrics);
    view.events.push(...events);
    if (metrics.length) view.metricsAfter = metrics[metrics.length - 1].id;
    if (events.length) view.eventsAfter = events[events.length - 1].id;
    if (job.status === "succeeded" && !view.report) {
      [view.report, view.artifacts] = await Promise.all([api(`/v1/jobs/${id}/report`), api(`/v1/jobs/${id}/artifacts`).then(r => r.data)]);
    }
  } catch (e) {
    if (e.status === 404) {
      document.getElementById("main").replaceChildren(h("p", {class: "error"}, `no job ${id} for this tenant`), h("a", {href: "#/"}, "all jobs"));
      return;
    }
    showError(e);
    schedule(renderJob);
    return;
  }
  if (view.kind !== "job" || view.id !== id) return;
  // a resumed job may have dropped rows after its checkpoint: keep the latest row per (name, split, step)
  const seen = new Map();
  for (const m of view.metrics) seen.set(`${m.name}|${m.split}|${m.step}`, m);
  const metrics = [...seen.values()].sort((a, b) => a.id - b.id);
  const loss = h("div", {id: "loss-chart"});
  const acc = h("div", {id: "accuracy-chart"});
  const events = h("div", {class: "events"}, h("table", {}, h("tbody", {}, view.events.slice().reverse().slice(0, 200).map(e =>
    h("tr", {}, h("td", {title: e.created_at}, new Date(e.created_at).toLocaleTimeString()), h("td", {}, e.type), h("td", {}, e.message))))));
  document.getElementById("main").replaceChildren(
    h("div", {class: "toolbar"}, h("a", {href: "#/"}, "← jobs"), h("h1", {class: "mono", id: "job-id"}, job.id),
      h("span", {}, job.name || ""), h("span", {class: "spacer"}), badge(job.status)),
    h("div", {class: "grid"}, statusCard(job), h("div", {class: "card"}, h("h2", {}, "Events"), events)),
    h("div", {class: "grid"},
      h("div", {class: "card"}, h("h2", {}, "Training loss"), loss),
      h("div", {class: "card"}, h("h2", {}, "Accuracy (per epoch)"), acc)),
    h("div", {class: "grid"}, reportCard(job, view.report), downloadsCard(job, view.artifacts)));
  lineChart(loss, lossSeries(metrics), {xLabel: "step", label: "training loss by step", emptyText: "no training steps logged yet"});
  lineChart(acc, accuracySeries(metrics), {xLabel: "epoch", percent: true, yMax: 1, integerX: true, label: "accuracy by epoch",
                                           emptyText: "no epoch finished yet"});
  document.title = `stillhouse — ${job.name || job.id} (${job.status})`;
  if (!FINAL.has(job.status) || (job.status === "succeeded" && Object.values(job.registry || {}).some(r => r.status === "pending"))) {
    schedule(renderJob);
  } else {
    setConn(true);
  }
}

// ---- routing ------------------------------------------------------------------------------------------------------
function route() {
  clearTimeout(timer);
  const m = location.hash.match(/^#\/jobs\/([A-Za-z0-9_]+)$/);
  if (m) {
    view = {kind: "job", id: m[1], metrics: [], events: [], metricsAfter: undefined, eventsAfter: undefined, report: null, artifacts: null};
    document.getElementById("main").replaceChildren(h("p", {class: "muted"}, "loading…"));
    renderJob();
  } else {
    view = {kind: "jobs", status: view?.kind === "jobs" ? view.status : ""};
    renderJobs();
  }
}

document.getElementById("keyform").addEventListener("submit", ev => {
  ev.preventDefault();
  const v = document.getElementById("apikey").value.trim();
  if (v) localStorage.setItem("stillhouse.apiKey", v); else localStorage.removeItem("stillhouse.apiKey");
  route();
});
document.getElementById("apikey").value = apiKey();
window.addEventListener("hashchange", route);
route();
