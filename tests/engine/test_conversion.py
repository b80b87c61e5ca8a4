"""Checkpoint -> GGUF conversion (chat/engine/conversion), checked through llama.cpp itself.

The converted tiny ChatGLM2/3 checkpoints are served by xllamacpp (llama.cpp's server engine, in
process) and compared with the golden reference: the chat template + llama.cpp's tokenizer give
the golden prompt ids, and greedy answers are the golden ids and text. Tiny GLM-4 checkpoints
built from config are compared with transformers' own generate().
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gguf
import pytest
import torch

from chat.engine.config import ConfigError
from chat.engine.conversion import ensure_gguf
from chat.engine.conversion.vocab import GLM4_SPLIT
from chat.engine.networks.chatglm_tokenizer import load_tokenizer, postprocess_response

from .chatglm_fixtures import REPO_ROOT, answer_ids, case_messages, checkpoint, expected_response, golden

pytestmark = pytest.mark.slow

FAMILIES = {"v2": "chatglm2", "v3": "chatglm3"}


class LlamaServer:
    """One xllamacpp server on a GGUF file, with llama.cpp's HTTP helpers on loopback."""

    def __init__(self, gguf_path: Path, exact: bool = False):
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf_path)
        if exact:
            # llama.cpp's CPU flash attention rounds queries to F16 and its default KV cache is
            # F16: ~1e-2 logit error, which flips low-margin golden steps. Without them the
            # logits match the float32 reference to ~1e-5.
            params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
            params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_ctx = 1024
        params.n_parallel = 1
        params.cpuparams.n_threads = 1
        params.cpuparams_batch.n_threads = 1
        params.warmup = False
        self.server = xllamacpp.Server(params)
        self.base = self.server.listening_address

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """What the chat endpoint feeds the model: the rendered template, tokenized with specials."""
        prompt = self.post("/apply-template", {"messages": messages})["prompt"]
        tokens = self.post("/tokenize", {"content": prompt, "add_special": True, "parse_special": True})["tokens"]
        return tokens

    def chat(self, messages: list[dict], max_tokens: int) -> dict:
        """A greedy answer through the OpenAI-style chat endpoint (the backend's path)."""
        return self.server.handle_chat_completions({"messages": messages, "max_tokens": max_tokens, "temperature": 0})

    def greedy_ids(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        """Greedy ids after `prompt_ids`, end-of-generation id included (llama.cpp's /completion).

        The chat endpoint does not report ids (its logprobs leave out byte tokens of unfinished
        characters), so ids are read here and the chat answer's text is compared on its own.
        """
        result = self.post("/completion", {"prompt": prompt_ids, "n_predict": max_tokens, "temperature": 0, "return_tokens": True})
        return result["tokens"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="module")
def servers(cache_dir):
    """Servers by (family, quantize), started on first use and shared by the module's tests."""
    started: dict[tuple[str, int, bool], LlamaServer] = {}

    def get(family: str, quantize: int, exact: bool = False) -> LlamaServer:
        key = (family, quantize, exact)
        if key not in started:
            started[key] = LlamaServer(ensure_gguf(checkpoint(family), cache_dir, quantize), exact=exact)
        return started[key]

    yield get
    started.clear()


def expected_text(family: str, case: dict) -> str:
    """The golden answer text, as llama.cpp shows it.

    One known difference: the reference ChatGLM3 decoder prints a generated special token
    (`[sMASK]`, `<|assistant|>`...) as its name; llama.cpp never prints control tokens. For an
    answer holding one, the expectation is the reference post-processing of the decode without
    it; every other answer must equal the golden text itself.
    """
    ids = answer_ids(family, case)
    pieces = golden(family)["sentencepiece_pieces"]
    if all(i < pieces for i in ids):
        return expected_response(case)
    tokenizer = load_tokenizer(checkpoint(family), family)
    text = tokenizer.sp.decode_pieces([tokenizer.sp.id_to_piece(i) for i in ids if 3 <= i < pieces])
    response = postprocess_response(family, text)
    return response.rstrip("\ufffd") if text.endswith("\ufffd") else response


# -- step 1: metadata, tokenizer and template ------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_builds_the_golden_prompt_ids(family, servers):
    server = servers(family, 16)
    for case in golden(family)["cases"]:
        assert server.prompt_ids(case_messages(case)) == case["prompt_ids"], case["id"]


EXTRA_CONVERSATIONS = [
    # special-token names inside words stay text ("desktop", "geopolitics": sop / eop)
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "desktop people sop eop"}],
    [{"role": "user", "content": "  two spaces\n\nnew"}, {"role": "assistant", "content": "geopolitics"},
     {"role": "user", "content": "\tTab 🙂 鳙"}],
    [{"role": "user", "content": ""}],
]


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_builds_the_native_prompt_ids(family, servers):
    """Beyond the golden cases: system messages, special names inside words, empty content."""
    server = servers(family, 16)
    tokenizer = load_tokenizer(checkpoint(family), family)
    for messages in EXTRA_CONVERSATIONS:
        assert server.prompt_ids(messages) == tokenizer.build_prompt(messages), messages


