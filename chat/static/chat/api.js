// Transport: the conversation REST API, the WebSocket channel and the SSE-over-POST fallback.
//
// Everything talks to the page's own origin (relative URLs; ws:// or wss:// follows
// location.protocol). Requests that rely on the session cookie carry the CSRF token.
// Streaming callers get one interface whichever transport carries the answer:
//
//   handlers = {onQueued(position), onStart({conversation_id, message_id}),
//               onDelta(response, delta), onDone(frame), onError(error)}
//   handle   = {stop(), detach()}

export class ApiError extends Error {
  constructor(message, status = 0, info = {}) {
    super(message);
    this.status = status;
    this.info = info;
  }
}

function cookie(name) {
  const match = document.cookie.match(new RegExp(`(?:^|;\\s*)${name}=([^;]+)`));
  return match ? decodeURIComponent(match[1]) : "";
}

export function csrfToken() {
  return cookie("csrftoken") || document.querySelector('meta[name="csrf-token"]')?.content || "";
}

export function newRequestId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID(); // secure contexts only
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function errorFrom(response) {
  let info = {};
  try {
    const body = await response.json();
    info = body.error || body;
  } catch {
    /* not JSON */
  }
  const message = info.message || `${response.status} ${response.statusText || "request failed"}`;
  return new ApiError(message, response.status, info);
}

async function request(method, url, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  const response = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  return response.json();
}

/** The saved-conversation API (session + CSRF). */
export const conversations = {
  list: ({ page = 1, q = "" } = {}) => {
    const params = new URLSearchParams({ page: String(page) });
    if (q) params.set("q", q);
    return request("GET", `/api/conversations?${params}`);
  },
  create: (fields = {}) => request("POST", "/api/conversations", fields),
  get: (id) => request("GET", `/api/conversations/${encodeURIComponent(id)}`),
  update: (id, fields) => request("PATCH", `/api/conversations/${encodeURIComponent(id)}`, fields),
  remove: (id) => request("DELETE", `/api/conversations/${encodeURIComponent(id)}`),
  switchBranch: (id, messageId) => request("POST", `/api/conversations/${encodeURIComponent(id)}/switch`, { message_id: messageId }),
  search: (q) => request("GET", `/api/search?${new URLSearchParams({ q })}`),
  shares: (id) => request("GET", `/api/conversations/${encodeURIComponent(id)}/shares`),
  share: (id) => request("POST", `/api/conversations/${encodeURIComponent(id)}/shares`, {}),
  revokeShare: (shareId) => request("DELETE", `/api/shares/${encodeURIComponent(shareId)}`),
  context: (id) => request("GET", `/api/conversations/${encodeURIComponent(id)}/context`),
  exportUrl: (id, format = "md") => `/api/conversations/${encodeURIComponent(id)}/export?format=${format}`,
};

// ---------------------------------------------------------------------------------------
// SSE over POST (/stream): fetch + ReadableStream, parsed by hand (docs/pitfalls.md#sse-over-post).

