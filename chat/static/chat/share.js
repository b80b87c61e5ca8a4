// The read-only page of a shared conversation (/s/<id>): the snapshot comes as JSON in the
// page (json_script, not executed); questions are set as text, answers go through the same
// sanitizing Markdown renderer as the chat page. No composer, no sidebar, no session.

import { handleCopyClicks, renderInto } from "./render.js";

const data = JSON.parse(document.getElementById("share-data").textContent);
const messages = document.getElementById("messages");

document.getElementById("share-title").textContent = data.title || "Shared conversation";
const about = [data.model && `Model: ${data.model}`, `Shared ${new Date(data.created_at).toLocaleString()}`].filter(Boolean);
document.getElementById("share-about").textContent = about.join(" · ");
document.title = `${data.title || "Shared conversation"} · ChatGLM`;

for (const message of data.messages) {
  if (message.role === "user") {
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = message.content; // a person's words are text, never HTML
    const node = document.createElement("div");
    node.className = "msg user";
    node.append(bubble);
    messages.append(node);
  } else {
    const body = document.createElement("div");
    body.className = "md";
    renderInto(body, message.content || "");
    const content = document.createElement("div");
    content.className = "content";
    content.append(body);
    const avatar = document.createElement("div");
    avatar.className = "avatar";
    avatar.setAttribute("aria-hidden", "true");
    avatar.textContent = "G";
    const node = document.createElement("article");
    node.className = "msg assistant";
    node.setAttribute("aria-label", "Answer");
    node.append(avatar, content);
    messages.append(node);
  }
}
handleCopyClicks(messages);
document.body.dataset.ready = "true";
