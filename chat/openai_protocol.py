"""The OpenAI wire protocol, without views: request parsing and validation, and answer shapes.

Every parameter of OpenAI's chat and (legacy) completions requests is either honoured or
refused with a 400 naming it: never silently dropped. Parameters this server cannot honour
yet (tools outside /v1/chat/completions, which honours them: docs/tools.md) are still accepted
at their no-op values, which SDKs and LangChain send by default (`tools: []`). Structured
output (`response_format`, the Responses API's `text.format`) is enforced by constrained
decoding (chat/engine/constraints.py). Fields OpenAI does not define are refused as OpenAI
refuses them ("Unrecognized request argument"), except vLLM's `top_k` and
`repetition_penalty`, which are honoured. The sampling surface (penalties, `logit_bias`,
`logprobs`, `n`, `seed`) is honoured on every backend (docs/sampling.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import uuid
from typing import Any, Callable

from django.conf import settings

from . import inputs, params
from .engine import GenerationParams, GenerationResult, TextDelta, TopLogprob
from .engine.vocabulary import ModelInfo
from .errors import ChatError, invalid

OWNED_BY = "chatglm-django"
MESSAGE_ROLES = ("system", "developer", "user", "assistant")
MAX_MESSAGES = 2 * params.MAX_HISTORY_PAIRS + 10
# OpenAI's request name -> GenerationParams field. top_k and repetition_penalty are not
# OpenAI's, but vLLM and TGI accept them too (the official client sends them via extra_body).
NUMBER_PARAMS = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
}
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions
STARTED = int(time.time())  # `created` of the served model: when this process started


# -- parameters this server does not honour: accepted only at their no-op values ----------------


def _no_tools(data: dict) -> bool:
    return not data.get("tools") and not data.get("functions")


# name -> (is the value a no-op?, what is said when it is not). `None` is always "not sent".
NOOP: dict[str, tuple[Callable[[Any, dict], bool], str]] = {
    "tools": (lambda v, d: v == [], "function tools are served by /v1/chat/completions only"),
    "functions": (lambda v, d: v == [], "the legacy 'functions' are not supported: send 'tools'"),
    "tool_choice": (lambda v, d: v == "none" or (v == "auto" and _no_tools(d)),
                    "function tools are served by /v1/chat/completions only"),
    "function_call": (lambda v, d: v == "none" or (v == "auto" and _no_tools(d)),
                      "the legacy 'function_call' is not supported: send 'tool_choice'"),
    "parallel_tool_calls": (lambda v, d: isinstance(v, bool) and _no_tools(d),
                            "function tools are served by /v1/chat/completions only"),
    "modalities": (lambda v, d: v == ["text"], "only [\"text\"] is supported"),
    "service_tier": (lambda v, d: v in ("auto", "default"), "only 'auto' or 'default' is supported"),
    "metadata": (lambda v, d: v == {}, "stored completions carry no metadata on this server"),
    "suffix": (lambda v, d: v == "", "inserting text is not supported"),
    # The Responses API's own.
    "text": (lambda v, d: isinstance(v, dict) and set(v) <= {"format", "verbosity"} and v.get("verbosity") is None,
             "only 'format' (this server's models do not take a verbosity)"),
    "reasoning": (lambda v, d: isinstance(v, dict) and all(x is None for x in v.values()),
                  "this server's models do not reason"),
    "truncation": (lambda v, d: v == "auto",
                   "only 'auto': a conversation longer than the model's context keeps its newest turns"),
    "include": (lambda v, d: v == [], "no extra output is available"),
    "background": (lambda v, d: v is False, "background responses are not supported"),
    "max_tool_calls": (lambda v, d: _no_tools(d), "function tools are served by /v1/chat/completions only"),
    # Never no-ops: any value but null is refused.
    "audio": (lambda v, d: False, "audio output is not supported"),
    "prediction": (lambda v, d: False, "predicted outputs are not supported"),
    "web_search_options": (lambda v, d: False, "web search is not supported"),
    "reasoning_effort": (lambda v, d: False, "this server's models do not take a reasoning effort"),
    "verbosity": (lambda v, d: False, "this server's models do not take a verbosity"),
    "prompt_cache_retention": (lambda v, d: False, "prompt caching is not configurable on this server"),
}
# What /v1/chat/completions honours of the above (tool calling).
TOOL_PARAMS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
# Free identifiers and hints with no effect on the answer (OpenAI uses them for abuse
# monitoring and cache routing): a string, or null.
IDENTIFIERS = ("user", "safety_identifier", "prompt_cache_key")

CHAT_PARAMS = {"model", "messages", "stream", "stream_options", "stop", "store", *NUMBER_PARAMS, *IDENTIFIERS,
               "n", "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "logit_bias", "tools",
               "functions", "tool_choice", "function_call", "parallel_tool_calls", "response_format", "modalities",
               "service_tier", "metadata", "audio", "prediction", "web_search_options", "reasoning_effort",
               "verbosity", "prompt_cache_retention"}
COMPLETION_PARAMS = {"model", "prompt", "stream", "stream_options", "stop", "echo", "user", "suffix", "n", "best_of",
                     "frequency_penalty", "presence_penalty", "logprobs", "logit_bias",
                     *(set(NUMBER_PARAMS) - {"max_completion_tokens"})}
RESPONSES_PARAMS = {"model", "input", "instructions", "previous_response_id", "max_output_tokens", "temperature",
                    "top_p", "seed", "top_k", "repetition_penalty", "stream", "stream_options", "store", *IDENTIFIERS,
                    "metadata", "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning", "truncation",
                    "include", "background", "service_tier", "top_logprobs", "max_tool_calls", "conversation", "prompt"}
# Message fields beside role and content; null (or empty) is the only accepted value.
MESSAGE_NOOPS = {"name": "message names are not supported",
                 "tool_calls": "tool calls are read back by /v1/chat/completions only",
                 "function_call": "function calling is not supported", "audio": "audio is not supported",
                 "refusal": "refusals are not read back",
                 "tool_call_id": "tool messages are read by /v1/chat/completions only",
                 # What an SDK's own answer message carries when a client appends it to `messages`.
                 "annotations": "annotations are not read back"}


def unsupported(name: str, why: str) -> ChatError:
    return invalid(name, f"'{name}' is not supported by this server with this value: {why}.",
                   "unsupported_parameter")


def check_known(data: dict, known: set[str], honoured: frozenset[str] = frozenset()) -> None:
    """400 for a field OpenAI does not define (as OpenAI answers it), and for each parameter
    this server does not honour (on this endpoint: not in `honoured`) unless its value is a no-op."""
    for name in data:
        if name not in known:
            raise invalid(name, f"Unrecognized request argument supplied: {inputs.safe(name)}.", "unknown_parameter")
    for name, (is_noop, why) in NOOP.items():
        if name in known and name not in honoured and data.get(name) is not None and not is_noop(data[name], data):
            raise unsupported(name, why)
    for name in IDENTIFIERS:
        if name in known:
            optional(data, name, str, "a string")


def optional(data: dict, name: str, kind: type, what: str):
    value = data.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise invalid(name, f"'{name}' must be {what}.", "invalid_type")
    return value


def generation_params(data: dict, *, default_max_tokens: int | None = None, **surface) -> GenerationParams:
    values = dict(surface)
    if default_max_tokens is not None:
        values["max_new_tokens"] = default_max_tokens
    for name, field in NUMBER_PARAMS.items():
        value = params.number(data, field, param=name)  # our range, checked under OpenAI's name
        if value is not None:
            values[field] = value  # max_completion_tokens (later in the table) wins over max_tokens
    return GenerationParams(stop=params.stop_sequences(data.get("stop")), **values)


# -- the sampling surface ----------------------------------------------------------------------

MAX_CHOICES = 8  # the server's most `n` (OpenAI allows 128): each choice is one running answer
MAX_LOGIT_BIAS = 300  # entries of `logit_bias`
MAX_TOP_LOGPROBS = 20  # chat `top_logprobs`, as OpenAI
MAX_COMPLETION_LOGPROBS = 5  # legacy /v1/completions `logprobs`, as OpenAI


def _bounded(data: dict, name: str, low, high, *, integer: bool = False):
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise invalid(name, f"'{name}' must be {'an integer' if integer else 'a finite number'}.", "invalid_type")
    if not low <= value <= high:
        raise invalid(name, f"'{name}' must be between {low} and {high}.", "invalid_value")
    return value


def _logit_bias(value, info: ModelInfo) -> tuple[tuple[int, float], ...]:
    """`logit_bias` ({"token id": bias}) as (id, bias) pairs; ids checked against the vocabulary."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise invalid("logit_bias", "'logit_bias' must be an object mapping token ids to biases.", "invalid_type")
    if len(value) > MAX_LOGIT_BIAS:
        raise invalid("logit_bias", f"'logit_bias' may have at most {MAX_LOGIT_BIAS} entries.", "too_long")
    pairs = []
    for key, bias in value.items():
        if not re.fullmatch(r"\d{1,12}", key):
            raise invalid("logit_bias", f"'logit_bias' keys must be token ids (got {inputs.safe(repr(key))}).",
                          "invalid_value")
        if info.vocab_size is not None and int(key) >= info.vocab_size:
            raise invalid("logit_bias", f"'logit_bias' names token {int(key)}, which is not in the model's "
                                        f"vocabulary (ids 0 to {info.vocab_size - 1}).", "invalid_value")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise invalid("logit_bias", f"'logit_bias' values must be numbers between -100 and 100 "
                                        f"(token {int(key)}).", "invalid_value")
        pairs.append((int(key), float(bias)))
    return tuple(sorted(pairs))


