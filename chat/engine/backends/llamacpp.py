"""llama.cpp's own C++ server engine, in process, through the `xllamacpp` wheel.

`xllamacpp.Server` runs llama.cpp's server context (slots, continuous batching, prompt cache,
the model's jinja chat template, sampling) on its own C++ thread, with one thread team sized to
the cores. What this module adds is the project's contract around it:

* Threads. `Server.handle_chat_completions(body, callback)` blocks its calling thread until the
  answer ends and releases the GIL while it waits (Cython `with nogil`); the callback runs, with
  the GIL, once per streamed chunk, and returning True from it ends the request (llama.cpp
  cancels the task before its next decode step). So each admitted sequence gets one Python
  thread that sleeps inside that call; the engine thread only admits and joins them.
* Admission. At most `max_batch_size` sequences (llama.cpp's `n_parallel` slots) are handed to
  llama.cpp at once, so none ever waits in llama.cpp's own task queue, out of reach of
  cancellation; the rest wait in the engine's queue with their positions and its 429 bound.
  Each slot has its own KV cache region of the model's whole context (or `CHATGLM_CONTEXT`),
  and each answer's budget is capped to fit it, so llama.cpp never runs out of cache mid-answer.
* Prompt reuse. `cache_prompt` keeps each slot's tokens; a request goes to the idle slot that
  shares the longest prefix with it, and when a new task starts, idle slots are saved to a RAM
  prompt cache (`cache_ram_mib`) from which a returning conversation is restored on any slot.
  The follow-up turn of a conversation therefore evaluates only its new tokens.
* Counting. llama.cpp also serves HTTP on a loopback port (xllamacpp always starts it); this
  backend protects it with a random API key and uses its `/apply-template` and `/tokenize`
  for `count_prompt_tokens`, which are exactly the template and tokenizer of generation.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import json
import logging
import math
import re
import secrets
import threading
from pathlib import Path

import httpx

from ..backend import Backend
from ..config import DEFAULT_MODEL, ConfigError, EngineConfig, embedded_gguf
from ..constraints import Constraint, grammar_of
from ..control_tokens import ControlTokens
from ..generation import Generation
from ..tools import CallAssembler, openai_messages
from ..vocabulary import (
    ChatMessage,
    GenerationParams,
    ModelInfo,
    TokenLogprob,
    TopLogprob,
)

log = logging.getLogger(__name__)

PROMPT_CACHE_MIB = 1024  # llama.cpp's RAM cache of idle slots' prompts (its default is 8 GiB)
# Sampler order of the project's own sampling (sampling.py): penalty, temperature, top-k, top-p.
SAMPLERS = ["penalties", "temperature", "top_k", "top_p"]
COUNT_MEMO = 256  # prompts whose token counts are remembered
IMPOSSIBLE = -9999.0  # OpenAI's logprob of a token that cannot be drawn (as sampling.py writes it)
MAX_SEED = 0xFFFFFFFF  # llama.cpp seeds are uint32, and this one means "random"


def gguf_model_id(path: Path) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`, as the transformers backend names it."""
    return path.name.removesuffix(".gguf").split(".")[0]


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_STRING, _ARRAY = 8, 9


# Token types of a GGUF vocabulary that llama.cpp parses out of a prompt's text as one token.
_CONTROL, _USER_DEFINED = 3, 4


