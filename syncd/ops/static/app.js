// syncd dashboard: reads /v1/status, /v1/activity, /v1/search and follows /v1/events.
// Every string from the daemon goes into the page as text (textContent), never as markup,
// and control characters in file names are shown escaped, so a name is always one line.
"use strict";

const S = {
  settling: new Map(), uploads: new Map(), finished: [], status: null,
  live: false, polling: null, es: null, errors: 0, timers: {},
};
const FINISHED_MAX = 25;
const $ = (id) => document.getElementById(id);

function visible(text) {
  if (text === null || text === undefined) return "";
  return String(text).replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => {
    const named = { "\n": "\\n", "\r": "\\r", "\t": "\\t" }[c];
    return named || "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0");
  });
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "title") node.title = visible(v);
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(visible(c)));
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.round(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function ago(iso) {
  if (!iso) return "-";
  return duration(Math.max(0, (Date.now() - Date.parse(iso)) / 1000)) + " ago";
}

function keyOf(item) { return item.path_bytes_hex || item.path; }

async function getJSON(url) {
  const resp = await fetch(url, { headers: { Accept: "application/json" } });
  const doc = await resp.json();
  if (!resp.ok && resp.status !== 404) throw new Error(doc.error || resp.status);
  return doc;
}

function later(name, ms, fn) {
  if (S.timers[name]) return;
  S.timers[name] = setTimeout(() => { S.timers[name] = null; fn(); }, ms);
}

// Runs fn once ms after the last call (each call starts the wait again).
function settle(name, ms, fn) {
  clearTimeout(S.timers[name]);
  S.timers[name] = setTimeout(fn, ms);
}

function fill(tableId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
}

// ---------------------------------------------------------------------------- status

const STATES = [
  ["pending", "pending"], ["uploading", "uploading"], ["uploaded", "waiting for status"],
  ["done", "done"], ["failed", "failed"], ["rejected", "rejected"],
  ["skipped", "skipped"], ["unsettled", "unsettled"],
];

function renderStatus(doc) {
  S.status = doc;
  const d = doc.daemon;
  const health = $("health");
  if (!d.running) { health.textContent = "no daemon"; health.className = "badge bad"; }
  else {
    health.textContent = d.healthy ? "healthy" : "unhealthy: " + visible(d.reason);
    health.className = "badge " + (d.healthy ? "ok" : "bad");
  }
  const files = doc.files;
  $("counts").replaceChildren(...STATES.map(([key, label]) => {
    let n = files[key] || 0;
    if (key === "uploading") n += files.allocated || 0;
    const bad = (key === "failed" || key === "rejected" || key === "unsettled") && n > 0;
    return el("div", { class: "tile" + (bad ? " bad" : ""), "data-state": key }, el("b", {}, String(n)), label);
  }));
  const b = doc.backlog;
  const rate = b.bytes_per_s ? bytes(b.bytes_per_s) + "/s" : "no uploads in the last minutes";
  $("backlog").textContent = `${b.files} file(s), ${bytes(b.bytes)} left; ${rate}` +
    (b.eta_s !== null ? `; about ${duration(b.eta_s)} to go` : "");
  renderPause(d);
  renderPlot(doc.rate);
  const cds = (d.cooldowns || []).map((c) => `${c.endpoint} cooling down for ${duration(c.remaining_s)}`);
  $("cooldowns").textContent = cds.length ? cds.join("; ") : "No cool-down running.";
}

function renderPause(d) {
  const pause = $("pause");
  if (d.paused) {
    pause.hidden = false;
    const p = d.paused;
    const left = p.until ? (Date.parse(p.until) - Date.now()) / 1000 : null;
    const probe = left === null ? "" : left >= 1 ? `; one upload tries again in ${duration(left)}` : "; one upload is trying again";
    pause.dataset.kind = p.kind;
    pause.textContent = `Uploads paused: ${visible(p.reason)}${probe}.`;
  } else pause.hidden = true;
  const items = [];
  for (const r of d.roots || []) {
    if (!r.available) items.push(el("li", {}, `Watched folder ${visible(r.path)} is not available (unmounted or gone); its files are kept as they were.`));
    if (r.watch_limit_hits) items.push(el("li", {}, `${visible(r.path)}: the inotify watch limit is reached (${r.watch_limit_hits} folder(s) unwatched); raise fs.inotify.max_user_watches.`));
  }
  $("root-problems").replaceChildren(...items);
  updateProblemCount();
}

// A hand-drawn SVG plot: requests per second per endpoint, the limit as a dashed line, red
// dots where answers were throttled. Drawn here (no charting library): one series kind, a
// few hundred points, and a page that must stay small and load nothing from elsewhere.
const COLORS = { upload: "#2b6cb0", signed_url: "#805ad5", storage: "#38a169", metadata: "#dd6b20" };
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderPlot(rate) {
  const W = Math.max(300, Math.round($("plot").clientWidth || 600)), H = 150, L = 34, B = 16;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "requests per second over the last hour" });
  const n = rate.ends.length;
  const slots = Math.max(n, Math.round(3600 / rate.bucket_s));
  // The scale follows the traffic; a limit far above it (more than 5 times the busiest
  // bucket) would flatten every line to the axis, so it is named in the legend instead.
  let peak = 0;
  for (const e of Object.values(rate.endpoints)) for (const v of e.requests_per_s) peak = Math.max(peak, v);
  const onScale = (limit) => Boolean(limit) && (peak === 0 || limit <= 5 * peak);
  let top = Math.max(peak, 0.1);
  for (const e of Object.values(rate.endpoints)) if (onScale(e.limit_per_s)) top = Math.max(top, e.limit_per_s);
  top *= 1.15;
  const x = (i) => L + ((slots - n + i + 0.5) / slots) * (W - L - 4);
  const y = (v) => H - B - (v / top) * (H - B - 6);
  root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, y1: 4, x2: L, y2: H - B }));
  root.append(svg("text", { x: 2, y: 12 }, top.toFixed(top < 3 ? 1 : 0)));
  root.append(svg("text", { x: 2, y: H - B }, "0"));
  root.append(svg("text", { x: L, y: H - 3 }, "-60 min"));
  root.append(svg("text", { x: W - 28, y: H - 3 }, "now"));
  const legend = el("div", { class: "legend small muted" });
  for (const [name, e] of Object.entries(rate.endpoints)) {
    const color = COLORS[name] || "#4a5568";
    const used = e.requests_per_s.some((v) => v > 0);
    if (onScale(e.limit_per_s) && (used || name === "upload" || name === "metadata")) {
      root.append(svg("line", { class: "limit", x1: L, x2: W, y1: y(e.limit_per_s), y2: y(e.limit_per_s), stroke: color }));
    }
    if (n) {
      const pts = e.requests_per_s.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      root.append(svg("polyline", { class: "series", points: pts, stroke: color, "data-endpoint": name }));
      // A line needs two points: the first bucket of a fresh daemon is a dot.
      if (n === 1 && used) root.append(svg("circle", { cx: x(0), cy: y(e.requests_per_s[0]), r: 2.5, fill: color }));
    }
    e.throttled.forEach((t, i) => {
      if (t <= 0) return;
      const dot = svg("circle", { class: "throttled", cx: x(i), cy: y(e.requests_per_s[i]), r: 3, "data-endpoint": name });
      dot.append(svg("title", {}, `${name}: ${t} throttled answer(s)`));
      root.append(dot);
    });
    const sw = el("i", {});
    sw.style.background = color;
    const limit = e.limit_per_s ? ` (limit ${e.limit_per_s}/s${onScale(e.limit_per_s) ? "" : ", above the plot"})` : "";
    legend.append(el("span", { "data-endpoint": name }, sw, name + limit));
  }
  legend.append(el("span", {}, "red dots: throttled answers"));
  $("plot").replaceChildren(root, legend);
}