# -- step 2: weights -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_answers_equal_the_reference(family, servers):
    """`--quantize 16` is lossless here (the checkpoints are float16): with llama.cpp's exact
    attention path the answers are the reference's, id for id."""
    server = servers(family, 16, exact=True)
    data = golden(family)
    for case in data["cases"]:
        assert server.greedy_ids(case["prompt_ids"], data["max_new_tokens"]) == case["greedy_ids"], case["id"]
        result = server.chat(case_messages(case), data["max_new_tokens"])
        choice = result["choices"][0]
        assert result["usage"]["prompt_tokens"] == len(case["prompt_ids"]), case["id"]
        assert result["usage"]["completion_tokens"] == len(case["greedy_ids"]), case["id"]  # EOS counted
        assert choice["finish_reason"] == ("stop" if case["stopped_by"] == "eos" else "length"), case["id"]
        # llama.cpp returns the raw decoded text; the backend applies the family's post-processing
        assert postprocess_response(family, choice["message"]["content"]) == expected_text(family, case), case["id"]


# -- step 3: quantized variants --------------------------------------------------------------------


def teacher_forced_agreement(server: LlamaServer, family: str) -> float:
    """Share of golden steps where the model, fed the golden prefix, picks the golden next id."""
    agree = total = 0
    for case in golden(family)["cases"]:
        for t, expected in enumerate(case["greedy_ids"]):
            agree += server.greedy_ids(case["prompt_ids"] + case["greedy_ids"][:t], 1)[:1] == [expected]
            total += 1
    return agree / total


# Random tiny weights have small logit margins, so quantization flips some argmaxes: measured
# 95% (Q8_0) and 55% (Q4_0) on both families; a broken layout would agree on ~0%.
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("quantize", "floor"), [(8, 0.9), (4, 0.4)])
def test_quantized_variants_answer(family, quantize, floor, servers):
    server = servers(family, quantize)
    assert teacher_forced_agreement(server, family) >= floor
    case = golden(family)["cases"][0]
    result = server.chat(case_messages(case), 32)
    assert result["choices"][0]["finish_reason"] in ("stop", "length")
    assert result["choices"][0]["message"]["content"].strip()


# -- step 5: the cache -----------------------------------------------------------------------------


def copy_checkpoint(family: str, destination: Path) -> Path:
    shutil.copytree(checkpoint(family), destination)
    return destination


def test_a_second_start_reuses_the_file(tmp_path, caplog):
    source = copy_checkpoint("v2", tmp_path / "chatglm2-6b")
    with caplog.at_level(logging.INFO, logger="chat.engine.conversion"):
        first = ensure_gguf(source, tmp_path / "cache", 8)
        stat = first.stat()
        assert "converting" in caplog.text
        caplog.clear()
        again = ensure_gguf(source, tmp_path / "cache", 8)
    assert again == first and "using cached GGUF" in caplog.text and "converting" not in caplog.text
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, first.name + ".lock"])
    # another output type is another file
    assert ensure_gguf(source, tmp_path / "cache", 4) != first