def sampling_surface(data: dict, info: ModelInfo, *, legacy: bool) -> tuple[dict, int]:
    """The GenerationParams fields of penalties, logit bias and logprobs, and `n`."""
    values = {
        "frequency_penalty": _bounded(data, "frequency_penalty", -2, 2),
        "presence_penalty": _bounded(data, "presence_penalty", -2, 2),
        "logit_bias": _logit_bias(data.get("logit_bias"), info),
    }
    if legacy:  # /v1/completions: `logprobs` is the number of alternatives, null for none
        values["logprobs"] = _bounded(data, "logprobs", 0, MAX_COMPLETION_LOGPROBS, integer=True)
    else:
        wanted = optional(data, "logprobs", bool, "a boolean")
        top = _bounded(data, "top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True)
        if top and not wanted:  # 0 (what some clients send by default) asks for nothing
            raise invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true.", "invalid_value")
        values["logprobs"] = (top or 0) if wanted else None
    n = _bounded(data, "n", 1, MAX_CHOICES, integer=True) or 1
    return values, n


def choice_params(params: GenerationParams, n: int) -> list[GenerationParams]:
    """Each choice's parameters: with a seed, choice i samples with seed + i, so the n choices
    differ from each other and each is reproducible."""
    if params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=params.seed + i) for i in range(n)]
