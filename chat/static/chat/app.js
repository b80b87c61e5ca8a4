// The chat page: which conversation is on screen, and the conductor between its parts:
// the sidebar (sidebar.js), the message log (messages.js), the answer in flight
// (live-answer.js), the composer (composer.js), the settings dialog (settings-panel.js).
// Transport lives in api.js, Markdown rendering in render.js.
//
// One answer streams at a time (`state.live`, a LiveAnswer). The conversation is created
// before its first message, so it has an id at once: the URL hash and localStorage point at
// it, and a reloaded page opens it again and, if the answer is still being generated,
// subscribes to the rest. While a saved conversation is open, the socket follows it: an answer
// asked in it elsewhere (another tab) is shown live here too, through the same re-attach path.

import { ChatSocket, conversations as api } from "./api.js";
import { Composer, ContextMeter } from "./composer.js";
import { $, el, toast } from "./dom.js";
import { LiveAnswer } from "./live-answer.js";
import { MessageLog } from "./messages.js";
import { handleCopyClicks } from "./render.js";
import { Scroller } from "./scroll.js";
import { SettingsPanel, withoutNulls } from "./settings-panel.js";
import { ShareDialog } from "./share-dialog.js";
import { MOBILE, Sidebar } from "./sidebar.js";
import { currentPath } from "./tree.js";

const els = {
  app: $("app"),
  title: $("conversation-title"),
  connection: $("connection"),
  messages: $("messages"),
  newChat: $("new-chat"),
  newChatTop: $("new-chat-top"),
  search: $("search"),
};
const LAST_KEY = `chatglm:last:${els.app.dataset.user || "-"}`;

const state = {
  conversationId: null,
  conversation: null, // {id, title, system_prompt, settings, ...}
  draft: { system_prompt: "", settings: {} }, // settings chosen before the conversation exists
  live: null, // the LiveAnswer being streamed into the page
  opening: 0,
  openAt: null, // a search hit's message to scroll to once its conversation opens
};

const socket = new ChatSocket();
let visitorSocketRenewed = false;
const isBusy = () => Boolean(state.live);

const scroller = new Scroller({ scroller: $("scroller"), jump: $("jump"), onJump: () => composer.focus() });
const log = new MessageLog({
  root: els.messages,
  empty: $("empty"),
  scroller,
  isBusy,
  onSwitch: switchTo,
  onAsk: ask,
  onRegenerate: regenerate,
});
const composer = new Composer({
  isBusy,
  onSend: (question) => ask(question),
  onStop: stopGenerating,
  onEditLast() {
    const last = [...els.messages.querySelectorAll(".msg.user")].at(-1);
    const message = last && currentPath(state.conversation || {}).find((m) => String(m.id) === last.dataset.messageId);
    if (message) log.startEdit(last, message);
    return Boolean(message);
  },
});
const meter = new ContextMeter({ isShown: (id) => state.conversationId === id });
const sidebar = new Sidebar({
  els: {
    app: els.app,
    sidebar: $("sidebar"),
    scrim: $("scrim"),
    main: $("main"),
    toggleSidebar: $("toggle-sidebar"),
    closeSidebar: $("close-sidebar"),
    newChat: els.newChat,
    search: els.search,
    list: $("conversation-list"),
    listStatus: $("list-status"),
    more: $("more"),
  },
  activeId: () => state.conversationId,
  onOpen(item) {
    if (item.message_id) state.openAt = { id: item.id, messageId: item.message_id };
    if (item.message_id && item.id === state.conversationId) openConversation(item.id);
    else navigateTo(item.id);
  },
  onRenamed(item) {
    if (state.conversationId !== item.id) return;
    if (state.conversation) state.conversation.title = item.title;
    setTitle(item.title);
  },
  onDeleted(item) {
    if (recalled() === item.id) remember(null);
    if (state.conversationId === item.id) newChat();
  },
});
const settingsPanel = new SettingsPanel({
  current: () => ({ id: state.conversationId, conversation: state.conversation, draft: state.draft }),
  onSaved({ id, fields, updated }) {
    const settings = withoutNulls(fields.settings);
    if (id) state.conversation = { ...state.conversation, ...fields, settings, ...(updated || {}) };
    else state.draft = { system_prompt: fields.system_prompt, settings };
  },
});
const shareDialog = new ShareDialog({ conversationId: () => state.conversationId });
const shareButton = el("button", { type: "button", class: "btn small share-open", id: "share-open", text: "Share",
  hidden: true, onclick: () => shareDialog.open() });
