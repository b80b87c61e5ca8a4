"""An upstream inference engine (vLLM, TGI, llama.cpp's server...) behind its
OpenAI-compatible `/v1/chat/completions`.

The upstream does the batching on its accelerator; this site keeps users, conversations and
protocols. Each sequence is one streaming request, started as soon as it is admitted (the
scheduler's continuous admission), and all run concurrently on one asyncio loop inside the
engine thread. A cancelled sequence closes its request, which vLLM and TGI take as an abort.
The upstream streams whole characters in JSON, so its deltas pass straight through
`Sequence.push_text` (stop strings and budgets are applied here as for local models).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import httpx

from ..base import Backend, EngineUnavailable, Message, ModelInfo, Sequence
from ..config import EngineConfig

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02  # how often new and cancelled sequences are looked at
CHARS_PER_TOKEN = 4  # for history trimming only: the upstream counts the real tokens


class OpenAIBackend(Backend):
    def __init__(self, config: EngineConfig):
        self.base_url = config.upstream_url.rstrip("/")
        self.api_key = config.upstream_api_key
        self.model = os.environ.get("CHATGLM_UPSTREAM_MODEL", "").strip()
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

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        return sum(len(m["content"]) // CHARS_PER_TOKEN + 4 for m in messages)

    def generate(self, sequences: list[Sequence]) -> None:
        self.generate_continuous(sequences, lambda limit: [])

    def generate_continuous(self, sequences, admit) -> None:
        asyncio.run(self._run(sequences, admit))

    async def _run(self, sequences: list[Sequence], admit) -> None:
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

    async def _complete(self, client: httpx.AsyncClient, seq: Sequence) -> None:
        budget = min(seq.params.max_new_tokens or self.default_max_new_tokens(), self.context_length)
        # The upstream ends the answer at max_tokens itself; the local budget is one more (a
        # chunk carries at least one token), so the stream is read on to its usage chunk, which
        # comes after the last text, instead of being closed on the budget's last chunk.
        seq.begin(self.count_prompt_tokens(seq.messages), None, budget + 1)
        body = {
            "model": self.model, "messages": seq.messages, "stream": True, "max_tokens": budget,
            "stream_options": {"include_usage": True},
            **{k: v for k, v in (("temperature", seq.params.temperature), ("top_p", seq.params.top_p),
                                 ("seed", seq.params.seed)) if v is not None},
        }
        upstream_reason = reported_tokens = None
        try:
            async with client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    seq.finish("error", error=f"upstream answered {response.status_code}: {detail}")
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if chunk.get("error"):
                        log.warning("upstream reported an error: %s", chunk["error"])
                        seq.finish("error", error="upstream reported an error")
                        return
                    if chunk.get("usage"):
                        seq.prompt_tokens = chunk["usage"].get("prompt_tokens", seq.prompt_tokens)
                        reported_tokens = chunk["usage"].get("completion_tokens")
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        if text and not seq.push_text(text):
                            return  # stop string, budget or cancellation: closing aborts upstream
                        upstream_reason = choice.get("finish_reason") or upstream_reason
            if upstream_reason is None:  # every OpenAI stream ends with a finish_reason: this one was cut
                raise httpx.RemoteProtocolError("the stream ended without a finish_reason")
            if reported_tokens is not None:
                seq.completion_tokens = reported_tokens
            seq.finish("length" if upstream_reason == "length" else "stop")
        except asyncio.CancelledError:
            seq.finish("cancelled")
        except Exception as exc:  # noqa: BLE001 - a broken stream or an odd chunk ends this answer only
            log.warning("upstream request failed: %s: %s", type(exc).__name__, exc)
            seq.finish("error", error=f"upstream failed: {type(exc).__name__}")


def _without_credentials(url: str) -> str:
    return str(httpx.URL(url).copy_with(username=None, password=None))
