// The "Share" dialog of the chat page: create a read-only link to the conversation's current
// path (a snapshot), copy it, revoke it. Built here (no markup in the template); the links'
// titles and URLs are set as text.

import { conversations as api } from "./api.js";
import { el } from "./dom.js";
import { copyWithFeedback } from "./render.js";

export class ShareDialog {
  constructor({ conversationId }) {
    this.conversationId = conversationId; // a function: the conversation on screen
    this.list = el("ul", { class: "share-list", "aria-label": "Links" });
    this.error = el("p", { class: "settings-error", role: "alert" });
    this.create = el("button", { type: "button", class: "btn primary share-create", text: "Create link", onclick: () => this.createLink() });
    this.dialog = el("dialog", { class: "settings share-dialog", id: "share-dialog", "aria-labelledby": "share-title" },
      el("form", { method: "dialog" },
        el("header", {}, el("h2", { id: "share-title", text: "Share this conversation" }),
          el("button", { type: "submit", class: "btn", text: "Close" })),
        el("p", { class: "muted", text: "Anyone with a link can read a copy of this conversation as it is now (the branch on screen, without the system prompt). Later messages are not shared. Revoking a link makes it stop working." }),
        this.list, this.error, el("footer", {}, el("span", { class: "spacer" }), this.create)));
    document.body.append(this.dialog);
  }

  async open() {
    this.error.textContent = "";
    this.list.replaceChildren();
    this.dialog.showModal();
    await this.refresh();
  }

  async refresh() {
    const id = this.conversationId();
    if (!id) return;
    try {
      const { shares } = await api.shares(id);
      this.list.replaceChildren(...shares.map((share) => this.item(share)));
    } catch (error) {
      this.error.textContent = `Could not load the links: ${error.message}`;
    }
  }

  item(share) {
    const url = new URL(share.url, location.origin).href;
    const field = el("input", { class: "share-url", readonly: true, "aria-label": "Link", value: url });
    const copy = el("button", { type: "button", class: "btn small share-copy", text: "Copy" });
    copy.addEventListener("click", () => copyWithFeedback(copy, url));
    const revoke = el("button", { type: "button", class: "btn small share-revoke", text: "Revoke",
      onclick: async () => {
        try {
          await api.revokeShare(share.id);
          await this.refresh();
        } catch (error) {
          this.error.textContent = `Could not revoke the link: ${error.message}`;
        }
      } });
    return el("li", { class: "share-item", "data-share-id": share.id }, field, copy, revoke);
  }

  async createLink() {
    const id = this.conversationId();
    if (!id) return;
    this.error.textContent = "";
    try {
      await api.share(id);
      await this.refresh();
      this.list.querySelector(".share-url")?.select();
    } catch (error) {
      this.error.textContent = `Could not create a link: ${error.message}`;
    }
  }
}