els.newChatTop.before(shareButton);

// ---------------------------------------------------------------------------------------
// Conversation identity: URL hash + localStorage

function titleFrom(query) {
  const title = query.split(/\s+/).join(" ").trim();
  return title.length <= 80 ? title : `${title.slice(0, 79).trimEnd()}…`;
}

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
  shareButton.hidden = !state.conversationId;
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
  sidebar.markActive();
}

// ---------------------------------------------------------------------------------------
// Opening conversations

function setBusy(busy) {
  composer.setBusy(busy);
  els.messages.setAttribute("aria-busy", busy ? "true" : "false");
  log.refreshActions();
}

function showConnection(kind) {
  els.connection.dataset.kind = kind;
  els.connection.title = kind === "websocket" ? "Live connection (WebSocket)" : "Streaming over HTTP";
}

function detachLive() {
  if (!state.live) return;
  state.live.detach();
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
  log.clear();
  meter.update(null);
  setTitle("");
  setUrl(null);
  remember(null);
  sidebar.markActive();
  if (MOBILE.matches) sidebar.close();
  if (focus) composer.focus();
}

function navigateTo(id) {
  if (id === state.conversationId) return;
  if (location.hash !== `#${id}`) history.pushState(null, "", `#${id}`);
  openConversation(id);
}

async function openConversation(id) {
  if (state.live && state.live.conversationId !== id) detachLive();
  if (state.live && state.live.conversationId === id) return; // already showing it live
  const ticket = (state.opening += 1);
  state.conversationId = id;
  sidebar.markActive();
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
  let pending = log.render(conversation);
  meter.update(id);
  const target = state.openAt?.id === id ? state.openAt.messageId : null;
  state.openAt = null;
  if (target && !pending) pending = await showMessage(id, conversation, target);
  if (pending) follow(pending, id);
  else socket.follow(id); // idle: answers asked elsewhere (another tab) in it show up here
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
    log.render(conversation);
  }
  const node = els.messages.querySelector(`[data-message-id="${messageId}"]`);
  if (node) {
    scroller.stick = false;
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
    log.render(conversation, { scroll: false });
    meter.update(id);
  } catch (error) {
    toast(`Could not switch versions: ${error.message}`);
  }
}

/**
 * A frame of an answer asked elsewhere (another tab) in a conversation the socket follows.
 * On the conversation on screen, while idle: reload it from the server (the new question;
 * the answer, still generating, is then followed by `follow`), or, once it has ended, show
 * it as saved. The page's own answers never come here (their frames carry its request ids).
 */
function showForeignTurn(frame) {
  const id = frame.conversation_id;
  if (state.live || id !== state.conversationId) return;
  if (frame.type === "start") sidebar.bump(id);
  else if (frame.type !== "done" && frame.type !== "error") return; // deltas: the re-attach catches up
  openConversation(id);
}

window.addEventListener("hashchange", () => {
  const id = hashId();
  if (id && id !== state.conversationId) openConversation(id);
  else if (!id && state.conversationId && !location.hash) newChat({ focus: false });
});

// ---------------------------------------------------------------------------------------
// Answers

/** What the page tells each LiveAnswer it starts. */
const livePage = {
  showConnection,
  setBusy,
  learned(live, id) {
    const title = titleFrom(live.view.question);
    adopt(id, { title });
    sidebar.bump(id, title);
  },
  completed(live, frame) {
    state.live = null;
    setBusy(false);
    if (frame.conversation_id) adopt(frame.conversation_id);
    if (live.conversationId) syncTree(live.conversationId);
    shareButton.hidden = !state.conversationId;
    sidebar.refreshSoon();
  },
  failed() {
    state.live = null;
    setBusy(false);
    sidebar.refreshSoon();
  },
};

function startLive(view, conversationId) {
  const live = new LiveAnswer({ view, conversationId, socket, page: livePage });
  state.live = live;
  setBusy(true);
  return live;
}

/** Follow an answer that is still being generated (after a reload, or another tab's). */
function follow(view, conversationId) {
  detachLive();
  startLive(view, conversationId).reattach();
}

