"""The transformers backend, for real: tiny random checkpoints that the tests build (Llama,
GLM-4 and GLM-4-0414 from config, with a real tokenizer and chat template), checked token
for token against transformers' own `generate()`, alone and in a batch."""

from __future__ import annotations

import asyncio

import pytest
import torch

from chat.engine.backends import resolve_backend_name
from chat.engine.backends.transformers import TransformersBackend
from chat.engine.config import EngineConfig
from chat.engine.scheduler import Engine
from chat.engine.vocabulary import GenerationParams, GenerationResult, TextDelta

pytestmark = pytest.mark.slow

GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
GLM_SPECIALS = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<|endoftext|>"]
GREEDY = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=12)


def build_checkpoint(path, tokenizer, family: str):
    """Save a tiny random model of `family` with `tokenizer` under `path`; return it loaded."""
    from transformers import AutoModelForCausalLM, Glm4Config, GlmConfig, LlamaConfig

    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    eos = [tokenizer.eos_token_id]
    if family != "llama":
        tokenizer.add_special_tokens({"additional_special_tokens": GLM_SPECIALS})
        tokenizer.chat_template = GLM4_TEMPLATE
        eos = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])
    config_class = {"llama": LlamaConfig, "glm": GlmConfig, "glm4": Glm4Config}[family]
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or 0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = eos
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def reference_ids(model, tokenizer, messages, max_new_tokens=12, repetition_penalty=1.0):
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_tensors="pt")
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
                         repetition_penalty=repetition_penalty)
    return out[0, prompt.shape[1]:].tolist()


async def run(engine, messages, params=GREEDY):
    events = [e async for e in engine.stream(messages, params)]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    result = events[-1]
    assert isinstance(result, GenerationResult) and result.text == text
    return result


@pytest.mark.parametrize("family", ["llama", "glm", "glm4"])
async def test_matches_transformers_generate_alone_and_batched(family, tmp_path, smol_tokenizer):
    model, tokenizer = build_checkpoint(tmp_path, smol_tokenizer, family)
    config = EngineConfig(model=str(tmp_path), max_batch_size=4)
    assert resolve_backend_name(config) == "transformers"
    engine = Engine(lambda: TransformersBackend(config))
    info = engine.wait_ready(120)
    assert info.model_id == tmp_path.name and info.backend == "transformers" and info.dtype == "float32"

    conversations = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "user", "content": "你好，世界 🙂 and a much longer question to pad the batch"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
    ]
    expected = []
    for messages in conversations:
        ids = reference_ids(model, tokenizer, messages)
        eos = set(model.generation_config.eos_token_id)
        stopped = bool(ids) and ids[-1] in eos
        expected.append((tokenizer.decode([i for i in ids if i not in eos], skip_special_tokens=True), stopped, ids))

    alone = [await run(engine, messages) for messages in conversations]
    batched = await asyncio.gather(*(run(engine, messages) for messages in conversations))
    for (text, stopped, ids), one, many in zip(expected, alone, batched):
        assert one.text == many.text == text  # left padding and batch pruning change nothing
        assert one.finish_reason == ("stop" if stopped else "length")
        assert one.completion_tokens == len(ids) - (1 if stopped else 0)
    engine.stop()


async def test_repetition_penalty_matches_generate_alone_and_batched(tmp_path, smol_tokenizer):
    """The penalty is applied to the whole batch at once (a [B, V] mask of seen ids): each row
    still gets exactly what transformers' own RepetitionPenaltyLogitsProcessor gives it alone."""
    PENALTY = 1.5
    model, tokenizer = build_checkpoint(tmp_path, smol_tokenizer, "llama")
    with torch.no_grad():  # output = input embeddings: the model likes to repeat what it saw
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    model.save_pretrained(tmp_path)
    engine = Engine(lambda: TransformersBackend(EngineConfig(model=str(tmp_path), max_batch_size=4)))
    engine.wait_ready(120)
    conversations = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "user", "content": "A much longer question, to pad the other rows of the batch on the left"}],
        [{"role": "user", "content": "Why?"}],
    ]
    eos = set(model.generation_config.eos_token_id)
    penalized = [reference_ids(model, tokenizer, m, max_new_tokens=24, repetition_penalty=PENALTY) for m in conversations]
    plain = [reference_ids(model, tokenizer, m, max_new_tokens=24) for m in conversations]
    assert penalized != plain  # the penalty changes these answers: the comparison is not vacuous
    expected = [tokenizer.decode([i for i in ids if i not in eos], skip_special_tokens=True) for ids in penalized]
    params = GenerationParams(temperature=0, repetition_penalty=PENALTY, max_new_tokens=24)
    alone = [await run(engine, messages, params) for messages in conversations]
    batched = await asyncio.gather(*(run(engine, messages, params) for messages in conversations))
    assert [r.text for r in alone] == [r.text for r in batched] == expected
    engine.stop()


