// decaf page: a thin client of the /v1 API. No framework, no build step, nothing from a CDN.
// Modules: api.js (requests, API key, problem details), dom.js (helpers), jobs.js (job forms
// and live progress); this one: the model, images, datasets, probes and the few-shot form.

import { ApiError, api } from "./api.js";
import { $, el, fillSelect, showError } from "./dom.js";
import { initJobs } from "./jobs.js";

const state = { model: null, probes: [], datasets: [], searchAvailable: true };

const percent = (fraction) => `${(100 * fraction).toFixed(1)} %`;
const l2 = (vector) => Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0));
const weightsText = (weights) => (weights === "random" ? "RANDOM weights" : weights || "?");

function checkedLayers() {
  return [...document.querySelectorAll("#layer-choice input:checked")].map((i) => i.value);
}

// ------------------------------------------------------------------------------ model
async function loadModel() {
  const model = await api("/v1/model");
  state.model = model;
  const random = model.weights_id === "random";
  $("#model-info").textContent =
    `${model.backbone} · weights ${model.weights_id} · ${model.precision} on ${model.device}` +
    (model.backbones.length > 1 ? ` (+${model.backbones.length - 1} more backbones)` : "");
  $("#random-banner").hidden = !random;
  const fieldset = $("#layer-choice");
  fieldset.replaceChildren(el("legend", {}, `Layers of ${model.backbone}`));
  for (const [layer, dim] of Object.entries(model.layers)) {
    const input = el("input", {
      type: "checkbox", value: layer, id: `layer-${layer}`,
      checked: model.default_layers.includes(layer),
    });
    fieldset.append(el("label", { htmlFor: input.id }, input, ` ${layer} (${dim})`));
  }
  fillSelect($("#fs-layer"), Object.keys(model.layers).map((l) => [l, l]));
  $("#fs-layer").value = model.default_layers[0];
}

// ------------------------------------------------------------------------------ images
function addImages(files) {
  for (const file of files) {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    card.dataset.filename = file.name;
    const thumb = $(".thumb", card);
    thumb.src = URL.createObjectURL(file);
    thumb.alt = `uploaded image ${file.name}`;
    thumb.addEventListener("error", () => { thumb.hidden = true; }); // not an image: no icon
    $(".filename", card).textContent = file.name;
    $("#results").prepend(card);
    analyse(card, file);
  }
}

async function analyse(card, file) {
  const ok = await showFeatures(card, file);
  if (!ok) return; // one clear error per bad file; predictions would only repeat it
  await Promise.all([showPredictions(card, file), showNeighbours(card, file)]);
}

async function showFeatures(card, file) {
  const form = new FormData();
  form.append("images", file, file.name);
  const layers = checkedLayers();
  const query = layers.length ? `?layers=${encodeURIComponent(layers.join(","))}` : "";
  const table = $(".features", card);
  try {
    const answer = await api(`/v1/features${query}`, { method: "POST", form });
    const result = answer.results[0];
    if (result.error) throw new Error(result.error);
    const body = $("tbody", table);
    const order = Object.keys(state.model?.layers ?? {});
    const rank = (layer) => (order.includes(layer) ? order.indexOf(layer) : order.length);
    const layersFound = Object.entries(result.features).sort((x, y) => rank(x[0]) - rank(y[0]));
    for (const [layer, vector] of layersFound) {
      body.append(el("tr", {},
        el("th", { scope: "row" }, layer),
        el("td", { className: "num" }, String(vector.length)),
        el("td", { className: "num" }, l2(vector).toFixed(2))));
    }
    card.classList.add("done");
    return true;
  } catch (error) {
    table.hidden = true;
    card.classList.add("failed");
    showError($(".card-body > .error", card), error);
    return false;
  }
}

async function showPredictions(card, file) {
  const probeId = $("#probe-select").value;
  if (!probeId) return;
  const box = $(".predictions", card);
  box.hidden = false;
  const form = new FormData();
  form.append("files", file, file.name);
  const k = Number($("#top-k").value) || 5;
  try {
    const answer = await api(`/v1/probes/${encodeURIComponent(probeId)}/predict?top_k=${k}`,
      { method: "POST", form });
    const result = answer.results[0];
    if (result.error) throw new Error(result.error);
    const probability = answer.score_kind === "probability";
    $("h4", box).textContent = `Predictions (${probability ? "probability" : "SVM margin"})`;
    $("ol", box).replaceChildren(...result.predictions.map((p) =>
      el("li", {}, el("span", { className: "label" }, p.label), " ",
        el("span", { className: "score" }, probability ? percent(p.score) : p.score.toFixed(3)))));
  } catch (error) {
    showError($(".error", box), error);
  }
}

