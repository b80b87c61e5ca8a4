// The answer in flight: one object from the question (or a re-attach) to its end. It owns the
// transport's handle, the timings behind the stats line, the stop grace timer and the watchdog
// that notices an answer ended unseen; it draws into its AnswerView and tells the page (its
// `page`) when it starts a conversation and when it ends.
//
// It travels over the WebSocket when the socket is open, over POST /stream otherwise; after
// a reload or a lost socket it follows the rest of the answer (`reattach`).

import { conversations as api, streamOverSSE } from "./api.js";
import { announce, toast } from "./dom.js";
import { formatStats, ordinal, savedStats } from "./messages.js";

const STOP_GRACE_MS = 5000;
const SILENT_MS = 4000; // no frame for this long: ask the server whether the answer ended

/** "websocket" when the socket is (or soon gets) open, else "sse". */
async function chooseTransport(socket) {
  if (socket.isOpen) return "websocket";
  // A socket that has worked before is worth a short wait; one that never opened is not.
  if (socket.everOpened || socket.failures === 0) {
    if (await socket.connect(socket.everOpened ? 3000 : 2500)) return "websocket";
  }
  return "sse";
}

/** The conversation's last answer as the server has it. */
function lastAnswer(conversation) {
  return conversation.messages?.filter((m) => m.role === "assistant").at(-1);
}

export class LiveAnswer {
  /**
   * `page` answers: showConnection(kind), setBusy(busy), learned(live, id) (the server created
   * the conversation with the answer), completed(live, frame), failed(live).
   */
  constructor({ view, conversationId, socket, page }) {
    this.view = view;
    this.conversationId = conversationId;
    this.socket = socket;
    this.page = page;
    this.startedAt = performance.now();
    this.firstTokenAt = null;
    this.lastFrame = this.startedAt;
    this.reattached = false; // followed after it started: no timings of our own
    this.handle = null; // the transport's: stop() and detach()
    this.active = true; // false once it ended or the page left it
    this.announcedPosition = null;
    this.checking = false;
    this.stopTimer = 0;
    this.watchdog = 0;
  }

  /** Ask: `payload` is {query?, conversation_id, params, parent_id?}; `needsSocket` for edits and regenerations. */
  async send(payload, { needsSocket = false } = {}) {
    const transport = await chooseTransport(this.socket);
    if (!this.active) return;
    this.page.showConnection(transport);
    if (needsSocket && transport !== "websocket") {
      this.fail({ message: "Editing and regenerating need the live connection; try again in a moment." });
      return;
    }
    const handlers = this.handlers();
    if (transport === "websocket") {
      const onError = handlers.onError;
      handlers.onError = (error) => {
        if (error?.code === "generation_in_progress" && this.active && !this.firstTokenAt) {
          // The socket still carries an answer the page left (another conversation): ask over HTTP.
          this.page.showConnection("sse");
          this.handle = streamOverSSE(payload, handlers);
          return;
        }
        onError(error);
      };
    }
    this.handle = transport === "websocket" ? this.socket.chat(payload, handlers) : streamOverSSE(payload, handlers);
  }