def with_constraint(generation: GenerationParams, constraint) -> GenerationParams:
    return dataclasses.replace(generation, constraint=constraint) if constraint is not None else generation


# -- served model names -----------------------------------------------------------------------


def served_names(info: ModelInfo) -> list[str]:
    """The names the API answers to: CHATGLM_SERVED_MODEL_NAMES, or the model's own id."""
    return list(settings.OPENAI_SERVED_MODEL_NAMES) or [info.model_id]


def model_not_found(model_id: str, info: ModelInfo, param: str | None = None) -> ChatError:
    names = ", ".join(f"'{name}'" for name in served_names(info))
    return ChatError(f"The model '{inputs.safe(model_id)}' does not exist. This server serves {names}.",
                     status=404, type="invalid_request_error", param=param, code="model_not_found")


def model_object(name: str) -> dict:
    return {"id": name, "object": "model", "created": STARTED, "owned_by": OWNED_BY}


def requested_model(data: dict, info: ModelInfo) -> str:
    """The served name the request asks for (echoed in the answer), or 404."""
    model_id = data.get("model")
    if model_id is None:
        raise invalid("model", "'model' is required.", "missing")
    if not isinstance(model_id, str):
        raise invalid("model", "'model' must be a string.", "invalid_type")
    if model_id not in served_names(info):
        raise model_not_found(model_id, info, param="model")
    return model_id


# -- chat messages ----------------------------------------------------------------------------


def _content(value, param: str, *, nullable: bool) -> str:
    """A message's content: a string, or an array of text parts (joined with newlines, as vLLM does)."""
    if value is None:
        if nullable:  # an assistant message that only carried tool calls
            return ""
        raise invalid(param, f"'{param}' is required.", "missing")
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid(param, f"'{param}' must be a string or an array of content parts.", "invalid_type")
    texts = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise invalid(where, f"'{where}' must be an object.", "invalid_type")
        kind = part.get("type")
        if kind != "text":
            raise invalid(f"{where}.type", f"Content parts of type {inputs.safe(repr(kind))} are not supported: this model reads "
                                           "text only (parts of type 'text').", "unsupported_content")
        if not isinstance(part.get("text"), str):
            raise invalid(f"{where}.text", f"'{where}.text' must be a string.", "invalid_type")
        texts.append(part["text"])
    return "\n".join(texts)


def _check_message_fields(message: dict, where: str, honoured: set[str] = frozenset()) -> None:
    for key, value in message.items():
        if key in ("role", "content") or key in honoured:
            continue
        if key not in MESSAGE_NOOPS:
            raise invalid(f"{where}.{inputs.safe(key)}", f"Unrecognized message field '{where}.{inputs.safe(key)}'.",
                          "unknown_parameter")
        if value not in (None, [], ""):
            raise unsupported(f"{where}.{key}", MESSAGE_NOOPS[key])


def conversation(messages, name: str = "messages") -> tuple[str | None, list[tuple[str, str]], str]:
    """(system prompt, history pairs, query) from OpenAI `messages` without tool calls.

    - `system` (and `developer`, OpenAI's newer name for it) messages, wherever they are, are
      joined with blank lines into the system prompt (None when there is none).
    - The last message must be a user message: it is the query.
    - The other messages, in order, become (question, answer) pairs. Runs of the same role
      are merged, joined with blank lines, so the model sees every word and the prompt
      alternates as chat templates expect: two user messages in a row are one question (the
      ones right before the last message join the query), two assistant messages one answer.
      Merging rather than pairing a question with an empty answer keeps the stored record
      and the prompt free of answers nobody gave. An assistant message with no question
      before it (a greeting) is paired with an empty question.
    """
    system, history, query, _ = tool_conversation(messages, name, tools=False)
    return system, history, query