// ---------------------------------------------------------------------------- lists

function fileCell(item) {
  return el("td", { class: "mono", title: item.path }, item.path === null ? "(no path)" : item.path);
}

// When a file left a live list (settled, upload ended), by key: a page asked for before that
// moment may still hold it, and must not bring it back.
const GONE = { settling: new Map(), uploads: new Map() };

function gone(list, key) {
  const now = Date.now();
  GONE[list].set(key, now);
  for (const [k, at] of GONE[list]) if (now - at > 60000) GONE[list].delete(k);
}

function current(list, items, askedAt) {
  return new Map(items.filter((i) => !(GONE[list].get(keyOf(i)) >= askedAt)).map((i) => [keyOf(i), i]));
}

async function loadSettling() {
  const askedAt = Date.now();
  const page = await getJSON("/v1/activity?kind=settling&limit=100");
  S.settling = current("settling", page.items, askedAt);
  S.settlingTotal = page.total;
  renderSettling();
  if (S.settling.size) later("settling", 2000, () => loadSettling().catch(noteError));
}

function renderSettling() {
  const rows = [...S.settling.values()].map((i) => el("tr", { "data-key": keyOf(i) },
    fileCell(i), el("td", {}, i.why || "just seen"), el("td", {}, i.since ? ago(i.since) : "now")));
  fill("settling", rows);
  const more = (S.settlingTotal || 0) > S.settling.size ? ` (${S.settlingTotal} in all)` : "";
  $("settling-count").textContent = S.settling.size ? String(S.settling.size) + more : "none";
}