def read_gguf_header(path: Path, keep) -> dict:
    """The header values whose keys `keep(key)` accepts (arrays as lists). Hand-read because
    gguf's GGUFReader parses every tensor first (seconds), and llama.cpp needs these numbers
    before it loads: the context sizes each slot's KV cache."""
    import struct

    with open(path, "rb") as f:
        def read(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def string():
            return f.read(read("Q")).decode("utf-8", errors="replace")

        def value(kind, wanted):
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                item, count = read("I"), read("Q")
                if not wanted and item in _SCALAR_SIZES:
                    f.seek(_SCALAR_SIZES[item] * count, 1)
                    return None
                return [value(item, wanted) for _ in range(count)]
            return read({0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}[kind])

        if f.read(4) != b"GGUF" or read("I") < 2:
            raise ConfigError(f"{path} is not a GGUF file (version 2 or later)")
        read("Q")  # tensor count
        found = {}
        for _ in range(read("Q")):
            key, kind = string(), read("I")
            wanted = keep(key)
            item = value(kind, wanted)
            if wanted:
                found[key] = item
        return found


def gguf_context_length(path: Path) -> int:
    """The model's trained context (`<arch>.context_length`)."""
    header = read_gguf_header(path, lambda key: key == "general.architecture" or key.endswith(".context_length"))
    key = f"{header.get('general.architecture')}.context_length"
    if key not in header:
        raise ConfigError(f"{path} does not say its context length")
    return int(header[key])


def gguf_control_tokens(path: Path) -> tuple[ControlTokens, int]:
    """The tokens llama.cpp would parse out of a message's text (control and user-defined
    ones, such as `<|im_end|>`): only the chat template may place them; and the vocabulary's size."""
    header = read_gguf_header(path, lambda key: key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"))
    tokens, types = header.get("tokenizer.ggml.tokens") or [], header.get("tokenizer.ggml.token_type") or []
    return ControlTokens(t for t, kind in zip(tokens, types) if kind in (_CONTROL, _USER_DEFINED)), len(tokens)


def has_gpu() -> bool:
    """Whether this xllamacpp build has a GPU backend (the PyPI wheel is CPU-only)."""
    import xllamacpp

    return any(d["type"] != xllamacpp.ggml_backend_dev_type.GGML_BACKEND_DEVICE_TYPE_CPU
               for d in xllamacpp.get_device_info())


class LlamaCppError(Exception):
    """llama.cpp refused or failed a request (its message goes to the log only)."""


class LlamaCppBackend(Backend):
    def __init__(self, config: EngineConfig):
        self.config = config
        self.max_batch_size = config.max_batch_size  # llama.cpp's slots
        self.server = None
        self._http: httpx.Client | None = None
        self._key = secrets.token_urlsafe(24)
        self.model_id = ""
        self.source = ""
        self.context_length = 0  # tokens of one slot: one conversation's prompt and answer
        self._wakeup = threading.Event()  # a sequence's thread ended, or a request arrived
        self._counts: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._counts_lock = threading.Lock()
        self.sampling_defaults = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.1}
        self.chatglm_family: str | None = None  # "v2"/"v3" for a converted ChatGLM checkpoint
        self.control_tokens = ControlTokens(())
        self.vocab_size: int | None = None
        self.tools_missing: str | None = "not loaded"  # why this model cannot take tools (None: it can)

    # -- loading ------------------------------------------------------------------------------

    def _gguf(self) -> Path:
        """The file llama.cpp loads: the embedded GGUF, a .gguf file, or a checkpoint directory
        converted once into the cache (the converter refuses architectures llama.cpp lacks)."""
        if self.config.model == DEFAULT_MODEL:
            path = embedded_gguf()
            self.model_id, self.source = gguf_model_id(path), f"{path} (embedded, served as is)"
            return path
        path = Path(self.config.model)
        if path.is_dir():
            from ..conversion import ensure_gguf

            gguf = ensure_gguf(path, self.config.cache_dir, self.config.quantize)
            self.model_id, self.source = path.resolve().name, f"{gguf} (converted from {path})"
            self.sampling_defaults = {**self.sampling_defaults, **_checkpoint_sampling(path)}
            self.chatglm_family = _chatglm_family(path)
            return gguf
        if path.suffix != ".gguf":
            raise ConfigError(f"the llamacpp backend serves a .gguf file or a checkpoint directory, not {path}")
        self.model_id, self.source = gguf_model_id(path), str(path)
        return path

    def load(self) -> None:
        import xllamacpp

        gguf = self._gguf()
        trained = gguf_context_length(gguf)
        self.control_tokens, self.vocab_size = gguf_control_tokens(gguf)
        self.tools_missing = gguf_tools_missing(gguf)
        self.context_length = min(trained, self.config.context) if self.config.context else trained
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_parallel = self.max_batch_size
        # A KV cache region per slot (not kv_unified): llama.cpp splits n_ctx evenly, so each
        # slot gets a whole context, and an answer's numbers do not depend on what else runs
        # (with one shared cache they do: measured, greedy answers changed inside a batch).
        params.kv_unified = False
        params.n_ctx = self.context_length * self.max_batch_size
        params.fit_params = False  # the size is chosen here; fitting costs time at every start
        params.cache_ram_mib = PROMPT_CACHE_MIB
        if self.config.device < 0:
            params.n_gpu_layers = 0
        else:
            params.main_gpu = self.config.device
        # The HTTP listener xllamacpp always opens: loopback, an ephemeral port, a key only this
        # process knows, no web UI. Used for counting tokens; generation goes in process.
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.api_keys = [self._key]
        params.ui = False
        params.endpoint_metrics = True
        params.verbosity = 0  # llama.cpp's own warnings and errors only
        if self.chatglm_family:
            # The reference's answers, id for id: llama.cpp's CPU flash attention rounds queries
            # to F16 and its default KV cache is F16, which moved logits by ~1e-2 and changed a
            # low-margin greedy answer of the golden fixtures (docs/conversion.md).
            params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
            params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
        self.server = xllamacpp.Server(params)
        atexit.register(self.close)  # end llama.cpp's threads before the interpreter goes away
        self._http = httpx.Client(
            base_url=self.server.listening_address, headers={"Authorization": f"Bearer {self._key}"},
            timeout=httpx.Timeout(60), trust_env=False,
        )
        log.info("llama.cpp: %d slots of %d tokens each (the model's context is %d)",
                 self.max_batch_size, self.context_length, trained)

    def warmup(self) -> None:
        """llama.cpp warmed the model up while loading; this warms the template and tokenizer path."""
        self.count_prompt_tokens([{"role": "user", "content": "Hi"}])

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.model_id, backend="llamacpp", device="cpu" if self.config.device < 0 else f"gpu:{self.config.device}",
            context_length=self.context_length, dtype="gguf",
            quantize=self.config.quantize if self.config.quantize != 16 else None, source=self.source,
            vocab_size=self.vocab_size,
        )

    # -- prompts ------------------------------------------------------------------------------

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        """llama.cpp's own template and tokenizer, as generation applies them (add_special,
        parse_special). Remembered for the last few prompts: the history fitting of a turn
        counts the very messages that generation then counts again, on its critical path.
        Safe from any thread (httpx.Client is; the memo has a lock)."""
        request = openai_messages(self.control_tokens.defuse_messages(messages))  # as generation sends them
        key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).digest()
        with self._counts_lock:
            if key in self._counts:
                self._counts.move_to_end(key)
                return self._counts[key]
        response = self._http.post("/apply-template", json=request)
        response.raise_for_status()
        response = self._http.post("/tokenize", json={"content": response.json()["prompt"],
                                                      "add_special": True, "parse_special": True})
        response.raise_for_status()
        count = len(response.json()["tokens"])
        with self._counts_lock:
            self._counts[key] = count
            while len(self._counts) > COUNT_MEMO:
                self._counts.popitem(last=False)
        return count

    def close(self) -> None:
        """Stop llama.cpp's threads and free its memory (tests and benchmarks that load several)."""
        # The server first: closing our HTTP connections to it first made the process abort at
        # exit ("FATAL: exception not rethrown") after concurrent requests (measured).
        self.server = None  # ~Server ends llama.cpp's loop and joins its threads
        if self._http is not None:
            self._http.close()

    def metrics(self) -> dict[str, float]:
        """llama.cpp's counters (`prompt_tokens_total`, `tokens_predicted_total`, ...)."""
        text = self.server.handle_metrics()
        return {m[1]: float(m[2]) for m in re.finditer(r"^llamacpp:(\w+) (\S+)$", text, re.M)}

    # -- decoding -----------------------------------------------------------------------------

    def check_constraint(self, constraint: Constraint) -> None:
        # This xllamacpp build compiles JSON Schemas and "%llguidance" grammars with llguidance
        # (xllamacpp.json_schema_to_grammar says "%llguidance ... %json"): the same check.
        grammar_of(constraint)

    def tools_refusal(self, messages: list[ChatMessage], params: GenerationParams) -> str | None:
        if self.tools_missing is not None:
            return self.tools_missing
        if params.tool_choice is not None:
            # llama.cpp's grammar for a forced call lets text come first and takes any JSON
            # object as the arguments (measured on its parser of a Hermes-style template): the
            # call is not guaranteed within the budget, nor its arguments to the schema.
            return ("llama.cpp does not force a call whose arguments follow the tool's schema; send 'auto', or serve "
                    "the model with the transformers backend")
        return None

    def run(self, sequences, admit) -> None:
        """One thread per sequence, each inside llama.cpp's blocking call; newcomers are admitted
        while slots are free. Returns when every sequence has ended."""
        threads = [self._start(seq) for seq in sequences]
        while True:
            self._wakeup.clear()
            threads = [t for t in threads if t.is_alive()]
            room = self.max_batch_size - len(threads)
            if room > 0:
                threads += [self._start(seq) for seq in admit(room)]
            if not threads:
                return
            # Sleeps until a sequence ends or a request arrives (wake()): no polling beside
            # llama.cpp's own threads.
            self._wakeup.wait()

    def wake(self) -> None:
        self._wakeup.set()

    def _start(self, seq: Generation) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(seq,), name="llamacpp-sequence", daemon=True)
        thread.start()
        return thread

    def _run(self, seq: Generation) -> None:
        try:
            self._generate_one(seq)
        except Exception as exc:  # noqa: BLE001 - one answer fails, the engine goes on
            log.exception("llama.cpp generation failed")
            seq.finish("error", error=f"the model failed ({type(exc).__name__})")
        finally:
            self._wakeup.set()

    def _generate_one(self, seq: Generation) -> None:
        prompt_tokens = self.count_prompt_tokens(seq.messages)
        budget = self.token_budget(seq.params, prompt_tokens)
        if not seq.begin(prompt_tokens, None, budget):
            return
        stream = _Stream(seq, self._text_stages())
        self.server.handle_chat_completions(self._body(seq, budget), stream.on_chunk)
        if seq.finished:  # stop string, budget or cancellation, seen by the Generation
            return
        stream.flush()
        if stream.failure is not None:
            raise stream.failure
        if stream.error is not None:
            raise LlamaCppError(f"llama.cpp refused the request: {stream.error}")
        if stream.usage:  # llama.cpp's own counts of the whole answer
            seq.prompt_tokens = stream.usage.get("prompt_tokens", seq.prompt_tokens)
            seq.completion_tokens = stream.usage.get("completion_tokens", seq.completion_tokens)
        if seq.cancelled:
            seq.finish("cancelled")
        else:
            seq.finish("length" if stream.reason == "length" else "stop")

    def _text_stages(self) -> list:
        """A ChatGLM checkpoint's answer post-processing (the reference's `process_response`),
        as streaming stages that never rewrite text already sent; none for other models."""
        if self.chatglm_family is None:
            return []
        from ..networks.chatglm_tokenizer import response_stages

        return response_stages(self.chatglm_family)

    def _body(self, seq: Generation, budget: int) -> dict:
        """One request for llama.cpp's /v1/chat/completions: every sampling parameter explicit,
        so llama.cpp's own defaults (top_k 40, min_p 0.05...) never apply."""
        p, d = seq.params, self.sampling_defaults
        temperature = d["temperature"] if p.temperature is None else p.temperature
        top_p = d["top_p"] if p.top_p is None else p.top_p
        top_k = d["top_k"] if p.top_k is None else p.top_k
        if temperature <= 1e-5 or top_k == 1 or top_p <= 0:  # greedy, as sampling.SamplingConfig says
            temperature, top_p, top_k = 0.0, 1.0, 0
        body = {
            # A user's `<|im_end|>` stays text: llama.cpp parses special tokens in the whole prompt.
            # Tools, earlier calls and results in OpenAI's shape: llama.cpp renders them with the
            # model's jinja template and parses the answer's calls itself (its `tool_calls` deltas).
            **openai_messages(self.control_tokens.defuse_messages(seq.messages), p.tool_choice,
                              p.parallel_tool_calls),
            "stream": True, "max_tokens": budget,
            "stream_options": {"include_usage": True}, "timings_per_token": True,
            "cache_prompt": True, "reasoning_format": "none",
            "temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": 0.0, "typical_p": 1.0,
            "repeat_penalty": d["repetition_penalty"] if p.repetition_penalty is None else p.repetition_penalty,
            "repeat_last_n": self.context_length,  # the whole context, as transformers applies the penalty
            "samplers": SAMPLERS,
        }
        if p.frequency_penalty or p.presence_penalty:  # llama.cpp's penalties sampler, with the repetition penalty
            body["frequency_penalty"], body["presence_penalty"] = p.frequency_penalty or 0.0, p.presence_penalty or 0.0
        if p.logit_bias:
            body["logit_bias"] = [[token, bias] for token, bias in p.logit_bias]
        if p.logprobs is not None:
            # llama.cpp returns none with top_logprobs 0: one is asked for and not passed on.
            # A sampled answer's probabilities are those after its sampler chain (the
            # distribution drawn from); a greedy one's would all be 1, so it gets the model's own
            # softmax (before penalties and bias) instead (docs/sampling.md).
            body.update(logprobs=True, top_logprobs=max(1, p.logprobs), post_sampling_probs=temperature > 0)
        if "tools" in body:
            body["parallel_tool_calls"] = p.parallel_tool_calls is not False  # llama.cpp's default is false
        if p.seed is not None:
            body["seed"] = p.seed % MAX_SEED
        if p.stop:
            body["stop"] = list(p.stop)  # llama.cpp stops early; the Generation still cuts the text
        if p.constraint is not None and p.constraint.json_schema is not None:
            # llama.cpp samples under the schema's grammar (EOS only where it is complete).
            body["json_schema"] = json.loads(p.constraint.json_schema)
        elif p.constraint is not None:  # this build has llguidance: its Lark, as the torch path
            body["grammar"] = "%llguidance {}\n" + p.constraint.lark
        return body


