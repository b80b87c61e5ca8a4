// The chat page: state and UI. Transport lives in api.js, Markdown rendering in render.js.
//
// One answer streams at a time (`state.live`). It travels over the WebSocket when the socket
// is open, over POST /stream otherwise. The conversation is created before its first message,
// so it has an id at once: the URL hash and localStorage point at it, and a reloaded page
// opens it again and, if the answer is still being generated, subscribes to the rest.
// While a saved conversation is open, the socket follows it: an answer asked in it elsewhere
// (another tab) is shown live here too, through the same re-attach path.

import { ChatSocket, conversations as api, streamOverSSE } from "./api.js";
import { StreamingMarkdown, copyWithFeedback, handleCopyClicks, renderInto } from "./render.js";
import { ShareDialog } from "./share-dialog.js";
import { currentPath, siblingsOf } from "./tree.js";

const $ = (id) => document.getElementById(id);
const els = {
  app: $("app"),
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  main: $("main"),
  toggleSidebar: $("toggle-sidebar"),
  closeSidebar: $("close-sidebar"),
  newChat: $("new-chat"),
  newChatTop: $("new-chat-top"),
  search: $("search"),
  list: $("conversation-list"),
  listStatus: $("list-status"),
  more: $("more"),
  title: $("conversation-title"),
  connection: $("connection"),
  scroller: $("scroller"),
  empty: $("empty"),
  messages: $("messages"),
  jump: $("jump"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  announcer: $("announcer"),
  settings: $("settings"),
  settingsForm: $("settings-form"),
  openSettings: $("open-settings"),
  systemPrompt: $("system-prompt"),
  temperature: $("temperature"),
  temperatureOut: $("temperature-out"),
  topP: $("top-p"),
  topPOut: $("top-p-out"),
  maxLength: $("max-length"),
  settingsError: $("settings-error"),
  settingsNote: $("settings-note"),
};

const MOBILE = window.matchMedia("(max-width: 768px)");
const LAST_KEY = `chatglm:last:${els.app.dataset.user || "-"}`;
const SLIDER_DEFAULTS = { temperature: 0.8, top_p: 0.8 };
const STOP_GRACE_MS = 5000;

const state = {
  conversationId: null,
  conversation: null, // {id, title, system_prompt, settings, ...}
  draft: { system_prompt: "", settings: {} }, // settings chosen before the conversation exists
  live: null, // the answer being streamed into the page
  list: { items: [], page: 1, hasNext: false, q: "", loading: false },
  stick: true, // auto-scroll follows the answer until the user scrolls up
  opening: 0,
};

const socket = new ChatSocket();
// The context meter: how much of the model's context the next request uses (GET .../context).
const meter = {
  bar: el("meter", { min: "0", max: "1", low: "0.6", high: "0.85", optimum: "0", "aria-label": "Context used" }),
  text: el("span", { class: "context-text" }),
};
meter.node = el("div", { class: "context-meter", id: "context-meter", hidden: true }, meter.bar, meter.text);
els.composer.querySelector(".hint")?.before(meter.node);

async function updateContext(id) {
  if (!id) {
    meter.node.hidden = true;
    return;
  }
  try {
    const usage = await api.context(id);
    if (state.conversationId !== id) return;
    const share = usage.context_length ? usage.prompt_tokens / usage.context_length : 0;
    const full = usage.context_length && (usage.prompt_tokens + usage.answer_room) / usage.context_length > 0.8;
    meter.bar.value = Math.min(1, share);
    let text = `Context: ${usage.prompt_tokens.toLocaleString()} of ${usage.context_length.toLocaleString()} tokens (${Math.round(share * 100)}%)`;
    if (usage.history_truncated) {
      const turns = usage.history_truncated === 1 ? "1 earlier turn" : `${usage.history_truncated} earlier turns`;
      text += ` · ${turns} will not be sent to the model`;
    } else if (full) {
      text += " · nearly full: the oldest turns will soon be left out";
    }
    meter.text.textContent = text;
    meter.node.classList.toggle("warn", Boolean(usage.history_truncated) || Boolean(full));
    meter.node.hidden = false;
  } catch {
    meter.node.hidden = true; // no model loaded yet, or an old server: no meter
  }
}

let visitorSocketRenewed = false;

// ---------------------------------------------------------------------------------------
// Small helpers

function el(tag, props = {}, ...children) {
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

function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

function iconButton(name, label, onclick, cls = "") {
  return el("button", { type: "button", class: `icon-btn small ${cls}`, "aria-label": label, title: label, onclick }, icon(name));
}

export function ordinal(n) {
  const mod100 = n % 100;
  if (mod100 >= 11 && mod100 <= 13) return `${n}th`;
  return `${n}${{ 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th"}`;
}

function titleFrom(query) {
  const title = query.split(/\s+/).join(" ").trim();
  return title.length <= 80 ? title : `${title.slice(0, 79).trimEnd()}…`;
}

function announce(message) {
  els.announcer.textContent = "";
  requestAnimationFrame(() => {
    els.announcer.textContent = message;
  });
}

let toastTimer = 0;
function toast(message) {
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

function formatStats({ ttft, tps, tokens }) {
  const parts = [];
  if (ttft != null && Number.isFinite(ttft)) parts.push(`${ttft < 10 ? ttft.toFixed(2) : ttft.toFixed(1)} s to first token`);
  if (tps != null && Number.isFinite(tps) && tps > 0) parts.push(`${tps.toFixed(1)} tokens/s`);
  if (tokens) parts.push(`${tokens} tokens`);
  return parts.join(" · ");
}

// ---------------------------------------------------------------------------------------
// Messages

function userMessage(text, message = null, siblings = null) {
  const bubble = el("div", { class: "bubble" });
  bubble.textContent = text; // a person's words are text, never HTML
  const node = el("div", { class: "msg user" }, bubble);
  if (message) {
    node.dataset.messageId = message.id;
    node.append(el("div", { class: "user-actions" }, versionNav(message, siblings),
      iconButton("edit", "Edit question", () => startEdit(node, message), "edit-question")));
  }
  return node;
}

/** '‹ 2/3 ›' between the versions of a message (edited questions, regenerated answers). */
function versionNav(message, siblings) {
  if (!siblings || siblings.length < 2) return null;
  const index = siblings.findIndex((m) => m.id === message.id);
  const button = (cls, label, text, target) =>
    el("button", { type: "button", class: `icon-btn small ${cls}`, "aria-label": label, title: label, text,
      disabled: !target, onclick: () => switchTo(target.id) });
  return el("span", { class: "versions", role: "group", "aria-label": "Versions" },
    button("version-prev", "Previous version", "‹", siblings[index - 1]),
    el("span", { class: "version-count", text: `${index + 1}/${siblings.length}` }),
    button("version-next", "Next version", "›", siblings[index + 1]));
}

/** Scroll to a message (a search hit), switching to its branch first if it is on another. */
async function showMessage(id, conversation, messageId) {
  if (!(conversation.current_path || []).includes(messageId)) {
    try {
      conversation = await api.switchBranch(id, messageId);
    } catch {
      return null;
    }
    if (state.live || state.conversationId !== id) return null;
    state.conversation = conversation;
    renderConversation(conversation);
  }
  const node = els.messages.querySelector(`[data-message-id="${messageId}"]`);
  if (node) {
    state.stick = false;
    node.scrollIntoView({ block: "center" });
    node.classList.add("found");
    setTimeout(() => node.classList.remove("found"), 2500);
  }
  return null;
}

/** Show another version: the server makes its branch current (so a reload shows it too). */
async function switchTo(messageId) {
  const id = state.conversationId;
  if (state.live || !id) return;
  try {
    const conversation = await api.switchBranch(id, messageId);
    if (state.live || state.conversationId !== id) return;
    state.conversation = conversation;
    renderConversation(conversation, { scroll: false });
    updateContext(id);
  } catch (error) {
    toast(`Could not switch versions: ${error.message}`);
  }
}

/** Edit a question in place; sending it asks it as a sibling (the old branch is kept). */
function startEdit(node, message) {
  if (state.live || node.querySelector(".edit-form")) return;
  const area = el("textarea", { class: "edit-box", "aria-label": "Edit your question", rows: "3" });
  area.value = message.content;
  const close = () => {
    form.remove();
    node.classList.remove("editing");
  };
  const form = el("form", { class: "edit-form" }, area,
    el("div", { class: "edit-buttons" },
      el("button", { type: "button", class: "btn small edit-cancel", text: "Cancel", onclick: close }),
      el("button", { type: "submit", class: "btn small primary edit-send", text: "Send" })));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = area.value.trim();
    if (!text || state.live) return;
    close();
    ask(text, { parentId: message.parent_id ?? null, from: node });
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
    else if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  node.classList.add("editing");
  node.append(form);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}

/** A new answer to the same question, kept beside the others ('‹ 1/2 ›'). */
function regenerate(view) {
  if (state.live) return;
  const questionId = view.message?.parent_id;
  if (questionId == null || !state.conversationId) {
    reask(view.question); // an answer not saved yet: ask again
    return;
  }
  ask(view.question, { parentId: questionId, from: view.node, regenerate: true });
}

const FINISH_NOTES = {
  cancelled: "Stopped. The answer was cancelled before it was complete.",
  length: "The answer reached the maximum length.",
  interrupted: "This answer was interrupted.",
};

/** One answer: its Markdown body, a status line, a notice when it failed, stats and actions. */
class AnswerView {
  constructor(question, message = null, siblings = null) {
    this.question = question;
    this.message = message;
    this.text = "";
    this.status = el("div", { class: "status", hidden: true }, el("span", { class: "dots", "aria-hidden": "true" }, el("i"), el("i"), el("i")), el("span", { class: "status-text" }));
    this.body = el("div", { class: "md" });
    this.notice = el("div", { class: "notice", hidden: true });
    this.stats = el("span", { class: "stats" });
    this.copyButton = iconButton("copy", "Copy answer", () => copyWithFeedback(this.copyButton, this.text), "copy-answer");
    this.regenerateButton = iconButton("retry", "Regenerate answer", () => regenerate(this), "regenerate");
    this.retryButton = el("button", { type: "button", class: "btn small retry", "aria-label": "Retry this question", onclick: () => regenerate(this) }, icon("retry"), el("span", { text: "Retry" }));
    this.actions = el("div", { class: "actions" }, versionNav(message, siblings), this.copyButton, this.regenerateButton);
    this.node = el(
      "article",
      { class: "msg assistant", "aria-label": "Answer" },
      el("div", { class: "avatar", "aria-hidden": "true", text: "G" }),
      el("div", { class: "content" }, this.status, this.body, this.notice, el("div", { class: "footer" }, this.stats, this.actions)),
    );
    if (message) this.node.dataset.messageId = message.id;
    this.markdown = new StreamingMarkdown(this.body, { onPaint: followAnswer });
    this.setState("done");
  }

  setState(name) {
    this.state = name;
    this.node.dataset.state = name;
  }

  setStatus(text) {
    this.status.hidden = !text;
    this.status.querySelector(".status-text").textContent = text || "";
    followAnswer();
  }

  /** The server left the oldest turns out of this answer's prompt: they no longer fit. */
  truncated(count) {
    if (!count || this.node.querySelector(".truncated")) return;
    const turns = count === 1 ? "1 earlier turn was" : `${count} earlier turns were`;
    this.body.before(el("p", { class: "truncated", text: `${turns} left out of this answer: the conversation no longer fits the model's context.` }));
  }

  waiting(text = "Thinking…") {
    this.setState("waiting");
    this.setStatus(text);
  }

  queued(position) {
    this.setState("waiting");
    this.setStatus(position > 0 ? `Waiting… ${ordinal(position)} in line` : "Waiting…");
  }

  stream(text) {
    if (this.state !== "streaming") {
      this.setState("streaming");
      this.setStatus("");
    }
    this.text = text;
    this.markdown.update(text);
  }

  /** Show a saved or finished answer. `reason`: stop, length, cancelled, error or interrupted. */
  finish({ text = this.text, reason = "stop", error = "", stats = null }) {
    this.text = text || "";
    this.setStatus("");
    this.markdown.finish(this.text);
    const failed = reason === "error" || reason === "cancelled" || reason === "interrupted";
    this.setState(reason === "error" ? "error" : reason === "cancelled" || reason === "interrupted" ? "cancelled" : "done");
    const note = reason === "error" ? `The answer failed: ${error || "unknown error"}` : FINISH_NOTES[reason];
    this.notice.hidden = !note;
    this.notice.textContent = note || "";
    if (failed) this.notice.append(this.retryButton);
    this.notice.classList.toggle("error", reason === "error");
    this.stats.textContent = stats ? formatStats(stats) : "";
    this.copyButton.hidden = !this.text;
    followAnswer();
  }
}

function clearMessages() {
  els.messages.replaceChildren();
  els.empty.hidden = false;
}

function appendMessage(node) {
  els.empty.hidden = true;
  els.messages.append(node);
}

/** Only the last answer offers "regenerate"; nothing does while an answer streams. */
function refreshActions() {
  els.messages.classList.toggle("live", Boolean(state.live)); // no edits or version switches meanwhile
  const answers = els.messages.querySelectorAll(".msg.assistant");
  answers.forEach((node, index) => {
    const button = node.querySelector(".regenerate");
    const failed = node.dataset.state === "error" || node.dataset.state === "cancelled"; // it has "Retry"
    if (button) button.hidden = Boolean(state.live) || failed || index !== answers.length - 1;
  });
}

function savedStats(message) {
  const stats = {
    ttft: message.time_to_first_token,
    tps: message.tokens_per_second,
    tokens: message.completion_tokens,
  };
  return stats.ttft == null && stats.tps == null && !stats.tokens ? null : stats;
}

/** Show the conversation's current path; `scroll: false` keeps the reader's place. */
function renderConversation(conversation, { scroll = true } = {}) {
  const scrollTop = els.scroller.scrollTop;
  clearMessages();
  let question = "";
  let pending = null;
  const messages = currentPath(conversation);
  const siblings = siblingsOf(conversation);
  messages.forEach((message, index) => {
    if (message.role === "user") {
      question = message.content;
      appendMessage(userMessage(message.content, message, siblings.get(message.id)));
    } else if (message.role === "assistant") {
      const view = new AnswerView(question, message, siblings.get(message.id));
      view.truncated(message.history_truncated);
      appendMessage(view.node);
      const last = index === messages.length - 1;
      if (!message.finish_reason && conversation.generating && last) {
        pending = view;
        if (message.content) view.stream(message.content);
        else view.waiting("Generating…");
      } else {
        view.finish({
          text: message.content,
          reason: message.finish_reason || "interrupted",
          error: message.error,
          stats: savedStats(message),
        });
      }
    }
  });
  // A question saved without an answer row yet: the turn is about to start.
  if (!pending && conversation.generating && messages.at(-1)?.role === "user") {
    pending = new AnswerView(question);
    pending.waiting("Generating…");
    appendMessage(pending.node);
  }
  refreshActions();
  if (scroll) {
    state.stick = true;
    scrollToBottom();
  } else {
    els.scroller.scrollTop = scrollTop;
  }
  return pending;
}

// ---------------------------------------------------------------------------------------
// Scrolling: follow the answer, pause when the user scrolls up.

function distanceFromBottom() {
  const s = els.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight;
}

function scrollToBottom() {
  els.scroller.scrollTop = els.scroller.scrollHeight;
  els.jump.hidden = true;
}

function followAnswer() {
  if (state.stick) scrollToBottom();
  else els.jump.hidden = distanceFromBottom() < 48;
}

els.scroller.addEventListener("scroll", () => {
  state.stick = distanceFromBottom() < 48;
  els.jump.hidden = state.stick;
}, { passive: true });
els.scroller.addEventListener("wheel", (event) => {
  if (event.deltaY < 0) state.stick = false;
}, { passive: true });
els.scroller.addEventListener("touchmove", () => {
  state.stick = distanceFromBottom() < 48;
}, { passive: true });
els.jump.addEventListener("click", () => {
  state.stick = true;
  scrollToBottom();
  els.prompt.focus();
});

// ---------------------------------------------------------------------------------------
// Conversation identity: URL hash + localStorage

function hashId() {
  const id = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  return /^[0-9a-f-]{32,36}$/i.test(id) ? id : null;
}

function remember(id) {
  try {
    if (id) localStorage.setItem(LAST_KEY, id);
    else localStorage.removeItem(LAST_KEY);
  } catch {
    /* storage disabled */
  }
}

function recalled() {
  try {
    return localStorage.getItem(LAST_KEY);
  } catch {
    return null;
  }
}

function setUrl(id) {
  history.replaceState(null, "", id ? `#${id}` : `${location.pathname}${location.search}`);
}

function setTitle(title) {
  const share = $("share-open"); // made further down, with the share dialog
  if (share) share.hidden = !state.conversationId;
  els.title.textContent = title || "New chat";
  document.title = title ? `${title} · ChatGLM` : "ChatGLM";
}

/** The page now shows conversation `id` (created or learned from the server). */
function adopt(id, { title } = {}) {
  if (!id || state.conversationId === id) return;
  state.conversationId = id;
  if (!state.conversation || state.conversation.id !== id) {
    state.conversation = { id, title: title || "", system_prompt: state.draft.system_prompt, settings: { ...state.draft.settings } };
  }
  setUrl(id);
  remember(id);
  markActive();
}

// ---------------------------------------------------------------------------------------
// Sidebar: saved conversations

function dayBucket(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "Older";
  const today = new Date();
  today.setHours(0, 0, 0, 0);
  const days = Math.floor((today - date) / 86400000) + 1;
  if (date >= today) return "Today";
  if (days <= 1) return "Yesterday";
  if (days <= 7) return "Previous 7 days";
  if (days <= 30) return "Previous 30 days";
  return "Older";
}

function renderList() {
  const { items } = state.list;
  els.list.replaceChildren();
  let bucket = null;
  for (const item of items) {
    const group = dayBucket(item.updated_at || item.created_at);
    if (group !== bucket) {
      bucket = group;
      els.list.append(el("li", { class: "group", role: "presentation", text: group }));
    }
    els.list.append(listItem(item));
  }
  if (!items.length && !state.list.loading) {
    els.listStatus.textContent = state.list.q ? "No conversation matches." : "No conversations yet.";
  } else {
    els.listStatus.textContent = "";
  }
  els.more.hidden = !state.list.hasNext;
  markActive();
}

/** Text with the [start, end) part in a <mark>: built from text nodes, never HTML. */
function highlighted(text, span) {
  const node = el("span", { class: "snippet" });
  if (!span) {
    node.textContent = text;
    return node;
  }
  node.append(text.slice(0, span[0]), el("mark", { text: text.slice(span[0], span[1]) }), text.slice(span[1]));
  return node;
}

function listItem(item) {
  const title = item.title || "Untitled";
  const link = el("a", { class: "conversation-link", href: `#${item.id}`, title }, el("span", { class: "conversation-title", text: title }));
  if (item.snippet !== undefined) {
    // A search hit: the title or the message that matched, highlighted.
    link.replaceChildren(item.message_id ? el("span", { class: "conversation-title", text: title }) : highlighted(title, item.highlight));
    if (item.message_id) link.append(highlighted(item.snippet, item.highlight));
    link.classList.add("search-hit");
  }
  link.addEventListener("click", (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    if (MOBILE.matches) closeSidebar();
    if (item.message_id) state.openAt = { id: item.id, messageId: item.message_id };
    if (item.message_id && item.id === state.conversationId) openConversation(item.id);
    else navigateTo(item.id);
  });
  const li = el(
    "li",
    { class: "conversation", "data-id": item.id },
    link,
    el("div", { class: "item-actions" },
      iconButton("edit", `Rename “${title}”`, () => startRename(li, item), "rename"),
      iconButton("trash", `Delete “${title}”`, () => remove(item), "delete")),
  );
  return li;
}

function markActive() {
  for (const li of els.list.querySelectorAll("li.conversation")) {
    const active = li.dataset.id === state.conversationId;
    li.classList.toggle("active", active);
    const link = li.querySelector("a");
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function loadList({ reset = true } = {}) {
  const list = state.list;
  const page = reset ? 1 : list.page + 1;
  const q = list.q;
  list.loading = true;
  if (reset && !list.items.length) els.listStatus.textContent = "Loading…";
  try {
    // A search looks in titles and message text (GET /api/search): one page of best hits.
    const data = q ? await api.search(q) : await api.list({ page, q });
    if (q !== state.list.q) return; // a newer search is on its way
    const rows = q ? data.results : data.conversations;
    list.items = reset ? rows : list.items.concat(rows);
    list.page = data.page || page;
    list.hasNext = Boolean(data.has_next);
    list.loading = false;
    renderList();
  } catch (error) {
    list.loading = false;
    els.listStatus.textContent = `Could not load conversations: ${error.message}`;
  }
}

let listRefresh = 0;
function refreshListSoon(delay = 300) {
  clearTimeout(listRefresh);
  listRefresh = setTimeout(() => {
    if (els.list.querySelector(".rename-input")) refreshListSoon(2000); // never redraw under a rename
    else loadList();
  }, delay);
}

/** Put a just-created (or just-used) conversation at the top of the list at once. */
function bumpInList(id, title) {
  const items = state.list.items.filter((item) => item.id !== id);
  const old = state.list.items.find((item) => item.id === id);
  const now = new Date().toISOString();
  if (state.list.q && !old) return;
  items.unshift({ ...(old || { id, created_at: now }), title: title ?? old?.title ?? "", updated_at: now });
  state.list.items = items;
  renderList();
}

function startRename(li, item) {
  const link = li.querySelector("a");
  const input = el("input", { class: "rename-input", type: "text", value: item.title || "", "aria-label": "New title", maxlength: "200" });
  link.replaceWith(input);
  li.classList.add("renaming");
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (!save || !title || title === item.title) {
      renderList();
      li.isConnected && li.querySelector(".rename")?.focus();
      return;
    }
    try {
      const updated = await api.update(item.id, { title });
      item.title = updated?.title ?? title;
      if (state.conversationId === item.id) {
        if (state.conversation) state.conversation.title = item.title;
        setTitle(item.title);
      }
      announce(`Renamed to ${item.title}`);
    } catch (error) {
      toast(`Could not rename: ${error.message}`);
    }
    renderList();
    els.list.querySelector(`li[data-id="${CSS.escape(item.id)}"] .rename`)?.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

async function remove(item) {
  const title = item.title || "Untitled";
  if (!window.confirm(`Delete “${title}”? This cannot be undone.`)) return;
  try {
    await api.remove(item.id);
  } catch (error) {
    if (error.status !== 404) {
      toast(`Could not delete: ${error.message}`);
      return;
    }
  }
  state.list.items = state.list.items.filter((other) => other.id !== item.id);
  renderList();
  if (recalled() === item.id) remember(null);
  if (state.conversationId === item.id) newChat();
  announce(`Deleted ${title}`);
}

let searchTimer = 0;
els.search.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    state.list.q = els.search.value.trim();
    loadList();
  }, 250);
});
els.more.addEventListener("click", () => loadList({ reset: false }));

// ---------------------------------------------------------------------------------------
// Opening conversations

function detachLive() {
  const live = state.live;
  if (!live) return;
  live.detached = true;
  live.handle?.detach();
  clearTimeout(live.stopTimer);
  clearInterval(live.watchdog);
  state.live = null;
  setBusy(false);
}

function newChat({ focus = true } = {}) {
  detachLive();
  state.opening += 1;
  state.conversationId = null;
  state.conversation = null;
  state.draft = { system_prompt: "", settings: {} };
  socket.follow(null);
  clearMessages();
  updateContext(null);
  setTitle("");
  setUrl(null);
  remember(null);
  markActive();
  if (MOBILE.matches) closeSidebar();
  if (focus) els.prompt.focus();
}

function navigateTo(id) {
  if (id === state.conversationId && !state.live?.detached) return;
  if (location.hash !== `#${id}`) history.pushState(null, "", `#${id}`);
  openConversation(id);
}

async function openConversation(id) {
  if (state.live && state.live.conversationId !== id) detachLive();
  if (state.live && state.live.conversationId === id) return; // already showing it live
  const ticket = (state.opening += 1);
  state.conversationId = id;
  markActive();
  let conversation;
  try {
    conversation = await api.get(id);
  } catch (error) {
    if (ticket !== state.opening) return;
    if (error.status === 404) {
      if (recalled() === id) remember(null);
      toast("That conversation does not exist (any more).");
    } else {
      toast(`Could not open the conversation: ${error.message}`);
    }
    newChat({ focus: false });
    return;
  }
  if (ticket !== state.opening) return;
  if (state.live) return; // the user asked meanwhile: never redraw over their answer
  state.conversation = conversation;
  setTitle(conversation.title);
  setUrl(id);
  remember(id);
  let pending = renderConversation(conversation);
  updateContext(id);
  const target = state.openAt?.id === id ? state.openAt.messageId : null;
  state.openAt = null;
  if (target && !pending) pending = await showMessage(id, conversation, target);
  if (pending) reattach(pending, id);
  else socket.follow(id); // idle: answers asked elsewhere (another tab) in it show up here
}

/**
 * A frame of an answer asked elsewhere (another tab) in a conversation the socket follows.
 * On the conversation on screen, while idle: reload it from the server (the new question;
 * the answer, still generating, is then followed by `reattach`), or, once it has ended, show
 * it as saved. The page's own answers never come here (their frames carry its request ids).
 */
function showForeignTurn(frame) {
  const id = frame.conversation_id;
  if (state.live || id !== state.conversationId) return;
  if (frame.type === "start") bumpInList(id);
  else if (frame.type !== "done" && frame.type !== "error") return; // deltas: reattach catches up
  openConversation(id);
}

window.addEventListener("hashchange", () => {
  const id = hashId();
  if (id && id !== state.conversationId) openConversation(id);
  else if (!id && state.conversationId && !location.hash) newChat({ focus: false });
});

// ---------------------------------------------------------------------------------------
// Streaming answers

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.stop.disabled = false;
  els.messages.setAttribute("aria-busy", busy ? "true" : "false");
  updateSendButton();
  refreshActions();
}

function updateSendButton() {
  els.send.disabled = Boolean(state.live) || !els.prompt.value.trim();
}

function currentSettings() {
  return state.conversation?.settings || state.draft.settings || {};
}

function generationParams() {
  const settings = currentSettings();
  const params = {};
  for (const key of ["temperature", "top_p", "max_length", "max_new_tokens"]) {
    if (settings[key] !== undefined && settings[key] !== null && settings[key] !== "") params[key] = settings[key];
  }
  return params;
}

async function chooseTransport() {
  if (socket.isOpen) return "websocket";
  // A socket that has worked before is worth a short wait; one that never opened is not.
  if (socket.everOpened || socket.failures === 0) {
    if (await socket.connect(socket.everOpened ? 3000 : 2500)) return "websocket";
  }
  return "sse";
}

function showConnection(kind) {
  els.connection.dataset.kind = kind;
  els.connection.title = kind === "websocket" ? "Live connection (WebSocket)" : "Streaming over HTTP";
}

function liveHandlers(live) {
  const current = () => state.live === live && !live.detached;
  return {
    onQueued(position) {
      if (!current()) return;
      live.lastFrame = performance.now();
      live.view.queued(position);
      if (position !== live.announcedPosition) {
        live.announcedPosition = position;
        announce(`Waiting, ${ordinal(position)} in line`);
      }
    },
    onStart(frame) {
      if (!current()) return;
      live.lastFrame = performance.now();
      if (frame.conversation_id && !live.conversationId) {
        live.conversationId = frame.conversation_id;
        adopt(frame.conversation_id, { title: titleFrom(live.view.question) });
        bumpInList(frame.conversation_id, titleFrom(live.view.question));
      }
      live.view.truncated(frame.history_truncated); // saved with the answer too
      if (live.view.state === "waiting") live.view.setStatus("Thinking…");
    },
    onDelta(response) {
      if (!current()) return;
      live.lastFrame = performance.now();
      if (live.firstTokenAt == null && response) live.firstTokenAt = performance.now();
      live.view.stream(response ?? "");
    },
    onDone(frame) {
      if (!current()) return;
      complete(live, frame);
    },
    onError(error) {
      if (!current()) return;
      fail(live, error);
    },
    onDisconnect() {
      if (!current()) return;
      live.view.setStatus("Connection lost. Reconnecting…");
      reattach(live.view, live.conversationId, live);
    },
  };
}

function complete(live, frame) {
  clearTimeout(live.stopTimer);
  clearInterval(live.watchdog);
  const reason = frame.finish_reason || "stop";
  const text = frame.response ?? live.view.text;
  const end = performance.now();
  let stats = null;
  if (!live.reattached) {
    const completion = frame.usage?.completion_tokens;
    const ttft = live.firstTokenAt != null ? (live.firstTokenAt - live.startedAt) / 1000 : null;
    const generating = live.firstTokenAt != null ? (end - live.firstTokenAt) / 1000 : 0;
    stats = { ttft, tps: completion && generating > 0.05 ? completion / generating : null, tokens: completion };
  }
  live.view.finish({ text, reason, stats });
  state.live = null;
  setBusy(false);
  if (frame.conversation_id) adopt(frame.conversation_id);
  announce(reason === "cancelled" ? "Generation stopped." : reason === "length" ? "Answer complete (maximum length reached)." : "Answer complete.");
  if (live.reattached && live.conversationId) refreshSavedStats(live.conversationId, live.view);
  if (live.conversationId) syncTree(live.conversationId);
  if ($("share-open")) $("share-open").hidden = !state.conversationId;
  refreshListSoon();
}

/** After an answer ends, redraw from the server: ids, versions ('‹ 1/2 ›') and saved stats. */
async function syncTree(id) {
  try {
    const conversation = await api.get(id);
    if (state.live || state.conversationId !== id || conversation.generating) return;
    state.conversation = { ...state.conversation, ...conversation };
    renderConversation(conversation, { scroll: state.stick });
  } catch {
    /* the page keeps what it shows */
  }
  updateContext(id);
}

function fail(live, error) {
  clearTimeout(live.stopTimer);
  clearInterval(live.watchdog);
  const message = error?.message || "unknown error";
  live.view.finish({ text: live.view.text, reason: "error", error: message });
  state.live = null;
  setBusy(false);
  announce(`The answer failed: ${message}`);
  refreshListSoon();
}

/** After a re-attached answer ends, show the timings the server saved. */
async function refreshSavedStats(id, view) {
  try {
    const conversation = await api.get(id);
    const last = conversation.messages?.filter((m) => m.role === "assistant").at(-1);
    if (last && last.finish_reason && view.node.isConnected) view.stats.textContent = formatStats(savedStats(last) || {});
  } catch {
    /* stats are a nicety */
  }
}

/**
 * Ask `question`. `branch` (tree.js): {parentId, from, regenerate} asks it under another parent
 * (an edited question) or answers the question again (regenerate); the replaced message and
 * what followed it leave the screen (they stay on the server, one '‹ ›' away).
 */
async function ask(question, branch = null) {
  if (state.live) return;
  const live = { startedAt: performance.now(), firstTokenAt: null, conversationId: state.conversationId };
  state.live = live; // claim the slot at once: a second Enter does nothing
  setBusy(true);
  for (let node = branch?.from; node; ) {
    const next = node.nextElementSibling;
    node.remove();
    node = next;
  }
  if (!branch?.regenerate) appendMessage(userMessage(question));
  const view = new AnswerView(question);
  live.view = view;
  appendMessage(view.node);
  view.waiting("Thinking…");
  state.stick = true;
  scrollToBottom();
  refreshActions();

  // Create the conversation first: it gets an id (URL, sidebar, reload) before any token.
  if (!live.conversationId) {
    try {
      const created = await api.create({ system_prompt: state.draft.system_prompt, settings: state.draft.settings });
      if (state.live !== live) return;
      if (!els.app.dataset.user && !visitorSocketRenewed) {
        // An anonymous visitor's session may have just been created: a socket opened before
        // it cannot see the visitor's conversations, so open a fresh one (once per page).
        visitorSocketRenewed = true;
        socket.restart();
      }
      state.conversation = { ...created, settings: created.settings || state.draft.settings };
      adopt(created.id);
      live.conversationId = created.id;
      bumpInList(created.id, titleFrom(question));
      setTitle(titleFrom(question));
    } catch (error) {
      if (state.live !== live) return;
      if (error.status && error.status < 500 && error.status !== 404 && error.status !== 405) {
        fail(live, error);
        return;
      }
      // No conversation API: the server creates the conversation with the first answer.
    }
  } else {
    bumpInList(live.conversationId);
  }
  if (!state.conversation?.title && live.conversationId) setTitle(titleFrom(question));

  const transport = await chooseTransport();
  if (state.live !== live) return;
  showConnection(transport);
  live.transport = transport;
  const payload = { query: question, conversation_id: live.conversationId, params: generationParams() };
  if (branch) {
    payload.parent_id = branch.parentId;
    if (branch.regenerate) delete payload.query;
    if (transport !== "websocket") {
      fail(live, { message: "Editing and regenerating need the live connection; try again in a moment." });
      return;
    }
  }
  const handlers = liveHandlers(live);
  if (transport === "websocket") {
    const onError = handlers.onError;
    handlers.onError = (error) => {
      if (error?.code === "generation_in_progress" && state.live === live && !live.firstTokenAt) {
        // The socket still carries an answer the page left (another conversation): ask over HTTP.
        showConnection("sse");
        live.transport = "sse";
        live.handle = streamOverSSE(payload, handlers);
        return;
      }
      onError(error);
    };
  }
  live.handle = transport === "websocket" ? socket.chat(payload, handlers) : streamOverSSE(payload, handlers);
}

/** Follow an answer that is still being generated (after a reload, or a lost socket). */
async function reattach(view, conversationId, existing = null) {
  if (state.live && state.live !== existing) detachLive();
  const live = existing || { startedAt: performance.now(), firstTokenAt: null, conversationId, view };
  live.reattached = true;
  live.lastFrame = performance.now();
  state.live = live;
  setBusy(true);
  const ok = socket.isOpen || (await socket.connect(3000)) || (await socket.connect(3000));
  if (state.live !== live || live.detached) return;
  if (ok) {
    showConnection("websocket");
    if (view.state === "waiting") view.setStatus("Generating…");
    else view.setStatus("");
    live.handle = socket.subscribe(conversationId, liveHandlers(live));
  } else {
    showConnection("sse");
    view.setStatus("Generating… (the answer will appear when it is complete)");
    live.handle = { transport: "poll", stop: () => toast("Stopping needs the live connection; try again in a moment."), detach() {} };
  }
  // Whatever the transport, check now and then that the answer has not ended unseen.
  clearInterval(live.watchdog);
  live.watchdog = setInterval(() => checkStillGenerating(live), ok ? 4000 : 1500);
}

async function checkStillGenerating(live) {
  if (state.live !== live || live.detached || live.checking) return;
  if (live.transport !== "poll" && live.handle?.transport !== "poll" && performance.now() - live.lastFrame < 4000) return;
  live.checking = true;
  try {
    const conversation = await api.get(live.conversationId);
    if (state.live !== live || live.detached) return;
    if (!conversation.generating) {
      const last = conversation.messages?.filter((m) => m.role === "assistant").at(-1);
      complete(live, {
        response: last?.content ?? live.view.text,
        finish_reason: last?.finish_reason || "interrupted",
        conversation_id: live.conversationId,
      });
      if (last) live.view.stats.textContent = formatStats(savedStats(last) || {});
    }
  } catch {
    /* try again at the next tick */
  } finally {
    live.checking = false;
  }
}

function stopGenerating() {
  const live = state.live;
  if (!live) return;
  els.stop.disabled = true;
  live.view.setStatus(live.view.state === "streaming" ? "" : "Stopping…");
  live.handle?.stop();
  // If the server never confirms, end it here: the server keeps what it has, marked cancelled.
  clearTimeout(live.stopTimer);
  live.stopTimer = setTimeout(() => {
    if (state.live === live) complete(live, { finish_reason: "cancelled", response: live.view.text });
  }, STOP_GRACE_MS);
  if (!live.handle) complete(live, { finish_reason: "cancelled", response: live.view.text });
}

function reask(question) {
  if (!question || state.live) return;
  ask(question);
}

// ---------------------------------------------------------------------------------------
// Composer

let composing = false;
els.prompt.addEventListener("compositionstart", () => {
  composing = true;
});
els.prompt.addEventListener("compositionend", () => {
  setTimeout(() => {
    composing = false; // Safari sends the IME's confirming Enter after compositionend
  }, 0);
});

els.prompt.addEventListener("keydown", (event) => {
  if (event.key === "ArrowUp" && !els.prompt.value && !state.live && !event.isComposing) {
    // ↑ in an empty box edits the last question, as in other chat apps.
    const last = [...els.messages.querySelectorAll(".msg.user")].at(-1);
    const message = last && currentPath(state.conversation || {}).find((m) => String(m.id) === last.dataset.messageId);
    if (message) {
      event.preventDefault();
      startEdit(last, message);
    }
    return;
  }
  if (event.key !== "Enter") return;
  if (event.isComposing || event.keyCode === 229 || composing) return; // an IME is confirming text
  if (event.shiftKey || event.altKey) return; // a new line
  event.preventDefault();
  submit();
});

function autosize() {
  const area = els.prompt;
  area.style.height = "auto";
  area.style.height = `${Math.min(area.scrollHeight, 240)}px`;
}

els.prompt.addEventListener("input", () => {
  autosize();
  updateSendButton();
});

function submit() {
  const question = els.prompt.value.trim();
  if (!question || state.live) return;
  els.prompt.value = "";
  autosize();
  updateSendButton();
  ask(question);
}

els.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});
els.stop.addEventListener("click", () => {
  stopGenerating();
  els.prompt.focus();
});

