// The /vision gallery: the newest images with their prompt, seed, model and time; a click opens the
// image, Select shows its imageRef. It refreshes when the service's finished-job count changes.
// With an API key, open /vision#key=YOUR_KEY (kept in this browser's localStorage).
"use strict";

const LIMIT = 36;
const REFRESH_MS = 2000;
const gallery = document.getElementById("gallery");
const statusLine = document.getElementById("status");
const objectUrls = new Map();
let shownKeys = "";
let finishedCount = null;

function apiKey() {
  const match = location.hash.match(/key=([^&]+)/);
  if (match) {
    localStorage.setItem("kitty-coreml-api-key", decodeURIComponent(match[1]));
  }
  return localStorage.getItem("kitty-coreml-api-key");
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status} ${detail}`);
  }
  return response;
}

// Images are fetched with the key header and shown from blob URLs: an <img src> cannot send headers.
async function imageUrl(key) {
  if (!objectUrls.has(key)) {
    const blob = await (await api(`/api/images/file/${encodeURI(key)}`)).blob();
    objectUrls.set(key, URL.createObjectURL(blob));
  }
  return objectUrls.get(key);
}

function text(tag, className, content) {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = content;
  return node;
}

function card(item) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.key = item.key;
  const link = document.createElement("a");
  link.target = "_blank";
  link.rel = "noopener";
  const img = document.createElement("img");
  img.alt = item.prompt || item.key;
  link.appendChild(img);
  imageUrl(item.key).then((url) => { img.src = url; link.href = url; })
    .catch((error) => { img.alt = `cannot load: ${error.message}`; });
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.appendChild(text("p", "prompt", item.prompt || "(no prompt recorded)"));
  const when = item.created || item.last_modified;
  const details = [`seed ${item.seed ?? "?"}`, item.model || "?", when ? new Date(when).toLocaleString() : ""];
  meta.appendChild(text("div", "details", details.filter(Boolean).join(" · ")));
  const select = text("button", "select", "Select");
  select.type = "button";
  select.addEventListener("click", () => selectImage(item.key));
  li.append(link, meta, select);
  return li;
}

async function selectImage(key) {
  const answer = await (await api("/api/images/select", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ key }),
  })).json();
  document.getElementById("image-ref").textContent = JSON.stringify(answer.imageRef, null, 2);
  document.getElementById("selected").showModal();
}

async function load() {
  const { items } = await (await api(`/api/images/gallery?limit=${LIMIT}`)).json();
  const keys = items.map((item) => item.key).join("\n");
  if (keys !== shownKeys) {
    shownKeys = keys;
    gallery.replaceChildren(...items.map(card));
  }
  document.getElementById("empty").hidden = items.length > 0;
  return items.length;
}

async function refresh() {
  try {
    const stats = await (await api("/api/images/stats")).json();
    const finished = (stats.finished || 0) + (stats.failed || 0);
    if (finished !== finishedCount) {
      finishedCount = finished;
      const shown = await load();
      statusLine.textContent = `${shown} image(s) · ${stats.queued || 0} queued · ${stats.started || 0} running`;
    } else {
      statusLine.textContent = `${gallery.children.length} image(s) · ${stats.queued || 0} queued · ${stats.started || 0} running`;
    }
  } catch (error) {
    statusLine.textContent = `cannot reach the service: ${error.message}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
