// Every request of the page goes through api(): it adds the API key header (never the URL),
// asks for a key on 401 (once, however many requests met it), and turns RFC 9457
// problem+json answers into ApiError messages for the element that caused them.

import { $ } from "./dom.js";

export const KEY_STORAGE = "decaf-api-key";

export class ApiError extends Error {
  constructor(status, problem) {
    super(describeProblem(problem, status));
    this.status = status;
    this.problem = problem;
  }
}

function describeProblem(problem, status) {
  if (!problem || typeof problem !== "object") return `HTTP ${status}`;
  const head = problem.detail || problem.title || `HTTP ${status}`;
  const items = Array.isArray(problem.errors) ? problem.errors : [];
  if (items.length === 1 && items[0].filename && items[0].detail) {
    return `${items[0].filename}: ${items[0].detail}`; // one file sent: its own problem says it
  }
  const lines = items.map((e) => {
    const where = e.filename ?? (Array.isArray(e.loc) ? e.loc.join(".") : "");
    return `• ${where ? `${where}: ` : ""}${e.detail ?? e.title ?? ""}`;
  });
  return [head, ...lines.filter((line) => !head.includes(line.slice(2)))].join("\n");
}

async function readProblem(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return { title: response.statusText, detail: text.slice(0, 300) || response.statusText };
  }
}

let pendingKey = null; // one prompt for however many requests met a 401 at once

function askForKey(message) {
  if (!pendingKey) {
    const dialog = $("#key-dialog");
    $("#key-error").textContent = message;
    $("#key-input").value = "";
    pendingKey = new Promise((resolve) => {
      $("#key-form").addEventListener(
        "submit",
        () => {
          sessionStorage.setItem(KEY_STORAGE, $("#key-input").value);
          pendingKey = null;
          resolve();
        },
        { once: true },
      );
    });
    if (!dialog.open) dialog.showModal();
  }
  return pendingKey;
}

export async function api(path, { method = "GET", json, form, raw = false } = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers["X-API-Key"] = key;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form; // the browser sets the multipart boundary
    }
    const response = await fetch(path, { method, headers, body });
    if (response.status === 401) {
      const problem = await readProblem(response);
      await askForKey(key ? `That key was refused: ${problem.detail}` : "");
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await readProblem(response));
    if (raw) return response;
    return response.status === 204 ? null : response.json();
  }
}