// ---------------------------------------------------------------------------------------
// Settings dialog

function showSliderValue(input, output) {
  output.textContent = input.dataset.unset === "true" ? "default" : Number(input.value).toFixed(2);
}

function fillSettings() {
  const conversation = state.conversation;
  const settings = currentSettings();
  els.systemPrompt.value = conversation ? conversation.system_prompt || "" : state.draft.system_prompt;
  for (const [input, output, key] of [[els.temperature, els.temperatureOut, "temperature"], [els.topP, els.topPOut, "top_p"]]) {
    const value = settings[key];
    input.dataset.unset = value == null ? "true" : "false";
    input.value = value == null ? SLIDER_DEFAULTS[key] : value;
    showSliderValue(input, output);
  }
  els.maxLength.value = settings.max_length ?? "";
  els.settingsError.textContent = "";
  els.settingsNote.textContent = conversation
    ? "Saved with this conversation and sent with each message."
    : "Used for the next conversation you start.";
  $("export").hidden = !state.conversationId;
  if (state.conversationId) {
    $("export-md").href = api.exportUrl(state.conversationId, "md");
    $("export-json").href = api.exportUrl(state.conversationId, "json");
  }
}

/** The form's settings; an unset value is null (a JSON merge patch removes it on the server). */
function readSettings() {
  const settings = { temperature: null, top_p: null, max_length: null };
  if (els.temperature.dataset.unset !== "true") settings.temperature = Number(els.temperature.value);
  if (els.topP.dataset.unset !== "true") settings.top_p = Number(els.topP.value);
  const maxLength = els.maxLength.value.trim();
  if (maxLength) {
    const n = Number(maxLength);
    if (!Number.isInteger(n) || n < 1) throw new Error("Maximum length must be a whole number of tokens.");
    settings.max_length = n;
  }
  return { system_prompt: els.systemPrompt.value, settings };
}