/** After an answer ends, redraw from the server: ids, versions ('‹ 1/2 ›') and saved stats. */
async function syncTree(id) {
  try {
    const conversation = await api.get(id);
    if (state.live || state.conversationId !== id || conversation.generating) return;
    state.conversation = { ...state.conversation, ...conversation };
    log.render(conversation, { scroll: scroller.stick });
  } catch {
    /* the page keeps what it shows */
  }
  meter.update(id);
}

/** The conversation's saved settings (or the draft's) as generation parameters. */
function generationParams() {
  return withoutNulls(state.conversation?.settings || state.draft.settings);
}

/**
 * Ask `question`. `branch` (tree.js): {parentId, from, regenerate} asks it under another parent
 * (an edited question) or answers the question again (regenerate); the replaced message and
 * what followed it leave the screen (they stay on the server, one '‹ ›' away).
 */
async function ask(question, branch = null) {
  if (state.live) return;
  const view = log.answer(question);
  const live = startLive(view, state.conversationId); // claim the slot at once: a second Enter does nothing
  for (let node = branch?.from; node; ) {
    const next = node.nextElementSibling;
    node.remove();
    node = next;
  }
  if (!branch?.regenerate) log.append(log.question(question));
  log.append(view.node);
  view.waiting("Thinking…");
  scroller.stick = true;
  scroller.toBottom();
  log.refreshActions();

  // Create the conversation first: it gets an id (URL, sidebar, reload) before any token.
  if (!live.conversationId) {
    try {
      const created = await api.create({ system_prompt: state.draft.system_prompt, settings: state.draft.settings });
      if (!live.active) return;
      if (!els.app.dataset.user && !visitorSocketRenewed) {
        // An anonymous visitor's session may have just been created: a socket opened before
        // it cannot see the visitor's conversations, so open a fresh one (once per page).
        visitorSocketRenewed = true;
        socket.restart();
      }
      state.conversation = { ...created, settings: created.settings || state.draft.settings };
      adopt(created.id);
      live.conversationId = created.id;
      sidebar.bump(created.id, titleFrom(question));
      setTitle(titleFrom(question));
    } catch (error) {
      if (!live.active) return;
      if (error.status && error.status < 500 && error.status !== 404 && error.status !== 405) {
        live.fail(error);
        return;
      }
      // No conversation API: the server creates the conversation with the first answer.
    }
  } else {
    sidebar.bump(live.conversationId);
  }
  if (!state.conversation?.title && live.conversationId) setTitle(titleFrom(question));

  const payload = { query: question, conversation_id: live.conversationId, params: generationParams() };
  if (branch) {
    payload.parent_id = branch.parentId;
    if (branch.regenerate) delete payload.query;
  }
  await live.send(payload, { needsSocket: Boolean(branch) });
}

/** A new answer to the same question, kept beside the others ('‹ 1/2 ›'). */
function regenerate(view) {
  if (state.live) return;
  const questionId = view.questionId ?? view.message?.parent_id;
  if (questionId == null || !state.conversationId) {
    if (view.question) ask(view.question); // an answer not saved yet: ask again
    return;
  }
  ask(view.question, { parentId: questionId, from: view.node, regenerate: true });
}

function stopGenerating() {
  if (!state.live) return;
  composer.stop.disabled = true;
  state.live.stop();
}

// ---------------------------------------------------------------------------------------
// Keys and start

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && MOBILE.matches && sidebar.isOpen() && !settingsPanel.isOpen) sidebar.close();
  else if (event.key === "Escape" && state.live && !settingsPanel.isOpen && !event.target.closest?.(".edit-form")) {
    stopGenerating(); // Esc stops the answer being written
  }
  if ((event.ctrlKey || event.metaKey) && !event.altKey && event.key.toLowerCase() === "k") {
    event.preventDefault(); // Ctrl/Cmd+K: search conversations
    if (MOBILE.matches && !sidebar.isOpen()) sidebar.open();
    els.search.focus();
    els.search.select();
  }
});
els.newChat.addEventListener("click", () => newChat());
els.newChatTop.addEventListener("click", () => newChat());

handleCopyClicks(els.messages);
socket.onStatus((open) => showConnection(open ? "websocket" : "sse"));
socket.onForeign(showForeignTurn);
composer.updateSendButton();

async function start() {
  socket.connect(); // in the background: the first message waits for it briefly
  sidebar.load();
  const id = hashId() || recalled();
  if (id) await openConversation(id);
  composer.focus();
}

start();
window.chatApp = { state, socket }; // for debugging and the browser tests