def tool_conversation(messages, name: str = "messages", *, tools: bool = True):
    """(system prompt, history, query, steps): `conversation()`, with tool calls.

    An answer that holds tool calls is not one string but its steps, engine messages in order
    (chat/engine/tools.py): assistant messages (text and `tool_calls`) and `tool` results. A
    conversation may end with tool results instead of a user message: then `steps` are the
    answer's steps so far, after the query, and the model goes on from them.
    """
    if not isinstance(messages, list):
        code = "missing" if messages is None else "invalid_type"
        raise invalid(name, f"'{name}' must be an array of messages.", code)
    if not messages:
        raise invalid(name, f"'{name}' must contain at least one message.", "empty")
    if len(messages) > MAX_MESSAGES:
        raise invalid(name, f"'{name}' has more than {MAX_MESSAGES} messages.", "too_long")
    limit = settings.CHATGLM["MAX_QUERY_CHARS"]
    roles = MESSAGE_ROLES + ("tool",) if tools else MESSAGE_ROLES
    system, turns = [], []  # turns: [role, [texts or step messages]]; role "user" or "answer"
    calls: dict[str, str] = {}  # id -> name of the tool calls of the current answer
    for i, message in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, f"'{where}' must be an object.", "invalid_type")
        role = message.get("role")
        if role not in roles:
            raise invalid(f"{where}.role", f"'{where}.role' must be one of {', '.join(map(repr, roles))} "
                                           f"(got {inputs.safe(repr(role))}).", "invalid_value")
        honoured = {"assistant": {"tool_calls"}, "tool": {"tool_call_id"}}.get(role, set()) if tools else set()
        _check_message_fields(message, where, honoured)
        text = _content(message.get("content"), f"{where}.content",
                        nullable=role == "assistant")
        if len(text) > 4 * limit:
            raise invalid(f"{where}.content", f"'{where}.content' is longer than {4 * limit} characters.", "too_long")
        if role in ("system", "developer"):
            system.append(text)
            continue
        if role == "user":
            calls = {}
            if turns and turns[-1][0] == "user":
                turns[-1][1].append(text)
            else:
                turns.append(["user", [text]])
            continue
        if role == "assistant":
            step = {"role": "assistant", "content": text}
            if message.get("tool_calls"):
                step["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
                calls.update((call["id"], call["name"]) for call in step["tool_calls"])
        else:
            call_id = message.get("tool_call_id")
            if not calls:
                raise invalid(f"{where}.role", f"'{where}' is a tool's result, but no assistant message before it "
                                               "(after the last user message) called a tool.", "invalid_value")
            if not isinstance(call_id, str) or call_id not in calls:
                raise invalid(f"{where}.tool_call_id", f"'{where}.tool_call_id' must be the id of a tool call of "
                                                       "an assistant message before it.", "invalid_value")
            step = {"role": "tool", "content": text, "tool_call_id": call_id, "name": calls[call_id]}
        if turns and turns[-1][0] == "answer":
            turns[-1][1].append(step)
        else:
            turns.append(["answer", [step]])
    last = messages[-1]
    steps: list[dict] = []
    if turns and last.get("role") == "tool":
        steps = turns.pop()[1]
    elif not turns or last.get("role") != "user":
        raise invalid(name, "The last message must be a user message (or a tool's result): it is what the model "
                            "answers.", "last_message_not_user")
    if not turns or turns[-1][0] != "user":
        raise invalid(name, "A tool's result must follow a user message and the assistant's tool call.",
                      "last_message_not_user")
    query = _merge(turns.pop()[1])
    if len(query) > limit:
        raise invalid(f"{name}[{len(messages) - 1}].content", f"The question is longer than {limit} characters.",
                      "too_long")
    history, question = [], None
    for role, items in turns:
        if role == "user":
            question = _merge(items)
        else:
            history.append((question or "", _answer(items)))
            question = None
    # After merging, the roles alternate and the last one before the query is an assistant's,
    # so no question is left unanswered.
    return _merge(system) or None, history, query, steps


def _answer(steps: list[dict]):
    """An answer of plain assistant messages is their merged text; one with tool calls its steps."""
    if all(step["role"] == "assistant" and "tool_calls" not in step for step in steps):
        return _merge([step["content"] for step in steps])
    return steps


TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOOLS = 128  # as OpenAI


def _tool_calls(value, where: str) -> list[dict]:
    """An assistant message's `tool_calls` as engine steps: [{"id", "name", "arguments"}]."""
    if not isinstance(value, list):
        raise invalid(where, f"'{where}' must be an array of tool calls.", "invalid_type")
    out = []
    for j, call in enumerate(value):
        at = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(function, dict):
            raise invalid(at, f"'{at}' must be a tool call of type 'function' with a 'function' object.",
                          "invalid_type")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise invalid(f"{at}.id", f"'{at}.id' must be a string.", "invalid_type")
        if not isinstance(function.get("name"), str) or not TOOL_NAME.fullmatch(function["name"]):
            raise invalid(f"{at}.function.name", f"'{at}.function.name' must be a function name.", "invalid_value")
        arguments = function.get("arguments")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise invalid(f"{at}.function.arguments", f"'{at}.function.arguments' must be the JSON text of an "
                                                      "object.", "invalid_value")
        out.append({"id": call["id"], "name": function["name"], "arguments": json.dumps(parsed, ensure_ascii=False)})
    return out


def tool_definitions(data: dict) -> list[dict]:
    """`tools` as engine tool definitions [{"name", "description", "parameters"}] (may be empty)."""
    value = data.get("tools")
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("tools", "'tools' must be an array of tools.", "invalid_type")
    if len(value) > MAX_TOOLS:
        raise invalid("tools", f"'tools' has more than {MAX_TOOLS} tools.", "too_long")
    out, names = [], set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise invalid(where, f"'{where}' must be a tool of type 'function' with a 'function' object: other "
                                 "tool types are not supported.", "invalid_value")
        if set(tool) - {"type", "function"}:
            extra = sorted(set(tool) - {"type", "function"})[0]
            raise invalid(f"{where}.{inputs.safe(extra)}", f"Unrecognized tool field '{where}.{inputs.safe(extra)}'.",
                          "unknown_parameter")
        function = tool["function"]
        for key in function:
            if key not in ("name", "description", "parameters", "strict"):
                raise invalid(f"{where}.function.{inputs.safe(key)}",
                              f"Unrecognized function field '{where}.function.{inputs.safe(key)}'.", "unknown_parameter")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise invalid(f"{where}.function.name", f"'{where}.function.name' must be 1 to 64 letters, digits, "
                                                    "underscores or dashes.", "invalid_value")
        if name in names:
            raise invalid(f"{where}.function.name", f"Two tools are named '{name}'.", "duplicate")
        names.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid(f"{where}.function.description", f"'{where}.function.description' must be a string.",
                          "invalid_type")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid(f"{where}.function.parameters", f"'{where}.function.parameters' must be a JSON Schema "
                                                          "object.", "invalid_type")
        if function.get("strict") not in (None, False):
            raise unsupported(f"{where}.function.strict", "arguments are not constrained to the schema on this "
                                                          "server yet")
        definition = {"name": name}
        if description:
            definition["description"] = description
        definition["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
        out.append(definition)
    return out


def tool_choice(data: dict, tools: list[dict]) -> str | None:
    """`tool_choice` as GenerationParams.tool_choice: None (auto), "none", "required", "function:NAME"."""
    value = data.get("tool_choice")
    if value is None or value == "auto":
        return None
    if value in ("none", "required"):
        if value == "required" and not tools:
            raise invalid("tool_choice", "'tool_choice' 'required' needs 'tools'.", "invalid_value")
        return value
    if isinstance(value, dict):
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if value.get("type") != "function" or not isinstance(name, str):
            raise invalid("tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or "
                                         "{\"type\": \"function\", \"function\": {\"name\": ...}}.", "invalid_value")
        if name not in {tool["name"] for tool in tools}:
            raise invalid("tool_choice", f"'tool_choice' names the function '{inputs.safe(name)}', which is not in "
                                         "'tools'.", "invalid_value")
        return f"function:{name}"
    raise invalid("tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or a function.", "invalid_value")


def _merge(texts: list[str]) -> str:
    return "\n\n".join(t for t in texts if t)


# -- requests ---------------------------------------------------------------------------------


class _Request:
    """What chat and text completion requests share: model, streaming, usage, storage."""

    def __init__(self, data: dict, known: set[str], honoured: frozenset[str] = frozenset()):
        check_known(data, known, honoured)
        self.stream = bool(optional(data, "stream", bool, "a boolean"))
        options = optional(data, "stream_options", dict, "an object") or {}
        for key, value in options.items():
            where = f"stream_options.{inputs.safe(key)}"
            if key == "include_usage":
                if not isinstance(value, bool):
                    raise invalid(where, f"'{where}' must be a boolean.", "invalid_type")
            elif key == "include_obfuscation":  # padding against length side channels: never sent here
                if value is not False:
                    raise unsupported(where, "obfuscation padding is not sent by this server")
            else:
                raise invalid(where, f"Unrecognized request argument supplied: {where}.", "unknown_parameter")
        self.include_usage = bool(options.get("include_usage"))  # read only when streaming, as OpenAI does
        # `store: false` keeps this turn out of the database (the server may store none at all).
        self.store = optional(data, "store", bool, "a boolean") is not False and settings.CHATGLM["STORE_API_TURNS"]


class ChatRequest(_Request):
    """A validated /v1/chat/completions request."""

    def __init__(self, data: dict, info: ModelInfo):
        super().__init__(data, CHAT_PARAMS, TOOL_PARAMS)
        surface, self.n = sampling_surface(data, info, legacy=False)
        self.best_of = self.n
        self.tools = tool_definitions(data)
        choice = tool_choice(data, self.tools)
        parallel = optional(data, "parallel_tool_calls", bool, "a boolean")
        if choice == "none":  # the model is not told of tools it may not call
            self.tools, choice = [], None
        constraint = None if data.get("response_format") is None else params.response_format(data["response_format"])
        self.params = dataclasses.replace(with_constraint(generation_params(data, **surface), constraint),
                                          tool_choice=choice,
                                          parallel_tool_calls=False if parallel is False and self.tools else None)
        self.system_prompt, self.history, self.query, self.steps = tool_conversation(data.get("messages"))
        # Whether the model must read or write tool calls: a backend without a tool format refuses.
        self.uses_tools = bool(self.tools or self.steps or any(not isinstance(a, str) for _, a in self.history))
        self.model = requested_model(data, info)  # last: a malformed request is a 400 whatever its model


class TextRequest(_Request):
    """A validated /v1/completions request: one prompt, answered as the model's reply to it.

    This server serves chat models, so the prompt goes to the model as one user message (with
    the model's chat template) and the text is its answer; `echo` puts the prompt before it.
    """

    def __init__(self, data: dict, info: ModelInfo):
        super().__init__(data, COMPLETION_PARAMS)
        surface, self.n = sampling_surface(data, info, legacy=True)
        self.params = generation_params(data, default_max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS, **surface)
        self.echo = bool(optional(data, "echo", bool, "a boolean"))
        if self.echo and self.params.logprobs is not None:
            raise unsupported("logprobs", "the prompt's log probabilities are not computed, so 'echo' cannot "
                                          "come with 'logprobs'")
        # best_of candidates are generated and the n with the highest total logprob returned.
        self.best_of = _bounded(data, "best_of", 1, MAX_CHOICES, integer=True) or self.n
        if self.best_of < self.n:
            raise invalid("best_of", "'best_of' must be at least 'n'.", "invalid_value")
        if self.best_of > self.n and self.stream:
            raise invalid("best_of", "'best_of' above 'n' cannot be streamed: the best are known at the end.",
                          "invalid_value")
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if prompt is None:
            raise invalid("prompt", "'prompt' is required.", "missing")
        if isinstance(prompt, list):
            raise invalid("prompt", "'prompt' must be one string: several prompts, and prompts as token ids, are "
                                    "not supported by this server.", "unsupported_value")
        if not isinstance(prompt, str):
            raise invalid("prompt", "'prompt' must be a string.", "invalid_type")
        limit = settings.CHATGLM["MAX_QUERY_CHARS"]
        if len(prompt) > limit:
            raise invalid("prompt", f"'prompt' is longer than {limit} characters.", "too_long")
        if not prompt.strip():
            raise invalid("prompt", "'prompt' must not be empty.", "empty")
        self.prompt = prompt
        self.model = requested_model(data, info)


# -- answers ----------------------------------------------------------------------------------


def usage_of(results: list[GenerationResult]) -> dict[str, int]:
    """The usage of n choices: the prompt once (as OpenAI counts it), every choice's answer."""
    prompt = results[0].prompt_tokens
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _candidate(entry: TopLogprob) -> dict:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes)}


