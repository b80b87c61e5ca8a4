// The read-only page of a shared conversation (/s/<id>): the snapshot comes as JSON in the
// page (json_script, not executed); questions are set as text, answers go through the same
// sanitizing Markdown renderer as the chat page. No composer, no sidebar, no session.

import { el } from "./dom.js";
import { answerShell, isToolStep, toolStepNodes, userBubble } from "./messages.js";
import { handleCopyClicks, renderInto } from "./render.js";

const data = JSON.parse(document.getElementById("share-data").textContent);
const messages = document.getElementById("messages");

document.getElementById("share-title").textContent = data.title || "Shared conversation";
const about = [data.model && `Model: ${data.model}`, `Shared ${new Date(data.created_at).toLocaleString()}`].filter(Boolean);
document.getElementById("share-about").textContent = about.join(" · ");
document.title = `${data.title || "Shared conversation"} · ChatGLM`;

let steps = []; // an answer's tool steps, shown above its text
data.messages.forEach((message, index) => {
  if (isToolStep(message, data.messages[index + 1])) {
    steps.push(...toolStepNodes(message));
  } else if (message.role === "user") {
    messages.append(userBubble(message.content));
    steps = [];
  } else {
    const body = el("div", { class: "md" });
    renderInto(body, message.content || "");
    messages.append(answerShell(...steps, ...(message.tool_calls?.length ? toolStepNodes(message) : []), body));
    steps = [];
  }
});
handleCopyClicks(messages);
document.body.dataset.ready = "true";