async function showNeighbours(card, file) {
  const dataset = $("#search-dataset").value;
  if (!dataset || !state.searchAvailable) return;
  const box = $(".neighbours", card);
  box.hidden = false;
  const form = new FormData();
  form.append("images", file, file.name);
  const k = Number($("#search-k").value) || 6;
  const name = encodeURIComponent(dataset);
  try {
    const answer = await api(`/v1/datasets/${name}/search?k=${k}`, { method: "POST", form });
    const result = answer.results[0];
    if (result.error) throw new ApiError(result.error.status, result.error);
    $("h4", box).textContent = `Nearest neighbours in ${dataset}` +
      (answer.note ? ` (${answer.note})` : "");
    const items = result.neighbours.map((n) => {
      const img = el("img", { alt: `${n.label ?? "unlabelled"}: ${n.path}`, loading: "lazy" });
      loadThumbnail(img, `/v1/datasets/${name}/images/${n.row}`, box);
      return el("li", {}, el("figure", {}, img,
        el("figcaption", {}, `${n.label ?? "—"} · ${n.score.toFixed(3)}`)));
    });
    $("ul", box).replaceChildren(...items);
  } catch (error) {
    showError($(".error", box), error);
  }
}

async function loadThumbnail(img, path, box) {
  // An <img src> cannot carry the API key header: fetch the bytes, show them as a blob URL.
  try {
    const response = await api(path, { raw: true });
    img.src = URL.createObjectURL(await response.blob());
    img.classList.add("loaded");
  } catch (error) {
    showError($(".error", box), error);
  }
}

function wireImageInput() {
  const input = $("#image-input");
  input.addEventListener("change", () => {
    addImages(input.files);
    input.value = ""; // the same file may be chosen again
  });
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addImages(event.dataTransfer.files);
  });
  $("#clear-results").addEventListener("click", () => $("#results").replaceChildren());
}

// ------------------------------------------------------------------------------ datasets
async function loadDatasets() {
  const body = $("#datasets-table tbody");
  try {
    const { datasets } = await api("/v1/datasets");
    state.datasets = datasets;
    const rows = await Promise.all(datasets.map(datasetRow));
    body.replaceChildren(...rows);
    showError($("#datasets-error"), null);
  } catch (error) {
    showError($("#datasets-error"), error);
  }
  const complete = state.datasets.filter((d) => d.complete).map((d) => [d.name, d.name]);
  const none = complete.length ? null : "no finished dataset yet";
  fillSelect($("#fit-dataset"), complete, { empty: none });
  fillSelect($("#index-dataset"), complete, { empty: none });
  const indexed = state.datasets.filter((d) => d.index).map((d) => [d.name, d.name]);
  fillSelect($("#search-dataset"), indexed, { empty: "none" });
}

async function datasetRow(dataset) {
  const name = encodeURIComponent(dataset.name);
  let weights = "";
  try {
    const info = await api(`/v1/datasets/${name}`);
    weights = info.manifest?.weights_id ?? "";
  } catch {
    weights = "";
  }
  dataset.index = await loadIndex(name);
  const layers = Object.entries(dataset.layers || {}).map(([l, d]) => `${l} (${d})`).join(", ");
  const status = dataset.complete ? "" : dataset.error ? " (unreadable)" : " (being written)";
  return el("tr", { dataset: { name: dataset.name } },
    el("th", { scope: "row" }, dataset.name + status),
    el("td", {}, `${dataset.backbone ?? "?"} · ${weightsText(weights)}`),
    el("td", {}, layers),
    el("td", { className: "num" }, String(dataset.num_images ?? "")),
    el("td", { className: "num" }, String(dataset.num_classes ?? "")),
    el("td", {}, dataset.source_root ?? ""),
    el("td", { className: "index-cell" }, indexText(dataset.index)));
}

async function loadIndex(name) {
  if (!state.searchAvailable) return null;
  try {
    return await api(`/v1/datasets/${name}/index`);
  } catch (error) {
    // An unknown route (about:blank 404/405) means this server has no retrieval at all.
    if ((error.status === 404 || error.status === 405) && error.problem?.type === "about:blank") {
      setSearchAvailable(false);
    }
    return null;
  }
}

