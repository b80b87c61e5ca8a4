"""Which WebSocket handshakes the origin check lets through."""

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator

from chatglm_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


async def connect(path, headers):
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return connected


async def test_foreign_origin_is_refused_even_with_a_key(engine, settings):
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": ["bot:sk-1"]}
    assert not await connect("/ws/chat/?api_key=sk-1", [(b"origin", b"https://evil.example"), (b"host", b"localhost")])


async def test_program_with_a_key_and_no_origin_is_let_in(engine, settings):
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": ["bot:sk-1"]}
    assert await connect("/ws/chat/?api_key=sk-1", [(b"host", b"localhost")])


async def test_no_origin_and_no_key_is_refused(engine):
    assert not await connect("/ws/chat/", [(b"host", b"localhost")])


async def test_same_site_origin_is_accepted(engine):
    assert await connect("/ws/chat/", [(b"origin", b"http://localhost"), (b"host", b"localhost")])
