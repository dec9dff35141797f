// Inspection dashboard page. Every text from a record goes through textContent (el() below), never innerHTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const FEED_SIZE = parseInt(document.querySelector('meta[name="feed-size"]').content, 10) || 50;
const PAGE_SIZE = parseInt(document.querySelector('meta[name="page-size"]').content, 10) || 25;
const state = { feed: new Map(), selected: null, zoom: 1, page: 1, total: 0, streamUp: true,
                deps: { kafka: true, redis: true }, apiDown: false,
                historyTimer: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

function fmt(x, digits) { return x == null ? "\u2013" : Number(x).toFixed(digits == null ? 3 : digits); }

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.method && opts.method !== "GET") opts.headers["X-CSRF-Token"] = CSRF;
  const r = await fetch(path, opts);
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  if (r.status === 503) { state.apiDown = true; renderBanner(); }
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(r.status + " " + detail);
  }
  state.apiDown = false;
  renderBanner();
  return r.json();
}

// ------------------------------------------------------------------------------------------- banner
function renderBanner() {
  const down = [];
  if (!state.streamUp) down.push("dashboard stream");
  if (!state.deps.kafka) down.push("Kafka");
  if (!state.deps.redis) down.push("Redis");
  if (state.apiDown && state.deps.redis) down.push("API");
  const banner = document.getElementById("banner");
  banner.hidden = down.length === 0;
  banner.textContent = down.length ? "disconnected: " + down.join(", ") + " (reconnecting; nothing is lost)" : "";
  document.body.classList.toggle("disconnected", down.length > 0);
}

// ------------------------------------------------------------------------------------------- feed and history rows
function row(a) {
  const tr = el("tr", { class: "alert sev-" + a.severity, dataset: { alertId: a.alert_id } },
    el("td", {}, el("img", { class: "thumb", alt: "", loading: "lazy",
                            src: "/api/alerts/" + encodeURIComponent(a.alert_id) + "/image/thumb" })),
    el("td", { class: "camera" }, el("div", {}, a.camera_id), el("div", { class: "source" }, a.source || "")),
    el("td", {}, a.line_id), el("td", {}, a.product_id || "\u2013"), el("td", {}, fmtTime(a.captured_at)),
    el("td", { class: "score" }, fmt(a.pred_score) + " / " + fmt(a.threshold)),
    el("td", { class: "severity" }, a.severity),
    el("td", { class: "status status-" + a.status }, statusText(a)));
  tr.addEventListener("click", () => openDetail(a.alert_id));
  return tr;
}

function statusText(a) {
  if (!a.status || a.status === "open") return "open";
  return a.status.replace("_", " ") + (a.status_by ? " by " + a.status_by : "");
}

function renderFeed() {
  const body = document.querySelector("#feed tbody");
  const items = [...state.feed.values()].sort((x, y) => y.captured_at.localeCompare(x.captured_at)).slice(0, FEED_SIZE);
  body.replaceChildren(...items.map(row));
  document.getElementById("feed-count").textContent = "(" + items.length + ")";
}

function addAlert(a) {
  const known = state.feed.get(a.alert_id);
  state.feed.set(a.alert_id, known ? Object.assign({}, a, { status: known.status, status_by: known.status_by }) : a);
  if (state.page === 1 && !state.historyTimer) {  // the newest history page follows the feed (at most twice a second)
    state.historyTimer = setTimeout(() => { state.historyTimer = null; loadHistory().catch(() => {}); }, 500);
  }
  if (state.feed.size > FEED_SIZE * 2) {
    const oldest = [...state.feed.values()].sort((x, y) => x.captured_at.localeCompare(y.captured_at));
    for (const o of oldest.slice(0, state.feed.size - FEED_SIZE)) state.feed.delete(o.alert_id);
  }
  renderFeed();
}

async function loadFeed() {
  const res = await api("/api/alerts?page_size=" + FEED_SIZE);
  for (const a of res.items) state.feed.set(a.alert_id, a);
  renderFeed();
}

function filterQuery() {
  const q = new URLSearchParams({ page: String(state.page), page_size: String(PAGE_SIZE) });
  const cam = document.getElementById("f-camera").value;
  const st = document.getElementById("f-status").value;
  const since = document.getElementById("f-since").value;
  const until = document.getElementById("f-until").value;
  if (cam) q.set("camera", cam);
  if (st) q.set("status", st);
  if (since) q.set("since", new Date(since).toISOString());
  if (until) q.set("until", new Date(until).toISOString());
  return q.toString();
}

