// DOM helpers shared by the page's modules.

export const $ = (selector, root = document) => root.querySelector(selector);

export function showError(element, error) {
  element.textContent = error ? String(error.message || error) : "";
}

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function fillSelect(select, options, { keep = true, empty = null } = {}) {
  const previous = select.value;
  select.replaceChildren();
  if (empty !== null) select.append(el("option", { value: "" }, empty));
  for (const [value, text] of options) select.append(el("option", { value }, text));
  if (keep && [...select.options].some((o) => o.value === previous)) select.value = previous;
}

