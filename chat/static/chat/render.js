// Model output to DOM: Markdown (marked) -> sanitized (DOMPurify) -> highlighted code.
//
// Every piece of model output passes through `sanitize()` before it reaches the DOM.
// Raw HTML in an answer is shown as text (the Markdown renderer escapes it), images are
// never loaded (a text placeholder stands in), links open in a new tab without an opener.
// While an answer streams, `StreamingMarkdown` re-renders at most once per animation frame
// and only replaces the top-level blocks that changed, so finished paragraphs and code
// blocks stay put (no flicker, text selection survives).

import { Marked } from "marked";
import createDOMPurify from "dompurify";
import hljs from "highlight.js";
import katex from "katex";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const purify = createDOMPurify(window);

purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    if (node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  }
});

const PURIFY_CONFIG = {
  // MathML for KaTeX's output (below): raw HTML from a model never gets here (it is escaped).
  USE_PROFILES: { html: true, mathMl: true },
  // No images, media, frames, forms, styles or scripts from a model, ever.
  FORBID_TAGS: [
    "img", "picture", "source", "video", "audio", "track", "iframe", "frame", "object", "embed",
    "form", "input", "button", "textarea", "select", "option", "style", "link", "meta", "base",
    "svg", "script", "template", "dialog",
  ],
  FORBID_ATTR: ["src", "srcset", "style", "background", "poster", "formaction", "action", "xlink:href"],
  ADD_ATTR: ["target"],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

/** Sanitize an HTML string into a DocumentFragment that is safe to insert. */
export function sanitize(html) {
  return purify.sanitize(html, PURIFY_CONFIG);
}

function highlight(code, lang, final) {
  const language = (lang || "").trim().split(/\s+/)[0].toLowerCase();
  if (language && hljs.getLanguage(language)) {
    return { html: hljs.highlight(code, { language, ignoreIllegals: true }).value, language };
  }
  if (final && code.length < 20000) {
    const auto = hljs.highlightAuto(code);
    if (auto.relevance >= 5) return { html: auto.value, language: "" };
  }
  return { html: escapeHtml(code), language };
}

/** TeX to MathML with KaTeX (no inline styles, no fonts: the browser lays MathML out). The
 * result still goes through `sanitize()` with the rest of the answer. */
function math(tex, display) {
  try {
    return katex.renderToString(tex, { output: "mathml", displayMode: display, throwOnError: false, trust: false, maxSize: 50, maxExpand: 1000 });
  } catch {
    return `<code>${escapeHtml(tex)}</code>`;
  }
}

// $$…$$ and \[…\] as blocks; $…$ and \(…\) inline. "$5 and $10" stays text: an inline
// dollar pair must hug its content and not be followed by a digit.
const MATH_EXTENSIONS = [
  {
    name: "mathBlock",
    level: "block",
    start: (src) => src.match(/\$\$|\\\[/)?.index,
    tokenizer(src) {
      const m = /^(?:\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\])[ \t]*(?:\n|$)/.exec(src);
      if (m) return { type: "mathBlock", raw: m[0], text: (m[1] ?? m[2]).trim() };
      return undefined;
    },
    renderer: (token) => `<p class="math-block">${math(token.text, true)}</p>\n`,
  },
  {
    name: "mathInline",
    level: "inline",
    start: (src) => src.match(/\$|\\\(/)?.index,
    tokenizer(src) {
      const m = /^(?:\$\$([^$]+?)\$\$|\$(?!\s)([^$\n]+?)(?<!\s)\$(?!\d)|\\\(([\s\S]+?)\\\))/.exec(src);
      if (m) return { type: "mathInline", raw: m[0], text: m[1] ?? m[2] ?? m[3], display: m[1] !== undefined };
      return undefined;
    },
    renderer: (token) => math(token.text, token.display),
  },
];

function markedFor(final) {
  return new Marked({
    extensions: MATH_EXTENSIONS,
    gfm: true,
    breaks: false,
    renderer: {
      // Raw HTML from a model is text to show, never markup to run.
      html({ text }) {
        return escapeHtml(text);
      },
      image({ href, text }) {
        const label = text || "image";
        return `<span class="img-placeholder" title="${escapeHtml(href || "")}">[image: ${escapeHtml(label)}]</span>`;
      },
      code({ text, lang }) {
        const { html, language } = highlight(text, lang, final);
        const cls = language ? ` language-${escapeHtml(language)}` : "";
        return `<pre><code class="hljs${cls}">${html}</code></pre>\n`;
      },
    },
  });
}

const streamingMarked = markedFor(false);
const finalMarked = markedFor(true);

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea"); // http:// on a LAN has no clipboard API
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

export async function copyWithFeedback(button, text) {
  const ok = await copyText(text);
  const label = button.querySelector(".label") || button;
  const before = label.textContent;
  label.textContent = ok ? "Copied" : "Copy failed";
  button.classList.toggle("done", ok);
  setTimeout(() => {
    label.textContent = before;
    button.classList.remove("done");
  }, 1500);
}

/** Wrap each <pre> in a frame with the language's name and a copy button (built with DOM APIs). */
function decorateCodeBlocks(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.parentElement?.classList.contains("code-block")) continue;
    const frame = document.createElement("div");
    frame.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const lang = document.createElement("span");
    lang.className = "code-lang";
    lang.textContent = /\blanguage-([\w+#.-]+)/.exec(pre.querySelector("code")?.className || "")?.[1] || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.setAttribute("aria-label", "Copy code");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = "Copy";
    copy.append(label);
    bar.append(lang, copy);
    pre.replaceWith(frame);
    frame.append(bar, pre);
  }
}

/** Render Markdown text into a safe, decorated DocumentFragment. */
export function renderMarkdown(text, { final = true } = {}) {
  const html = (final ? finalMarked : streamingMarked).parse(text || "");
  const fragment = sanitize(html);
  decorateCodeBlocks(fragment);
  return fragment;
}

/** Replace `container`'s children with `fragment`'s, keeping the leading blocks that did not change. */
function patchChildren(container, fragment) {
  const next = Array.from(fragment.childNodes);
  const current = Array.from(container.childNodes);
  let same = 0;
  while (same < next.length && same < current.length && current[same].isEqualNode(next[same])) same += 1;
  for (let i = current.length - 1; i >= same; i -= 1) current[i].remove();
  for (let i = same; i < next.length; i += 1) container.append(next[i]);
}

/** Render final Markdown into `container`. */
export function renderInto(container, text) {
  patchChildren(container, renderMarkdown(text, { final: true }));
}

/** Copy buttons of code blocks work by delegation, so re-rendered blocks need no wiring. */
export function handleCopyClicks(root) {
  root.addEventListener("click", (event) => {
    const button = event.target.closest("button.copy-code");
    if (!button || !root.contains(button)) return;
    const code = button.closest(".code-block")?.querySelector("code");
    if (code) copyWithFeedback(button, code.textContent);
  });
}

/** A message body that is being streamed: set the whole text so far; painted once per frame. */
export class StreamingMarkdown {
  constructor(container, { onPaint } = {}) {
    this.container = container;
    this.text = "";
    this.painted = null;
    this.frame = 0;
    this.onPaint = onPaint;
  }

  update(text) {
    this.text = text;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.paint(false));
  }

  paint(final) {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (!final && this.text === this.painted) return;
    patchChildren(this.container, renderMarkdown(this.text, { final }));
    this.painted = this.text;
    this.onPaint?.();
  }

  /** Paint the last text now, with full highlighting. */
  finish(text = this.text) {
    this.text = text;
    this.paint(true);
  }
}
