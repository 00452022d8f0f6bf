// The page of `oculi serve`: shows the model, sends each dropped or chosen image to /v1/predict (one
// request per image, so results come as they are ready and the server batches them together), draws
// the top-k probabilities and, when asked, the Grad-CAM overlay from /v1/explain.
// Names from the model or the user's files go in as text (textContent), never as HTML.
"use strict";

const MAX_TRIES = 4; // a busy server (503) is asked again after its Retry-After
const state = { model: null, topK: 5, cards: new Map() }; // card element -> {file, label}

const $ = (selector) => document.querySelector(selector);

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

const percent = (p) => `${(100 * p).toFixed(p >= 0.9995 || p < 0.0005 ? 0 : 1)}%`;

// ---------------------------------------------------------------- the model

async function loadModel() {
  const response = await fetch("/v1/model");
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  const model = await response.json();
  state.model = model;
  state.topK = Math.min(5, model.classes.length);
  $("#model-name").textContent = model.name;
  $("#model-summary").textContent = summary(model);
  showMetrics(model.metrics);
  for (const name of model.classes) $("#classes").append(element("li", "", name));
  if (!model.grad_cam) {
    $("#show-cam").disabled = true;
    $("#cam-label").textContent = "Grad-CAM: not available for this model (no convolutional stages)";
  }
}

function summary(model) {
  const p = model.preprocessing;
  const parts = [`${model.classes.length} classes`, `input ${p.image_size[1]}×${p.image_size[0]} ${p.channels === 1 ? "gray" : "RGB"}`];
  if (model.data) parts.push(`trained on ${model.data}`);
  return parts.join(" · ");
}

function showMetrics(metrics) {
  const tiles = [];
  if (metrics && metrics.accuracy != null) {
    const split = metrics.split || "test";
    tiles.push([`${split} accuracy`, percent(metrics.accuracy)]);
    if (metrics.top_k_accuracy != null) tiles.push([`${split} top-k accuracy`, percent(metrics.top_k_accuracy)]);
    if (metrics.log_loss != null) tiles.push([`${split} log loss`, metrics.log_loss.toFixed(3)]);
  } else {
    tiles.push(["accuracy", "not measured"]);
  }
  if (metrics && metrics.epochs_run != null) tiles.push(["epochs", String(metrics.epochs_run)]);
  for (const [name, value] of tiles) {
    const tile = element("div", "tile");
    tile.append(element("dt", "", name), element("dd", "", value));
    $("#metrics").append(tile);
  }
}

// ---------------------------------------------------------------- images in, cards out

function addFiles(files) {
  for (const file of files) {
    const card = newCard(file);
    state.cards.set(card, { file, label: null });
    $("#results").append(card);
    classify(card);
  }
  $("#clear").hidden = state.cards.size === 0;
}

function newCard(file) {
  const card = element("article", "card");
  const pictures = element("div", "pictures");
  pictures.append(figure("photo", URL.createObjectURL(file), file.name, "your image"));
  const title = element("h3", "file", file.name || "image");
  title.title = file.name;
  card.append(pictures, title, element("p", "status", "Classifying…"), element("ol", "bars"));
  return card;
}

function figure(className, src, alt, caption) {
  const fig = element("figure", className);
  const img = element("img");
  img.alt = alt;
  // Small images (8x8 digits) are shown as crisp blocks rather than a blur.
  img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 128));
  img.src = src;
  fig.append(img, element("figcaption", "", caption));
  return fig;
}

async function classify(card) {
  const entry = state.cards.get(card);
  const answer = await send(`/v1/predict?top_k=${state.topK}`, entry.file);
  if (!answer.ok) return showError(card, answer.message);
  const prediction = (await answer.response.json()).predictions[0];
  if (prediction.error) return showError(card, prediction.error.message); // this file could not be read
  entry.label = prediction.labels ? prediction.top_label : prediction.label; // Grad-CAM explains one class
  card.querySelector(".status").textContent = prediction.labels // a multi-label model: its whole label set
    ? (prediction.labels.length ? prediction.labels.join(", ") : "no label")
    : `${prediction.label} (${percent(prediction.probability)})`;
  showBars(card, prediction.top_k, prediction.labels);
  if ($("#show-cam").checked) explain(card);
}

function showBars(card, topK, labels) {
  // One label: the first bar is the answer. Label sets: every bar of a label in the set is ticked.
  const bars = card.querySelector(".bars");
  bars.replaceChildren();
  bars.classList.toggle("sets", Boolean(labels));
  topK.forEach((item, i) => {
    const ticked = labels ? labels.includes(item.label) : i === 0;
    const row = element("li", ticked ? "best" : "");
    if (labels) row.title = ticked ? "in the label set" : "below its threshold";
    const track = element("span", "track");
    const fill = element("span", "fill");
    fill.style.width = `${(100 * item.probability).toFixed(1)}%`;
    track.append(fill);
    row.append(element("span", "name", item.label), track, element("span", "value", percent(item.probability)));
    bars.append(row);
  });
}

async function explain(card) {
  const entry = state.cards.get(card);
  if (!entry || !entry.label || card.querySelector(".cam")) return;
  const answer = await send("/v1/explain", entry.file);
  if (!answer.ok) return showError(card, `Grad-CAM: ${answer.message}`, false);
  const url = URL.createObjectURL(await answer.response.blob());
  const cam = figure("cam", url, `Grad-CAM of ${entry.file.name}`, `Grad-CAM: ${entry.label}`);
  cam.hidden = !$("#show-cam").checked;
  card.querySelector(".pictures").append(cam);
}

function showError(card, message, failed = true) {
  const status = card.querySelector(".status");
  status.textContent = message;
  status.classList.add("error");
  if (failed) card.classList.add("failed");
}

// POST one file; a busy or warming-up server (503) is asked again after the wait it names.
async function send(url, file) {
  for (let attempt = 1; ; attempt++) {
    const form = new FormData();
    form.append("files", file, file.name);
    let response;
    try {
      response = await fetch(url, { method: "POST", body: form });
    } catch (err) {
      return { ok: false, message: "the server cannot be reached" };
    }
    if (response.ok) return { ok: true, response };
    if (response.status === 503 && attempt < MAX_TRIES) {
      const seconds = Number(response.headers.get("Retry-After")) || 1;
      await new Promise((resolve) => setTimeout(resolve, 1000 * seconds));
      continue;
    }
    return { ok: false, message: await errorMessage(response) };
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error.details && body.error.details.length === 1 ? body.error.details[0].message : body.error.message;
  } catch (err) {
    return `the server answered ${response.status}`;
  }
}

// ---------------------------------------------------------------- controls

function setUp() {
  const drop = $("#drop");
  $("#picker").addEventListener("change", (event) => {
    addFiles([...event.target.files]);
    event.target.value = ""; // choosing the same file again is a new request
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles([...event.dataTransfer.files]);
  });
  $("#show-cam").addEventListener("change", (event) => {
    for (const card of state.cards.keys()) {
      const cam = card.querySelector(".cam");
      if (cam) cam.hidden = !event.target.checked;
      else if (event.target.checked) explain(card);
    }
  });
  $("#clear").addEventListener("click", () => {
    for (const card of state.cards.keys()) {
      for (const img of card.querySelectorAll("img")) URL.revokeObjectURL(img.src);
      card.remove();
    }
    state.cards.clear();
    $("#clear").hidden = true;
  });
  loadModel().catch((err) => {
    $("#model-summary").textContent = `Could not load the model: ${err.message}`;
  });
}

setUp();
