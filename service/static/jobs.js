// Jobs: extraction, index build and probe fit forms, and each job's live progress (polled)
// with Cancel.

import { api } from "./api.js";
import { $, el, showError } from "./dom.js";

const FINAL = new Set(["succeeded", "failed", "cancelled", "interrupted"]);
const POLL_MS = 500;
const jobs = new Map();
let onSucceeded = async () => {};

function jobName(job) {
  const p = job.params || {};
  if (job.kind === "extraction") return `extraction → ${p.name ?? p.dataset ?? ""}`;
  if (job.kind === "probe_fit") return `probe fit on ${p.dataset ?? ""} (${p.layer ?? ""})`;
  return `${job.kind} ${p.name ?? p.dataset ?? ""}`.trim();
}

function jobFraction(job) {
  if (job.status === "succeeded") return 1;
  const { done, total } = job.progress || {};
  return total ? Math.min(1, done / total) : 0;
}

function renderJob(job) {
  let item = document.getElementById(`job-${job.id}`);
  if (!item) {
    item = el("li", { className: "job", id: `job-${job.id}` },
      el("span", { className: "job-name" }),
      el("div", {}, el("progress", { max: 100, value: 0 }), el("span", { className: "job-pct" })),
      el("div", {}, el("span", { className: "job-status" }), " ",
        el("button", { type: "button", className: "job-cancel" }, "Cancel")),
      el("p", { className: "error", role: "alert" }));
    $(".job-cancel", item).addEventListener("click", () => cancelJob(job.id, item));
    $("#jobs-list").prepend(item);
  }
  const pct = Math.floor(100 * jobFraction(job));
  $(".job-name", item).textContent = jobName(job);
  const bar = $("progress", item);
  bar.value = pct;
  bar.setAttribute("aria-label", `progress of ${jobName(job)}`);
  const p = job.progress || {};
  const rate = p.images_per_s ? ` · ${p.images_per_s.toFixed(1)} images/s` : "";
  const step = p.step ? ` · ${p.step}` : "";
  $(".job-pct", item).textContent = ` ${pct} %${rate}${step}`;
  const status = $(".job-status", item);
  const cancelling = job.cancel_requested && !FINAL.has(job.status) ? " (cancelling…)" : "";
  status.textContent = job.status + cancelling + (job.error ? `: ${job.error}` : "");
  status.dataset.status = job.status;
  $(".job-cancel", item).hidden = FINAL.has(job.status);
  item.dataset.status = job.status;
}

function trackJob(job) {
  const known = jobs.get(job.id);
  jobs.set(job.id, job);
  renderJob(job);
  if (!FINAL.has(job.status) && !known?.polling) poll(job.id);
}

async function poll(id) {
  jobs.get(id).polling = true;
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    let job;
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    } catch (error) {
      showError($(`#job-${id} .error`), error);
      continue;
    }
    jobs.set(id, { ...job, polling: true });
    renderJob(job);
    if (FINAL.has(job.status)) {
      jobs.get(id).polling = false;
      if (job.status === "succeeded") await onSucceeded(job);
      return;
    }
  }
}

async function cancelJob(id, item) {
  try {
    renderJob(await api(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }));
  } catch (error) {
    showError($(".error", item), error);
  }
}

async function loadJobs() {
  try {
    const { jobs } = await api("/v1/jobs?limit=20");
    for (const job of jobs.reverse()) trackJob(job);
  } catch (error) {
    showError($("#jobs-error"), error);
  }
}

function wireJobForm(formId, errorId, submit) {
  const form = $(formId);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("button[type=submit]", form);
    button.disabled = true;
    showError($(errorId), null);
    try {
      trackJob(await submit(form));
    } catch (error) {
      showError($(errorId), error);
    } finally {
      button.disabled = false;
    }
  });
}

// A control named "name" or "dataset" would shadow the form's own properties: ask elements.
const field = (form, name) => form.elements.namedItem(name);

function commaList(text) {
  const items = text.split(",").map((s) => s.trim()).filter(Boolean);
  return items.length ? items : undefined;
}

function wireJobForms() {
  wireJobForm("#extract-form", "#extract-error", (form) => api("/v1/extractions", {
    method: "POST",
    json: {
      root: field(form, "root").value.trim(),
      name: field(form, "name").value.trim(),
      layers: commaList(field(form, "layers").value),
    },
  }));
  wireJobForm("#index-form", "#index-error", (form) => {
    const body = { layer: field(form, "layer").value.trim(), whiten: field(form, "whiten").checked };
    if (field(form, "dim").value) body.dim = Number(field(form, "dim").value);
    const name = encodeURIComponent(field(form, "dataset").value);
    return api(`/v1/datasets/${name}/index`, { method: "POST", json: body });
  });
  wireJobForm("#fit-form", "#fit-error", (form) => {
    const body = { dataset: field(form, "dataset").value, classifier: field(form, "classifier").value };
    const layer = field(form, "layer").value.trim();
    if (layer) body.layer = layer;
    return api("/v1/probes", { method: "POST", json: body });
  });
}


/** Wire the job forms and show the server's recent jobs; `succeeded(job)` runs when a job the
 * page watches finishes well (the page refreshes its datasets and probes). */
export async function initJobs(succeeded) {
  onSucceeded = succeeded;
  wireJobForms();
  await loadJobs();
}
