// The page talks to the same JSON API everyone else uses; no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 24;
let currentFile = null;
let currentLabel = null;
let itemsOffset = 0;
let openItemId = null;

function apiKeyHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...apiKeyHeaders(), ...(options.headers || {}) },
  });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return body;
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = !text;
}

function thumb(item, caption, extraClass = "") {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = `thumb ${extraClass}`;
  button.setAttribute("aria-label", `${item.label}${caption ? ", " + caption : ""}: open item ${item.id}`);
  const img = document.createElement("img");
  img.src = item.image_url;
  img.alt = item.label;
  img.loading = "lazy";
  const text = document.createElement("span");
  text.className = "caption";
  text.innerHTML = "";
  const strong = document.createElement("strong");
  strong.textContent = item.label;
  text.append(strong);
  if (caption) {
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = caption;
    text.append(" ", score);
  }
  button.append(img, text);
  button.addEventListener("click", () => openItem(item.id));
  li.append(button);
  return li;
}

async function searchWith(file) {
  currentFile = file;
  showMessage("");
  $("query").hidden = false;
  $("query-image").src = URL.createObjectURL(file);
  $("prediction").textContent = "…";
  $("prediction-score").textContent = "";
  $("prediction-why").textContent = "";
  $("this-is").hidden = true;
  $("results").replaceChildren();
  $("results-title").hidden = true;
  const form = () => { const f = new FormData(); f.append("file", file); return f; };
  try {
    const [found, guess] = await Promise.all([
      api("/search?k=5", { method: "POST", body: form() }),
      api("/classify", { method: "POST", body: form() }),
    ]);
    $("results-title").hidden = false;
    $("results").replaceChildren(...found.results.map((r) => thumb(r, r.score.toFixed(3))));
    $("prediction").textContent = guess.label;
    const confidence = guess.confidence === null ? ""
      : `confidence ${Math.round(guess.confidence * 100)}%, `;
    $("prediction-score").textContent = `(${confidence}score ${guess.score.toFixed(3)}, ` +
      `${guess.margin.toFixed(3)} ahead of the next label)`;
    if (guess.closest_label) {
      const nearest = guess.matches.map((m) => `item ${m.id} (${m.score.toFixed(3)})`).join(", ");
      $("prediction-why").textContent = (guess.label === "unknown"
        ? `Closest label: ${guess.closest_label}. ` : "") + `Its best matches: ${nearest}.`;
      // One click enrols the photo under the closest label.
      $("this-is").textContent = `This is ${guess.closest_label}: enrol it`;
      $("this-is").dataset.label = guess.closest_label;
      $("this-is").hidden = false;
    }
    if (guess.label !== "unknown") $("label-input").value = guess.label;
  } catch (error) {
    $("query").hidden = true;
    showMessage(`Could not search with this file: ${error.message}`);
  }
}

async function enroll(event) {
  event.preventDefault();
  if (!currentFile) return;
  const label = $("label-input").value.trim();
  const body = new FormData();
  body.append("file", currentFile);
  body.append("label", label);
  try {
    const result = await api("/enroll", { method: "POST", body });
    const item = result.items[0];
    const note = item.warnings.length ? ` Note: ${item.warnings.join("; ")}.` : "";
    showMessage((item.created ? `Enrolled as "${item.label}" (item ${item.id}).`
                              : `Already in the gallery as "${item.label}" (item ${item.id}).`)
                + note, "ok");
    await loadLabels();
    await showLabel(item.label);
  } catch (error) {
    showMessage(`Could not enrol: ${error.message}`);
  }
}

async function loadLabels() {
  const data = await api("/labels");
  $("label-options").replaceChildren(...data.labels.map((l) => new Option(l.label)));
  $("labels").replaceChildren(...data.labels.map((l) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chip";
    button.textContent = `${l.label} (${l.count})`;
    button.setAttribute("aria-pressed", String(l.label === currentLabel));
    button.addEventListener("click", () => showLabel(l.label));
    li.append(button);
    return li;
  }));
}

async function showLabel(label, append = false) {
  currentLabel = label;
  itemsOffset = append ? itemsOffset + PAGE : 0;
  const query = new URLSearchParams({ label, offset: itemsOffset, limit: PAGE });
  try {
    const page = await api(`/items?${query}`);
    $("items-title").hidden = false;
    $("items-title").textContent = `${label}: ${page.total} photo${page.total === 1 ? "" : "s"}`;
    const nodes = page.items.map((item) => thumb(item, ""));
    if (append) $("items").append(...nodes); else $("items").replaceChildren(...nodes);
    $("more-items").hidden = itemsOffset + PAGE >= page.total;
    document.querySelectorAll("#labels .chip").forEach((chip) => {
      chip.setAttribute("aria-pressed", String(chip.textContent.startsWith(`${label} (`)));
    });
  } catch (error) {
    showMessage(error.message);
  }
}

async function openItem(id) {
  try {
    const item = await api(`/items/${id}`);
    openItemId = id;
    $("item-title").textContent = `${item.label} — item ${item.id}`;
    $("item-image").src = item.image_url;
    $("item-image").alt = item.label;
    const when = new Date(item.created_at * 1000).toLocaleString();
    $("item-meta").textContent = `${item.width}×${item.height}, ${item.source}, added ${when}`;
    $("item-dialog").showModal();
  } catch (error) {
    showMessage(error.message);
  }
}

async function deleteOpenItem() {
  if (openItemId === null) return;
  try {
    await api(`/items/${openItemId}`, { method: "DELETE" });
    $("item-dialog").close();
    showMessage(`Deleted item ${openItemId}.`, "ok");
    openItemId = null;
    await loadLabels();
    if (currentLabel) await showLabel(currentLabel);
  } catch (error) {
    $("item-dialog").close();
    showMessage(`Could not delete: ${error.message}`);
  }
}

async function watchReadiness() {
  const status = $("status");
  try {
    const response = await fetch("/readyz");
    const body = await response.json();
    if (response.ok) {
      status.textContent = `Ready: ${body.gallery_items} photos in the gallery.`;
      status.className = "status ready";
      await loadLabels();
      return;
    }
    status.textContent = `Not ready yet: ${body.detail}`;
    status.className = "status waiting";
  } catch {
    status.textContent = "The service cannot be reached.";
    status.className = "status waiting";
  }
  setTimeout(watchReadiness, 2000);
}

function wire() {
  const pick = (input) => input.addEventListener("change", () => {
    if (input.files.length) searchWith(input.files[0]);
    input.value = "";
  });
  pick($("file-input"));
  pick($("camera-input"));
  const zone = $("dropzone");
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file-input").click(); }
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) searchWith(e.dataTransfer.files[0]);
  });
  $("enroll-form").addEventListener("submit", enroll);
  $("this-is").addEventListener("click", (event) => {
    $("label-input").value = $("this-is").dataset.label;
    enroll(event);
  });
  $("delete-item").addEventListener("click", deleteOpenItem);
  $("more-items").addEventListener("click", () => showLabel(currentLabel, true));
  const key = $("api-key");
  key.value = sessionStorage.getItem("apiKey") || "";
  key.addEventListener("change", () => sessionStorage.setItem("apiKey", key.value));
  watchReadiness();
}

wire();