class _Stream:
    """Feeds one llama.cpp stream into a Generation, from llama.cpp's callback. Never raises into
    llama.cpp: a failure is kept and re-raised on the sequence's thread."""

    def __init__(self, seq: Generation, stages: list):
        self.seq = seq
        self.stages = stages
        self.counted = 0  # tokens already pushed
        self.reason: str | None = None
        self.usage: dict | None = None
        self.error: object = None
        self.failure: Exception | None = None
        self.calls = CallAssembler()

    def on_chunk(self, chunk: dict) -> bool:
        """Return True to end the request (llama.cpp cancels it before its next step)."""
        try:
            if isinstance(chunk, (str, bytes)):
                chunk = json.loads(chunk)
            if "error" in chunk and not chunk.get("choices"):
                self.error = chunk["error"]
                return True
            seq = self.seq
            timings = chunk.get("timings") or {}
            if "prompt_n" in timings and self.counted == 0:  # llama.cpp's count of the prompt
                seq.prompt_tokens = timings["prompt_n"] + timings.get("cache_n", 0)
                log.debug("prompt of %d tokens: %d from the cache, %d evaluated in %.0f ms", seq.prompt_tokens,
                          timings.get("cache_n", 0), timings["prompt_n"], timings.get("prompt_ms", 0))
            self.usage = chunk.get("usage") or self.usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                for part in delta.get("tool_calls") or []:
                    self.calls.add(part)
                text = delta.get("content") or ""
                logprobs = self._logprobs(choice.get("logprobs"))
                if text or logprobs or delta.get("tool_calls"):
                    generated = timings.get("predicted_n", self.counted + 1)
                    tokens, self.counted = generated - self.counted, generated
                    # The answer's last token (the Generation ends it on its budget): the stages
                    # give up what they hold now, or it would be lost.
                    text = self._staged(text, last=seq.completion_tokens + tokens >= seq.max_new_tokens)
                    if not seq.push_text(text, tokens, logprobs):
                        return True
                self.reason = choice.get("finish_reason") or self.reason
            return seq.cancelled
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            self.failure = exc
            return True


    def _logprobs(self, data: dict | None) -> list[TokenLogprob]:
        """llama.cpp's tokens of a chunk: `logprob`s, or `prob`s after its sampler chain."""
        wanted = self.seq.params.logprobs
        if wanted is None or not data:
            return []

        def candidate(item: dict) -> TopLogprob:
            logprob = item["logprob"] if "logprob" in item else _log(item["prob"])
            raw = bytes(item.get("bytes") or b"")
            return TopLogprob(raw.decode("utf-8", errors="replace"), raw, logprob)

        return [
            TokenLogprob(**vars(candidate(item)),
                         top=tuple(candidate(t) for t in (item.get("top_logprobs") or item.get("top_probs") or [])[:wanted]))
            for item in data.get("content") or []
        ]

    def _staged(self, text: str, last: bool) -> str:
        for stage in self.stages:
            text = stage.feed(text) + (stage.flush() if last else "")
        return text

    def flush(self) -> None:
        """The text the stages held back, and the calls, at the natural end of the answer."""
        text = self._staged("", last=True)
        calls, broken = self.calls.finish()
        text += ("\n" if text and broken else "") + broken
        if text:
            self.seq.push_text(text, 0)
        self.seq.tool_calls += calls