async function loadUploading() {
  const askedAt = Date.now();
  const page = await getJSON("/v1/activity?kind=uploading&limit=100");
  S.uploads = current("uploads", page.items, askedAt);
  S.queued = page.queued || 0;
  renderUploading();
}

function renderUploading() {
  const rows = [...S.uploads.values()].map((u) => {
    const bar = el("progress", { max: u.total_bytes || 1, value: u.sent_bytes });
    return el("tr", { "data-key": keyOf(u) }, fileCell(u), el("td", {}, bar),
      el("td", { class: "small" }, `${bytes(u.sent_bytes)} / ${bytes(u.total_bytes)}`));
  });
  fill("uploading", rows);
  // Progress events are throttled, and a stalled body sends none: while uploads run, ask
  // for their latest byte counts every second as well.
  if (S.uploads.size) later("uploading", 1000, () => loadUploading().catch(noteError));
  const q = S.queued ? `, ${S.queued} waiting for the rate limit` : "";
  $("uploading-count").textContent = (S.uploads.size ? String(S.uploads.size) : "none") + q;
}

async function loadFinished() {
  const page = await getJSON(`/v1/activity?kind=finished&limit=${FINISHED_MAX}`);
  S.finished = page.items;
  renderFinished();
}

function renderFinished() {
  $("finished-count").textContent = S.finished.length ? "" : "none yet";
  fill("finished", S.finished.map((f) => el("tr", { "data-sha256": f.sha256 }, fileCell(f),
    el("td", { class: "mono asset" }, f.asset_id),
    el("td", { class: "state-" + (f.state || "") }, f.remote_status || f.state || ""),
    el("td", {}, bytes(f.bytes_sent)), el("td", {}, f.ended_at ? ago(f.ended_at) : ""))));
}

async function loadProblems() {
  const [contents, paths] = await Promise.all([
    getJSON("/v1/activity?kind=problems&limit=100"),
    getJSON("/v1/activity?kind=path_problems&limit=100"),
  ]);
  fill("problems", contents.items.map((p) => {
    const cmd = el("code", {}, p.retry);
    const copy = el("button", { type: "button", class: "link", onclick: () => copyText(p.retry, copy) }, "copy");
    return el("tr", { "data-sha256": p.sha256 }, fileCell(p),
      el("td", { class: "state-" + p.state }, p.state), el("td", {}, p.last_error || ""),
      el("td", {}, cmd, " ", copy));
  }));
  fill("path-problems", paths.items.map((p) => el("tr", {}, fileCell(p),
    el("td", { class: "state-" + p.state }, p.state), el("td", {}, p.reason || ""))));
  S.problemRows = contents.items.length + paths.items.length;
  updateProblemCount();
}

function updateProblemCount() {
  const n = (S.problemRows || 0) + $("root-problems").children.length + ($("pause").hidden ? 0 : 1);
  $("problems-count").textContent = n ? String(n) : "";
  $("no-problems").hidden = n > 0;
}

function copyText(text, button) {
  const done = () => { button.textContent = "copied"; setTimeout(() => { button.textContent = "copy"; }, 1500); };
  if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, () => {});
}

// ---------------------------------------------------------------------------- search

function dl(pairs) {
  const list = el("dl", { class: "show" });
  for (const [k, v] of pairs) list.append(el("dt", {}, k), el("dd", {}, v === null || v === undefined ? "-" : String(v)));
  return list;
}

async function search(q) {
  const doc = await getJSON("/v1/search?q=" + encodeURIComponent(q));
  const body = [];
  if (doc.match) {
    const m = doc.match;
    body.push(dl([["sha256", m.sha256], ["state", m.state], ["asset id", m.asset_id],
      ["remote status", m.remote_status], ["size", bytes(m.size)], ["attempts", m.attempt_count],
      ["last error", m.last_error], ["uploaded", m.uploaded_at], ["done", m.done_at]]));
    const paths = (m.paths || []).map((p) => el("li", { class: "mono" }, `${visible(p.path)} (${p.state || "untracked"})`));
    if (paths.length) body.push(el("h3", {}, "paths"), el("ul", {}, ...paths));
    const tries = (m.attempts || []).map((a) => el("tr", {}, el("td", {}, a.started_at || ""),
      el("td", {}, a.mode), el("td", {}, a.outcome || "running"), el("td", { class: "mono" }, a.asset_id || ""),
      el("td", {}, a.error || "")));
    if (tries.length) {
      const head = el("tr", {}, ...["started", "mode", "outcome", "asset id", "error"].map((h) => el("th", {}, h)));
      body.push(el("h3", {}, "attempts"), el("table", {}, el("thead", {}, head), el("tbody", {}, ...tries)));
    }
  } else if (doc.paths && doc.paths.length) {
    body.push(el("p", {}, `${doc.paths.length} path(s) match:`));
    body.push(el("ul", {}, ...doc.paths.map((p) => {
      const link = el("button", { type: "button", class: "link mono", onclick: () => { $("q").value = p.path; search(p.path).catch(noteError); } }, p.path);
      return el("li", {}, link, ` ${p.state}`);
    })));
  } else body.push(el("p", { class: "muted" }, `Nothing in the ledger matches ${visible(q)}.`));
  $("found-body").replaceChildren(...body);
  $("found").hidden = false;
}

