"""Forced tool calls (`tool_choice` "required" or a named function) on the torch backends: the
answer is held by llguidance to the call's grammar in the family's syntax, its arguments to the
tool's JSON Schema. Served for real: the tiny ChatGLM3 checkpoint's random weights, which would
never write a call by themselves."""

from __future__ import annotations

import json

import pytest

from chat.engine.backends.chatglm import ChatGLMBackend
from chat.engine.config import EngineConfig
from chat.engine.constraints import Constraint, grammar_of
from chat.engine.scheduler import Engine
from chat.engine.tools import forced_call_lark, glm4_parser, python_arguments
from chat.engine.vocabulary import GenerationParams, GenerationResult, TextDelta
from tests.engine.chatglm_fixtures import checkpoint

WEATHER = {"name": "get_weather", "description": "The weather of a city", "parameters": {
    "type": "object", "required": ["city", "unit"], "additionalProperties": False,
    "properties": {"city": {"enum": ["Paris", "Rome"]}, "unit": {"enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 9}, "alerts": {"type": "boolean"}}}}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
def engine():
    engine = Engine(lambda: ChatGLMBackend(EngineConfig(model=str(checkpoint("v3")), backend="chatglm")), max_queue=8)
    engine.wait_ready(120)
    yield engine
    engine.stop()


def assert_valid(name: str, arguments: dict) -> None:
    """The tools' schemas, checked by hand (jsonschema is not a dependency)."""
    if name == "get_time":
        assert isinstance(arguments, dict)
        return
    assert {"city", "unit"} <= set(arguments) <= {"city", "unit", "days", "alerts"}
    assert arguments["city"] in ("Paris", "Rome")
    assert arguments["unit"] in ("celsius", "fahrenheit")
    assert "days" not in arguments or (type(arguments["days"]) is int and 1 <= arguments["days"] <= 9)
    assert "alerts" not in arguments or type(arguments["alerts"]) is bool


def messages(question: str) -> list[dict]:
    return [{"role": "system", "content": "", "tools": [WEATHER, TIME]}, {"role": "user", "content": question}]


async def answer(engine, question: str, params) -> tuple[GenerationResult, str]:
    events = [e async for e in engine.stream(messages(question), params)]
    return events[-1], "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.mark.parametrize("choice, names", [("function:get_weather", {"get_weather"}),
                                           ("required", {"get_weather", "get_time"})])
async def test_a_forced_call_is_a_valid_call_of_the_schema(engine, choice, names):
    assert engine.backend.tools_refusal(messages("x"), GenerationParams(tool_choice=choice)) is None
    # Greedy and sampled: a sampled row once picked sentencepiece's byte piece `<0x2C>` for a
    # comma, which the grammar engine's re-tokenization took for a `,` still to come (the
    # row then ended as an error).
    for question, temperature, seed in (("Weather in Paris?", 0, None), ("Is it cold in Rome tomorrow?", 0, None),
                                        ("What time is it?", 0, None), ("Weather in Paris?", 1.0, 1),
                                        ("Weather in Paris?", 1.0, 2), ("Weather in Paris?", 1.0, 4)):
        params = GenerationParams(tool_choice=choice, temperature=temperature, seed=seed,
                                  max_new_tokens=200)
        result, streamed = await answer(engine, question, params)
        assert result.finish_reason == "stop", result
        [call] = result.tool_calls
        assert call.name in names
        assert_valid(call.name, json.loads(call.arguments))
        assert result.text == streamed == ""  # the call's syntax is never text


def test_chatglm3_call_grammar_accepts_its_own_syntax_only(engine):
    import llguidance

    from chat.engine.grammar import Vocabulary

    backend = engine.backend
    vocabulary = Vocabulary.of_chatglm(backend.tokenizer, backend.model.embedding_weight.shape[0])
    grammar = grammar_of(Constraint(lark=forced_call_lark([WEATHER], "function:get_weather", "python")))

    def accepted(text: str) -> bool:
        matcher = llguidance.LLMatcher(vocabulary.tokenizer, grammar, log_level=0)
        return matcher.consume_tokens(vocabulary.tokenizer.tokenize_str(text)) and matcher.is_accepting()

    good = 'get_weather\n```python\ntool_call(city="Paris", unit="celsius", alerts=True)\n```'
    assert accepted(good) and json.loads(python_arguments(good.split("\n", 1)[1])) == {
        "city": "Paris", "unit": "celsius", "alerts": True}
    assert not accepted('get_weather\n```python\ntool_call(unit="celsius")\n```')  # city is required
    assert not accepted('get_weather\n```python\ntool_call(city="Paris", unit="kelvin")\n```')
    assert not accepted('get_weather\n```python\ntool_call(city="Paris", unit="celsius", alerts=true)\n```')


def test_glm4_call_grammar_is_name_then_json():
    lark = forced_call_lark([WEATHER, TIME], "required", "json")
    assert 'start: call_0 | call_1' in lark and '%json {"type": "object"' in lark
    parser = glm4_parser(["get_weather", "get_time"])
    parser.feed('get_time\n{}')
    assert [c.name for c in parser.finish()[1]] == ["get_time"]


def test_a_forced_call_with_a_response_format_is_refused(engine):
    params = GenerationParams(tool_choice="required", constraint=Constraint.json_object())
    assert "response_format" in engine.backend.tools_refusal(messages("x"), params)
