"""Constrained decoding with real models: the embedded SmolLM2 through the transformers backend
and through llama.cpp, and the tiny ChatGLM checkpoints through the native backend. The output
must parse and validate against the schema, sampled or not; rows without a constraint decode as
they would alone."""

from __future__ import annotations

import json
import threading

import pytest

from chat.engine.backends.chatglm import ChatGLMBackend
from chat.engine.backends.llamacpp import LlamaCppBackend
from chat.engine.backends.transformers import TransformersBackend
from chat.engine.config import EngineConfig
from chat.engine.constraints import Constraint
from chat.engine.generation import Generation
from chat.engine.grammar import Vocabulary
from chat.engine.tools import forced_call_lark
from chat.engine.vocabulary import GenerationParams

from .chatglm_fixtures import FAMILIES, checkpoint

pytestmark = pytest.mark.slow

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "member"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "member": {"type": "boolean"}}}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON with a name, an age and whether they are a member."}]


def valid_person(text: str) -> bool:
    """PERSON's rules, checked by hand (jsonschema is not a dependency)."""
    value = json.loads(text)
    return (isinstance(value, dict) and set(value) == {"name", "age", "member"}
            and isinstance(value["name"], str) and len(value["name"]) <= 12
            and type(value["age"]) is int and 0 <= value["age"] <= 120 and isinstance(value["member"], bool))


def generate(backend, params_list, messages=MESSAGES):
    sequences = [Generation(messages, params, lambda event: None, threading.Event()) for params in params_list]
    backend.generate(sequences)
    return [seq.result for seq in sequences]


def check_backend(backend):
    greedy = GenerationParams(temperature=0, max_new_tokens=12)
    [alone] = generate(backend, [greedy])
    schema, sampled, obj, neighbour = generate(backend, [
        GenerationParams(max_new_tokens=60, constraint=Constraint.of_schema(PERSON)),
        GenerationParams(max_new_tokens=60, temperature=1.0, seed=7, constraint=Constraint.of_schema(PERSON)),
        GenerationParams(max_new_tokens=60, constraint=Constraint.json_object()),
        greedy,
    ])
    for result in (schema, sampled):
        assert result.finish_reason == "stop" and valid_person(result.text), result
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.text), dict), obj
    assert neighbour.text == alone.text and neighbour.finish_reason == alone.finish_reason
    [again] = generate(backend, [GenerationParams(max_new_tokens=60, temperature=1.0, seed=7,
                                                  constraint=Constraint.of_schema(PERSON))])
    assert again.text == sampled.text  # the seed holds under the mask
    [cut] = generate(backend, [GenerationParams(max_new_tokens=3, constraint=Constraint.of_schema(PERSON))])
    assert cut.finish_reason == "length" and cut.completion_tokens == 3


def test_transformers_backend(default_model_dir):
    backend = TransformersBackend(EngineConfig(model=str(default_model_dir), max_batch_size=4))
    backend.load()
    check_backend(backend)


def test_llamacpp_backend():
    backend = LlamaCppBackend(EngineConfig(model="default", backend="llamacpp", max_batch_size=4))
    backend.load()
    try:
        check_backend(backend)
        [lark] = generate(backend, [GenerationParams(max_new_tokens=20, constraint=Constraint(
            lark='start: "zebra" /[0-9]{3}/'))])
        assert lark.finish_reason == "stop" and lark.text.startswith("zebra") and lark.text[5:].isdigit()
    finally:
        backend.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_chatglm_native_backend(family):
    """Random tiny weights: only the grammar makes the answer JSON at all."""
    backend = ChatGLMBackend(EngineConfig(model=str(checkpoint(family)), backend="chatglm"))
    backend.load()
    results = generate(backend, [
        GenerationParams(temperature=0, max_new_tokens=400, constraint=Constraint.of_schema(PERSON)),
        GenerationParams(temperature=0.8, seed=1, max_new_tokens=400, constraint=Constraint.of_schema(PERSON)),
    ])
    for result in results:
        assert result.finish_reason == "stop" and valid_person(result.text), result


# A forced call in ChatGLM3's syntax: its `", "` between arguments is where sampled rows met
# "the grammar refused the token it allowed" (below).
WEATHER = {"name": "get_weather", "parameters": {
    "type": "object", "required": ["city", "unit"],
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]},
                   "alerts": {"type": "boolean"}}}}


def check_sampled_calls(backend, seeds=range(8)):
    call = Constraint(lark=forced_call_lark([WEATHER], "required", "python"))
    results = generate(backend, [GenerationParams(temperature=1.0, seed=seed, max_new_tokens=80, constraint=call)
                                 for seed in seeds], [{"role": "user", "content": "Weather in Paris?"}])
    for result in results:
        assert result.finish_reason in ("stop", "length"), result
        assert result.text.startswith('get_weather\n```python\ntool_call(city="'), result


def test_sampled_rows_of_the_native_chatglm3_tokenizer_follow_the_grammar():
    """llguidance tokenizes the bytes a grammar forces (the " " of `", "`) with
    `encode_continuation` and takes the ids to spell them: text that starts with whitespace
    came back with sentencepiece's "▁" still before it (" " as "▁▁", two spaces), and sampled
    rows ended as errors ("the grammar refused the token it allowed")."""
    backend = ChatGLMBackend(EngineConfig(model=str(checkpoint("v3")), backend="chatglm"))
    backend.load()
    check_sampled_calls(backend)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_continuation_of_text_spells_exactly_that_text(family):
    backend = ChatGLMBackend(EngineConfig(model=str(checkpoint(family)), backend="chatglm"))
    backend.load()
    tokenizer = backend.tokenizer
    vocabulary = Vocabulary.of_chatglm(tokenizer, backend.model.embedding_weight.shape[0])
    for text in (" ", ", ", "  x", "\n", "\na", " a", ",", "hello world", '"age":'):
        assert vocabulary.tokenizer.decode_bytes(tokenizer.encode_continuation(text)) == text.encode(), text


def test_sampled_rows_of_the_transformers_backend_follow_the_grammar(default_model_dir):
    backend = TransformersBackend(EngineConfig(model=str(default_model_dir), max_batch_size=8))
    backend.load()
    check_sampled_calls(backend)
