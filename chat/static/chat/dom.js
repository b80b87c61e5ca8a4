// DOM helpers shared by the chat page's modules and its share dialog: element and icon
// builders, and the two ways the page speaks to the reader (a live-region announcement for
// screen readers, a toast for everyone).

export const $ = (id) => document.getElementById(id);

/** An element: `class`, `text` and `on<event>` props are special; a false or null prop is left out. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter(Boolean));
  return node;
}

/** An icon of the template's SVG sprite (`#i-<name>`). */
export function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

export function iconButton(name, label, onclick, cls = "") {
  return el("button", { type: "button", class: `icon-btn small ${cls}`, "aria-label": label, title: label, onclick }, icon(name));
}

/** Say `message` to screen readers (the page's polite live region). */
export function announce(message) {
  const announcer = $("announcer");
  announcer.textContent = "";
  requestAnimationFrame(() => {
    announcer.textContent = message;
  });
}

let toastTimer = 0;
export function toast(message) {
  let node = document.querySelector(".toast");
  if (!node) {
    node = el("div", { class: "toast", role: "alert" });
    document.body.append(node);
  }
  node.textContent = message;
  node.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => node.classList.remove("show"), 4000);
}