// ---------------------------------------------------------------------------- live

function onEvent(type, doc) {
  const key = keyOf(doc);
  switch (type) {
    case "settling":
      GONE.settling.delete(key);  // written to again: it settles anew
      if (!S.settling.has(key)) S.settling.set(key, { ...doc, why: null, since: doc.time });
      renderSettling();
      later("settling", 1000, () => loadSettling().catch(noteError));
      break;
    case "settled":
      gone("settling", key); S.settling.delete(key); renderSettling(); break;
    case "upload_started": case "upload_progress":
      if (type === "upload_started") GONE.uploads.delete(key);
      else if (GONE.uploads.has(key)) break;  // a late progress of an attempt that ended
      S.uploads.set(key, { ...(S.uploads.get(key) || {}), ...doc }); renderUploading(); break;
    case "upload_finished":
      S.finished.unshift({ ...doc, state: "uploaded", remote_status: null, ended_at: doc.time });
      S.finished.length = Math.min(S.finished.length, FINISHED_MAX);
      renderFinished(); break;
    case "upload_ended":
      gone("uploads", key); S.uploads.delete(key); renderUploading(); break;
    case "status_changed":
      for (const f of S.finished) if (f.sha256 === doc.sha256) { f.remote_status = doc.status; f.state = doc.status === "SUCCESS" ? "done" : f.state; }
      renderFinished(); break;
    case "problem":
      later("problems", 300, () => loadProblems().catch(noteError)); break;
    default: break;
  }
  later("status", 1000, () => loadStatus().catch(noteError));
  // The counts are cached for 5 s on the daemon's side: once events stop, ask once more
  // after that, so the view ends on counts taken after the last change.
  settle("status-final", 5500, () => loadStatus().catch(noteError));
}

const EVENT_TYPES = ["settling", "settled", "hashed", "upload_started", "upload_progress",
  "upload_finished", "upload_ended", "status_changed", "problem"];

function follow() {
  if (!window.EventSource) { startPolling(); return; }
  const es = new EventSource("/v1/events");
  S.es = es;
  es.addEventListener("hello", (e) => {
    const hello = JSON.parse(e.data);
    S.errors = 0; setLive(true);
    if (!hello.complete) loadAll().catch(noteError);
  });
  for (const t of EVENT_TYPES) es.addEventListener(t, (e) => onEvent(t, JSON.parse(e.data)));
  es.addEventListener("dropped", () => { loadAll().catch(noteError); });
  // The browser reconnects by itself after a dropped connection (readyState CONNECTING); it
  // gives up for good on an answer that is not a stream (CLOSED). Poll then, and also after
  // three failed reconnects in a row (a proxy that holds the stream back, say).
  es.onerror = () => {
    setLive(false);
    S.errors += 1;
    if (es.readyState === EventSource.CLOSED || S.errors >= 3) { es.close(); startPolling(); }
  };
}

function setLive(on) {
  S.live = on;
  $("link").textContent = on ? "live" : (S.polling ? "polling every 5 s" : "reconnecting");
  if (on && S.polling) { clearInterval(S.polling); S.polling = null; }
}

function startPolling() {
  if (!S.polling) S.polling = setInterval(() => loadAll().catch(noteError), 5000);
  setLive(false);
  // Try the stream again now and then (every time it fails, 30 s later).
  clearTimeout(S.timers.retry);
  S.timers.retry = setTimeout(() => { if (!S.live) follow(); }, 30000);
}

function noteError(err) {
  $("link").textContent = "cannot reach the daemon (" + visible(err.message || err) + ")";
}

async function loadStatus() { renderStatus(await getJSON("/v1/status")); }

async function loadAll() {
  await Promise.all([loadStatus(), loadSettling(), loadUploading(), loadFinished(), loadProblems()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("q").value.trim();
    if (q) search(q).catch(noteError);
  });
  $("found-close").addEventListener("click", () => { $("found").hidden = true; });
  loadAll().catch(noteError).finally(follow);
  setInterval(() => { loadStatus().catch(noteError); if (!S.live) loadUploading().catch(noteError); }, 10000);
});