TOOL_SENTINEL = "chatglm_django_tool_probe"


def gguf_tools_missing(path: Path) -> str | None:
    """Why this GGUF's chat template cannot take tools (None: it can). As llama.cpp's own probe
    does: a template takes tools when rendering one puts its name in the prompt. A template
    without tools would get llama.cpp's generic JSON format, which the model was never taught.
    The GLM families converted here answer calls in their own formats, which llama.cpp does not
    parse: the chatglm and transformers backends serve their tools."""
    header = read_gguf_header(path, lambda key: key in ("general.architecture", "tokenizer.chat_template"))
    if header.get("general.architecture") in ("chatglm", "glm4"):
        return ("a GLM checkpoint's tool-call format is served by the chatglm (ChatGLM3) and transformers (GLM-4) "
                "backends, not by llama.cpp")
    template = header.get("tokenizer.chat_template") or ""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
        env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: "")
        tool = {"type": "function", "function": {"name": TOOL_SENTINEL, "description": "",
                                                 "parameters": {"type": "object", "properties": {}}}}
        prompt = env.from_string(template).render(messages=[{"role": "user", "content": "Hi"}], tools=[tool],
                                                  add_generation_prompt=True, bos_token="", eos_token="")
    except Exception as exc:  # noqa: BLE001 - a template the probe cannot render is one without tools here
        log.info("the chat template's tool support could not be probed: %s", exc)
        prompt = ""
    return None if TOOL_SENTINEL in prompt else "its chat template has no tool-calling section"


