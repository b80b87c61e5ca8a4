"""Tool calling, protocol-neutral: calls, and the streaming parsers of each family's call syntax.

A request's tools reach a backend inside the chat messages, as ChatGLM3's own convention has
it: the first message is a system message with a `tools` key (a list of function definitions
`{"name", "description", "parameters"}`). Earlier calls are assistant messages with
`tool_calls` (`[{"id", "name", "arguments"}]`, arguments as JSON text) and their results are
`{"role": "tool", "content", "tool_call_id", "name"}` messages. Each backend renders these in
its model's native format and gives each sequence a parser (`ToolParser`) of the model's
output: text passes through, a call is held back until the answer ends and then becomes a
`ToolCall`, never text.

Both GLM families answer a call as `NAME\\nBODY` right after the assistant role token:

* ChatGLM3: BODY is a Python block, ```` ```python\\ntool_call(location="x")\\n``` ````; its
  keyword values are read as Python literals (with `ast`, never executed).
* GLM-4 (and the fake model): BODY is the JSON object of the arguments.

An answer is a call only if its first line is exactly the name of an offered tool and BODY
starts as the family's syntax does; anything else is text, released as soon as it cannot be
a call. A call whose BODY does not parse (invalid JSON, a non-literal Python argument) is
given back as the answer's text, as the model wrote it: no call with broken arguments
reaches a client.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import uuid

log = logging.getLogger(__name__)

SEGMENT = "<|assistant|>"  # ChatGLM3 starts each part of a multi-part answer with this token


@dataclasses.dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text of an object

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_names(messages: list[dict]) -> list[str]:
    """The names of the tools offered in these chat messages (see the module docstring)."""
    if messages and messages[0].get("role") == "system":
        return [tool["name"] for tool in messages[0].get("tools") or ()]
    return []


def json_arguments(body: str) -> str | None:
    """Canonical JSON text of a JSON object, or None when `body` is not one."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else None


def python_arguments(body: str) -> str | None:
    """JSON text of the keyword arguments of ChatGLM3's ```` ```python\\ntool_call(k=v, ...)\\n``` ````,
    or None when it is not such a block with literal values (nothing is executed)."""
    lines = body.strip().split("\n")
    if len(lines) < 2 or not lines[0].startswith("```") or lines[-1].strip() != "```":
        return None
    try:
        tree = ast.parse("\n".join(lines[1:-1]).strip(), mode="eval")
    except SyntaxError:
        return None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"
            and not call.args and all(k.arg for k in call.keywords)):
        return None
    try:
        values = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        return json.dumps(values, ensure_ascii=False)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