def chat_logprobs(entries) -> dict:
    """`choices[].logprobs` of chat completions (whole or a chunk's share)."""
    return {"content": [{**_candidate(e), "top_logprobs": [_candidate(t) for t in e.top]} for e in entries],
            "refusal": None}


class ChatShapes:
    """`chat.completion` and `chat.completion.chunk` objects of one answer (of n choices)."""

    def __init__(self, turn_id: str, req: ChatRequest):
        self.id = f"chatcmpl-{turn_id}"
        self.created = int(time.time())
        self.model = req.model
        self.include_usage = req.include_usage
        self.logprobs = req.params.logprobs is not None

    def head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole_of(self, results: list[GenerationResult]) -> dict:
        choices = []
        for index, result in enumerate(results):
            message = {"role": "assistant", "content": result.text, "refusal": None}
            finish_reason = result.finish_reason
            if result.tool_calls:
                message["content"] = result.text or None  # as OpenAI: no content beside calls is null
                message["tool_calls"] = [self.tool_call(call) for call in result.tool_calls]
                finish_reason = "tool_calls"
            choices.append({"index": index, "message": message,
                            "logprobs": chat_logprobs(result.logprobs or ()) if self.logprobs else None,
                            "finish_reason": finish_reason})
        return {**self.head("chat.completion"), "choices": choices, "usage": usage_of(results)}

    @staticmethod
    def tool_call(call) -> dict:
        return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}

    def tool_call_chunks(self, index: int, tool_calls: tuple) -> list[dict]:
        """One chunk per call, each whole (the calls are known once the answer ends)."""
        return [self.chunk(index, {"tool_calls": [{"index": i, **self.tool_call(call)}]})
                for i, call in enumerate(tool_calls)]

    def first(self, index: int) -> dict:
        return self.chunk(index, {"role": "assistant", "content": ""})

    def delta(self, index: int, delta: TextDelta) -> dict:
        return self.chunk(index, {"content": delta.text}, logprobs=delta.logprobs)

    def last(self, index: int, finish_reason: str) -> dict:
        return self.chunk(index, {}, finish_reason)

    def chunk(self, index: int, delta: dict, finish_reason: str | None = None, logprobs=()) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": chat_logprobs(logprobs) if logprobs else None,
                  "finish_reason": finish_reason}
        out = {**self.head("chat.completion.chunk"), "choices": [choice]}
        if self.include_usage:
            out["usage"] = None  # as OpenAI does: only the last chunk carries usage
        return out

    def usage_chunk(self, usage: dict) -> dict:
        return {**self.head("chat.completion.chunk"), "choices": [], "usage": usage}


