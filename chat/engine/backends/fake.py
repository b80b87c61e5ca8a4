"""A deterministic test double of a model: it echoes `You said: <the last user message>`.

The echo is cut into tokens of 1 to 3 UTF-8 bytes (cycling), so multi-byte characters are
split across tokens and the answer goes through the same incremental detokenizer as a real
model. `CHATGLM_FAKE_DELAY_MS` sets the time of a decode step (a fixed cadence: 50 ms is 20
tokens/s per stream). A user message that contains `[[fake:error]]` makes the "model" raise
halfway through, to test failures mid-stream; one that contains `[[fake:prompt]]` makes it
answer with the whole prompt it received (each message as `role: content`, joined by ` | `),
to test which history reaches the model. With a JSON Schema constraint (response_format) it
answers the smallest document of that schema whose strings are the echo (see `example_of`);
it refuses Lark grammars. It decodes sequences in batches that new requests
join between steps (continuous batching).

Tools: offered tools make it call them in GLM-4's syntax (`NAME\n{arguments}`, parsed back by
the same streaming parser as GLM-4's), so the serving path of tool calls is testable end to
end. A user message with `[[fake:call NAME ARGUMENTS]]` (ARGUMENTS: the JSON text of the
arguments, written as the model's output, so invalid JSON tests that path) answers with that
call, one per marker; `tool_choice` "required" or a named function without a marker calls the
first offered tool (or the named one) with `{}`. After a tool's result (the last message is a
`tool` message) it answers `The tool said: <the result>`.

Its sampling parameters are honoured as a model whose every step is certain would honour
them: each answer token has probability 1 (logprob 0, and it is its step's only candidate:
`top_logprobs` lists it alone); no penalty or finite bias can move a certainty, so the answer
is the same for every temperature, penalty, bias and seed, and the n choices of a request are
equal.
"""

from __future__ import annotations

import json
import re
import time

from ..backend import Backend
from ..config import EngineConfig
from ..constraints import Constraint, UnsupportedConstraint, grammar_of
from ..detokenize import IncrementalDetokenizer
from ..generation import Generation
from ..tools import SEGMENT, glm4_parser, tool_names
from ..vocabulary import (
    ChatMessage,
    GenerationParams,
    ModelInfo,
    TokenLogprob,
    TopLogprob,
)

ERROR_TRIGGER = "[[fake:error]]"
PROMPT_TRIGGER = "[[fake:prompt]]"
CALL_TRIGGER = re.compile(r"\[\[fake:call (\S+) (.*?)\]\](?!\])")


def encode(text: str) -> list[int]:
    """Token ids for `text`: byte chunks of 1, 2, 3, 1, 2, 3... bytes, length in the high bits."""
    data = text.encode("utf-8")
    ids, i, size = [], 0, 1
    while i < len(data):
        chunk = data[i : i + size]
        ids.append((len(chunk) << 24) | int.from_bytes(chunk, "big"))
        i += len(chunk)
        size = size % 3 + 1
    return ids


def decode(ids: list[int]) -> str:
    data = b"".join((i & 0xFFFFFF).to_bytes(i >> 24, "big") for i in ids)
    return data.decode("utf-8", errors="replace")


