"""An upstream inference engine (vLLM, TGI, llama.cpp's server...) behind its
OpenAI-compatible `/v1/chat/completions`.

The upstream does the batching on its accelerator; this site keeps users, conversations and
protocols. Each sequence is one streaming request, started as soon as it is admitted (the
scheduler's continuous admission), and all run concurrently on one asyncio loop inside the
engine thread. A cancelled sequence closes its request, which vLLM and TGI take as an abort.
The upstream streams whole characters in JSON, so its deltas pass straight through
`Generation.push_text` (stop strings and budgets are applied here as for local models).

A failure ends the sequence with one of the codes below as its `error` (chat.errors turns it
into 502, 503 or 504 for clients). What the upstream said goes to the log only: its error
pages can carry host names, paths, tracebacks or credentials, and the error is stored.
"""

from __future__ import annotations

import asyncio
import json
import logging

import httpx

from ..backend import Backend
from ..config import EngineConfig
from ..constraints import JSON_OBJECT_SCHEMA, Constraint, UnsupportedConstraint
from ..generation import Generation
from ..tools import CallAssembler, openai_messages
from ..vocabulary import (
    ChatMessage,
    EngineUnavailable,
    GenerationParams,
    ModelInfo,
    TokenLogprob,
    TopLogprob,
)

log = logging.getLogger(__name__)

# GenerationResult.error codes (the same strings as chat.errors, which the engine does not import).
BAD_RESPONSE = "upstream_bad_response"  # it answered, but with an error or something unreadable
UNAVAILABLE = "upstream_unavailable"  # no connection, or it said it is overloaded / not ready
TIMEOUT = "upstream_timeout"  # it did not answer in time
LOG_DETAIL_CHARS = 300

POLL_SECONDS = 0.02  # how often new and cancelled sequences are looked at
CHARS_PER_TOKEN = 4  # for history trimming only: the upstream counts the real tokens


class UpstreamBackend(Backend):
    def __init__(self, config: EngineConfig):
        self.base_url = config.upstream_url.rstrip("/")
        self.api_key = config.upstream_api_key
        if self.api_key:
            # httpx turns URL credentials into a Basic Authorization header that replaced the
            # Bearer key; CHATGLM_UPSTREAM_API_KEY, the explicit setting, wins (README).
            self.base_url = _without_credentials(self.base_url)
        self.model = config.upstream_model
        self.max_batch_size = max(config.max_batch_size, config.max_queue)
        self.context_length = 8192

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def load(self) -> None:
        """Ask the upstream which model it serves (and its context length, where it says)."""
        try:
            response = httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=30)
            response.raise_for_status()
            models = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            detail = f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else type(exc).__name__
            raise EngineUnavailable(
                f"upstream {_without_credentials(self.base_url)} did not list its models: {detail}"
            ) from exc
        chosen = next((m for m in models if m.get("id") == self.model), None) if self.model else (models or [None])[0]
        if chosen is None:
            raise EngineUnavailable(
                f"upstream {_without_credentials(self.base_url)} does not serve model {self.model or '(any)'}"
            )
        self.model = chosen["id"]
        # vLLM says max_model_len; llama.cpp's server meta.n_ctx (the context of one slot).
        self.context_length = int(chosen.get("max_model_len") or chosen.get("context_length")
                                  or (chosen.get("meta") or {}).get("n_ctx") or self.context_length)

    @property
    def info(self) -> ModelInfo:
        # The health check is public: it says "upstream", and the start log names the host
        # without any credentials in the URL.
        return ModelInfo(
            model_id=self.model, backend="openai", device="upstream",
            context_length=self.context_length, source=f"upstream {_without_credentials(self.base_url)}",
        )

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        return sum(_chars(m) // CHARS_PER_TOKEN + 4 for m in messages)

    def tools_refusal(self, messages: list[ChatMessage], params: GenerationParams) -> str | None:
        return None  # passed through: the upstream renders, constrains and parses the calls

    def check_constraint(self, constraint: Constraint) -> None:
        if constraint.json_schema is None:
            raise UnsupportedConstraint("The upstream model server takes JSON Schemas only, not Lark grammars.")

    def run(self, sequences, admit) -> None:
        asyncio.run(self._run(sequences, admit))

    async def _run(self, sequences: list[Generation], admit) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers(),
                                     timeout=httpx.Timeout(30, read=None)) as client:
            tasks = {asyncio.create_task(self._complete(client, seq)): seq for seq in sequences}
            while tasks:
                done, _ = await asyncio.wait(tasks, timeout=POLL_SECONDS)
                for task in done:
                    del tasks[task]
                for task, seq in tasks.items():
                    if seq.cancelled:  # even while the upstream is silent (queued there)
                        task.cancel()
                for seq in admit(self.max_batch_size - len(tasks)):
                    tasks[asyncio.create_task(self._complete(client, seq))] = seq

    async def _complete(self, client: httpx.AsyncClient, seq: Generation) -> None:
        prompt_tokens = self.count_prompt_tokens(seq.messages)
        budget = self.token_budget(seq.params, prompt_tokens)
        # The upstream ends the answer at max_tokens itself; the local budget is one more (a
        # chunk carries at least one token), so the stream is read on to its usage chunk, which
        # comes after the last text, instead of being closed on the budget's last chunk.
        if not seq.begin(prompt_tokens, None, budget + 1 if budget > 0 else 0):
            return
        body = {
            "model": self.model, "stream": True, "max_tokens": budget,
            "stream_options": {"include_usage": True},
            **{k: v for k, v in (("temperature", seq.params.temperature), ("top_p", seq.params.top_p),
                                 ("seed", seq.params.seed), ("frequency_penalty", seq.params.frequency_penalty),
                                 ("presence_penalty", seq.params.presence_penalty)) if v is not None},
            **openai_messages(seq.messages, seq.params.tool_choice, seq.params.parallel_tool_calls),
        }
        if seq.params.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in seq.params.logit_bias}
        if seq.params.logprobs is not None:  # the upstream's own logprobs, passed back as they come
            body.update(logprobs=True, top_logprobs=seq.params.logprobs)
        calls = CallAssembler()
        if seq.params.constraint is not None:
            body["response_format"] = upstream_format(seq.params.constraint)
        upstream_reason = reported_tokens = None
        held = ""  # a high surrogate that ended a chunk, waiting for its other half
        try:
            async with client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:LOG_DETAIL_CHARS]
                    log.warning("upstream answered HTTP %s: %r", response.status_code, detail)
                    seq.finish("error", error=_status_error(response.status_code))
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if chunk.get("error"):
                        log.warning("upstream reported an error: %r", str(chunk["error"])[:LOG_DETAIL_CHARS])
                        seq.finish("error", error=BAD_RESPONSE)
                        return
                    if chunk.get("usage"):
                        seq.prompt_tokens = chunk["usage"].get("prompt_tokens", seq.prompt_tokens)
                        reported_tokens = chunk["usage"].get("completion_tokens")
                    for choice in chunk.get("choices") or []:
                        for part in (choice.get("delta") or {}).get("tool_calls") or []:
                            calls.add(part)
                        text = (choice.get("delta") or {}).get("content") or ""
                        if not isinstance(text, str):
                            raise TypeError(f"delta content of type {type(text).__name__}")
                        text, held = _whole_characters(held + text)
                        logprobs = _logprobs(choice.get("logprobs")) if seq.params.logprobs is not None else []
                        if (text or logprobs) and not seq.push_text(text, 1 if text else 0, logprobs):
                            return  # stop string, budget or cancellation: closing aborts upstream
                        upstream_reason = choice.get("finish_reason") or upstream_reason
            if upstream_reason is None:  # every OpenAI stream ends with a finish_reason: this one was cut
                raise httpx.RemoteProtocolError("the stream ended without a finish_reason")
            if held:
                seq.push_text(held, tokens=0)  # a lone half at the very end (Generation makes it U+FFFD)
            if reported_tokens is not None:
                seq.completion_tokens = reported_tokens
            tool_calls, broken = calls.finish()
            if broken:
                seq.push_text(broken, tokens=0)
            seq.tool_calls += tool_calls
            seq.finish("length" if upstream_reason == "length" else "stop")
        except asyncio.CancelledError:
            seq.finish("cancelled")
        except Exception as exc:  # noqa: BLE001 - a broken stream or an odd chunk ends this answer only
            log.warning("upstream request failed: %s: %s", type(exc).__name__, str(exc)[:LOG_DETAIL_CHARS])
            seq.finish("error", error=_exception_error(exc))