class TextShapes:
    """`text_completion` objects of one answer (of n choices), whole or streamed."""

    def __init__(self, turn_id: str, req: TextRequest):
        self.id = f"cmpl-{turn_id}"
        self.created = int(time.time())
        self.model = req.model
        self.include_usage = req.include_usage
        self.prefix = req.prompt if req.echo else ""
        self.logprobs = req.params.logprobs is not None

    def head(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def whole_of(self, results: list[GenerationResult]) -> dict:
        choices = [self._choice(index, self.prefix + r.text, r.finish_reason, r.logprobs or ())
                   for index, r in enumerate(results)]
        return {**self.head(), "choices": choices, "usage": usage_of(results)}

    def first(self, index: int) -> dict | None:
        return self.chunk(index, self.prefix) if self.prefix else None

    def delta(self, index: int, delta: TextDelta) -> dict:
        return self.chunk(index, delta.text, logprobs=delta.logprobs)

    def last(self, index: int, finish_reason: str) -> dict:
        return self.chunk(index, "", finish_reason)

    def chunk(self, index: int, text: str, finish_reason: str | None = None, logprobs=()) -> dict:
        out = {**self.head(), "choices": [self._choice(index, text, finish_reason, logprobs)]}
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: dict) -> dict:
        return {**self.head(), "choices": [], "usage": usage}

    def _choice(self, index: int, text: str, finish_reason: str | None, logprobs) -> dict:
        return {"text": text, "index": index, "logprobs": self._logprobs(logprobs) if self.logprobs else None,
                "finish_reason": finish_reason}

    def _logprobs(self, entries) -> dict:
        """The legacy shape: parallel lists, alternatives as {token: logprob}, offsets in the text."""
        return {
            "tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
            "text_offset": [len(self.prefix) + e.offset for e in entries],
        }


