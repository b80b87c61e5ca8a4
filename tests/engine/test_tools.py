"""Tool-call formats: ChatGLM3's prompt layout (real tokenizer) and the streaming parsers."""

import json

import pytest

import copy

from chat.engine.backends.transformers import glm4_messages, tool_template_style, with_tools
from chat.engine.networks.chatglm_tokenizer import load_tokenizer
from chat.engine.tools import (CHATGLM3_TOOLS_PROMPT, SEGMENT, chatglm3_messages, chatglm3_parser, glm4_parser,
                               python_arguments)
from tests.engine.chatglm_fixtures import checkpoint

WEATHER = {"name": "get_weather", "description": "The weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CALL = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}
CONVERSATION = [
    {"role": "system", "content": "Be brief.", "tools": [WEATHER]},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temperature": 22}', "tool_call_id": "call_1", "name": "get_weather"},
]


def feed_by_character(parser, text):
    released = "".join(parser.feed(c) for c in text)
    rest, calls = parser.finish()
    return released + rest, calls


@pytest.fixture(scope="module")
def v3():
    return load_tokenizer(checkpoint("v3"), "v3")


def test_chatglm3_prompt_layout(v3):
    """Tools JSON in the system turn, the call as `<|assistant|>NAME\\n` + python block, the
    result as `<|observation|>`: the ids of ChatGLM3's build_chat_input, token for token."""
    role = v3.role_id
    expected = [v3.gmask_id, v3.sop_id]
    expected += [role("system")] + v3.encode("\n") + v3.encode(
        CHATGLM3_TOOLS_PROMPT + "\n" + json.dumps([WEATHER], indent=4, ensure_ascii=False))
    expected += [role("system")] + v3.encode("\n") + v3.encode("Be brief.")
    expected += [role("user")] + v3.encode("\n") + v3.encode("Weather in Paris?")
    expected += [role("assistant")] + v3.encode("get_weather\n") + v3.encode(
        "```python\ntool_call(city='Paris', days=2)\n```")
    expected += [role("observation")] + v3.encode("\n") + v3.encode('{"temperature": 22}')
    expected += [role("assistant")]
    assert v3.build_prompt(chatglm3_messages(CONVERSATION)) == expected


def test_chatglm3_answer_ids_parse_to_a_call(v3):
    """What the model generates after `<|assistant|>`, through the served decoder and the parser."""
    ids = v3.encode("get_weather\n```python\ntool_call(city=\"Paris\", days=2)\n```")
    decoder, parser = v3.stream_decoder(), chatglm3_parser(["get_weather"])
    released = "".join(parser.feed(decoder.push(i)) for i in ids) + parser.feed(decoder.flush())
    rest, [call] = parser.finish()
    assert released + rest == ""
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris", "days": 2})


def test_chatglm3_text_answer_passes_through(v3):
    ids = v3.encode("\nget_weather is what I would call.")
    decoder, parser = v3.stream_decoder(), chatglm3_parser(["get_weather"])
    text = "".join(parser.feed(decoder.push(i)) for i in ids) + parser.feed(decoder.flush())
    rest, calls = parser.finish()
    assert (text + rest, calls) == ("get_weather is what I would call.", [])


def test_chatglm3_arguments_are_literals_only():
    assert python_arguments("```python\ntool_call(a=[1, 'x'], b=None)\n```") == '{"a": [1, "x"], "b": null}'
    assert python_arguments("```python\ntool_call(a=__import__('os'))\n```") is None
    assert python_arguments("```python\nprint(1)\n```") is None


@pytest.mark.parametrize("text", ["Hello", "get", "get_weather", "get_weather\n", "get_weather\nNo call here",
                                  "  spaced\ntext", "get_time\n{\"a\": 1}", f"text{SEGMENT[:5]}"])
def test_text_is_never_lost(text):
    assert feed_by_character(glm4_parser(["get_weather"]), text) == (text, [])


def test_text_is_released_once_it_cannot_be_a_call():
    parser = glm4_parser(["get_weather"])
    assert parser.feed("get") == ""  # may still be the name
    assert parser.feed(" the") == "get the"
    assert parser.feed(" weather") == " weather"


def test_glm4_calls_and_broken_arguments():
    text, [first, second] = feed_by_character(glm4_parser(["a", "b"]), 'a\n{"x": 1}' + SEGMENT + 'b\n{}')
    assert text == "" and (first.name, first.arguments, second.name) == ("a", '{"x": 1}', "b")
    assert feed_by_character(glm4_parser(["a"]), 'a\n{"x": ') == ('a\n{"x": ', [])
    _, calls = feed_by_character(glm4_parser(["a", "b"], parallel=False), 'a\n{}' + SEGMENT + 'b\n{}')
    assert [c.name for c in calls] == ["a"]


def test_glm4_template_messages():
    messages, tools = glm4_messages(CONVERSATION)
    assert tools == [{"type": "function", "function": WEATHER}]
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "metadata": "get_weather", "content": CALL["arguments"]},
                        {"role": "observation", "content": '{"temperature": 22}'}]


# Chat templates in the two ways GLM-4 checkpoints take tools (written for these tests, with the
# mechanics of the published ones): glm-4-9b-chat's own reads a `tools` key on a message
# (`item['tools']`) and writes an earlier call as `<|assistant|>NAME` + JSON arguments; the
# -hf ones take apply_chat_template's `tools` argument.
MESSAGE_STYLE = (
    "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n# 可用工具"
    "{% for tool in item['tools'] %}\n\n## {{ tool['function']['name'] }}\n\n{{ tool['function'] | tojson }}"
    "{% endfor %}{% endif %}{% if item['content'] %}<|{{ item['role'] }}|>{{ item.get('metadata', '') }}\n"
    "{{ item['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
ARGUMENT_STYLE = (
    "[gMASK]<sop>{% if tools %}<|system|>\n# 可用工具{% for tool in tools %}\n\n## {{ tool['function']['name'] }}"
    "{% endfor %}{% endif %}{% for item in messages %}<|{{ item['role'] }}|>\n{{ item['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")
NO_TOOLS = "{% for item in messages %}<|{{ item['role'] }}|>\n{{ item['content'] }}{% endfor %}<|assistant|>"


@pytest.mark.parametrize("template,style", [(MESSAGE_STYLE, "message"), (ARGUMENT_STYLE, "argument"), (NO_TOOLS, None)])
def test_the_template_is_probed_for_where_it_reads_tools(smol_tokenizer, template, style):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = template
    assert tool_template_style(tokenizer) == style


def test_a_glm4_conversation_with_tools_through_its_own_template(smol_tokenizer):
    """Tools on the system message, the call as `<|assistant|>get_weather` + its arguments, the
    result as `<|observation|>`: the tools reach a template that reads them from a message."""
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = MESSAGE_STYLE
    messages, extra = with_tools(*glm4_messages(CONVERSATION), tool_template_style(tokenizer))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
    assert text.count("## get_weather") == 1
    assert "<|system|>\nBe brief." in text
    assert f"<|assistant|>get_weather\n{CALL['arguments']}" in text
    assert text.endswith('<|observation|>\n{"temperature": 22}<|assistant|>')
