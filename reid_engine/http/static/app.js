// reid-engine web page: query by image or by a result, filters, ranked grid, track time line.
// Plain DOM, no framework, no network access beyond this server. Text is set with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, query: null, previewUrl: null, searches: 0 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);  // CSSOM: allowed by the page's CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtTime(ts) {
  if (ts === null || ts === undefined) return null;
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(isError));
}

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

// -- index info and filter controls --------------------------------------------------------------
async function loadInfo() {
  const info = await api("/info");
  state.info = info;
  const cams = Object.keys(info.cameras || {});
  const range = info.time_range && info.time_range[0] !== null
    ? `, ${fmtTime(info.time_range[0])} – ${fmtTime(info.time_range[1])} UTC` : "";
  $("index-info").textContent =
    `${info.path}: ${info.crops} crops, ${cams.length} cameras` +
    (info.tracks ? `, ${info.tracks} tracks` : "") + range + ` · ${info.encoder}`;
  const camBox = $("cameras");
  camBox.replaceChildren(...cams.map((c) => el("label", {},
    el("input", { type: "checkbox", name: "camera", value: c, checked: true }), `${c || "(none)"} (${info.cameras[c]})`)));
  $("rerank").replaceChildren(...info.rerank_presets.map((p) =>
    el("option", { value: p, selected: p === "default" }, p)));
  if (info.attributes) {
    $("attr-box").hidden = false;
    $("attributes").replaceChildren(...info.attribute_terms.map((t) => el("label", {},
      el("input", { type: "checkbox", name: "attr", value: t }), t.replace(/_/g, " "))));
    for (const mode of info.fusion_modes.filter((m) => m !== "appearance")) $("fusion").append(el("option", { value: mode }, mode));
  }
  if (!info.tracks) $("by-track").disabled = true;
}

function filterFields() {
  const f = {};
  const all = [...document.querySelectorAll('input[name="camera"]')];
  const on = all.filter((c) => c.checked).map((c) => c.value);
  const off = all.filter((c) => !c.checked).map((c) => c.value);
  // crops with no camera ("(none)", value "") are kept by leaving the other cameras out, never by naming ""
  if (on.length && off.length) {
    if (on.includes("")) f.exclude_cameras = off; else f.cameras = on;
  }
  if (!on.length && all.length) f.cameras = ["\u0000none"];  // nothing selected: nothing matches
  const tf = $("time-from").value, tt = $("time-to").value;
  if (tf) f.time_from = tf + (tf.length === 16 ? ":00" : "") + "Z";
  if (tt) f.time_to = tt + (tt.length === 16 ? ":00" : "") + "Z";
  const attrs = [...document.querySelectorAll('input[name="attr"]:checked')].map((c) => c.value);
  if (attrs.length) f.attributes = attrs;
  f.k = Math.max(1, Math.min(500, parseInt($("k").value || "24", 10)));
  f.by_track = $("by-track").checked;
  const beam = parseInt($("ef-search").value, 10);
  if (beam > 0) f.ef_search = Math.min(4096, beam);
  if (!f.by_track) {
    f.rerank = $("rerank").value || null;
    if ($("fusion").value) f.fusion = $("fusion").value;
    const pool = parseInt($("pool").value, 10);
    if (pool > 0) f.pool = Math.min(10000, pool);
  } else {
    delete f.attributes;
  }
  return f;
}

// -- searching ----------------------------------------------------------------------------------------
async function runQuery() {
  const q = state.query;
  if (!q) return;
  const fields = filterFields();
  let options;
  if (q.kind === "upload") {
    const form = new FormData();
    form.append("images", q.file, q.file.name);
    for (const [key, value] of Object.entries(fields)) {
      if (value === null || value === undefined) continue;
      if (Array.isArray(value)) value.forEach((v) => form.append(key, v));
      else form.append(key, String(value));
    }
    options = { method: "POST", body: form };
  } else {
    options = { method: "POST", headers: { "Content-Type": "application/json" },
                body: JSON.stringify({ ...fields, crop_ids: [q.id] }) };
  }
  setStatus(`searching for ${q.label}…`);
  const ticket = ++state.searches;  // answers can arrive out of order: only the latest search is shown
  try {
    const doc = await api("/query", options);
    if (ticket === state.searches) render(doc, q);
  } catch (err) {
    if (ticket !== state.searches) return;
    $("grid").replaceChildren();
    setStatus(err.message, true);
  }
}

