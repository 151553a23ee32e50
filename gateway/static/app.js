// The VisionAI try-it page: no framework, no build step, no inline code (the page's CSP forbids it).
"use strict";

const KEY_STORAGE = "visionai.apiKey"; // sessionStorage: this tab only, gone when it closes
const body = document.body;
const maxBytes = Number(body.dataset.maxBytes) || 10 * 1024 * 1024;
const historyOn = body.dataset.history === "on";
const $ = (id) => document.getElementById(id);

// What to tell the user for each refusal, and what to do about it.
const MESSAGES = {
  401: "The API key was refused. Check it (no spaces), enter it again above and retry.",
  413: "This image is too large for the gateway (at most " + megabytes(maxBytes) +
       " and 40 megapixels). Resize or compress it, then try again.",
  415: "This file is not an image the gateway reads. Use a JPEG, PNG, WebP, GIF or BMP.",
  429: "Too many requests for this API key. Wait RETRY and try again.",
  503: "The service is busy or the model is not ready. Wait RETRY and try again.",
  504: "The model did not answer in time. Try again in a moment.",
};

function megabytes(bytes) {
  return (bytes / (1024 * 1024)).toFixed(0) + " MB";
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function showKeyStatus() {
  $("key-status").textContent = apiKey()
    ? "A key is set for this tab."
    : "Enter the API key you were given (make run prints one).";
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function retryText(response) {
  const seconds = Number(response.headers.get("Retry-After"));
  return seconds > 0 ? seconds + (seconds === 1 ? " second" : " seconds") : "a few seconds";
}

function describeError(response, payload) {
  const template = MESSAGES[response.status];
  if (template) {
    return template.replace("RETRY", retryText(response));
  }
  const detail = payload && payload.message ? payload.message : "The request failed.";
  return detail + " (HTTP " + response.status + ")";
}

function showPredictions(answer, elapsedMs) {
  const list = $("predictions");
  list.replaceChildren();
  for (const prediction of answer.predictions) {
    const item = document.createElement("li");
    const label = document.createElement("div");
    label.className = "label";
    const name = document.createElement("span");
    name.textContent = prediction.label;
    const percent = document.createElement("span");
    percent.textContent = prediction.confidence.toFixed(1) + " %";
    label.append(name, percent);
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = 100;
    meter.value = prediction.confidence;
    meter.setAttribute("aria-label", prediction.label + ": " + prediction.confidence.toFixed(1) + " percent");
    item.append(label, meter);
    list.append(item);
  }
  setStatus("It looks like: " + answer.label + " (" + answer.confidence.toFixed(1) + " %).", false);
  const cached = answer.cached ? ", from the cache" : "";
  $("answered-by").textContent = "Answered by " + answer.model.name + " version " +
    answer.model.version + " in " + Math.round(elapsedMs) + " ms" + cached + ".";
}

async function analyze(file) {
  if (!file) {
    return;
  }
  const preview = $("preview");
  if (preview.src) {
    URL.revokeObjectURL(preview.src);
  }
  preview.src = URL.createObjectURL(file);
  preview.alt = "The image being analyzed: " + (file.name || "pasted image");
  preview.hidden = false;
  $("predictions").replaceChildren();
  $("answered-by").textContent = "";
  if (!apiKey()) {
    setStatus("Enter your API key first (above), then choose the image again.", true);
    $("api-key").focus();
    return;
  }
  if (file.size > maxBytes) {
    // The gateway would refuse it with 413; do not upload megabytes to learn that.
    setStatus(MESSAGES[413], true);
    return;
  }
  const list = $("predictions");
  list.setAttribute("aria-busy", "true");
  setStatus("Analyzing…", false);
  const form = new FormData();
  form.append("image", file, file.name || "image");
  const started = performance.now();
  try {
    const response = await fetch("/analyze", {
      method: "POST",
      headers: { "X-API-Key": apiKey() },
      body: form,
    });
    const payload = await response.json().catch(() => null);
    if (!response.ok || !payload) {
      setStatus(describeError(response, payload), true);
      return;
    }
    showPredictions(payload, performance.now() - started);
    loadRecent();
  } catch (error) {
    setStatus("The gateway could not be reached. Check that it is running, then try again.", true);
  } finally {
    list.setAttribute("aria-busy", "false");
  }
}

async function loadRecent() {
  if (!historyOn || !apiKey()) {
    return;
  }
  try {
    const response = await fetch("/analyses?limit=5", { headers: { "X-API-Key": apiKey() } });
    if (!response.ok) {
      return;
    }
    const payload = await response.json();
    const list = $("recent");
    list.replaceChildren();
    for (const row of payload.analyses) {
      const item = document.createElement("li");
      const when = new Date(row.created_at).toLocaleString();
      // The listing's model is {name, version} (GET /analyses), as in an /analyze answer.
      item.textContent = row.label + " (" + Number(row.confidence).toFixed(1) + " %), " +
        row.model.name + " v" + row.model.version + ", " + when;
      list.append(item);
    }
    $("recent-section").hidden = payload.analyses.length === 0;
  } catch (error) {
    // The history is a convenience: the page works without it.
  }
}

function firstImage(items) {
  for (const item of items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) {
      return item.getAsFile();
    }
  }
  return null;
}

function setUp() {
  showKeyStatus();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) {
      sessionStorage.setItem(KEY_STORAGE, key);
    }
    $("api-key").value = "";
    showKeyStatus();
    loadRecent();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("recent-section").hidden = true;
    showKeyStatus();
  });
  for (const id of ["file-input", "camera-input"]) {
    $(id).addEventListener("change", (event) => {
      analyze(event.target.files[0]);
      event.target.value = ""; // choosing the same file again still analyzes it
    });
  }
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    analyze(event.dataTransfer.files[0]);
  });
  // A button: a click (or tap) opens the file chooser, as Enter and Space do.
  zone.addEventListener("click", () => $("file-input").click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file-input").click();
    }
  });
  document.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData && event.clipboardData.items);
    if (file) {
      analyze(file);
    }
  });
  loadRecent();
}

setUp();
