"""/v1/responses for text turns, through the official `openai` client against a live server
(fake model): whole and streamed answers as the SDK reads them, `previous_response_id`
continuing the stored conversation, and refusals of what a text turn cannot honour."""

import openai
import pytest

from tests.server import ServerFactory


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("responses"))
    yield factory.start(env={"CHATGLM_FAKE_DELAY_MS": "2"})
    factory.stop_all()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=30)


def test_create(client):
    response = client.responses.create(model="fake", input="你好🙂", instructions="Be brief.")
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == "fake"
    assert response.output_text == "You said: 你好🙂"
    assert response.instructions == "Be brief."
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens > 0


def test_input_messages_and_max_output_tokens(client):
    response = client.responses.create(model="fake", input=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "You said: first"}]},
        {"role": "user", "content": "a long second question"},
    ], max_output_tokens=4)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 4
    assert "You said: a long second question".startswith(response.output_text) and len(response.output_text) < 15


def test_stream_events(client):
    events = list(client.responses.create(model="fake", input="héllo ✓", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 2 and "".join(deltas) == "You said: héllo ✓"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "You said: héllo ✓"
    assert events[0].response.id == events[-1].response.id


def test_stream_helper(client):
    with client.responses.stream(model="fake", input="stream me") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "You said: stream me"


def test_previous_response_id_continues_the_stored_conversation(client):
    first = client.responses.create(model="fake", input="one")
    second = client.responses.create(model="fake", input="two", previous_response_id=first.id)
    assert second.output_text == "You said: two" and second.previous_response_id == first.id
    # The model saw the stored first turn: the prompt grew by it.
    alone = client.responses.create(model="fake", input="two")
    assert second.usage.input_tokens > alone.usage.input_tokens
    with pytest.raises(openai.BadRequestError) as caught:  # not the latest answer of its conversation
        client.responses.create(model="fake", input="three", previous_response_id=first.id)
    assert caught.value.code == "not_latest_response"
    third = client.responses.create(model="fake", input="three", previous_response_id=second.id, stream=True)
    assert list(third)[-1].response.output_text == "You said: three"
    for unknown in ("resp_" + "0" * 32 + "_1", "resp_nothing", alone.id[:-1] + "9" * 3):
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model="fake", input="x", previous_response_id=unknown)
        assert caught.value.param == "previous_response_id"
    unstored = client.responses.create(model="fake", input="secret", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fake", input="x", previous_response_id=unstored.id)


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"text": {"verbosity": "low"}}, "text"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"background": True}, "background"),
    ({"truncation": "disabled"}, "truncation"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}], "previous_response_id": "resp_x"}, "input"),
    ({"whatever": 1}, "whatever"),
])
def test_refusals(client, extra, param):
    request = {"model": "fake", "input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**{k: v for k, v in request.items() if k in ("model", "input")},
                                extra_body={k: v for k, v in request.items() if k not in ("model", "input")})
    assert caught.value.param == param


def test_noop_values_accepted(client):
    response = client.responses.create(model="fake", input="hi", tools=[], tool_choice="none", text={
        "format": {"type": "text"}}, truncation="auto", include=[], background=False, reasoning={"effort": None},
        parallel_tool_calls=False, metadata={}, store=True, temperature=0.5, top_p=0.9)
    assert response.output_text == "You said: hi"


def test_generation_error_mid_stream(client):
    events = list(client.responses.create(model="fake", input="fail [[fake:error]] halfway", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "generation_failed"


def test_only_the_owner_continues_a_response(tmp_path):
    """With API keys, a stored response belongs to its key: another key cannot continue it
    (404, as for an unknown id), and a caller without a key gets 401."""
    factory = ServerFactory(tmp_path)
    try:
        server = factory.start(env={"CHATGLM_API_KEYS": "alice:sk-alice,bob:sk-bob"})
        alice, bob = (openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)
                      for key in ("sk-alice", "sk-bob"))
        first = alice.responses.create(model="fake", input="mine")
        with pytest.raises(openai.NotFoundError):
            bob.responses.create(model="fake", input="yours?", previous_response_id=first.id)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0).responses.create(
                model="fake", input="x", previous_response_id=first.id)
        assert alice.responses.create(model="fake", input="still mine",
                                      previous_response_id=first.id).output_text == "You said: still mine"
    finally:
        factory.stop_all()
