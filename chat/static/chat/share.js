// The read-only page of a shared conversation (/s/<id>): the snapshot comes as JSON in the
// page (json_script, not executed); questions are set as text, answers go through the same
// sanitizing Markdown renderer as the chat page. No composer, no sidebar, no session.

import { el } from "./dom.js";
import { answerShell, userBubble } from "./messages.js";
import { handleCopyClicks, renderInto } from "./render.js";

const data = JSON.parse(document.getElementById("share-data").textContent);
const messages = document.getElementById("messages");

document.getElementById("share-title").textContent = data.title || "Shared conversation";
const about = [data.model && `Model: ${data.model}`, `Shared ${new Date(data.created_at).toLocaleString()}`].filter(Boolean);
document.getElementById("share-about").textContent = about.join(" · ");
document.title = `${data.title || "Shared conversation"} · ChatGLM`;

for (const message of data.messages) {
  if (message.role === "user") {
    messages.append(userBubble(message.content));
  } else {
    const body = el("div", { class: "md" });
    renderInto(body, message.content || "");
    messages.append(answerShell(body));
  }
}
handleCopyClicks(messages);
document.body.dataset.ready = "true";
