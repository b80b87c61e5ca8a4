// The messages on screen: a question, an answer (AnswerView), and the log that shows a
// conversation's current path. The bare nodes (userBubble, answerShell) are shared with the
// read-only share page, so both pages draw a message the same way.

import { el, icon, iconButton } from "./dom.js";
import { StreamingMarkdown, copyWithFeedback } from "./render.js";
import { currentPath, siblingsOf } from "./tree.js";

export function ordinal(n) {
  const mod100 = n % 100;
  if (mod100 >= 11 && mod100 <= 13) return `${n}th`;
  return `${n}${{ 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th"}`;
}

export function formatStats({ ttft, tps, tokens }) {
  const parts = [];
  if (ttft != null && Number.isFinite(ttft)) parts.push(`${ttft < 10 ? ttft.toFixed(2) : ttft.toFixed(1)} s to first token`);
  if (tps != null && Number.isFinite(tps) && tps > 0) parts.push(`${tps.toFixed(1)} tokens/s`);
  if (tokens) parts.push(`${tokens} tokens`);
  return parts.join(" · ");
}

/** The timings the server saved with an answer, or null when it saved none. */
export function savedStats(message) {
  const stats = {
    ttft: message.time_to_first_token,
    tps: message.tokens_per_second,
    tokens: message.completion_tokens,
  };
  return stats.ttft == null && stats.tps == null && !stats.tokens ? null : stats;
}

/** A question's node: a person's words are text, never HTML. */
export function userBubble(text) {
  const bubble = el("div", { class: "bubble" });
  bubble.textContent = text;
  return el("div", { class: "msg user" }, bubble);
}

/** An answer's node: the avatar and a content column holding `parts`. */
export function answerShell(...parts) {
  return el(
    "article",
    { class: "msg assistant", "aria-label": "Answer" },
    el("div", { class: "avatar", "aria-hidden": "true", text: "G" }),
    el("div", { class: "content" }, ...parts),
  );
}

/**
 * The nodes of an answer's tool step: an assistant message's calls (with any text it wrote
 * first) or a tool's result. Model and tool text is set as text, never parsed as HTML.
 */
export function toolStepNodes(message) {
  if (message.role === "tool") {
    return [el("details", { class: "tool-step tool-result" },
      el("summary", { text: `${message.tool_name || "tool"} result` }),
      el("pre", { text: message.content || "" }))];
  }
  const nodes = message.content ? [el("p", { class: "tool-step tool-text", text: message.content })] : [];
  for (const call of message.tool_calls || []) {
    nodes.push(el("div", { class: "tool-step tool-call" }, "called ",
      el("code", { text: `${call.name}(${call.arguments})` })));
  }
  return nodes;
}

/** Whether `message` is a step of an answer that went on after it (its calls got results). */
export function isToolStep(message, next) {
  return message.role === "tool" || Boolean(message.tool_calls?.length && next?.role === "tool");
}

const FINISH_NOTES = {
  cancelled: "Stopped. The answer was cancelled before it was complete.",
  length: "The answer reached the maximum length.",
  interrupted: "This answer was interrupted.",
};

/** One answer: its Markdown body, a status line, a notice when it failed, stats and actions. */
export class AnswerView {
  /** `versions`: the '‹ 1/2 ›' node; `onRegenerate(view)`; `onPaint()` after the body grew. */
  constructor(question, { message = null, versions = null, onRegenerate, onPaint }) {
    this.question = question;
    this.message = message;
    this.text = "";
    this.onPaint = onPaint;
    this.status = el("div", { class: "status", hidden: true }, el("span", { class: "dots", "aria-hidden": "true" }, el("i"), el("i"), el("i")), el("span", { class: "status-text" }));
    this.body = el("div", { class: "md" });
    this.notice = el("div", { class: "notice", hidden: true });
    this.stats = el("span", { class: "stats" });
    this.copyButton = iconButton("copy", "Copy answer", () => copyWithFeedback(this.copyButton, this.text), "copy-answer");
    this.regenerateButton = iconButton("retry", "Regenerate answer", () => onRegenerate(this), "regenerate");
    this.retryButton = el("button", { type: "button", class: "btn small retry", "aria-label": "Retry this question", onclick: () => onRegenerate(this) }, icon("retry"), el("span", { text: "Retry" }));
    this.actions = el("div", { class: "actions" }, versions, this.copyButton, this.regenerateButton);
    this.node = answerShell(this.status, this.body, this.notice, el("div", { class: "footer" }, this.stats, this.actions));
    if (message) this.node.dataset.messageId = message.id;
    this.markdown = new StreamingMarkdown(this.body, { onPaint });
    this.setState("done");
  }

  setState(name) {
    this.state = name;
    this.node.dataset.state = name;
  }