async function loadHistory() {
  const res = await api("/api/alerts?" + filterQuery());
  state.total = res.total;
  document.querySelector("#history tbody").replaceChildren(...res.items.map(row));
  const pages = Math.max(1, Math.ceil(res.total / PAGE_SIZE));
  document.getElementById("h-page").textContent = "page " + res.page + " of " + pages + " (" + res.total +
    " alerts" + (res.truncated ? ", only the newest were searched: narrow the time range" : "") + ")";
  document.getElementById("h-prev").disabled = res.page <= 1;
  document.getElementById("h-next").disabled = res.page >= pages;
}

// ------------------------------------------------------------------------------------------- camera tiles
function sparkline(scores, threshold) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("class", "spark");
  if (scores.length > 1) {
    const pts = scores.map((s, i) => (i * 100 / (scores.length - 1)).toFixed(1) + "," +
                                     (30 - Math.max(0, Math.min(1, s)) * 30).toFixed(1));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.append(line);
  }
  if (threshold != null) {
    const t = document.createElementNS(ns, "line");
    const y = (30 - threshold * 30).toFixed(1);
    t.setAttribute("x1", "0"); t.setAttribute("x2", "100"); t.setAttribute("y1", y); t.setAttribute("y2", y);
    t.setAttribute("class", "thr");
    svg.append(t);
  }
  return svg;
}

function renderTiles(tiles) {
  const box = document.getElementById("tiles");
  box.replaceChildren(...tiles.map(t => el("div", { class: "tile" + (t.stale ? " stale" : ""),
                                                    dataset: { camera: t.camera_id } },
    el("div", { class: "tile-head" }, el("b", {}, t.camera_id), " ", t.line_id || ""),
    t.stale ? el("div", { class: "stale-warning" }, t.seconds_since_frame == null ? "no frame yet"
                                                   : "no frame for " + Math.round(t.seconds_since_frame) + " s") : "",
    el("div", {}, "frames/s (1 min): " + fmt(t.fps, 2)),
    el("div", {}, "last score: " + fmt(t.last_score)),
    el("div", {}, "threshold: " + fmt(t.threshold) + " (sensitivity " + fmt(t.sensitivity, 2) + ", " +
                  (t.threshold_source || "unknown") + ")"),
    el("div", {}, "alerts last hour: " + t.alerts_last_hour),
    el("div", { class: "tile-overlay" }, "overlay: " + (t.overlay_version == null ? "none" : "v" + t.overlay_version)),
    sparkline(t.scores || [], t.threshold))));
  const sel = document.getElementById("f-camera");
  const have = new Set([...sel.options].map(o => o.value));
  for (const t of tiles) if (!have.has(t.camera_id)) sel.append(el("option", { value: t.camera_id }, t.camera_id));
}

// ------------------------------------------------------------------------------------------- detail view
function applyLayers() {
  document.getElementById("layer-heatmap").hidden = !document.getElementById("t-heatmap").checked;
  document.getElementById("layer-outline").hidden = !document.getElementById("t-outline").checked;
  document.getElementById("stage").style.transform = "scale(" + state.zoom + ")";
}

async function openDetail(alertId) {
  const d = await api("/api/alerts/" + encodeURIComponent(alertId));
  state.selected = d;
  const base = "/api/alerts/" + encodeURIComponent(alertId) + "/image/";
  document.getElementById("detail").hidden = false;
  document.getElementById("d-id").textContent = d.alert_id;
  document.getElementById("layer-frame").src = base + "frame";
  const heat = document.getElementById("layer-heatmap");
  if (d.has_heatmap) heat.src = base + "heatmap"; else heat.removeAttribute("src");
  const outline = document.getElementById("layer-outline");
  if (d.has_mask) outline.src = base + "outline"; else outline.removeAttribute("src");
  document.getElementById("d-frame-note").textContent = d.has_frame ? "" : "frame not stored: grey background";
  const fields = [["camera", d.camera_id], ["source", d.source || "\u2013"], ["line", d.line_id],
    ["product", d.product_id || "\u2013"], ["captured", fmtTime(d.captured_at)], ["raised", fmtTime(d.raised_at)],
    ["score (normalised)", fmt(d.pred_score, 4)], ["score (raw)", fmt(d.pred_score_raw, 4)],
    ["threshold", fmt(d.threshold, 4)], ["sensitivity", fmt(d.sensitivity, 3)], ["severity", d.severity],
    ["debounce", d.debounce], ["noise level (start step)", d.noise_step == null ? "\u2013" : d.noise_step],
    ["model version", d.model_version],
    ["overlay version (scored with)", d.overlay_version == null ? "none" : "v" + d.overlay_version],
    ["regions", d.boxes.length], ["frame", d.frame_id]];
  document.getElementById("d-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k),
                                                                                    el("dd", {}, v)]));
  showStatus(d);
  showTeaching(d.teaching);
  applyLayers();
}