def _chars(message: ChatMessage) -> int:
    """The characters a message takes, its tools and tool calls (as JSON) included."""
    extra = {k: v for k, v in message.items() if k not in ("role", "content")}
    return len(message["content"]) + (len(json.dumps(extra, ensure_ascii=False)) if extra else 0)


def upstream_format(constraint: Constraint) -> dict:
    """The constraint as the upstream's own `response_format`: the server enforces it."""
    if constraint.json_schema == JSON_OBJECT_SCHEMA:
        return {"type": "json_object"}
    return {"type": "json_schema",
            "json_schema": {"name": "response", "schema": json.loads(constraint.json_schema), "strict": True}}


def _logprobs(data: dict | None) -> list[TokenLogprob]:
    """An OpenAI chunk's `logprobs.content` entries (bytes as given, else the token's UTF-8)."""

    def candidate(item: dict) -> TopLogprob:
        raw = bytes(item["bytes"]) if item.get("bytes") is not None else str(item["token"]).encode()
        return TopLogprob(str(item["token"]), raw, float(item["logprob"]))

    return [TokenLogprob(**vars(candidate(item)), top=tuple(candidate(t) for t in item.get("top_logprobs") or []))
            for item in (data or {}).get("content") or []]


def _status_error(status: int) -> str:
    if status == 504:
        return TIMEOUT
    if status in (429, 503):
        return UNAVAILABLE
    return BAD_RESPONSE


def _exception_error(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return TIMEOUT
    if isinstance(exc, httpx.ConnectError):
        return UNAVAILABLE
    return BAD_RESPONSE


def _whole_characters(text: str) -> tuple[str, str]:
    """(text with surrogate pairs joined, a trailing high surrogate held for the next chunk).

    JSON escapes a character outside the BMP as two `\\uXXXX` surrogates; an upstream that
    splits them across chunks hands us halves, which Python does not join by itself."""
    if not text or not any("\ud800" <= c <= "\udfff" for c in text):
        return text, ""
    held = ""
    if "\ud800" <= text[-1] <= "\udbff":
        text, held = text[:-1], text[-1]
    # Pairs become one character; a lone half stays, for Generation to replace.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass"), held


def _without_credentials(url: str) -> str:
    return str(httpx.URL(url).copy_with(username=None, password=None))
