// The sidebar: the saved conversations (grouped by day, searchable, paged, renamed and deleted
// in place), and whether the sidebar shows (off-canvas on a phone, collapsible on a wide screen).

import { conversations as api } from "./api.js";
import { announce, el, iconButton, toast } from "./dom.js";

export const MOBILE = window.matchMedia("(max-width: 768px)");

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

/**
 * `els`: the page's elements. The page answers `activeId()` (the conversation on screen),
 * `onOpen(item)` (a link or search hit was chosen), `onRenamed(item)` and `onDeleted(item)`.
 */
export class Sidebar {
  constructor({ els, activeId, onOpen, onRenamed, onDeleted }) {
    Object.assign(this, { els, activeId, onOpen, onRenamed, onDeleted });
    this.list = { items: [], page: 1, hasNext: false, q: "", loading: false };
    this.refreshTimer = 0;
    this.searchTimer = 0;
    els.search.addEventListener("input", () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => {
        this.list.q = els.search.value.trim();
        this.load();
      }, 250);
    });
    els.more.addEventListener("click", () => this.load({ reset: false }));
    els.toggleSidebar.addEventListener("click", () => (this.isOpen() ? this.close() : this.open()));
    els.closeSidebar.addEventListener("click", () => this.close());
    els.scrim.addEventListener("click", () => this.close());
    MOBILE.addEventListener("change", () => this.sync());
    this.sync();
  }

  // --- the list -------------------------------------------------------------------------

  render() {
    const { items } = this.list;
    const list = this.els.list;
    list.replaceChildren();
    let bucket = null;
    for (const item of items) {
      const group = dayBucket(item.updated_at || item.created_at);
      if (group !== bucket) {
        bucket = group;
        list.append(el("li", { class: "group", role: "presentation", text: group }));
      }
      list.append(this.item(item));
    }
    if (!items.length && !this.list.loading) {
      this.els.listStatus.textContent = this.list.q ? "No conversation matches." : "No conversations yet.";
    } else {
      this.els.listStatus.textContent = "";
    }
    this.els.more.hidden = !this.list.hasNext;
    this.markActive();
  }

  item(item) {
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
      if (MOBILE.matches) this.close();
      this.onOpen(item);
    });
    const li = el(
      "li",
      { class: "conversation", "data-id": item.id },
      link,
      el("div", { class: "item-actions" },
        iconButton("edit", `Rename “${title}”`, () => this.startRename(li, item), "rename"),
        iconButton("trash", `Delete “${title}”`, () => this.remove(item), "delete")),
    );
    return li;
  }

  markActive() {
    const id = this.activeId();
    for (const li of this.els.list.querySelectorAll("li.conversation")) {
      const active = li.dataset.id === id;
      li.classList.toggle("active", active);
      const link = li.querySelector("a");
      if (active) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  async load({ reset = true } = {}) {
    const list = this.list;
    const page = reset ? 1 : list.page + 1;
    const q = list.q;
    list.loading = true;
    if (reset && !list.items.length) this.els.listStatus.textContent = "Loading…";
    try {
      // A search looks in titles and message text (GET /api/search): one page of best hits.
      const data = q ? await api.search(q) : await api.list({ page, q });
      if (q !== list.q) return; // a newer search is on its way
      const rows = q ? data.results : data.conversations;
      list.items = reset ? rows : list.items.concat(rows);
      list.page = data.page || page;
      list.hasNext = Boolean(data.has_next);
      list.loading = false;
      this.render();
    } catch (error) {
      list.loading = false;
      this.els.listStatus.textContent = `Could not load conversations: ${error.message}`;
    }
  }

  refreshSoon(delay = 300) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      if (this.els.list.querySelector(".rename-input")) this.refreshSoon(2000); // never redraw under a rename
      else this.load();
    }, delay);
  }

  /** Put a just-created (or just-used) conversation at the top of the list at once. */
  bump(id, title) {
    const items = this.list.items.filter((item) => item.id !== id);
    const old = this.list.items.find((item) => item.id === id);
    const now = new Date().toISOString();
    if (this.list.q && !old) return;
    items.unshift({ ...(old || { id, created_at: now }), title: title ?? old?.title ?? "", updated_at: now });
    this.list.items = items;
    this.render();
  }

  startRename(li, item) {
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
        this.render();
        li.isConnected && li.querySelector(".rename")?.focus();
        return;
      }
      try {
        const updated = await api.update(item.id, { title });
        item.title = updated?.title ?? title;
        this.onRenamed(item);
        announce(`Renamed to ${item.title}`);
      } catch (error) {
        toast(`Could not rename: ${error.message}`);
      }
      this.render();
      this.els.list.querySelector(`li[data-id="${CSS.escape(item.id)}"] .rename`)?.focus();
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

  async remove(item) {
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
    this.list.items = this.list.items.filter((other) => other.id !== item.id);
    this.render();
    this.onDeleted(item);
    announce(`Deleted ${title}`);
  }

  // --- showing and hiding ---------------------------------------------------------------

  isOpen() {
    return MOBILE.matches ? this.els.app.classList.contains("sidebar-open") : !this.els.app.classList.contains("sidebar-collapsed");
  }

  sync() {
    const { els } = this;
    const open = this.isOpen();
    els.toggleSidebar.setAttribute("aria-expanded", String(open));
    const label = open ? "Hide conversations" : "Show conversations";
    els.toggleSidebar.setAttribute("aria-label", label);
    els.toggleSidebar.title = label;
    const overlay = MOBILE.matches && open;
    els.scrim.hidden = !overlay;
    els.main.inert = overlay;
    els.sidebar.inert = MOBILE.matches && !open;
  }

  open() {
    if (MOBILE.matches) this.els.app.classList.add("sidebar-open");
    else this.els.app.classList.remove("sidebar-collapsed");
    this.sync();
    if (MOBILE.matches) this.els.newChat.focus();
  }

  close() {
    const wasOpen = this.isOpen();
    if (MOBILE.matches) this.els.app.classList.remove("sidebar-open");
    else this.els.app.classList.add("sidebar-collapsed");
    this.sync();
    if (wasOpen && this.els.sidebar.contains(document.activeElement)) this.els.toggleSidebar.focus();
  }
}
