"""Tool calling on the llamacpp backend: llama.cpp renders the tools with the GGUF's own jinja
chat template and parses the answer's calls itself; the backend maps its streamed `tool_calls`
into the engine's calls. Served for real: the embedded SmolLM2 weights in a copy of its GGUF
whose template is a Hermes/Qwen-style one with tools (SmolLM2's own has none)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from chat.engine.backends.llamacpp import LlamaCppBackend, gguf_tools_missing
from chat.engine.config import EngineConfig, embedded_gguf
from chat.engine.scheduler import Engine
from chat.engine.vocabulary import GenerationParams, GenerationResult, TextDelta

# Qwen2.5's template, shortened: the tools in <tools>, calls as <tool_call>{"name", "arguments"}</tool_call>.
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{%- endif %}# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\n<tools>{%- for tool in tools %}\n{{ tool | tojson }}"
    "{%- endfor %}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant{%- if message.content %}\n{{ message.content }}"
    "{%- endif %}{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}\n<tool_call>\n{\"name\": \"{{ tool_call.name }}\", "
    "\"arguments\": {{ tool_call.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
WEATHER = {"name": "get_weather", "description": "Get the current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
GREEDY = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=60)


def with_template(path: Path, template: str) -> Path:
    """A copy of the embedded GGUF (same weights and vocabulary) with another chat template."""
    reader = gguf.GGUFReader(embedded_gguf())
    writer = gguf.GGUFWriter(path, arch=reader.fields["general.architecture"].contents(), endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, {"tokenizer.chat_template": MetadataDetails(gguf.GGUFValueType.STRING,
                                                                                      template)}, [])
    return path


@pytest.fixture(scope="module")
def hermes_gguf(tmp_path_factory) -> Path:
    return with_template(tmp_path_factory.mktemp("gguf") / "SmolLM2-tools.gguf", HERMES_TEMPLATE)


@pytest.fixture(scope="module")
def engine(hermes_gguf):
    engine = Engine(lambda: LlamaCppBackend(EngineConfig(model=str(hermes_gguf), max_batch_size=2)), max_queue=8)
    engine.wait_ready(300)
    yield engine
    engine.stop()
    engine.backend.close()


def few_shot(question: str) -> list[dict]:
    """Engine messages (chat/engine/tools.py) with three earlier calls and results: the tiny
    model copies the pattern, so its answer to `question` is a call it writes itself."""
    messages = [{"role": "system", "content": "", "tools": [WEATHER]}]
    for i, (city, weather) in enumerate([("Rome", "sunny"), ("Berlin", "rainy"), ("Madrid", "hot")]):
        call = {"id": f"call_{i}", "name": "get_weather", "arguments": json.dumps({"city": city})}
        messages += [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": weather, "tool_call_id": f"call_{i}", "name": "get_weather"},
            {"role": "assistant", "content": f"It is {weather} in {city}."},
        ]
    return messages + [{"role": "user", "content": question}]


def test_templates_with_and_without_tools_are_told_apart(hermes_gguf):
    assert gguf_tools_missing(hermes_gguf) is None
    assert "no tool-calling section" in gguf_tools_missing(embedded_gguf())  # SmolLM2's own template


@pytest.mark.slow
async def test_llama_cpp_parses_the_models_call(engine):
    backend = engine.backend
    messages = few_shot("What is the weather in Paris?")
    assert backend.tools_refusal(messages, GREEDY) is None
    events = [e async for e in engine.stream(messages, GREEDY)]
    result = events[-1]
    assert isinstance(result, GenerationResult) and result.finish_reason == "stop"
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert result.tool_calls[0].id
    # The call is not text: nothing of its syntax was streamed.
    assert result.text == "".join(e.text for e in events if isinstance(e, TextDelta)) == ""
    assert result.completion_tokens > 5
    # The tools are in the prompt llama.cpp counts (and fits the history by).
    without = [m for m in messages if m["role"] != "system"]
    assert backend.count_prompt_tokens(messages) > backend.count_prompt_tokens(
        [{"role": m["role"], "content": m["content"]} for m in without if m["role"] in ("user", "assistant")])


@pytest.mark.slow
async def test_forced_calls_are_refused(engine):
    messages = few_shot("Hi")
    for choice in ("required", "function:get_weather"):
        refusal = engine.backend.tools_refusal(messages, GenerationParams(tool_choice=choice))
        assert refusal is not None and "'auto'" in refusal
