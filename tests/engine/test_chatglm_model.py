"""ChatGLM networks against the reference's golden logits and greedy continuations, and loading."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from chat.engine.networks.chatglm import ChatGLMv1, ChatGLMv2
from chat.engine.networks.loading import detect_family, load_model, read_config, weight_files

from .chatglm_fixtures import FAMILIES, checkpoint, golden

LOGIT_TOLERANCE = 1e-4  # README 7: float32 full-sequence forward


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def loaded(family):
    return load_model(checkpoint(family))


def greedy(model, eos: set[int], prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Batched greedy decoding through the KV cache; finished rows leave the batch."""
    logits, batch = model.prefill(prompts)
    outputs: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    while live:
        tokens = logits.argmax(-1).tolist()
        keep = []
        for row, (index, token) in enumerate(zip(live, tokens)):
            outputs[index].append(token)
            if token not in eos and len(outputs[index]) < max_new_tokens:
                keep.append(row)
        if len(keep) < len(live):
            if not keep:
                break
            batch.select(keep)
        live = [live[row] for row in keep]
        logits = model.decode(batch, [tokens[row] for row in keep])
    return outputs


def test_model_class_and_dims(family, loaded):
    model, _ = loaded
    assert isinstance(model, ChatGLMv1 if family == "v1" else ChatGLMv2)
    assert model.config.vocab_size == golden(family)["model_vocab_size"]
    assert model.embedding_weight.dtype == torch.float32


def test_teacher_forced_logits_match_reference(family, loaded):
    model, _ = loaded
    worst = 0.0
    for case in golden(family)["cases"]:
        logits = model.score(case["prompt_ids"] + case["greedy_ids"])
        first = case["logits"]["first_position"]
        worst = max(worst, (logits[first] - torch.tensor(case["logits"]["first_row"])).abs().max().item())
        for step, expected in enumerate(case["logits"]["steps"]):
            row = logits[first + step]
            assert int(row.argmax()) == expected["top_ids"][0]
            diff = (row[expected["top_ids"]] - torch.tensor(expected["top_values"])).abs().max().item()
            worst = max(worst, diff)
    assert worst <= LOGIT_TOLERANCE  # measured: v1 1.5e-5, v2 3.8e-6, v3 0


def test_prompt_positions_top_ids_match_reference(family, loaded):
    """Every prompt position (checks the prefix-LM mask and 2-D positions of v1)."""
    model, _ = loaded
    for case in golden(family)["cases"][:3]:
        logits = model.score(case["prompt_ids"] + case["greedy_ids"])
        for position, expected in enumerate(case["logits"]["prompt_positions"]):
            values = logits[position][expected["top_ids"]]
            assert torch.allclose(values, torch.tensor(expected["top_values"]), atol=LOGIT_TOLERANCE, rtol=0)


def test_cached_greedy_matches_reference(family, loaded):
    model, tokenizer = loaded
    for case in golden(family)["cases"]:
        [output] = greedy(model, tokenizer.eos_token_ids, [case["prompt_ids"]], golden(family)["max_new_tokens"])
        assert output == case["greedy_ids"], case["id"]


def test_batched_greedy_matches_reference(family, loaded):
    """All cases in one left-padded batch (prompts of 3 to 108 ids), EOS rows pruned."""
    model, tokenizer = loaded
    cases = golden(family)["cases"]
    outputs = greedy(model, tokenizer.eos_token_ids, [c["prompt_ids"] for c in cases], golden(family)["max_new_tokens"])
    assert outputs == [c["greedy_ids"] for c in cases]


def test_batched_logits_close_to_single(family, loaded):
    model, _ = loaded
    cases = golden(family)["cases"][:4]
    batched, _ = model.prefill([c["prompt_ids"] for c in cases])
    for row, case in enumerate(cases):
        single, _ = model.prefill([case["prompt_ids"]])
        assert torch.allclose(batched[row], single[0], atol=LOGIT_TOLERANCE, rtol=0)


def test_family_detection(family):
    directory = checkpoint(family)
    assert detect_family(directory, read_config(directory)) == family


def test_v3_detected_by_tokenizer_config_or_name(tmp_path):
    raw = read_config(checkpoint("v3"))
    unnamed = {k: v for k, v in raw.items() if k != "_name_or_path"}
    plain = tmp_path / "some-model"
    plain.mkdir()
    (plain / "tokenizer_config.json").write_text("{}")
    assert detect_family(plain, unnamed) == "v2"
    added = {"added_tokens_decoder": {"64795": {"content": "<|user|>"}}}
    (plain / "tokenizer_config.json").write_text(json.dumps(added))
    assert detect_family(plain, unnamed) == "v3"
    assert detect_family(tmp_path, {**unnamed, "_name_or_path": "THUDM/chatglm3-6b-32k"}) == "v3"


def _copy_tokenizer_and_config(family, target):
    source = checkpoint(family)
    for path in source.iterdir():
        if path.suffix in (".json", ".model") and "index" not in path.name:
            shutil.copy(path, target / path.name)


@pytest.mark.parametrize(
    ("family", "fmt"),
    [("v1", "safetensors-shards"), ("v2", "single-safetensors"), ("v3", "single-bin"), ("v3", "bin-shards")],
)
def test_loading_other_weight_formats(family, fmt, tmp_path):
    """Every family loads from either format, sharded or single-file, to the same weights."""
    reference, _ = load_model(checkpoint(family))
    state = {}
    for path in weight_files(checkpoint(family)):
        state.update(torch.load(path, weights_only=True) if path.suffix == ".bin" else load_file(path))
    target = tmp_path / checkpoint(family).name
    target.mkdir()
    _copy_tokenizer_and_config(family, target)
    names = sorted(state)
    if fmt == "single-safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, target / "model.safetensors")
    elif fmt == "single-bin":
        torch.save(state, target / "pytorch_model.bin")
    else:
        half = len(names) // 2
        suffix, save = (".safetensors", save_file) if fmt == "safetensors-shards" else (".bin", torch.save)
        stem = "model" if suffix == ".safetensors" else "pytorch_model"
        weight_map = {}
        for shard, chunk in enumerate((names[:half], names[half:]), 1):
            file = f"{stem}-0000{shard}-of-00002{suffix}"
            save({k: state[k].clone().contiguous() for k in chunk}, target / file)
            weight_map.update(dict.fromkeys(chunk, file))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (target / f"{stem}{suffix}.index.json").write_text(json.dumps(index))
    model, _ = load_model(target)
    ids = golden(family)["cases"][0]["prompt_ids"]
    assert torch.equal(model.score(ids), reference.score(ids))


def test_loading_rejects_foreign_weights(tmp_path):
    _copy_tokenizer_and_config("v2", tmp_path)
    torch.save({"transformer.something_else.weight": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="unexpected weight"):
        load_model(tmp_path)
