// Conversations as trees (chat/tree.py has the server side). Pure functions over the
// conversation the API returns: every message with its `parent_id`, and `current_path`.

/** The messages on the current path, root first. */
export function currentPath(conversation) {
  const messages = conversation.messages || [];
  if (!Array.isArray(conversation.current_path)) return messages; // a server without trees
  const byId = new Map(messages.map((m) => [m.id, m]));
  return conversation.current_path.map((id) => byId.get(id)).filter(Boolean);
}

/** For each message id: its siblings (itself included), oldest first. */
export function siblingsOf(conversation) {
  const groups = new Map();
  for (const message of conversation.messages || []) {
    const key = message.parent_id ?? "root";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(message);
  }
  const result = new Map();
  for (const group of groups.values()) {
    group.sort((a, b) => a.position - b.position);
    for (const message of group) result.set(message.id, group);
  }
  return result;
}