// What a false-alarm mark did to the product's overlay (services.teacher works asynchronously: polled while open).
function showTeaching(t) {
  const p = document.getElementById("d-teaching");
  document.getElementById("a-undo").hidden = !(t && t.taught);
  if (!t) { p.textContent = ""; p.className = "teaching"; return; }
  const version = t.version == null ? "none yet" : "v" + t.version;
  if (t.taught) {
    p.textContent = "Taught: this look counts as normal for " + t.product_id + " (overlay " + version + ", by " +
      t.taught.actor + ").";
    p.className = "teaching taught";
  } else if (t.refused) {
    p.textContent = "Not taught: " + t.refused.reason +
      (t.refused.missed.length ? " (confirmed alerts " + t.refused.missed.join(", ") + ")" : "") +
      "; overlay stays " + version + ".";
    p.className = "teaching refused";
  } else {
    p.textContent = "Overlay of " + t.product_id + ": " + version + ".";
    p.className = "teaching";
  }
}

async function refreshTeaching() {
  if (!state.selected || document.getElementById("detail").hidden) return;
  const d = await api("/api/alerts/" + encodeURIComponent(state.selected.alert_id));
  if (state.selected && state.selected.alert_id === d.alert_id) showTeaching(d.teaching);
}

function showStatus(a) {
  const s = document.getElementById("d-status");
  s.textContent = statusText(a) + (a.status_at && a.status !== "open" ? " at " + fmtTime(a.status_at) : "");
  s.className = "status status-" + (a.status || "open");
}

async function act(action) {
  if (!state.selected) return;
  const id = state.selected.alert_id;
  try {
    const res = await api("/api/alerts/" + encodeURIComponent(id) + "/feedback", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ action }) });
    onFeedback(res);
  } catch (e) {
    document.getElementById("d-status").textContent = "not saved: " + e.message;
  }
}

function onFeedback(ev) {
  const a = state.feed.get(ev.alert_id);
  if (a) { Object.assign(a, ev); renderFeed(); }
  if (state.selected && state.selected.alert_id === ev.alert_id) {
    Object.assign(state.selected, ev);
    showStatus(state.selected);
  }
}

// ------------------------------------------------------------------------------------------- live stream
function connect() {
  const es = new EventSource("/api/stream");
  es.onopen = () => { state.streamUp = true; renderBanner(); loadFeed().catch(() => {}); };
  es.onerror = () => { state.streamUp = false; renderBanner(); };
  es.addEventListener("alert", e => addAlert(JSON.parse(e.data)));
  es.addEventListener("feedback", e => onFeedback(JSON.parse(e.data)));
  es.addEventListener("tiles", e => renderTiles(JSON.parse(e.data)));
  es.addEventListener("status", e => {
    const was = state.deps.redis;
    state.deps = JSON.parse(e.data);
    renderBanner();
    if (!was && state.deps.redis) { loadFeed().catch(() => {}); loadHistory().catch(() => {}); }
  });
}

function init() {
  for (const b of document.querySelectorAll(".actions button")) b.addEventListener("click", () => act(b.dataset.action));
  document.getElementById("t-heatmap").addEventListener("change", applyLayers);
  document.getElementById("t-outline").addEventListener("change", applyLayers);
  document.getElementById("zoom-in").addEventListener("click", () => { state.zoom = Math.min(8, state.zoom * 1.5);
                                                                      applyLayers(); });
  document.getElementById("zoom-out").addEventListener("click", () => { state.zoom = Math.max(1, state.zoom / 1.5);
                                                                       applyLayers(); });
  document.getElementById("zoom-reset").addEventListener("click", () => { state.zoom = 1; applyLayers(); });
  document.getElementById("viewer").addEventListener("wheel", e => {
    e.preventDefault();
    state.zoom = Math.max(1, Math.min(8, state.zoom * (e.deltaY < 0 ? 1.25 : 0.8)));
    applyLayers();
  }, { passive: false });
  document.getElementById("filters").addEventListener("submit", e => { e.preventDefault(); state.page = 1;
                                                                        loadHistory().catch(() => {}); });
  document.getElementById("h-prev").addEventListener("click", () => { state.page -= 1; loadHistory().catch(() => {}); });
  document.getElementById("h-next").addEventListener("click", () => { state.page += 1; loadHistory().catch(() => {}); });
  document.getElementById("logout-form").addEventListener("submit", async e => {
    e.preventDefault();
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" });
    location.href = "/login";
  });
  renderBanner();
  loadFeed().catch(() => {});
  loadHistory().catch(() => {});
  connect();
  setInterval(() => refreshTeaching().catch(() => {}), 1000);
}

document.addEventListener("DOMContentLoaded", init);