function searchUpload(file) {
  if (!file) return;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  showPreview(state.previewUrl, `query: ${file.name}`);
  state.query = { kind: "upload", file, label: file.name };
  runQuery();
}

function searchCrop(hit) {
  showPreview(hit.image_url, `query: crop ${hit.id}`);
  state.query = { kind: "crop", id: hit.id, label: `crop ${hit.id}` };
  window.scrollTo({ top: 0, behavior: "instant" in window ? "instant" : "auto" });
  runQuery();
}

function showPreview(url, text) {
  const img = $("query-preview");
  img.src = url;
  img.alt = text;
  img.hidden = false;
  $("drop-text").textContent = text;
}

// -- results ---------------------------------------------------------------------------------------------
function render(doc, q) {
  const res = doc.results[0] || { hits: [], tracks: [], kind: "crops" };
  const items = res.kind === "tracks" ? res.tracks : res.hits;
  const what = res.kind === "tracks" ? "appearances" : "results";
  setStatus(`${items.length} ${what} for ${q.label} in ${doc.seconds.toFixed(2)} s`);
  $("grid").replaceChildren(...items.map((item) => res.kind === "tracks" ? trackCard(item) : hitCard(item)));
}

function metaLines(h) {
  const lines = [];
  if (h.pid !== null && h.pid !== undefined) lines.push(el("div", { class: "who" }, `person ${h.pid}`));
  lines.push(el("div", {}, `camera ${h.camera ?? "-"}`));
  const t = fmtTime(h.timestamp);
  if (t) lines.push(el("div", {}, t));
  else if (h.frame !== null && h.frame !== undefined) lines.push(el("div", {}, `frame ${h.frame}`));
  if (h.track) lines.push(el("div", { class: "track" }, `track ${h.track.split("/").pop()}`));
  return lines;
}

function hitCard(h) {
  const links = el("div", { class: "links" });
  if (h.track) links.append(el("button", { type: "button", onclick: () => openAppearances(h) }, "appearances"));
  if (h.frame_url) links.append(el("button", { type: "button", onclick: () => openFrame(h) }, "frame"));
  return el("article", { class: "card", "data-id": h.id, "data-pid": h.pid ?? "" },
    el("button", { class: "thumb", type: "button", title: "Search from this crop", onclick: () => searchCrop(h) },
      el("img", { src: h.image_url, alt: `crop ${h.id}`, loading: "lazy" })),
    el("div", { class: "meta" },
      el("span", { class: "rank" }, `#${h.rank}`), el("span", { class: "dist" }, h.distance.toFixed(3)),
      ...metaLines(h), links));
}

function trackCard(t) {
  const best = t.best;
  const span = t.start_time !== null ? `${fmtTime(t.start_time)} +${Math.round(t.end_time - t.start_time)} s`
    : `frames ${t.start_frame}–${t.end_frame}`;
  return el("article", { class: "card", "data-id": best.id, "data-track": t.track },
    el("button", { class: "thumb", type: "button", title: "Search from this appearance", onclick: () => searchCrop(best) },
      el("img", { src: best.image_url, alt: `track ${t.track}`, loading: "lazy" })),
    el("div", { class: "meta" },
      el("span", { class: "rank" }, `#${t.rank}`), el("span", { class: "dist" }, t.distance.toFixed(3)),
      el("div", {}, `camera ${t.camera ?? "-"}`), el("div", {}, span),
      el("div", { class: "track" }, `track ${t.track.split("/").pop()} · ${t.n_frames} frames`),
      el("div", { class: "links" }, el("button", { type: "button", onclick: () => openTrack(t.track) }, "track"),
        el("button", { type: "button", onclick: () => openAppearances(best) }, "appearances"))));
}

// -- track view: a person's appearances across cameras on a time line -------------------------------------------
function openPanel(title) {
  $("track-title").textContent = title;
  $("track-status").textContent = "loading…";
  $("timeline").replaceChildren();
  $("track-detail").replaceChildren();
  $("track-view").hidden = false;
}

async function openAppearances(hit) {
  openPanel(`Appearances of the person in crop ${hit.id}`);
  try {
    const doc = await api("/query", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ crop_ids: [hit.id], by_track: true, k: 20 }) });
    const tracks = doc.results[0].tracks;
    $("track-status").textContent = tracks.length
      ? `${tracks.length} appearances, most similar first; bars show when each was on camera`
      : "no footage tracks in this index";
    drawTimeline(tracks);
    if (hit.track) openTrack(hit.track, true);
  } catch (err) {
    $("track-status").textContent = err.message;
  }
}