def test_a_changed_checkpoint_gets_a_new_file(tmp_path):
    source = copy_checkpoint("v2", tmp_path / "chatglm2-6b")
    cache = tmp_path / "cache"
    original = ensure_gguf(source, cache, 16)

    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "layernorm_epsilon": 1e-6}))
    after_config = ensure_gguf(source, cache, 16)
    assert after_config != original

    shard = sorted(source.glob("pytorch_model-*.bin"))[0]  # same shapes and size, one weight changed
    state = torch.load(shard, weights_only=True)
    name = next(iter(state))
    state[name] = state[name].clone()
    state[name].view(-1)[0] += 1
    torch.save(state, shard)
    after_weights = ensure_gguf(source, cache, 16)
    assert after_weights not in (original, after_config)
    assert original.is_file() and after_config.is_file()  # earlier files are left alone


def test_concurrent_starts_convert_once(tmp_path, caplog):
    source = copy_checkpoint("v3", tmp_path / "chatglm3-6b")
    with caplog.at_level(logging.INFO, logger="chat.engine.conversion"):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            paths = list(pool.map(lambda _: ensure_gguf(source, tmp_path / "cache", 16), range(4)))
    assert len(set(paths)) == 1 and paths[0].is_file()
    assert caplog.text.count("converting ") == 1


KILLED_CONVERSION = """
import sys, time
from pathlib import Path
import gguf
from chat.engine.conversion import ensure_gguf
from chat.engine.conversion.vocab import GLM4_SPLIT

real = gguf.GGUFWriter.write_tensor_data
def write_then_hang(self, tensor, *args, **kwargs):
    real(self, tensor, *args, **kwargs)
    self.flush()
    Path(sys.argv[3]).touch()
    time.sleep(600)
gguf.GGUFWriter.write_tensor_data = write_then_hang
ensure_gguf(Path(sys.argv[1]), Path(sys.argv[2]), 16)
"""