function withoutNulls(settings) {
  return Object.fromEntries(Object.entries(settings || {}).filter(([, value]) => value !== null && value !== undefined));
}

for (const [input, output] of [[els.temperature, els.temperatureOut], [els.topP, els.topPOut]]) {
  input.addEventListener("input", () => {
    input.dataset.unset = "false";
    showSliderValue(input, output);
  });
}

const shareDialog = new ShareDialog({ conversationId: () => state.conversationId, toast });
const shareButton = el("button", { type: "button", class: "btn small share-open", id: "share-open", text: "Share",
  hidden: true, onclick: () => shareDialog.open() });
els.newChatTop.before(shareButton);

els.openSettings.addEventListener("click", () => {
  fillSettings();
  els.settings.showModal();
  els.systemPrompt.focus();
});
$("settings-close").addEventListener("click", () => els.settings.close("cancel"));
$("settings-cancel").addEventListener("click", () => els.settings.close("cancel"));
$("settings-reset").addEventListener("click", () => {
  els.systemPrompt.value = "";
  els.maxLength.value = "";
  for (const [input, output, key] of [[els.temperature, els.temperatureOut, "temperature"], [els.topP, els.topPOut, "top_p"]]) {
    input.dataset.unset = "true";
    input.value = SLIDER_DEFAULTS[key];
    showSliderValue(input, output);
  }
});
els.settingsForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  let fields;
  try {
    fields = readSettings();
  } catch (error) {
    els.settingsError.textContent = error.message;
    return;
  }
  if (state.conversationId) {
    try {
      const updated = await api.update(state.conversationId, fields);
      state.conversation = { ...state.conversation, ...fields, settings: withoutNulls(fields.settings), ...(updated || {}) };
    } catch (error) {
      els.settingsError.textContent = `Could not save: ${error.message}`;
      return;
    }
  } else {
    state.draft = { system_prompt: fields.system_prompt, settings: withoutNulls(fields.settings) };
  }
  els.settings.close("save");
  announce("Settings saved.");
});
els.settings.addEventListener("close", () => els.openSettings.focus());