async def test_glm4_stops_on_its_role_tokens(tmp_path, smol_tokenizer):
    model, tokenizer = build_checkpoint(tmp_path, smol_tokenizer, "glm4")
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    with torch.no_grad():  # make <|user|> the model's first choice
        model.lm_head.weight[user] = model.lm_head.weight.abs().max() * 50 * model.model.norm.weight.sign()
    model.save_pretrained(tmp_path)
    assert reference_ids(model, tokenizer, [{"role": "user", "content": "hi"}])[0] == user
    backend = TransformersBackend(EngineConfig(model=str(tmp_path)))
    backend.load()
    assert user in backend.eos_ids
    prompt = backend._prompt_ids([{"role": "user", "content": "hi"}])
    assert tokenizer.decode(prompt).startswith("[gMASK]<sop><|user|>")
    engine = Engine(lambda: backend)
    engine.wait_ready(60)
    result = await run(engine, [{"role": "user", "content": "hi"}])
    assert result.finish_reason == "stop" and result.text == "" and result.completion_tokens == 0
    engine.stop()


async def test_stop_strings_and_budget(tmp_path, smol_tokenizer):
    build_checkpoint(tmp_path, smol_tokenizer, "llama")
    engine = Engine(lambda: TransformersBackend(EngineConfig(model=str(tmp_path))))
    engine.wait_ready(60)
    free = await run(engine, [{"role": "user", "content": "Hello"}], GenerationParams(temperature=0, max_new_tokens=20))
    assert free.text
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 2]
    cut = await run(engine, [{"role": "user", "content": "Hello"}], GenerationParams(temperature=0, max_new_tokens=20, stop=(stop,)))
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.index(stop)]
    short = await run(engine, [{"role": "user", "content": "Hello"}], GenerationParams(temperature=0, max_new_tokens=3))
    assert short.finish_reason == "length" and short.completion_tokens == 3
    sampled = [await run(engine, [{"role": "user", "content": "Hello"}], GenerationParams(temperature=1.0, seed=7, max_new_tokens=8))
               for _ in range(2)]
    assert sampled[0].text == sampled[1].text  # a seed makes sampling repeatable
    engine.stop()


async def test_default_model_answers_sensibly(default_model_dir):
    engine = Engine(lambda: TransformersBackend(EngineConfig(model=str(default_model_dir))))
    engine.wait_ready(120)
    result = await run(engine, [{"role": "user", "content": "What is the capital of France?"}],
                       GenerationParams(max_new_tokens=30))
    assert "Paris" in result.text
    engine.stop()