  /** Follow an answer that is still being generated (after a reload, or a lost socket). */
  async reattach() {
    this.reattached = true;
    this.lastFrame = performance.now();
    this.page.setBusy(true);
    const socket = this.socket;
    const ok = socket.isOpen || (await socket.connect(3000)) || (await socket.connect(3000));
    if (!this.active) return;
    const view = this.view;
    if (ok) {
      this.page.showConnection("websocket");
      if (view.state === "waiting") view.setStatus("Generating…");
      else view.setStatus("");
      this.handle = socket.subscribe(this.conversationId, this.handlers());
    } else {
      this.page.showConnection("sse");
      view.setStatus("Generating… (the answer will appear when it is complete)");
      this.handle = { transport: "poll", stop: () => toast("Stopping needs the live connection; try again in a moment."), detach() {} };
    }
    // Whatever the transport, check now and then that the answer has not ended unseen.
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => this.checkStillGenerating(), ok ? 4000 : 1500);
  }

  handlers() {
    const frame = () => {
      this.lastFrame = performance.now();
    };
    return {
      onQueued: (position) => {
        if (!this.active) return;
        frame();
        this.view.queued(position);
        if (position !== this.announcedPosition) {
          this.announcedPosition = position;
          announce(`Waiting, ${ordinal(position)} in line`);
        }
      },
      onStart: (start) => {
        if (!this.active) return;
        frame();
        if (start.conversation_id && !this.conversationId) {
          this.conversationId = start.conversation_id;
          this.page.learned(this, start.conversation_id);
        }
        this.view.truncated(start.history_truncated); // saved with the answer too
        if (this.view.state === "waiting") this.view.setStatus("Thinking…");
      },
      onDelta: (response) => {
        if (!this.active) return;
        frame();
        if (this.firstTokenAt == null && response) this.firstTokenAt = performance.now();
        this.view.stream(response ?? "");
      },
      onDone: (done) => {
        if (this.active) this.complete(done);
      },
      onError: (error) => {
        if (this.active) this.fail(error);
      },
      onDisconnect: () => {
        if (!this.active) return;
        this.view.setStatus("Connection lost. Reconnecting…");
        this.reattach();
      },
    };
  }

  /** Asked to stop: the server confirms with the answer's end; if it never does, end it here. */
  stop() {
    this.view.setStatus(this.view.state === "streaming" ? "" : "Stopping…");
    this.handle?.stop();
    // The server keeps what it has, marked cancelled.
    clearTimeout(this.stopTimer);
    this.stopTimer = setTimeout(() => {
      if (this.active) this.complete({ finish_reason: "cancelled", response: this.view.text });
    }, STOP_GRACE_MS);
    if (!this.handle) this.complete({ finish_reason: "cancelled", response: this.view.text });
  }

  /** The page leaves it (another conversation): the server goes on and saves it. */
  detach() {
    this.end();
    this.handle?.detach();
  }

  end() {
    this.active = false;
    clearTimeout(this.stopTimer);
    clearInterval(this.watchdog);
  }

  /** The timings of an answer seen from its start; null for a followed one. */
  stats(frame) {
    if (this.reattached) return null;
    const completion = frame.usage?.completion_tokens;
    const ttft = this.firstTokenAt != null ? (this.firstTokenAt - this.startedAt) / 1000 : null;
    const generating = this.firstTokenAt != null ? (performance.now() - this.firstTokenAt) / 1000 : 0;
    return { ttft, tps: completion && generating > 0.05 ? completion / generating : null, tokens: completion };
  }

  complete(frame) {
    this.end();
    const reason = frame.finish_reason || "stop";
    this.view.finish({ text: frame.response ?? this.view.text, reason, stats: this.stats(frame) });
    this.page.completed(this, frame);
    announce(reason === "cancelled" ? "Generation stopped." : reason === "length" ? "Answer complete (maximum length reached)." : "Answer complete.");
    if (this.reattached && this.conversationId) this.showSavedStats();
  }

  fail(error) {
    this.end();
    const message = error?.message || "unknown error";
    this.view.finish({ text: this.view.text, reason: "error", error: message });
    this.page.failed(this);
    announce(`The answer failed: ${message}`);
  }

  /** No frame for a while (or no socket): ask the server whether the answer has ended. */
  async checkStillGenerating() {
    if (!this.active || this.checking) return;
    if (this.handle?.transport !== "poll" && performance.now() - this.lastFrame < SILENT_MS) return;
    this.checking = true;
    try {
      const conversation = await api.get(this.conversationId);
      if (!this.active) return;
      if (!conversation.generating) {
        const last = lastAnswer(conversation);
        this.complete({
          response: last?.content ?? this.view.text,
          finish_reason: last?.finish_reason || "interrupted",
          conversation_id: this.conversationId,
        });
        if (last) this.view.stats.textContent = formatStats(savedStats(last) || {});
      }
    } catch {
      /* try again at the next tick */
    } finally {
      this.checking = false;
    }
  }

  /** After a followed answer ends, show the timings the server saved. */
  async showSavedStats() {
    try {
      const conversation = await api.get(this.conversationId);
      const last = lastAnswer(conversation);
      if (last && last.finish_reason && this.view.node.isConnected) this.view.stats.textContent = formatStats(savedStats(last) || {});
    } catch {
      /* stats are a nicety */
    }
  }
}