def test_a_killed_conversion_leaves_nothing_taken_as_complete(tmp_path, caplog):
    source = copy_checkpoint("v2", tmp_path / "chatglm2-6b")
    cache = tmp_path / "cache"
    marker = tmp_path / "one-tensor-written"
    process = subprocess.Popen([sys.executable, "-c", KILLED_CONVERSION, str(source), str(cache), str(marker)],
                               cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the conversion did not start"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    left = [p for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert len(left) == 1 and left[0].name.startswith(".") and left[0].name.endswith(".tmp")  # partial, hidden

    with caplog.at_level(logging.INFO, logger="chat.engine.conversion"):
        path = ensure_gguf(source, cache, 16)
    assert "converting" in caplog.text and "interrupted conversion" in caplog.text
    assert not left[0].exists()
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == "chatglm"


def test_a_failed_conversion_leaves_no_file(tmp_path, monkeypatch):
    source = copy_checkpoint("v2", tmp_path / "chatglm2-6b")

    def fail(self, tensor, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", fail)
    with pytest.raises(OSError, match="disk full"):
        ensure_gguf(source, tmp_path / "cache", 16)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


# -- what is refused -------------------------------------------------------------------------------


def test_chatglm_v1_stays_on_the_native_backend(tmp_path):
    with pytest.raises(ConfigError, match="native backend") as error:
        ensure_gguf(checkpoint("v1"), tmp_path, 16)
    assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


def test_unknown_model_types_and_bits_are_refused(tmp_path):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        ensure_gguf(llama, tmp_path / "cache", 16)
    with pytest.raises(ConfigError, match="quantize must be"):
        ensure_gguf(checkpoint("v2"), tmp_path / "cache", 5)
    with pytest.raises(ConfigError, match="no config.json"):
        ensure_gguf(tmp_path / "missing", tmp_path / "cache", 16)


def test_glm4_remote_code_layout_is_refused(tmp_path):
    """glm-4-9b-chat says model_type "chatglm" too, with a tiktoken tokenizer.model."""
    source = copy_checkpoint("v2", tmp_path / "glm-4-9b-chat")
    (source / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(ConfigError, match="not a sentencepiece model"):
        ensure_gguf(source, tmp_path / "cache", 16)


# -- step 4: GLM-4 (transformers' glm and glm4 model types) ----------------------------------------

GLM_CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好，世界 🙂 and why?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2 =  4?"}],
]


@pytest.mark.parametrize("model_type", ["glm", "glm4"])
def test_glm4_answers_equal_transformers_generate(model_type, tmp_path, smol_tokenizer):
    """Tiny GLM-4 (glm-4-9b-chat-hf layout) and GLM-4-0414 checkpoints built from config, float32."""
    from .test_transformers_backend import build_checkpoint, reference_ids

    model, tokenizer = build_checkpoint(tmp_path / model_type, smol_tokenizer, model_type)
    path = ensure_gguf(tmp_path / model_type, tmp_path / "cache", 32)
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == ("glm4" if model_type == "glm4" else "chatglm")
    server = LlamaServer(path, exact=True)
    # The tiny checkpoints borrow SmolLM2's vocabulary, whose <|im_end|> llama.cpp always treats
    # as end-of-generation (by its name); real GLM-4 vocabularies have no such token.
    eos = set(model.generation_config.eos_token_id) | {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    for messages in GLM_CONVERSATIONS:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        assert server.prompt_ids(messages) == list(prompt), messages
        expected = reference_ids(model, tokenizer, messages, max_new_tokens=16)
        expected = expected[: next((i + 1 for i, t in enumerate(expected) if t in eos), len(expected))]
        assert server.greedy_ids(list(prompt), 16) == expected, messages
        result = server.chat(messages, 16)
        text = tokenizer.decode([i for i in expected if i not in eos], skip_special_tokens=True)
        assert result["choices"][0]["message"]["content"] == text, messages
        assert result["choices"][0]["finish_reason"] == ("stop" if expected[-1] in eos else "length")


TOKENIZER_PROBES = [
    "Hello world, how are you?", "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "3 33 333 3333 33333 1314151天～ 3.3 3..3", "  two  spaces\n\n\nnewlines\r\n\ttab", "你好，世界 🙂 🦙🦙 鳙",
    "------======= нещо на Български '''```\"\"\"\"......!!!!!!??????", " leading and trailing ",
]


PRE_TOKENIZERS = {
    "gpt-2": None,  # the tiny checkpoints' own: byte-level with GPT-2's regex
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ]},
    "glm4": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": GLM4_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]},
}


@pytest.mark.parametrize("pre_tokenizer", PRE_TOKENIZERS)
def test_bpe_pre_tokenizers_split_like_transformers(pre_tokenizer, tmp_path, smol_tokenizer):
    """llama.cpp's tokenization of plain text equals the checkpoint tokenizer's, for each
    pre-tokenizer the converter recognises (GLM-4's: a Split on its regex, then byte-level)."""
    from transformers import AutoTokenizer

    from .test_transformers_backend import build_checkpoint

    build_checkpoint(tmp_path / "glm4", smol_tokenizer, "glm4")
    if PRE_TOKENIZERS[pre_tokenizer] is not None:
        path = tmp_path / "glm4" / "tokenizer.json"
        data = json.loads(path.read_text())
        data["pre_tokenizer"] = PRE_TOKENIZERS[pre_tokenizer]
        path.write_text(json.dumps(data))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "glm4")
    gguf_path = ensure_gguf(tmp_path / "glm4", tmp_path / "cache", 16)
    assert gguf.GGUFReader(gguf_path).fields["tokenizer.ggml.pre"].contents() == pre_tokenizer
    server = LlamaServer(gguf_path)
    for text in TOKENIZER_PROBES:
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert server.post("/tokenize", {"content": text, "add_special": False})["tokens"] == expected, text


def test_tied_embeddings_get_an_output_matrix(tmp_path, smol_tokenizer):
    """A checkpoint saved with tied embeddings has no lm_head: the GGUF gets a copy of the embedding."""
    from transformers import AutoModelForCausalLM, GlmConfig

    config = GlmConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tied")
    smol_tokenizer.save_pretrained(tmp_path / "tied")
    tensors = {t.name: t for t in gguf.GGUFReader(ensure_gguf(tmp_path / "tied", tmp_path / "cache", 32)).tensors}
    assert (tensors["output.weight"].data == tensors["token_embd.weight"].data).all()
    assert tensors["output.weight"].data.shape == (len(smol_tokenizer), 64)