def _log(prob: float) -> float:
    return math.log(prob) if prob > 0 else IMPOSSIBLE


def _chatglm_family(directory: Path) -> str | None:
    """"v2"/"v3" for a ChatGLM2/3 checkpoint (GLM-4 has no post-processing), else None."""
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if raw.get("model_type") != "chatglm" or "padded_vocab_size" not in raw:
        return None
    from ..networks.loading import detect_family

    return detect_family(directory, raw)


def _checkpoint_sampling(directory: Path) -> dict:
    """A converted checkpoint's own defaults: its generation_config.json when it asks to sample,
    ChatGLM2/3's `stream_chat` defaults for a ChatGLM directory, else the project's greedy."""
    try:
        generation = json.loads((directory / "generation_config.json").read_text())
    except (OSError, ValueError):
        generation = {}
    if generation.get("do_sample"):
        return {
            "temperature": generation.get("temperature") or 1.0, "top_p": generation.get("top_p") or 1.0,
            "top_k": generation.get("top_k") or 0, "repetition_penalty": generation.get("repetition_penalty") or 1.0,
        }
    try:
        model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        model_type = None
    if model_type == "chatglm":
        return {"temperature": 0.8, "top_p": 0.8, "top_k": 0, "repetition_penalty": 1.0}
    return {}