class ToolParser:
    """Splits one answer's streamed text into text and calls (`NAME\\nBODY` segments).

    `feed(text)` returns the text that is decided to be text; `finish()` returns the rest of
    the text and the calls. A segment is held while it may still become a call: until its first
    line is complete and BODY's first characters show whether it starts as `body_start` does.
    """

    def __init__(self, names: list[str], body_start: str, parse_body, *, parallel: bool = True):
        self.names = set(names)
        self.body_start = body_start
        self.parse_body = parse_body
        self.parallel = parallel
        self.pending = ""  # undecided text of the current segment
        self.calls_raw: list[tuple[str, str, str]] = []  # (name, body, the raw text) of each call
        self.in_call = False
        self.started = False  # whether this segment has released text

    def feed(self, text: str) -> str:
        self.pending += text
        out = []
        while True:
            if self.in_call:
                cut = self.pending.find(SEGMENT)
                if cut < 0:
                    return "".join(out)
                self._close_call(self.pending[:cut])
                self.pending = self.pending[cut + len(SEGMENT):]
                self.started = False
                continue
            if self.started:  # a text segment: text until a next segment starts
                cut = self.pending.find(SEGMENT)
                if cut >= 0:
                    out.append(self.pending[:cut])
                    self.pending = self.pending[cut + len(SEGMENT):]
                    self.started = False
                    continue
                keep = _partial_suffix(self.pending, SEGMENT)
                out.append(self.pending[:len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep:]
                return "".join(out)
            decided = self._decide()
            if decided is None:
                return "".join(out)
            if not decided:
                self.started = True

    def _decide(self) -> bool | None:
        """Whether the pending segment is a call (True), text (False), or not known yet (None)."""
        line, newline, rest = self.pending.lstrip(" ").partition("\n")
        if not newline:
            # A name is one line without spaces; a longer or spaced first line is text.
            if any(name.startswith(line.strip()) for name in self.names) and SEGMENT not in line:
                return None
            return False
        if line.strip() not in self.names:
            return False
        body = rest.lstrip()
        if len(body) < len(self.body_start):
            return None if self.body_start.startswith(body) else False
        if not body.startswith(self.body_start):
            return False
        self.in_call = True
        return True

    def _close_call(self, segment: str) -> None:
        line, _, body = segment.lstrip(" ").partition("\n")
        self.calls_raw.append((line.strip(), body, segment))
        self.in_call = False

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The text still held and every call of the answer."""
        text = ""
        if self.in_call:
            self._close_call(self.pending)
        else:
            text = self.pending  # a segment still undecided at the end never became a call
        self.pending = ""
        calls, broken = [], []
        for name, body, raw in self.calls_raw:
            arguments = self.parse_body(body)
            if arguments is None:
                log.info("a tool call of %s did not parse; it is answered as text", name)
                broken.append(raw)
            else:
                calls.append(ToolCall(new_call_id(), name, arguments))
        if broken:
            text = "\n".join(broken) + ("\n" + text if text else "")
        if not self.parallel:
            calls = calls[:1]
        return text, calls


class CallAssembler:
    """Calls streamed in OpenAI's delta shape (`{"index", "id", "function": {"name", "arguments"}}`
    parts, the arguments' text in pieces), as from an upstream server or llama.cpp's own parser."""

    def __init__(self):
        self.calls: dict[int, dict] = {}  # by index: id, name, arguments so far

    def add(self, part: dict) -> None:
        call = self.calls.setdefault(part.get("index", 0), {"id": "", "name": "", "arguments": ""})
        function = part.get("function") or {}
        call["id"] = part.get("id") or call["id"]
        call["name"] += function.get("name") or ""
        call["arguments"] += function.get("arguments") or ""

    def finish(self) -> tuple[list[ToolCall], str]:
        """The calls, and the text of those whose arguments are not a JSON object: as a local
        model's unparseable call, such a call is answered as its text, never as a broken call."""
        calls, broken = [], []
        for index in sorted(self.calls):
            call = self.calls[index]
            arguments = json_arguments(call["arguments"] or "{}")
            if arguments is None:
                log.info("a tool call of %s had invalid JSON arguments; answered as text", call["name"])
                broken.append(f"{call['name']}\n{call['arguments']}")
            else:
                calls.append(ToolCall(call["id"] or new_call_id(), call["name"], arguments))
        return calls, "\n".join(broken)


def openai_messages(messages: list[dict], tool_choice: str | None = None, parallel: bool | None = None) -> dict:
    """`messages` (and `tools`, `tool_choice`, `parallel_tool_calls`) in OpenAI's request shape,
    from engine messages (see the module docstring): what an upstream server and llama.cpp's
    own chat handling read."""
    out, extra = [], {}
    for message in messages:
        role = message["role"]
        if role == "system" and "tools" in message:
            extra["tools"] = [{"type": "function", "function": tool} for tool in message["tools"]]
            if message["content"]:
                out.append({"role": "system", "content": message["content"]})
        elif role == "assistant" and message.get("tool_calls"):
            out.append({"role": "assistant", "content": message["content"] or None, "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in message["tool_calls"]]})
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": message["tool_call_id"], "content": message["content"]})
        else:
            out.append({"role": role, "content": message["content"]})
    if extra and tool_choice is not None:
        name = tool_choice.removeprefix("function:")
        extra["tool_choice"] = "required" if name == "required" else {"type": "function", "function": {"name": name}}
    if extra and parallel is False:
        extra["parallel_tool_calls"] = False
    return {"messages": out, **extra}


def _partial_suffix(text: str, marker: str) -> int:
    """How many of `text`'s last characters may start `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def chatglm3_parser(names: list[str], parallel: bool = True) -> ToolParser:
    return ToolParser(names, "```", python_arguments, parallel=parallel)


def glm4_parser(names: list[str], parallel: bool = True) -> ToolParser:
    return ToolParser(names, "{", json_arguments, parallel=parallel)


# -- ChatGLM3's rendering (its openai_api_demo and tool demo, PROMPT.md) -------------------------

CHATGLM3_TOOLS_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:"


def chatglm3_messages(messages: list[dict]) -> list[dict]:
    """Messages as ChatGLM3's `build_chat_input` takes them: `{"role", "metadata", "content"}`.

    The tools join the system turn as JSON (indent 4); an earlier call is an assistant turn
    whose metadata is the function name and whose content is the `tool_call(...)` block; a
    tool's result is an `observation` turn."""
    out = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "system" and message.get("tools"):
            tools = json.dumps(list(message["tools"]), indent=4, ensure_ascii=False)
            prompt = CHATGLM3_TOOLS_PROMPT + "\n" + tools
            out.append({"role": "system", "metadata": "", "content": prompt})
            if content:
                out.append({"role": "system", "metadata": "", "content": content})
        elif role == "assistant" and message.get("tool_calls"):
            if content:
                out.append({"role": "assistant", "metadata": "", "content": content})
            for call in message["tool_calls"]:
                out.append({"role": "assistant", "metadata": call["name"],
                            "content": "```python\n" + python_call(call["arguments"]) + "\n```"})
        elif role == "tool":
            out.append({"role": "observation", "metadata": "", "content": content})
        else:
            out.append({"role": role, "metadata": "", "content": content})
    return out


def python_call(arguments: str) -> str:
    """`tool_call(k=v, ...)` of JSON arguments, values as Python literals (ChatGLM3's syntax)."""
    values = json.loads(arguments) if arguments else {}
    return "tool_call(" + ", ".join(f"{k}={v!r}" for k, v in values.items()) + ")"