// ---------------------------------------------------------------------------------------
// Sidebar visibility (off-canvas on a phone, collapsible on a wide screen)

function sidebarOpen() {
  return MOBILE.matches ? els.app.classList.contains("sidebar-open") : !els.app.classList.contains("sidebar-collapsed");
}

function syncSidebarState() {
  const open = sidebarOpen();
  els.toggleSidebar.setAttribute("aria-expanded", String(open));
  const label = open ? "Hide conversations" : "Show conversations";
  els.toggleSidebar.setAttribute("aria-label", label);
  els.toggleSidebar.title = label;
  const overlay = MOBILE.matches && open;
  els.scrim.hidden = !overlay;
  els.main.inert = overlay;
  els.sidebar.inert = MOBILE.matches && !open;
}

function openSidebar() {
  if (MOBILE.matches) els.app.classList.add("sidebar-open");
  else els.app.classList.remove("sidebar-collapsed");
  syncSidebarState();
  if (MOBILE.matches) els.newChat.focus();
}

function closeSidebar() {
  const wasOpen = sidebarOpen();
  if (MOBILE.matches) els.app.classList.remove("sidebar-open");
  else els.app.classList.add("sidebar-collapsed");
  syncSidebarState();
  if (wasOpen && els.sidebar.contains(document.activeElement)) els.toggleSidebar.focus();
}