# -- the Responses API (text turns) ------------------------------------------------------------

RESPONSE_NUMBER_PARAMS = {"max_output_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p",
                          "seed": "seed", "top_k": "top_k", "repetition_penalty": "repetition_penalty"}
TEXT_PART_TYPES = {"input_text", "output_text", "text"}


def response_id(conversation_id: str | None, message_id: int | None, turn_id: str) -> str:
    """A stored answer's id names its conversation and message, so `previous_response_id` can
    continue it; an answer not stored gets the turn's id, which nothing can continue."""
    if conversation_id is not None and message_id is not None:
        return f"resp_{uuid.UUID(conversation_id).hex}_{message_id}"
    return f"resp_{turn_id}"


def parse_response_id(value) -> tuple[uuid.UUID, int]:
    """(conversation id, message id) of a `previous_response_id`, or 404 as for an unknown one."""
    if not isinstance(value, str):
        raise invalid("previous_response_id", "'previous_response_id' must be a string.", "invalid_type")
    match = re.fullmatch(r"resp_([0-9a-f]{32})_(\d{1,18})", value)
    if match is None:
        raise previous_not_found(value)
    return uuid.UUID(match.group(1)), int(match.group(2))


def previous_not_found(value: str) -> ChatError:
    return ChatError(f"Previous response with id '{inputs.safe(value)}' not found: only stored responses of the same "
                     "caller can be continued.", status=404, type="invalid_request_error",
                     param="previous_response_id", code="previous_response_not_found")