/** Split an SSE byte stream into {event, data} records and comments. */
export function sseParser(onRecord, onComment) {
  let buffer = "";
  let event = "";
  let data = [];
  function line(text) {
    if (text === "") {
      if (data.length) onRecord({ event: event || "message", data: data.join("\n") });
      event = "";
      data = [];
      return;
    }
    if (text.startsWith(":")) {
      onComment(text.slice(1).trim());
      return;
    }
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return {
    push(chunk) {
      buffer += chunk;
      let index;
      while ((index = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const newline = buffer[index] === "\r" && buffer[index + 1] === "\n" ? 2 : 1;
        if (buffer[index] === "\r" && index + 1 === buffer.length) break; // maybe half of \r\n
        line(buffer.slice(0, index));
        buffer = buffer.slice(index + newline);
      }
    },
    end() {
      if (buffer) line(buffer);
      line("");
    },
  };
}

/** Ask over POST /stream. `payload` is {query, conversation_id?, params}. */
export function streamOverSSE(payload, handlers) {
  const controller = new AbortController();
  let attached = true;
  let ended = false;
  const call = (name, ...args) => {
    if (attached && handlers[name]) handlers[name](...args);
  };
  const finish = (name, ...args) => {
    if (ended) return;
    ended = true;
    call(name, ...args);
  };
  const body = { query: payload.query, ...payload.params };
  if (payload.conversation_id) body.conversation_id = payload.conversation_id;

  (async () => {
    let response;
    try {
      response = await fetch("/stream", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-CSRFToken": csrfToken() },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (error) {
      if (controller.signal.aborted) finish("onDone", { finish_reason: "cancelled", cancelledLocally: true });
      else finish("onError", { message: `Could not reach the server (${error.message}).` });
      return;
    }
    if (!response.ok) {
      const error = await errorFrom(response);
      finish("onError", { message: error.message, ...error.info, status: error.status });
      return;
    }
    let started = false;
    const parser = sseParser(
      ({ event, data }) => {
        let frame;
        try {
          frame = JSON.parse(data);
        } catch {
          return;
        }
        if (event === "error") {
          finish("onError", frame.error || { message: "The server reported an error." });
        } else if (event === "delta") {
          if (!started && frame.conversation_id) call("onStart", { conversation_id: frame.conversation_id });
          started = true;
          if (frame.finished) {
            finish("onDone", frame);
          } else {
            call("onDelta", frame.response, frame.delta);
          }
        }
      },
      (comment) => {
        const queued = /^queued position=(\d+)/.exec(comment);
        if (queued) call("onQueued", Number(queued[1]));
      },
    );
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
      parser.end();
      finish("onError", { message: "The answer ended before it was complete.", code: "incomplete" });
    } catch (error) {
      if (controller.signal.aborted) finish("onDone", { finish_reason: "cancelled", cancelledLocally: true });
      else finish("onError", { message: `The connection was lost (${error.message}).`, code: "connection_lost" });
    }
  })();

  return {
    transport: "sse",
    stop() {
      controller.abort(); // the server cancels the turn when its client goes away
    },
    detach() {
      attached = false; // keep reading so the server finishes (and saves) the answer
    },
  };
}

// ---------------------------------------------------------------------------------------
// WebSocket (/ws/chat/)

const WS_OPEN = 1; // WebSocket.OPEN

export function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/chat/`;
}

/**
 * One WebSocket shared by the page, reconnecting with backoff. Frames are routed to the
 * handlers of their request_id; frames of a subscribed conversation (after a reload) are
 * bound to the subscription's handlers on first sight. The socket follows one conversation
 * (`followed`, as the server does: the last one subscribed to or asked in) and follows it
 * again after a reconnect; frames of answers asked elsewhere in it that no handler claims
 * go to the `onForeign` listener.
 */
export class ChatSocket {
  constructor(url = socketUrl()) {
    this.url = url;
    this.ws = null;
    this.routes = new Map(); // request_id -> {handlers, conversationId}
    this.subscriptions = new Map(); // conversation_id -> handlers (not yet bound to a request)
    this.ignored = new Set(); // request ids the page stopped listening to
    this.followed = null; // the conversation whose answers this socket receives
    this.foreign = null; // listener for frames of answers asked elsewhere (request_id null)
    this.everOpened = false;
    this.failures = 0;
    this.listeners = new Set();
    this.opening = null;
    this.closedByPage = false;
  }

  get isOpen() {
    return this.ws?.readyState === WS_OPEN;
  }

  onStatus(listener) {
    this.listeners.add(listener);
  }

  onForeign(listener) {
    this.foreign = listener;
  }

  _status(open) {
    for (const listener of this.listeners) listener(open);
  }

  /** Resolve true once open, false if the socket could not connect within `timeoutMs`. */
  connect(timeoutMs = 4000) {
    if (this.isOpen) return Promise.resolve(true);
    if (this.opening) return this.opening;
    const attempt = {};
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      return Promise.resolve(false);
    }
    this.ws = ws;
    attempt.promise = new Promise((resolve) => {
      let settled = false;
      const settle = (ok) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (this.opening === attempt.promise) this.opening = null;
        resolve(ok);
      };
      const timer = setTimeout(() => {
        settle(false);
        if (ws.readyState !== WS_OPEN) ws.close();
      }, timeoutMs);
      ws.onopen = () => {
        this.everOpened = true;
        this.failures = 0;
        settle(true);
        this._status(true);
        if (this.followed) this.send({ type: "subscribe", conversation_id: this.followed });
      };
      ws.onmessage = (message) => this._receive(message.data);
      ws.onerror = () => settle(false);
      ws.onclose = () => {
        settle(false);
        if (this.ws === ws) this._closed();
      };
    });
    this.opening = attempt.promise;
    return attempt.promise;
  }

  _closed() {
    this._status(false);
    // Generations continue on the server when a socket closes; tell their handlers so they
    // can re-attach (subscribe) once the socket is back.
    const lost = new Map();
    for (const [rid, route] of this.routes) lost.set(rid, route);
    this.routes.clear();
    for (const route of lost.values()) route.handlers.onDisconnect?.(route.conversationId);
    for (const [cid, handlers] of this.subscriptions) {
      this.subscriptions.delete(cid);
      handlers.onDisconnect?.(cid);
    }
    if (this.closedByPage) return;
    this.failures += 1;
    if (!this.everOpened && this.failures >= 3) return; // never worked here: the page uses /stream
    const delay = Math.min(15000, 500 * 2 ** Math.min(this.failures, 5));
    setTimeout(() => this.connect(), delay);
  }

  /** Close and reopen the socket (e.g. after the session that authenticates it changed). */
  restart() {
    const ws = this.ws;
    this.ws = null;
    this.opening = null;
    if (ws) {
      ws.onclose = null;
      ws.onerror = null;
      ws.onmessage = null;
      ws.close();
    }
    return this.connect();
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  _route(frame) {
    const rid = frame.request_id;
    if (rid && this.routes.has(rid)) return this.routes.get(rid);
    if (rid && this.ignored.has(rid)) return null;
    // A frame of a subscribed conversation: bind its request id to the subscription.
    let cid = frame.conversation_id;
    if (!cid && this.subscriptions.size === 1) cid = this.subscriptions.keys().next().value;
    if (cid && this.subscriptions.has(cid)) {
      const route = { handlers: this.subscriptions.get(cid), conversationId: cid };
      if (rid) {
        this.subscriptions.delete(cid);
        this.routes.set(rid, route);
        route.handlers.onBind?.(rid);
      } else if (frame.type === "done" || frame.type === "error") {
        this.subscriptions.delete(cid);
      }
      return route;
    }
    return null;
  }

  _receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const route = this._route(frame);
    if (!route) {
      if (frame.request_id == null && frame.conversation_id) this.foreign?.(frame);
      return;
    }
    const h = route.handlers;
    switch (frame.type) {
      case "queued":
        h.onQueued?.(frame.position);
        break;
      case "start":
        if (frame.conversation_id) route.conversationId = frame.conversation_id;
        h.onStart?.(frame);
        break;
      case "delta":
        h.onDelta?.(frame.response, frame.delta);
        break;
      case "done":
        this.routes.delete(frame.request_id);
        h.onDone?.(frame);
        break;
      case "error":
        this.routes.delete(frame.request_id);
        h.onError?.(frame.error || { message: "The server reported an error." });
        break;
      default:
        break;
    }
  }

  _handle(rid, conversationId) {
    return {
      transport: "websocket",
      requestId: () => rid.value,
      stop: () => {
        const frame = { type: "stop", request_id: rid.value };
        if (conversationId.value) frame.conversation_id = conversationId.value;
        this.send(frame);
      },
      detach: () => {
        if (rid.value) {
          this.routes.delete(rid.value);
          this.ignored.add(rid.value);
        }
        if (conversationId.value) this.subscriptions.delete(conversationId.value);
      },
    };
  }

  /** Ask a question; the answer streams to `handlers`. */
  chat(payload, handlers) {
    const rid = { value: newRequestId() };
    const cid = { value: payload.conversation_id || null };
    const route = {
      handlers: {
        ...handlers,
        onStart: (frame) => {
          cid.value = frame.conversation_id || cid.value;
          if (cid.value) this.followed = cid.value; // the server follows what this socket asks in
          handlers.onStart?.(frame);
        },
      },
      conversationId: cid.value,
    };
    this.routes.set(rid.value, route);
    const frame = { type: "chat", query: payload.query, request_id: rid.value };
    if (payload.conversation_id) frame.conversation_id = payload.conversation_id;
    if ("parent_id" in payload) frame.parent_id = payload.parent_id; // an edit or a regenerate (tree.js)
    if (payload.params && Object.keys(payload.params).length) frame.params = payload.params;
    if (!this.send(frame)) {
      this.routes.delete(rid.value);
      queueMicrotask(() => handlers.onError?.({ message: "The connection to the server was lost.", code: "connection_lost" }));
    }
    return this._handle(rid, cid);
  }

  /** Follow a conversation while the page shows it (null: none); see `onForeign`. */
  follow(conversationId) {
    this.followed = conversationId || null;
    if (conversationId) this.send({ type: "subscribe", conversation_id: conversationId });
  }

  /** Re-attach to a conversation whose answer is still being generated. */
  subscribe(conversationId, handlers) {
    this.followed = conversationId;
    const rid = { value: null };
    const cid = { value: conversationId };
    this.subscriptions.set(conversationId, {
      ...handlers,
      onBind: (requestId) => {
        rid.value = requestId;
      },
    });
    this.send({ type: "subscribe", conversation_id: conversationId });
    return this._handle(rid, cid);
  }
}
