// The message box: Enter sends (not while an IME is composing), Shift+Enter makes a new line,
// ↑ in an empty box edits the last question; the send button turns into "stop" while an
// answer is written. The context meter sits under it.

import { conversations as api } from "./api.js";
import { $, el } from "./dom.js";

/** The page answers `isBusy()` (an answer is being written), `onSend(text)`, `onStop()`, `onEditLast()` (true when it did). */
export class Composer {
  constructor({ isBusy, onSend, onStop, onEditLast }) {
    Object.assign(this, { isBusy, onSend, onStop, onEditLast });
    this.form = $("composer");
    this.prompt = $("prompt");
    this.send = $("send");
    this.stop = $("stop");
    let composing = false;
    this.prompt.addEventListener("compositionstart", () => {
      composing = true;
    });
    this.prompt.addEventListener("compositionend", () => {
      setTimeout(() => {
        composing = false; // Safari sends the IME's confirming Enter after compositionend
      }, 0);
    });
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "ArrowUp" && !this.prompt.value && !this.isBusy() && !event.isComposing) {
        // ↑ in an empty box edits the last question, as in other chat apps.
        if (this.onEditLast()) event.preventDefault();
        return;
      }
      if (event.key !== "Enter") return;
      if (event.isComposing || event.keyCode === 229 || composing) return; // an IME is confirming text
      if (event.shiftKey || event.altKey) return; // a new line
      event.preventDefault();
      this.submit();
    });
    this.prompt.addEventListener("input", () => {
      this.autosize();
      this.updateSendButton();
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.stop.addEventListener("click", () => {
      this.onStop();
      this.prompt.focus();
    });
  }

  autosize() {
    const area = this.prompt;
    area.style.height = "auto";
    area.style.height = `${Math.min(area.scrollHeight, 240)}px`;
  }

  updateSendButton() {
    this.send.disabled = Boolean(this.isBusy()) || !this.prompt.value.trim();
  }

  /** Send becomes stop while an answer is being written. */
  setBusy(busy) {
    this.send.hidden = busy;
    this.stop.hidden = !busy;
    this.stop.disabled = false;
    this.updateSendButton();
  }

  submit() {
    const question = this.prompt.value.trim();
    if (!question || this.isBusy()) return;
    this.prompt.value = "";
    this.autosize();
    this.updateSendButton();
    this.onSend(question);
  }

  focus() {
    this.prompt.focus();
  }
}

/** How much of the model's context the next request uses (GET .../context), under the box. */
export class ContextMeter {
  /** `isShown(id)`: conversation `id` is still the one on screen when its figures arrive. */
  constructor({ isShown }) {
    this.isShown = isShown;
    this.bar = el("meter", { min: "0", max: "1", low: "0.6", high: "0.85", optimum: "0", "aria-label": "Context used" });
    this.text = el("span", { class: "context-text" });
    this.node = el("div", { class: "context-meter", id: "context-meter", hidden: true }, this.bar, this.text);
    $("composer").querySelector(".hint")?.before(this.node);
  }

  async update(id) {
    if (!id) {
      this.node.hidden = true;
      return;
    }
    try {
      const usage = await api.context(id);
      if (!this.isShown(id)) return;
      const share = usage.context_length ? usage.prompt_tokens / usage.context_length : 0;
      const full = usage.context_length && (usage.prompt_tokens + usage.answer_room) / usage.context_length > 0.8;
      this.bar.value = Math.min(1, share);
      let text = `Context: ${usage.prompt_tokens.toLocaleString()} of ${usage.context_length.toLocaleString()} tokens (${Math.round(share * 100)}%)`;
      if (usage.history_truncated) {
        const turns = usage.history_truncated === 1 ? "1 earlier turn" : `${usage.history_truncated} earlier turns`;
        text += ` · ${turns} will not be sent to the model`;
      } else if (full) {
        text += " · nearly full: the oldest turns will soon be left out";
      }
      this.text.textContent = text;
      this.node.classList.toggle("warn", Boolean(usage.history_truncated) || Boolean(full));
      this.node.hidden = false;
    } catch {
      this.node.hidden = true; // no model loaded yet, or an old server: no meter
    }
  }
}
