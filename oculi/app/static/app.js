// The page of `oculi app`: one project at a time through five screens (data and its check, training with
// live curves over Server-Sent Events, results, trying the model, exports), and the jobs the app runs.
// Names from the user's files go in as text (textContent), never as HTML.
"use strict";

const JOBS_POLL_MS = 2000;
const CAMERA_GAP_MS = 250; // between a webcam answer and the next frame sent
const state = { project: null, data: null, run: null, runInfo: null, jobs: [], knobs: [], events: null,
                watched: null, rows: [], epochs: null, camera: null, planTimer: null, seenEnded: new Set() };

const $ = (selector) => document.querySelector(selector);

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

const percent = (p) => (p == null ? "–" : `${(100 * p).toFixed(1)}%`);
const fixed = (x, digits = 4) => (x == null ? "–" : Number(x).toFixed(digits));
const projectUrl = (path = "") => `/api/projects/${encodeURIComponent(state.project)}${path}`;
const runUrl = (path = "") => projectUrl(`/runs/${encodeURIComponent(state.run)}${path}`);
const imageUrl = (path) => projectUrl(`/image?path=${encodeURIComponent(path)}`);

function say(text, isError = false) {
  $("#message").textContent = text || "";
  $("#message").classList.toggle("error", isError);
}