def _input_messages(value) -> list[dict]:
    """The Responses API's `input` items as chat messages, for `conversation()`."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        code = "missing" if value is None else "invalid_type"
        raise invalid("input", "'input' must be a string or an array of input messages.", code)
    messages = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, f"'{where}' must be an object.", "invalid_type")
        kind = item.get("type", "message")
        if kind != "message":
            raise invalid(f"{where}.type", f"Input items of type {inputs.safe(repr(kind))} are not supported: this "
                                           "server reads messages of text only.", "unsupported_content")
        message = {key: val for key, val in item.items() if key not in ("type", "id", "status")}
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") in TEXT_PART_TYPES:
                    part = {"type": "text", "text": part.get("text")}
                elif isinstance(part, dict) and isinstance(part.get("type"), str):
                    raise invalid(f"{where}.content[{j}].type",
                                  f"Content parts of type {inputs.safe(repr(part['type']))} are not supported: this "
                                  "model reads text only.", "unsupported_content")
                parts.append(part)
            message["content"] = parts
        messages.append(message)
    return messages


class ResponsesRequest(_Request):
    """A validated /v1/responses request: a text turn, optionally continuing a stored one."""

    def __init__(self, data: dict, info: ModelInfo):
        super().__init__(data, RESPONSES_PARAMS)
        # Not in NOOP: /v1/completions has a `prompt` of its own.
        for name, why in (("conversation", "continue a conversation with 'previous_response_id'"),
                          ("prompt", "prompt templates are not supported")):
            if data.get(name) is not None:
                raise unsupported(name, why)
        if data.get("top_logprobs") not in (None, 0) or isinstance(data.get("top_logprobs"), bool):
            raise unsupported("top_logprobs", "the Responses API returns no log probabilities here "
                                              "(chat completions do)")
        values = {}
        for name, field in RESPONSE_NUMBER_PARAMS.items():
            value = params.number(data, field, param=name)
            if value is not None:
                values[field] = value
        text = data.get("text") or {}
        self.text_format = text.get("format") or {"type": "text"}
        self.params = GenerationParams(constraint=params.text_format(self.text_format), **values)
        self.instructions = optional(data, "instructions", str, "a string")
        system, self.history, self.query = conversation(_input_messages(data.get("input")), "input")
        self.system_prompt = _merge([self.instructions or "", system or ""]) or None
        self.previous = None
        if data.get("previous_response_id") is not None:
            if self.history:
                raise invalid("input", "With 'previous_response_id', 'input' holds only the new user message(s): "
                                       "the earlier turns are the stored conversation's.", "invalid_value")
            self.previous_id = data["previous_response_id"]
            self.previous = parse_response_id(self.previous_id)
        self.model = requested_model(data, info)
        self.echo = {"instructions": self.instructions, "max_output_tokens": data.get("max_output_tokens"),
                     "previous_response_id": data.get("previous_response_id"),
                     "temperature": data.get("temperature", 1.0), "top_p": data.get("top_p", 1.0),
                     "store": self.store, "user": data.get("user"), "metadata": data.get("metadata") or {},
                     "truncation": data.get("truncation") or "auto", "text": {"format": self.text_format}}


class ResponseShapes:
    """The `response` object and the streaming events of one answer, as the openai SDK reads them."""

    def __init__(self, id: str, req: ResponsesRequest):
        self.id = id
        self.item_id = f"msg_{id[len('resp_'):]}"
        self.created_at = int(time.time())
        self.model = req.model
        self.echo = req.echo
        self.sequence = 0

    def response(self, status: str, text: str | None = None, usage: dict | None = None,
                 incomplete: str | None = None, error: dict | None = None) -> dict:
        output = [] if text is None else [self.item("completed" if status == "completed" else "incomplete", text)]
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": self.model, "output": output, "parallel_tool_calls": False, "tool_choice": "none",
            "tools": [], "reasoning": {"effort": None, "summary": None},
            "usage": self.usage(usage) if usage else None, **self.echo,
        }

    def whole_of(self, results: list[GenerationResult]) -> dict:
        return self.whole(results[0].text, results[0].finish_reason, results[0].usage())

    def whole(self, text: str, finish_reason: str, usage: dict) -> dict:
        if finish_reason == "length":
            return self.response("incomplete", text, usage, incomplete="max_output_tokens")
        return self.response("completed", text, usage)

    def item(self, status: str, text: str | None = None) -> dict:
        content = [] if text is None else [self.part(text)]
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    @staticmethod
    def part(text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    @staticmethod
    def usage(usage: dict) -> dict:
        return {"input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["total_tokens"]}

    def event(self, kind: str, **fields) -> tuple[str, dict]:
        """(event name, data) of one streaming event, numbered in order."""
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, data

    def opening(self) -> list[tuple[str, dict]]:
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [
            self.event("response.created", response=self.response("in_progress")),
            self.event("response.in_progress", response=self.response("in_progress")),
            self.event("response.output_item.added", output_index=0, item=self.item("in_progress")),
            self.event("response.content_part.added", **where, part=self.part("")),
        ]

    def delta(self, text: str) -> tuple[str, dict]:
        return self.event("response.output_text.delta", item_id=self.item_id, output_index=0, content_index=0,
                          delta=text, logprobs=[])

    def closing(self, text: str, finish_reason: str, usage: dict) -> list[tuple[str, dict]]:
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        final = self.whole(text, finish_reason, usage)
        return [
            self.event("response.output_text.done", **where, text=text, logprobs=[]),
            self.event("response.content_part.done", **where, part=self.part(text)),
            self.event("response.output_item.done", output_index=0, item=final["output"][0]),
            self.event("response.completed" if final["status"] == "completed" else "response.incomplete",
                       response=final),
        ]

    def failed(self, error: dict) -> tuple[str, dict]:
        return self.event("response.failed", response=self.response(
            "failed", error={"code": error.get("code"), "message": error.get("message")}))