@pytest.mark.parametrize("bits,max_rel_error", [(8, 0.05), (4, 0.5)])
def test_quantized_linear_layers(bits, max_rel_error, tmp_path, smol_tokenizer):
    """--quantize for transformers models: every block Linear replaced, logits near float32."""
    from chat.engine.quantize import QuantizedLinear

    model, _ = build_checkpoint(tmp_path, smol_tokenizer, "llama")
    backend = TransformersBackend(EngineConfig(model=str(tmp_path), quantize=bits))
    backend.load()
    layers = [m for m in backend.model.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers; lm_head kept
    ids = torch.tensor([smol_tokenizer.encode("The quick brown fox jumps over the lazy dog")])
    with torch.no_grad():
        reference, quantized = model(ids).logits, backend.model(ids).logits
    error = (quantized - reference).norm() / reference.norm()
    assert error < max_rel_error
    assert backend.info.quantize == bits


@pytest.mark.parametrize("family", ["llama", "glm4"])
def test_requests_joining_a_running_batch_get_the_same_answers(family, tmp_path, smol_tokenizer):
    """Continuous batching: sequences merged into a batch mid-decode (their prompts longer and
    shorter than the running cache) decode exactly as they would alone."""
    import threading

    from chat.engine.generation import Generation

    model, tokenizer = build_checkpoint(tmp_path, smol_tokenizer, family)
    backend = TransformersBackend(EngineConfig(model=str(tmp_path), max_batch_size=4))
    backend.load()
    prompts = ["Hello!", "你好，世界 🙂 and a much longer question, long enough to be the longest prompt", "Why?"]
    params = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=10)

    def sequence(text):
        return Generation([{"role": "user", "content": text}], params, lambda event: None, threading.Event())

    alone = []
    for text in prompts:
        seq = sequence(text)
        backend.generate([seq])
        alone.append(seq.result.text)

    first, *later = [sequence(text) for text in prompts]
    calls = []

    def admit(limit):  # one sequence joins at the 2nd step, another at the 4th
        calls.append(limit)
        return [later.pop(0)] if len(calls) in (2, 4) and later else []

    joined = [first, *later]
    backend.run([first], admit)
    assert len(calls) >= 4 and not later
    assert [seq.result.text for seq in joined] == alone
    assert all(seq.result.finish_reason == "length" for seq in joined if seq.result.completion_tokens == 10)


def test_steady_traffic_does_not_grow_the_cache(tmp_path, smol_tokenizer, monkeypatch):
    """A batch that never empties keeps its cache as long as its longest live row."""
    import threading

    from chat.engine.generation import Generation

    build_checkpoint(tmp_path, smol_tokenizer, "llama")
    backend = TransformersBackend(EngineConfig(model=str(tmp_path), max_batch_size=4))
    backend.load()
    params = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=6)
    texts = ["Hello!", "A much longer question that makes a long prompt for this test", "Why?"]
    sequences = [Generation([{"role": "user", "content": texts[i % 3]}], params, lambda e: None, threading.Event())
                 for i in range(16)]
    waiting = sequences[1:]
    lengths, calls = [], []
    from chat.engine.backends import transformers as backend_module

    step = backend_module._KV.step

    def recording_step(kv, tokens):
        lengths.append(kv.mask.shape[1])
        return step(kv, tokens)

    def admit(limit):
        calls.append(limit)
        return [waiting.pop(0)] if waiting and len(calls) % 3 == 0 else []

    monkeypatch.setattr(backend_module._KV, "step", recording_step)
    backend.run([sequences[0]], admit)
    assert not waiting and len(lengths) > 40
    longest_prompt = max(backend.count_prompt_tokens([{"role": "user", "content": t}]) for t in texts)
    assert max(lengths) <= longest_prompt + 6 + 1
    assert all(seq.result.finish_reason in ("length", "stop") for seq in sequences)


@pytest.mark.parametrize("family", ["llama", "glm4"])
def test_detokenizer_decode_equals_tokenizer_decode(family, tmp_path, smol_tokenizer):
    """The detokenizer calls the Rust tokenizer directly (it is its hot path): the text must be
    what `tokenizer.decode(..., skip_special_tokens=True)` gives, specials and split characters too."""
    _, tokenizer = build_checkpoint(tmp_path, smol_tokenizer, family)
    backend = TransformersBackend(EngineConfig(model=str(tmp_path)))
    backend.load()
    assert backend._fast_decode is not backend._decode  # the fast path is taken for this tokenizer
    text = "Hello, 世界 🙂!  Tabs\tand\nnewlines. <|user|> [gMASK] ünïcödé"
    ids = tokenizer.encode(text, add_special_tokens=False) + tokenizer.convert_tokens_to_ids(
        [t for t in GLM_SPECIALS if t in tokenizer.get_vocab()]) + [tokenizer.eos_token_id]
    for start in range(len(ids)):
        for end in range(start, min(len(ids), start + 6) + 1):
            window = ids[start:end]
            assert backend._fast_decode(window) == tokenizer.decode(window, skip_special_tokens=True), window