class FakeBackend(Backend):
    def __init__(self, delay: float = 0.0, context_length: int = 4096, max_batch_size: int = 8):
        self.delay = delay
        self.context_length = context_length
        self.max_batch_size = max_batch_size

    @classmethod
    def from_config(cls, config: EngineConfig) -> FakeBackend:
        return cls(delay=config.fake_delay_ms / 1000, context_length=config.fake_context,
                   max_batch_size=config.max_batch_size)

    def load(self) -> None:
        pass

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id="fake", backend="fake", device="cpu", context_length=self.context_length,
            source="built in (test double)", vocab_size=4 << 24,  # ids: (length << 24) | bytes
        )

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        return sum(len(encode(m["content"])) + 2 for m in messages)

    def check_constraint(self, constraint: Constraint) -> None:
        if constraint.json_schema is None:
            raise UnsupportedConstraint("The fake model follows JSON Schemas only, not Lark grammars.")
        grammar_of(constraint)  # refuses what the real backends' grammar engine refuses

    def tools_refusal(self, messages: list[ChatMessage], params: GenerationParams) -> str | None:
        return None  # every tool_choice is honoured (see the module docstring)

    def tool_parser(self, messages: list[ChatMessage], params: GenerationParams):
        names = tool_names(messages)
        return glm4_parser(names, parallel=params.parallel_tool_calls is not False) if names else None

    @staticmethod
    def reply_to(messages: list[ChatMessage], params: GenerationParams = GenerationParams()) -> str:
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if PROMPT_TRIGGER in last_user:
            reply = "Prompt: " + " | ".join(f"{m['role']}: {m['content']}" for m in messages)
        else:
            reply = f"You said: {last_user}"
            names = tool_names(messages)
            if names and messages[-1]["role"] == "tool":
                reply = f"The tool said: {messages[-1]['content']}"
            elif names:
                calls = [f"{name}\n{arguments}" for name, arguments in CALL_TRIGGER.findall(last_user)]
                if not calls and params.tool_choice:
                    forced = params.tool_choice.removeprefix("function:")
                    calls = [f"{names[0] if forced == 'required' else forced}\n{{}}"]
                if calls:
                    return SEGMENT.join(calls)
        if params.constraint is not None:
            return json.dumps(example_of(json.loads(params.constraint.json_schema), reply), ensure_ascii=False)
        return reply

    def run(self, sequences, admit) -> None:
        """Decode step by step; between steps, new sequences join the batch (each has its own
        position in its answer, as in a real continuous-batching engine)."""
        plans = [self._plan(seq) for seq in sequences]
        step_at = time.monotonic()
        while True:
            plans = [plan for plan in plans if not plan[0].finished]
            plans += [self._plan(seq) for seq in admit(self.max_batch_size - len(plans))]
            if not plans:
                return
            if self.delay:
                # A step every `delay` seconds, this loop's own work included, so that a batch
                # of hundreds of rows still runs at the nominal rate (and never catches up in
                # a burst after falling behind).
                step_at = max(step_at + self.delay, time.monotonic())
                time.sleep(max(0.0, step_at - time.monotonic()))
            for plan in plans:
                seq, ids, step = plan
                if ERROR_TRIGGER in seq.messages[-1]["content"] and step == len(ids) // 2:
                    raise RuntimeError("the fake model failed mid-stream, as asked")
                if step >= len(ids):
                    seq.finish("stop")
                else:
                    seq.push_token(ids[step], self._logprob(seq, ids[step]))
                    plan[2] += 1

    @staticmethod
    def _logprob(seq: Generation, token_id: int) -> TokenLogprob | None:
        if seq.params.logprobs is None:
            return None
        raw = (token_id & 0xFFFFFF).to_bytes(token_id >> 24, "big")
        text = raw.decode("utf-8", errors="replace")
        return TokenLogprob(text, raw, 0.0, (TopLogprob(text, raw, 0.0),) if seq.params.logprobs else ())

    def _plan(self, seq: Generation) -> list:
        """[sequence, the answer's token ids, the next step]."""
        prompt_tokens = self.count_prompt_tokens(seq.messages)
        budget = self.token_budget(seq.params, prompt_tokens)
        seq.begin(prompt_tokens, IncrementalDetokenizer(decode), budget)  # no budget: finished already
        return [seq, encode(self.reply_to(seq.messages, seq.params)), 0]


def example_of(schema: dict, text: str, root: dict | None = None):
    """A small document valid against the common JSON Schema keywords (type, properties,
    required, items, minItems, enum, const, minimum, anyOf/oneOf/allOf, local $ref), with
    `text` for its strings: the fake model's structured answer."""
    root = root if root is not None else schema
    if "$ref" in schema and schema["$ref"].startswith("#/"):
        target = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        return example_of(target, text, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_of(schema[key][0], text, root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        return {name: example_of(sub, text, root) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [example_of(schema.get("items", {}), text, root) for _ in range(schema.get("minItems", 1))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text