function indexText(index) {
  if (!state.searchAvailable) return "—";
  if (!index) return "none";
  const size = index.num_vectors ?? index.ntotal ?? index.count ?? "";
  return [index.layer, size && `${size} vectors`, index.status].filter(Boolean).join(" · ");
}

function setSearchAvailable(available) {
  state.searchAvailable = available;
  $("#search-unavailable").hidden = available;
  $("#index-form").hidden = !available;
  $("#search-dataset").disabled = !available;
}

// ------------------------------------------------------------------------------ probes
async function loadProbes() {
  try {
    const { probes } = await api("/v1/probes");
    const details = await Promise.all(
      probes.map((p) => api(`/v1/probes/${encodeURIComponent(p.id)}`).catch(() => p)));
    state.probes = details;
    $("#probes-table tbody").replaceChildren(...details.map(probeRow));
    fillSelect($("#probe-select"),
      details.map((p) => [p.id, `${p.name} (${p.classifier}, ${p.layer}, ${p.num_classes} classes)`]),
      { empty: "none" });
    showError($("#probes-error"), null);
  } catch (error) {
    showError($("#probes-error"), error);
  }
}

function probeRow(probe) {
  const provenance = probe.provenance || {};
  const metrics = probe.metrics || {};
  const evaluation = metrics.evaluation?.mean_class_accuracy;
  const accuracy = evaluation
    ? `${percent(evaluation.mean)} ± ${(100 * evaluation.std).toFixed(1)} (${metrics.evaluation.protocol})`
    : metrics.train_accuracy !== undefined ? `${percent(metrics.train_accuracy)} (train)` : "";
  const source = probe.source === "upload" ? `${metrics.num_train ?? "?"} uploaded images`
    : `dataset ${probe.dataset}`;
  return el("tr", { dataset: { id: probe.id } },
    el("th", { scope: "row" }, probe.name),
    el("td", {}, `${probe.backbone ?? "?"} · ${weightsText(provenance.weights_id)}`),
    el("td", {}, probe.layer),
    el("td", {}, probe.classifier),
    el("td", {}, probe.classes.join(", ")),
    el("td", {}, accuracy),
    el("td", {}, source));
}

// ------------------------------------------------------------------------------ few-shot
function addFewShotClass() {
  const box = $("#fs-class-template").content.firstElementChild.cloneNode(true);
  const n = document.querySelectorAll(".fs-class").length + 1;
  $("legend", box).textContent = `Class ${n}`;
  $(".fs-label", box).setAttribute("aria-label", `Class ${n} name`);
  $(".fs-files", box).setAttribute("aria-label", `Images of class ${n}`);
  $(".fs-remove", box).addEventListener("click", () => box.remove());
  $("#fs-classes").append(box);
}

async function fitFewShot(event) {
  event.preventDefault();
  const status = $("#fs-status");
  const form = new FormData();
  const labels = [];
  for (const box of document.querySelectorAll(".fs-class")) {
    const label = $(".fs-label", box).value.trim();
    for (const file of $(".fs-files", box).files) {
      form.append("files", file, file.name);
      labels.push(label);
    }
  }
  form.append("labels", JSON.stringify(labels));
  for (const id of ["fs-name", "fs-classifier", "fs-layer"]) {
    const field = $(`#${id}`);
    if (field.value) form.append(field.name, field.value);
  }
  const button = $("button[type=submit]", event.target);
  button.disabled = true;
  status.textContent = `Fitting on ${labels.length} images…`;
  showError($("#fs-error"), null);
  try {
    const probe = await api("/v1/probes", { method: "POST", form });
    const skipped = probe.skipped?.length ? `; skipped ${probe.skipped.length} unreadable` : "";
    status.textContent = `Fitted “${probe.name}” on ${probe.classes.join(", ")}${skipped}.`;
    await loadProbes();
    $("#probe-select").value = probe.id;
  } catch (error) {
    status.textContent = "";
    showError($("#fs-error"), error);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------ start
async function start() {
  wireImageInput();
  addFewShotClass();
  addFewShotClass();
  $("#fs-add-class").addEventListener("click", addFewShotClass);
  $("#few-shot-form").addEventListener("submit", fitFewShot);
  try {
    await loadModel();
  } catch (error) {
    $("#model-info").textContent = `The service is not ready: ${error.message}`;
  }
  const refresh = () => Promise.all([loadDatasets(), loadProbes()]);
  await Promise.all([refresh(), initJobs(refresh)]);
  document.body.dataset.ready = "true";
}

start();