  setStatus(text) {
    this.status.hidden = !text;
    this.status.querySelector(".status-text").textContent = text || "";
    this.onPaint();
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
    this.onPaint();
  }
}

/**
 * The conversation log (#messages): what is on screen of the current path. What a click in it
 * does is the page's: `isBusy()` (an answer is streaming: no edits), `onSwitch(messageId)` (show
 * another version), `onAsk(question, branch)` (an edited question), `onRegenerate(view)`.
 */
export class MessageLog {
  constructor({ root, empty, scroller, isBusy, onSwitch, onAsk, onRegenerate }) {
    Object.assign(this, { root, empty, scroller, isBusy, onSwitch, onAsk, onRegenerate });
  }

  clear() {
    this.root.replaceChildren();
    this.empty.hidden = false;
  }

  append(node) {
    this.empty.hidden = true;
    this.root.append(node);
  }

  /** A question; with its saved `message`, it offers editing and its versions. */
  question(text, message = null, siblings = null) {
    const node = userBubble(text);
    if (message) {
      node.dataset.messageId = message.id;
      node.append(el("div", { class: "user-actions" }, this.versionNav(message, siblings),
        iconButton("edit", "Edit question", () => this.startEdit(node, message), "edit-question")));
    }
    return node;
  }

  answer(question, message = null, siblings = null) {
    return new AnswerView(question, {
      message,
      versions: this.versionNav(message, siblings),
      onRegenerate: this.onRegenerate,
      onPaint: () => this.scroller.follow(),
    });
  }

  /** '‹ 2/3 ›' between the versions of a message (edited questions, regenerated answers). */
  versionNav(message, siblings) {
    if (!siblings || siblings.length < 2) return null;
    const index = siblings.findIndex((m) => m.id === message.id);
    const button = (cls, label, text, target) =>
      el("button", { type: "button", class: `icon-btn small ${cls}`, "aria-label": label, title: label, text,
        disabled: !target, onclick: () => this.onSwitch(target.id) });
    return el("span", { class: "versions", role: "group", "aria-label": "Versions" },
      button("version-prev", "Previous version", "‹", siblings[index - 1]),
      el("span", { class: "version-count", text: `${index + 1}/${siblings.length}` }),
      button("version-next", "Next version", "›", siblings[index + 1]));
  }

  /** Edit a question in place; sending it asks it as a sibling (the old branch is kept). */
  startEdit(node, message) {
    if (this.isBusy() || node.querySelector(".edit-form")) return;
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
      if (!text || this.isBusy()) return;
      close();
      this.onAsk(text, { parentId: message.parent_id ?? null, from: node });
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

  /** Only the last answer offers "regenerate"; nothing does while an answer streams. */
  refreshActions() {
    const busy = Boolean(this.isBusy());
    this.root.classList.toggle("live", busy); // no edits or version switches meanwhile
    const answers = this.root.querySelectorAll(".msg.assistant");
    answers.forEach((node, index) => {
      const button = node.querySelector(".regenerate");
      const failed = node.dataset.state === "error" || node.dataset.state === "cancelled"; // it has "Retry"
      if (button) button.hidden = busy || failed || index !== answers.length - 1;
    });
  }

  /** Show the conversation's current path; `scroll: false` keeps the reader's place. Returns
   * the view of an answer still being generated, if any. */
  render(conversation, { scroll = true } = {}) {
    const scrollTop = this.scroller.scroller.scrollTop;
    this.clear();
    let question = "";
    let questionId = null;
    let steps = []; // the tool steps of the answer being drawn, shown above its text
    let pending = null;
    const messages = currentPath(conversation);
    const siblings = siblingsOf(conversation);
    messages.forEach((message, index) => {
      if (isToolStep(message, messages[index + 1])) {
        steps.push(...toolStepNodes(message));
      } else if (message.role === "user") {
        question = message.content;
        questionId = message.id;
        steps = [];
        this.append(this.question(message.content, message, siblings.get(message.id)));
      } else if (message.role === "assistant") {
        const view = this.answer(question, message, siblings.get(message.id));
        // After tool steps its parent is a tool result: "regenerate" answers the question again.
        view.questionId = questionId;
        view.body.before(...steps, ...(message.tool_calls?.length ? toolStepNodes(message) : []));
        steps = [];
        view.truncated(message.history_truncated);
        this.append(view.node);
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
      pending = this.answer(question);
      pending.waiting("Generating…");
      this.append(pending.node);
    }
    this.refreshActions();
    if (scroll) {
      this.scroller.stick = true;
      this.scroller.toBottom();
    } else {
      this.scroller.scroller.scrollTop = scrollTop;
    }
    return pending;
  }
}