els.toggleSidebar.addEventListener("click", () => (sidebarOpen() ? closeSidebar() : openSidebar()));
els.closeSidebar.addEventListener("click", closeSidebar);
els.scrim.addEventListener("click", closeSidebar);
MOBILE.addEventListener("change", syncSidebarState);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && MOBILE.matches && sidebarOpen() && !els.settings.open) closeSidebar();
  else if (event.key === "Escape" && state.live && !els.settings.open && !event.target.closest?.(".edit-form")) {
    stopGenerating(); // Esc stops the answer being written
  }
  if ((event.ctrlKey || event.metaKey) && !event.altKey && event.key.toLowerCase() === "k") {
    event.preventDefault(); // Ctrl/Cmd+K: search conversations
    if (MOBILE.matches && !sidebarOpen()) openSidebar();
    els.search.focus();
    els.search.select();
  }
});
els.newChat.addEventListener("click", () => newChat());
els.newChatTop.addEventListener("click", () => newChat());

// ---------------------------------------------------------------------------------------
// Start

handleCopyClicks(els.messages);
socket.onStatus((open) => showConnection(open ? "websocket" : "sse"));
socket.onForeign(showForeignTurn);
syncSidebarState();
updateSendButton();

async function start() {
  socket.connect(); // in the background: the first message waits for it briefly
  loadList();
  const id = hashId() || recalled();
  if (id) await openConversation(id);
  els.prompt.focus();
}

start();
window.chatApp = { state, socket }; // for debugging and the browser tests