// Every call to the app: JSON in and out; an error answer becomes an Error with the app's message.
async function api(url, options = {}) {
  const init = { ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(options.json);
  }
  const response = await fetch(url, init);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(body && body.error ? body.error.message : `the app answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

const post = (url, json = {}) => api(url, { json });

// ---------------------------------------------------------------- projects

async function loadProjects(choose) {
  const { projects } = await api("/api/projects");
  const select = $("#project");
  select.replaceChildren(...projects.map((p) => new Option(`${p.name} (${p.images} images)`, p.name)));
  if (!projects.length) {
    $("#new-project").hidden = false;
    say("No project yet: make one from a data folder in the root, or from images you upload.");
    return;
  }
  const name = choose || localStorage.getItem("oculi-project") || projects[0].name;
  select.value = projects.some((p) => p.name === name) ? name : projects[0].name;
  await openProject(select.value);
}

async function openProject(name) {
  state.project = name;
  localStorage.setItem("oculi-project", name);
  await loadProject();
  await loadRuns();
  followTraining();
}

async function loadProject() {
  const data = await api(projectUrl());
  state.data = data;
  const option = $("#project").selectedOptions[0];
  if (option) option.textContent = `${data.name} (${data.images} images)`; // uploads change the count
  showClasses(data);
  showCheck(data);
  showChanges(data);
  schedulePlan();
}

async function loadFolders() {
  const { folders } = await api("/api/folders");
  $("#new-folder").replaceChildren(...folders.map((f) => new Option(f, f)));
}

async function createProject(event) {
  event.preventDefault();
  const name = $("#new-name").value.trim();
  const source = document.querySelector("input[name=source]:checked").value;
  const body = source === "folder" ? { name, folder: $("#new-folder").value }
    : { name, classes: $("#new-classes").value.split(",").map((c) => c.trim()).filter(Boolean) };
  try {
    await post("/api/projects", body);
    $("#new-project").hidden = true;
    say(`Project ${name} made.`);
    await loadProjects(name);
  } catch (err) {
    say(err.message, true);
  }
}

// ---------------------------------------------------------------- the data screen

function showClasses(data) {
  $("#data-summary").textContent = `${data.images} images in ${data.classes.length} classes · ${data.data}`;
  $("#new-class-form").hidden = !data.uploads;
  $("#classes").replaceChildren(...data.classes.map((c) => classCard(c, data.uploads)));
}

function classCard(c, uploads) {
  const card = element("article", "class-card");
  card.append(element("h3", "", `${c.name} · ${c.count}`));
  const thumbs = element("div", "thumbs");
  thumbs.append(...c.samples.map((path) => thumb(path, path.split("/").pop())));
  card.append(thumbs);
  if (uploads) card.append(dropZone(c.name));
  return card;
}

function thumb(path, caption) {
  const link = element("a", "thumb");
  link.href = imageUrl(path);
  link.target = "_blank";
  link.rel = "noopener";
  const img = element("img");
  img.alt = path;
  img.src = imageUrl(path);
  link.append(img);
  if (caption) link.append(element("span", "caption", caption));
  return link;
}

function dropZone(className) {
  const zone = element("label", "drop small");
  const input = element("input");
  input.type = "file";
  input.accept = "image/*";
  input.multiple = true;
  input.dataset.class = className;
  zone.append(element("strong", "", `Add images to ${className}`), element("span", "", "drop them or tap to choose"), input);
  input.addEventListener("change", () => { upload(className, [...input.files]); input.value = ""; });
  droppable(zone, (files) => upload(className, files));
  return zone;
}

function droppable(zone, take) {
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => { event.preventDefault(); take([...event.dataTransfer.files]); });
}

async function upload(className, files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  try {
    const answer = await api(projectUrl(`/classes/${encodeURIComponent(className)}/images`), { method: "POST", body: form });
    const refused = answer.refused.map((r) => r.error.message);
    say(`${answer.saved.length} saved to ${className}` + (refused.length ? `; refused: ${refused.join("; ")}` : ""), refused.length > 0);
    await loadProject();
  } catch (err) {
    say(err.message, true);
  }
}

async function addClass(event) {
  event.preventDefault();
  try {
    await post(projectUrl("/classes"), { name: $("#new-class").value.trim() });
    $("#new-class").value = "";
    await loadProject();
  } catch (err) {
    say(err.message, true);
  }
}

function showCheck(data) {
  const check = data.check;
  $("#check-summary").textContent = check ? check.summary : "Not checked yet.";
  $("#check-warnings").replaceChildren(...(check ? check.warnings : []).map((w) => element("li", "", w.message)));
  const findings = $("#findings");
  findings.replaceChildren();
  if (!check) return;
  const moved = new Set(data.changes.filter((c) => c.undone === null).map((c) => c.path));
  for (const d of check.duplicates) {
    const what = `${d.kind} copy${d.leak ? ", a leak into " + d.split : ""}${d.across_classes ? ", under another class" : ""}`;
    findings.append(finding([d.path, d.duplicate_of], what, moved.has(d.path) ? null : ["Drop this copy", { kind: "drop", path: d.path }]));
  }
  for (const issue of check.label_issues || []) {
    findings.append(finding([issue.path], `labelled ${issue.given}, looks like ${issue.suggested} (score ${issue.score.toFixed(2)})`,
      moved.has(issue.path) ? null : [`Relabel as ${issue.suggested}`, { kind: "relabel", path: issue.path, to_class: issue.suggested }]));
  }
  if (!findings.children.length) findings.append(element("p", "muted", "Nothing to fix."));
}

function finding(paths, text, fix) {
  const card = element("article", "finding");
  const thumbs = element("div", "thumbs");
  thumbs.append(...paths.map((p) => thumb(p, p)));
  card.append(thumbs, element("p", "", text));
  if (fix) {
    const button = element("button", "", fix[0]);
    button.type = "button";
    button.addEventListener("click", () => applyFix(fix[1]));
    card.append(button);
  } else {
    card.append(element("p", "muted", "fixed (see Changes)"));
  }
  return card;
}

async function applyFix(fix) {
  try {
    const change = await post(projectUrl("/fixes"), fix);
    say(`${change.path} moved to ${change.moved_to}`);
    await loadProject();
  } catch (err) {
    say(err.message, true);
  }
}

function showChanges(data) {
  const list = $("#changes");
  list.replaceChildren(...data.changes.slice().reverse().map((c) => {
    const item = element("li", c.undone ? "undone" : "");
    item.append(element("span", "", `${c.kind === "drop" ? "dropped" : "relabelled"} ${c.path} → ${c.moved_to}${c.undone ? " (undone)" : ""}`));
    if (!c.undone) {
      const button = element("button", "", "Undo");
      button.type = "button";
      button.addEventListener("click", () => undo(c.id));
      item.append(button);
    }
    return item;
  }));
  if (!data.changes.length) list.append(element("li", "muted", "No change yet."));
}

async function undo(id) {
  try {
    const change = await post(projectUrl(`/fixes/${id}/undo`));
    say(`${change.path} is back`);
    await loadProject();
  } catch (err) {
    say(err.message, true);
  }
}

async function startCheck() {
  try {
    const job = await post(projectUrl("/check"));
    say(`check started (job ${job.id})`);
    await loadJobs();
  } catch (err) {
    say(err.message, true);
  }
}

// ---------------------------------------------------------------- the train screen

async function loadKnobs() {
  state.knobs = (await api("/api/settings")).knobs;
  const form = $("#knobs");
  form.replaceChildren(...state.knobs.map((k) => {
    const label = element("label", "knob");
    const input = k.choices ? element("select") : element("input");
    input.name = k.name;
    if (k.choices) input.append(new Option(`default (${k.default ?? "auto"})`, ""), ...k.choices.map((c) => new Option(c, c)));
    else {
      input.type = !k.text && (k.kind === "int" || k.kind === "float") ? "number" : "text";
      if (k.kind === "float") input.step = "any";
      if (k.low != null) input.min = k.low;
      if (k.high != null) input.max = k.high;
      input.placeholder = k.default == null ? "auto" : String(k.default);
    }
    input.addEventListener("input", schedulePlan);
    label.append(element("span", "flag", k.flag), input, element("small", "muted", k.help));
    return label;
  }));
}

function settings() {
  const values = {};
  for (const input of $("#knobs").elements) if (input.value !== "") values[input.name] = input.value;
  return values;
}

function schedulePlan() {
  clearTimeout(state.planTimer);
  state.planTimer = setTimeout(showPlan, 300);
}

// Only the answer to the latest settings is shown: an earlier request may answer after a later one.
async function showPlan() {
  if (!state.project) return;
  const asked = (state.planAsked = (state.planAsked || 0) + 1);
  let text, failed = false;
  try {
    text = (await post(projectUrl("/plan"), { settings: settings() })).lines.join("\n");
  } catch (err) {
    [text, failed] = [err.message, true];
  }
  if (asked !== state.planAsked) return;
  $("#plan").textContent = text;
  $("#plan").classList.toggle("error", failed);
}

async function startTraining() {
  try {
    const job = await post(projectUrl("/train"), { settings: settings() });
    say(`training started (job ${job.id}, ${job.run.split("/").pop()})`);
    await loadJobs();
    follow(job);
  } catch (err) {
    say(err.message, true);
  }
}

// The project's newest training job, followed live when it is still going (also after a reload).
function followTraining() {
  const job = state.jobs.filter((j) => j.kind === "train" && j.project === state.project).pop();
  if (job) follow(job);
  else showTrainJob(null);
}

function follow(job) {
  if (state.events && state.watched === job.id) return;
  if (state.events) state.events.close();
  state.watched = job.id;
  state.rows = [];
  state.epochs = null;
  $("#epoch-rows").replaceChildren();
  $("#progress").hidden = false;
  showTrainJob(job);
  const events = new EventSource(`/api/jobs/${job.id}/events`);
  state.events = events;
  events.addEventListener("plan", (event) => { state.epochs = JSON.parse(event.data); drawProgress(); });
  events.addEventListener("epoch", (event) => { addRow(JSON.parse(event.data)); });
  events.addEventListener("job", (event) => {
    const current = JSON.parse(event.data);
    showTrainJob(current);
    if (["done", "failed", "cancelled", "interrupted"].includes(current.state)) {
      events.close();
      state.events = null;
      loadRuns(current.run ? current.run.split("/").pop() : null);
    }
  });
}

function addRow(row) {
  state.rows.push(row);
  const tr = element("tr");
  const phase = row.phase && row.phase !== "train" ? ` (${row.phase})` : "";
  for (const value of [`${row.epoch}${phase}`, fixed(row.train_loss), percent(row.train_acc), fixed(row.val_loss),
                       percent(row.val_acc), row.seconds == null ? "–" : row.seconds.toFixed(1)]) {
    tr.append(element("td", "", value));
  }
  $("#epoch-rows").append(tr);
  drawProgress();
}

// A run's phases each count their own epochs: the head on cached features (--head-epochs), then fine-tuning
// or training from scratch (--epochs); a phase may stop early (patience, the time budget).
const PHASE_WORDS = { features: "head on features", finetune: "fine-tuning", train: "training" };

function drawProgress() {
  const last = state.rows[state.rows.length - 1];
  const phase = last ? last.phase || "train" : null;
  const done = state.rows.filter((r) => (r.phase || "train") === phase).length;
  const plan = state.epochs || {};
  const total = phase === "features" ? plan.head_epochs : plan.epochs;
  $("#progress-fill").style.width = `${Math.min(100, (100 * done) / (total || Math.max(done, 1))).toFixed(1)}%`;
  $("#progress-text").textContent = last
    ? `${PHASE_WORDS[phase] || phase}: epoch ${done} of ${total ?? "?"} · val accuracy ${percent(last.val_acc)} · val loss ${fixed(last.val_loss)}`
    : "waiting for the first epoch…";
  drawCurves($("#curves"), state.rows);
}

// Two panels on one canvas: losses (left) and accuracies (right), train dashed, val solid.
function drawCurves(canvas, rows) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 220;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const ink = style.getPropertyValue("--muted").trim() || "#666";
  const accent = style.getPropertyValue("--accent").trim() || "#2f6fdf";
  const half = width / 2;
  panel(g, rows, ["train_loss", "val_loss"], 0, half, height, "loss", ink, accent);
  panel(g, rows, ["train_acc", "val_acc"], half, half, height, "accuracy", ink, accent, [0, 1]);
}

function panel(g, rows, keys, left, width, height, title, ink, accent, range) {
  const pad = { l: 36, r: 10, t: 20, b: 22 };
  const x0 = left + pad.l, x1 = left + width - pad.r, y0 = height - pad.b, y1 = pad.t;
  const values = rows.flatMap((r) => keys.map((k) => r[k])).filter((v) => v != null && isFinite(v));
  let [low, high] = range || [Math.min(...values, Infinity), Math.max(...values, -Infinity)];
  if (!isFinite(low)) [low, high] = [0, 1];
  if (high - low < 1e-9) [low, high] = [low - 0.5, high + 0.5];
  g.strokeStyle = ink;
  g.fillStyle = ink;
  g.lineWidth = 1;
  g.font = "11px system-ui, sans-serif";
  g.beginPath();
  g.moveTo(x0, y1);
  g.lineTo(x0, y0);
  g.lineTo(x1, y0);
  g.stroke();
  g.fillText(title, x0, y1 - 6);
  g.fillText(high.toFixed(2), left + 2, y1 + 4);
  g.fillText(low.toFixed(2), left + 2, y0);
  g.fillText(`epoch ${rows.length}`, x1 - 48, height - 6);
  const x = (i) => (rows.length < 2 ? (x0 + x1) / 2 : x0 + ((x1 - x0) * i) / (rows.length - 1));
  const y = (v) => y0 - ((y0 - y1) * (v - low)) / (high - low);
  keys.forEach((key, k) => {
    g.strokeStyle = accent;
    g.fillStyle = accent;
    g.lineWidth = 2;
    g.setLineDash(k === 0 ? [5, 4] : []);
    g.beginPath();
    rows.forEach((r, i) => {
      if (r[key] == null) return;
      if (i === 0 || rows[i - 1][key] == null) g.moveTo(x(i), y(r[key]));
      else g.lineTo(x(i), y(r[key]));
    });
    g.stroke();
    rows.forEach((r, i) => { if (r[key] != null) g.fillRect(x(i) - 2, y(r[key]) - 2, 4, 4); });
    g.setLineDash([]);
    g.fillText(key.startsWith("train") ? "- - train" : "— val", x1 - 60, y1 + 12 + 12 * k);
  });
}

function showTrainJob(job) {
  const active = job && ["queued", "running"].includes(job.state);
  $("#cancel-button").hidden = !active;
  $("#cancel-button").dataset.job = job ? job.id : "";
  const resumable = Boolean(job && job.resumable);
  $("#resume-button").hidden = !resumable;
  $("#resume-button").dataset.job = job ? job.id : "";
  $("#start-button").disabled = Boolean(active);
  // The job's own settings: after a reload the form above shows the defaults again, not what this job runs with.
  const flags = job ? jobFlags(job) : "";
  $("#train-status").textContent = job
    ? `job ${job.id}: ${job.run ? job.run.split("/").pop() : ""} ${job.state}${job.message ? " · " + job.message : ""}` +
      ` · ${flags || "the defaults"}`
    : "No training yet.";
  if (job) api(`/api/jobs/${job.id}`).then((j) => { $("#train-log").textContent = j.log; }).catch(() => {});
}

function jobFlags(job) {
  // `oculi train DATA [flags] --out RUN` (or `train --resume RUN`): the flags, without the folders.
  const args = (job.args || []).slice(1);
  if (args.includes("--resume")) return "its run's own settings (resumed)";
  const shown = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--out" || args[i] === "--resume") { i++; continue; }
    if (i === 0 && !args[i].startsWith("--")) continue;  // the data folder
    shown.push(args[i]);
  }
  return shown.join(" ");
}

async function cancelJob(id) {
  try {
    await post(`/api/jobs/${id}/cancel`);
    say(`job ${id}: cancelling`);
    await loadJobs();
  } catch (err) {
    say(err.message, true);
  }
}

async function resumeJob(id) {
  try {
    const job = await post(`/api/jobs/${id}/resume`);
    say(`resuming in job ${job.id}`);
    await loadJobs();
    if (job.kind === "train") follow(job);
  } catch (err) {
    say(err.message, true);
  }
}

// ---------------------------------------------------------------- runs: results, try it, export

async function loadRuns(choose) {
  const runs = state.data ? (await api(projectUrl())).runs : [];
  const select = $("#run");
  select.replaceChildren(...runs.map((r) => new Option(r, r)));
  if (!runs.length) {
    state.run = null;
    showRun(null);
    return;
  }
  select.value = choose && runs.includes(choose) ? choose : runs.includes(state.run) ? state.run : runs[runs.length - 1];
  await openRun(select.value);
}

async function openRun(name) {
  state.run = name;
  try {
    showRun(await api(runUrl()));
  } catch (err) {
    say(err.message, true);
  }
}

function showRun(info) {
  state.runInfo = info;
  $("#results-run").textContent = info ? `· ${info.name}${info.finished ? "" : " (not finished)"}` : "· no run yet";
  showFigures(info && info.test);
  showConfusion(info);
  showMistakes(info, null);
  const report = info && info.files.report;
  $("#report").hidden = !report;
  $("#report-link").hidden = !report;
  if (report) {
    $("#report").src = runUrl("/files/report");
    $("#report-link").href = runUrl("/files/report");
  }
  showDownloads(info);
}

function showFigures(test) {
  const tiles = test ? [["accuracy", percent(test.accuracy)], ["images", String(test.n)],
    ["log loss", fixed(test.log_loss)], ["macro-F1", percent(test.macro_avg && test.macro_avg.f1)],
    ["split", test.split]] : [["test", "no figures yet"]];
  $("#figures").replaceChildren(...tiles.map(([name, value]) => {
    const tile = element("div", "tile");
    tile.append(element("dt", "", name), element("dd", "", value));
    return tile;
  }));
}

function showConfusion(info) {
  const table = $("#confusion");
  table.replaceChildren();
  const test = info && info.test;
  if (!test || !test.confusion_matrix) return;
  const head = element("tr");
  head.append(element("th", "", "true \\ predicted"), ...test.classes.map((c) => element("th", "", c)));
  table.append(head);
  test.confusion_matrix.forEach((row, i) => {
    const tr = element("tr");
    tr.append(element("th", "", test.classes[i]));
    row.forEach((count, j) => {
      const cell = element("td", i === j ? "hit" : count ? "miss" : "", String(count));
      const button = cell;
      button.tabIndex = 0;
      button.addEventListener("click", () => showMistakes(info, [test.classes[i], test.classes[j]]));
      tr.append(cell);
    });
    table.append(tr);
  });
}

function showMistakes(info, pair) {
  const rows = (info ? info.predictions : []).filter((p) =>
    pair ? p.true === pair[0] && p.predicted === pair[1] : p.true !== p.predicted);
  $("#mistakes-title").textContent = pair ? `${pair[0]} predicted as ${pair[1]} (${rows.length})` : `Mistakes (${rows.length})`;
  $("#mistakes").replaceChildren(...rows.slice(0, 60).map((p) =>
    thumb(p.path, `${p.true} → ${p.predicted} ${percent(Number(p.confidence))}`)));
}

function showDownloads(info) {
  const files = info ? info.files : {};
  const link = (id, what, present) => {
    const a = $(id);
    a.classList.toggle("missing", !present);
    if (present) a.href = runUrl(`/files/${what}`);
    else a.removeAttribute("href");
  };
  link("#bundle-link", "bundle", files.bundle);
  link("#onnx-link", "onnx", files.onnx);
  link("#onnx-json-link", "onnx_json", files.onnx_json);
  link("#card-link", "card", files.card);
  const finished = Boolean(info && info.finished);
  $("#export-button").disabled = !finished;
  $("#card-button").disabled = !finished;
  $("#export-status").textContent = finished ? "" : "Train a run to the end to export it.";
}

async function runJob(kind) {
  try {
    const job = await post(runUrl(`/${kind}`));
    $("#export-status").textContent = `${kind} started (job ${job.id})`;
    await loadJobs();
  } catch (err) {
    $("#export-status").textContent = err.message;
  }
}

// ---------------------------------------------------------------- try it

async function predict(blob, name) {
  if (!state.runInfo || !state.runInfo.finished) {
    $("#answer").textContent = "Train a run to the end first.";
    return false;
  }
  const form = new FormData();
  form.append("files", blob, name);
  try {
    const answer = await api(runUrl("/serve/v1/predict?top_k=5"), { method: "POST", body: form });
    const p = answer.predictions[0];
    if (p.error) throw new Error(p.error.message);
    $("#answer").textContent = `${p.label} (${percent(p.probability)})`;
    $("#answer").classList.remove("error");
    $("#answer").dataset.answers = Number($("#answer").dataset.answers || 0) + 1; // a new answer, even the same words
    showBars(p.top_k);
    return true;
  } catch (err) {
    $("#answer").textContent = err.message;
    $("#answer").classList.add("error");
    return false;
  }
}

function showBars(topK) {
  $("#bars").replaceChildren(...topK.map((item, i) => {
    const row = element("li", i === 0 ? "best" : "");
    const track = element("span", "track");
    const fill = element("span", "fill");
    fill.style.width = `${(100 * item.probability).toFixed(1)}%`;
    track.append(fill);
    row.append(element("span", "name", item.label), track, element("span", "value", percent(item.probability)));
    return row;
  }));
}

function tryFile(file) {
  if (!file) return;
  stopCamera();
  const img = $("#tried");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  predict(file, file.name || "pasted.png");
}

async function toggleCamera() {
  if (state.camera) return stopCamera();
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    const video = $("#video");
    video.srcObject = stream;
    video.hidden = false;
    $("#tried").hidden = true;
    await video.play();
    state.camera = { stream, canvas: element("canvas") };
    $("#camera-button").textContent = "Stop the camera";
    cameraFrame();
  } catch (err) {
    $("#answer").textContent = `The camera cannot be used: ${err.message}`;
  }
}

// One frame at a time: the next is sent once the answer to this one has come.
function cameraFrame() {
  const camera = state.camera;
  if (!camera) return;
  const video = $("#video");
  camera.canvas.width = video.videoWidth || 320;
  camera.canvas.height = video.videoHeight || 240;
  camera.canvas.getContext("2d").drawImage(video, 0, 0, camera.canvas.width, camera.canvas.height);
  camera.canvas.toBlob(async (blob) => {
    if (blob) await predict(blob, "camera.jpg");
    if (state.camera === camera) setTimeout(cameraFrame, CAMERA_GAP_MS);
  }, "image/jpeg", 0.85);
}

function stopCamera() {
  if (!state.camera) return;
  for (const track of state.camera.stream.getTracks()) track.stop();
  state.camera = null;
  $("#video").hidden = true;
  $("#camera-button").textContent = "Start the camera";
}

// ---------------------------------------------------------------- jobs

async function loadJobs() {
  const { jobs } = await api("/api/jobs");
  const ended = jobs.filter((j) => !["queued", "running"].includes(j.state));
  const fresh = ended.filter((j) => state.jobs.length && !state.seenEnded.has(j.id));
  for (const j of ended) state.seenEnded.add(j.id);
  state.jobs = jobs;
  showJobs(jobs);
  const check = jobs.filter((j) => j.kind === "check" && j.project === state.project).pop();
  $("#check-status").textContent = check ? `check job ${check.id}: ${check.state}${check.message ? " · " + check.message : ""}` : "";
  for (const j of fresh.filter((j) => j.project === state.project)) {
    if (j.kind === "check") await loadProject();
    if (["export", "card"].includes(j.kind) && state.run) await openRun(state.run);
  }
}

function showJobs(jobs) {
  $("#jobs").replaceChildren(...jobs.slice(-12).reverse().map((j) => {
    const item = element("li", `job ${j.state}`);
    const target = j.run ? j.run.split("/").pop() : "";
    item.append(element("span", "", `#${j.id} ${j.kind} ${j.project} ${target}`), element("span", "state", j.state));
    if (j.message) item.append(element("span", "muted", j.message));
    const action = ["queued", "running"].includes(j.state) ? ["Cancel", () => cancelJob(j.id)]
      : j.resumable ? ["Resume", () => resumeJob(j.id)] : null;
    if (action) {
      const button = element("button", "", action[0]);
      button.type = "button";
      button.addEventListener("click", action[1]);
      item.append(button);
    }
    return item;
  }));
  if (!jobs.length) $("#jobs").append(element("li", "muted", "No job yet."));
}

