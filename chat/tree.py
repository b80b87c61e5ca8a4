"""Conversations as trees of messages: the current path, siblings, and where a branch ends.

Each message has a parent (null at the root). Editing a question adds a sibling question (same
parent) with its own answer; regenerating adds a sibling answer (same question). The model is
sent the path from the root to the chosen leaf only, never an abandoned branch. These functions
work on a conversation's messages loaded once (tens of rows), not one query per step.
"""

from __future__ import annotations

from collections.abc import Iterable

from .models import Conversation, Message, Role


def by_id(messages: Iterable[Message]) -> dict[int, Message]:
    return {m.pk: m for m in messages}


def leaf_id(conversation: Conversation, messages: dict[int, Message]) -> int | None:
    """The conversation's current leaf; the newest message if none is recorded (or it is gone)."""
    if conversation.current_leaf_id in messages:
        return conversation.current_leaf_id
    return max(messages, key=lambda pk: messages[pk].position, default=None)


def path_to(messages: dict[int, Message], leaf: int | None) -> list[Message]:
    """The messages from the root down to `leaf` (inclusive), in order."""
    path, seen = [], set()
    while leaf is not None and leaf in messages and leaf not in seen:
        seen.add(leaf)
        path.append(messages[leaf])
        leaf = messages[leaf].parent_id
    path.reverse()
    return path


def current_path(conversation: Conversation, messages: Iterable[Message] | None = None) -> list[Message]:
    rows = by_id(messages if messages is not None else conversation.messages.all())
    return path_to(rows, leaf_id(conversation, rows))


def deepest(messages: dict[int, Message], start: int) -> int:
    """The leaf reached from `start` by always taking the newest child: switching to a sibling
    shows that branch as it was last extended."""
    children: dict[int, list[Message]] = {}
    for message in messages.values():
        if message.parent_id is not None:
            children.setdefault(message.parent_id, []).append(message)
    node = start
    while children.get(node):
        node = max(children[node], key=lambda m: m.position).pk
    return node


def pairs(path: Iterable[Message]) -> list[tuple[str, str | list[dict]]]:
    """(question, answer) pairs of a path; unanswered questions and empty answers are left out.

    An answer that went through tool calls is its steps, engine messages (chat/engine/tools.py):
    the assistant's calls and the tools' results, then the final answer."""
    result, question, steps = [], None, []
    for message in path:
        if message.role == Role.USER:
            question, steps = message.content, []
        elif question is None:
            continue
        elif message.role == Role.ASSISTANT and message.tool_calls:
            steps.append({"role": "assistant", "content": message.content, "tool_calls": message.tool_calls})
        elif message.role == Role.TOOL:
            steps.append({"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id,
                          "name": message.tool_name})
        elif message.role == Role.ASSISTANT:
            if message.content:
                answer = message.content
                if steps:
                    answer = steps + [{"role": "assistant", "content": message.content}]
                result.append((question, answer))
            question = None
    return result


def final_text(answer: str | list[dict]) -> str:
    """An answer as text: a tool-using answer is its final message's (what the seed API shows)."""
    return answer if isinstance(answer, str) else answer[-1]["content"]


def as_plain_text(answer: str | list[dict]) -> str:
    """A tool-using answer written out as one text, for a model without a tool-calling format:
    each call as `[called NAME(ARGUMENTS)]`, each result as `[NAME returned: RESULT]`, then
    the final answer, one per line."""
    if isinstance(answer, str):
        return answer
    lines = []
    for step in answer:
        if step["role"] == "tool":
            lines.append(f"[{step['name']} returned: {step['content']}]")
            continue
        if step["content"]:
            lines.append(step["content"])
        lines += [f"[called {call['name']}({call['arguments']})]" for call in step.get("tool_calls") or ()]
    return "\n".join(lines)