function drawTimeline(tracks) {
  if (!tracks.length) return;
  const timed = tracks.every((t) => t.start_time !== null);
  const start = (t) => timed ? t.start_time : (t.start_offset ?? t.start_frame);
  const end = (t) => timed ? t.end_time : (t.end_offset ?? t.end_frame);
  const lo = Math.min(...tracks.map(start)), hi = Math.max(...tracks.map(end));
  const width = Math.max(hi - lo, 1e-6);
  const lanes = new Map();
  for (const t of tracks) {
    const cam = t.camera ?? "-";
    if (!lanes.has(cam)) lanes.set(cam, []);
    lanes.get(cam).push(t);
  }
  const rows = [];
  for (const [cam, list] of lanes) {
    // appearances that overlap in time go on separate sub-rows of their camera's lane
    const ends = [];
    const placed = [...list].sort((a, b) => start(a) - start(b)).map((t) => {
      let row = ends.findIndex((e) => e <= start(t));
      if (row < 0) { row = ends.length; ends.push(0); }
      ends[row] = end(t) + width * 0.06;  // room for the thumbnail of the next one
      return [t, row];
    });
    const line = el("div", { class: "track-line", style: { height: `${ends.length * 54 + 6}px` } });
    for (const [t, row] of placed) {
      const left = ((start(t) - lo) / width) * 92;
      const w = Math.max(((end(t) - start(t)) / width) * 92, 3);
      line.append(el("div", { class: "seg", title: `track ${t.track} · distance ${t.distance.toFixed(3)}`,
        "data-track": t.track,
        style: { left: `${left.toFixed(2)}%`, width: `${w.toFixed(2)}%`, top: `${row * 54 + 6}px` },
        onclick: () => openTrack(t.track) },
        el("img", { src: t.best.image_url, alt: "" }), `#${t.rank}`));
    }
    rows.push(el("div", { class: "lane" }, el("div", { class: "cam" }, cam), line));
  }
  const label = (v) => timed ? fmtTime(v).slice(11) : `${v.toFixed(1)}`;
  $("timeline").replaceChildren(...rows, el("div", { class: "axis" }, el("span", {}, label(lo)), el("span", {}, label(hi))));
}

async function openTrack(key, keepPanel) {
  if (!keepPanel && $("track-view").hidden) openPanel(`Track ${key}`);
  try {
    const t = await api(`/tracks/${key.split("/").map(encodeURIComponent).join("/")}`);
    const when = t.start_time !== null ? `${fmtTime(t.start_time)} – ${fmtTime(t.end_time).slice(11)} UTC`
      : `frames ${t.start_frame}–${t.end_frame}`;
    const strip = el("div", { class: "strip" }, ...t.crops.map((c) => el("figure", {},
      el("img", { src: c.image_url, alt: `crop ${c.id}`, title: "Search from this crop", onclick: () => { closePanel(); searchCrop({ ...c, rank: 0 }); } }),
      el("figcaption", {}, c.timestamp !== null ? fmtTime(c.timestamp).slice(11) : `frame ${c.frame}`))));
    $("track-detail").replaceChildren(
      el("h3", {}, `Track ${t.key.split("/").pop()} · camera ${t.camera ?? "-"} · ${when} · ${t.n_frames} frames`),
      strip, el("img", { class: "frame", src: t.frame_url, alt: `frame of track ${t.key}` }));
    if ($("track-status").textContent === "loading…") $("track-status").textContent = "";
  } catch (err) {
    $("track-status").textContent = err.message;
  }
}

function openFrame(hit) {
  openPanel(`Frame of crop ${hit.id}`);
  $("track-status").textContent = `camera ${hit.camera ?? "-"}${hit.frame !== null ? ", frame " + hit.frame : ""}`;
  $("track-detail").replaceChildren(el("img", { class: "frame", src: hit.frame_url, alt: `frame of crop ${hit.id}` }));
}

function closePanel() { $("track-view").hidden = true; }

// -- wiring -------------------------------------------------------------------------------------------------------
function wire() {
  if (window.matchMedia("(max-width: 720px)").matches) $("filter-box").open = false;
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchUpload(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => searchUpload(e.target.files[0]));
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); runQuery(); });
  $("filters").addEventListener("change", () => runQuery());
  $("track-close").addEventListener("click", closePanel);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closePanel(); });
}

wire();
loadInfo().catch((err) => { $("index-info").textContent = `cannot read the index: ${err.message}`; });