// ---------------------------------------------------------------- setting up

function showScreen(name) {
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.screen === name);
  for (const screen of document.querySelectorAll(".screen")) screen.hidden = screen.id !== `screen-${name}`;
  if (name !== "try") stopCamera();
  say(""); // a message is about the screen it was said on
  if (name === "train") drawCurves($("#curves"), state.rows);
}

function setUp() {
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => showScreen(button.dataset.screen));
  $("#project").addEventListener("change", (event) => openProject(event.target.value).catch((err) => say(err.message, true)));
  $("#run").addEventListener("change", (event) => openRun(event.target.value));
  $("#new-project-button").addEventListener("click", () => { $("#new-project").hidden = !$("#new-project").hidden; });
  $("#new-project-form").addEventListener("submit", createProject);
  $("#new-class-form").addEventListener("submit", addClass);
  $("#check-button").addEventListener("click", startCheck);
  $("#start-button").addEventListener("click", startTraining);
  $("#cancel-button").addEventListener("click", (event) => cancelJob(Number(event.target.dataset.job)));
  $("#resume-button").addEventListener("click", (event) => resumeJob(Number(event.target.dataset.job)));
  $("#export-button").addEventListener("click", () => runJob("export"));
  $("#card-button").addEventListener("click", () => runJob("card"));
  $("#camera-button").addEventListener("click", toggleCamera);
  $("#picker").addEventListener("change", (event) => { tryFile(event.target.files[0]); event.target.value = ""; });
  droppable($("#drop"), (files) => tryFile(files[0]));
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData ? event.clipboardData.files : [])][0];
    if (file) { showScreen("try"); tryFile(file); }
  });
  window.addEventListener("resize", () => drawCurves($("#curves"), state.rows));
  Promise.all([loadKnobs(), loadFolders(), loadJobs()])
    .then(() => loadProjects())
    .catch((err) => say(`The app cannot be reached: ${err.message}`, true));
  setInterval(() => loadJobs().catch(() => {}), JOBS_POLL_MS);
}

setUp();
