"""The sampling surface of the OpenAI API through the serving path (fake model): n choices,
logprobs in the chat and legacy shapes, whole and streamed, lined up with the text; penalties
and logit_bias reach the engine. The backends' own behaviour is tested in tests/engine/."""

import pytest

from chat.models import Conversation, Message
from tests.views.test_openai import body, chunks, post

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = "You said: 你好🙂"


async def test_n_choices_whole(engine, async_client):
    r = await post(async_client, body(n=3, temperature=1.0, seed=5, frequency_penalty=0.5, presence_penalty=-0.5,
                                      logit_bias={"65": 10}))
    assert r.status_code == 200, r.content
    data = r.json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == ANSWER for c in data["choices"])  # the fake model is certain
    one = (await post(async_client, body())).json()["usage"]
    assert data["usage"]["prompt_tokens"] == one["prompt_tokens"]  # the prompt counts once
    assert data["usage"]["completion_tokens"] == 3 * one["completion_tokens"]
    # Only the first choice is stored, as the conversation's answer.
    assert await Conversation.objects.acount() == 2
    assert await Message.objects.filter(role="assistant").acount() == 2


async def test_n_choices_streamed_interleaved(engine, async_client):
    r = await post(async_client, body(n=2, stream=True, stream_options={"include_usage": True}))
    events = await chunks(r)
    assert events[-1] == "[DONE]"
    texts, finished = {0: "", 1: ""}, {}
    for event in events[:-2]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finished[choice["index"]] = choice["finish_reason"]
    assert texts == {0: ANSWER, 1: ANSWER} and finished == {0: "stop", 1: "stop"}
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] > 0


async def test_chat_logprobs_whole_and_streamed(engine, async_client):
    r = await post(async_client, body(logprobs=True, top_logprobs=2))
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    # Every token, whole or part of a character, is there; their bytes make the text.
    assert b"".join(bytes(e["bytes"]) for e in content).decode() == ANSWER
    assert all(e["logprob"] == 0.0 and [t["logprob"] for t in e["top_logprobs"]] == [0.0] for e in content)
    streamed = await chunks(await post(async_client, body(logprobs=True, stream=True)))
    for event in streamed[:-1]:
        for c in event["choices"]:
            entries = (c["logprobs"] or {}).get("content") or []
            # A chunk carries the tokens of its own text: their bytes are exactly its text.
            assert b"".join(bytes(e["bytes"]) for e in entries).decode() == c["delta"].get("content", "")
    plain = (await post(async_client, body())).json()["choices"][0]
    assert plain["logprobs"] is None


async def test_logprobs_with_a_stop_string(engine, async_client):
    """Tokens of a cut stop string are not reported; a token partly before the cut is."""
    r = await post(async_client, body(logprobs=True, stop=["好"]))
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "You said: 你"
    raw = b"".join(bytes(e["bytes"]) for e in choice["logprobs"]["content"])
    assert raw.startswith("You said: 你".encode()) and not raw.decode(errors="ignore").endswith("🙂")


async def test_legacy_completion_logprobs_and_best_of(engine, async_client):
    r = await async_client.post("/v1/completions", {"model": "fake", "prompt": "héllo", "logprobs": 1, "max_tokens": 50},
                                content_type="application/json")
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    assert lp["text_offset"][-1] < len(choice["text"])
    r = await async_client.post("/v1/completions", {"model": "fake", "prompt": "héllo", "best_of": 3, "n": 2},
                                content_type="application/json")
    data = r.json()
    assert [c["index"] for c in data["choices"]] == [0, 1] and data["choices"][0]["logprobs"] is None
    one = (await async_client.post("/v1/completions", {"model": "fake", "prompt": "héllo"},
                                   content_type="application/json")).json()["usage"]
    assert data["usage"]["completion_tokens"] == 3 * one["completion_tokens"]  # every candidate counts
