"""The chat page's markup that its script relies on: the settings fields come from chat.params,
and every ES module the page loads is in its import map (no build step bundles them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.test import Client

from chat import params
from chat.templatetags.page_modules import module_graph
from chat.views.pages import SETTING_FIELDS

MODULES = Path(__file__).resolve().parents[2] / "chat" / "static" / "chat"


def import_map(html: str) -> dict[str, str]:
    return json.loads(re.search(r'<script type="importmap"[^>]*>(.*?)</script>', html, re.DOTALL).group(1))["imports"]


@pytest.mark.django_db
def test_the_settings_fields_are_the_servers_list_with_the_limits_of_chat_params(monkeypatch):
    monkeypatch.setitem(params.RANGES, "max_length", (1, 4096))
    html = Client().get("/").content.decode()
    fields = re.findall(r"<input [^>]*data-setting=\"(\w+)\"[^>]*>", html)
    assert fields == [field.name for field in SETTING_FIELDS] == ["temperature", "top_p", "max_length"]
    max_length = re.search(r'<input type="number" id="max-length"[^>]*>', html).group(0)
    assert 'max="4096"' in max_length and 'min="1"' in max_length  # RANGES, not a copy of it
    temperature = re.search(r'<input type="range" id="temperature"[^>]*>', html).group(0)
    assert 'min="0" max="2" step="0.05"' in temperature and 'data-resting="0.8"' in temperature


def local_imports(source: str) -> set[str]:
    """Every './x.js' a module names, whatever the form of its import statement."""
    return set(re.findall(r'["\']\./([\w.-]+\.js)["\']', source))


@pytest.mark.django_db
def test_every_module_the_page_loads_is_mapped_and_preloaded():
    entry = "app.js"
    html = Client().get("/").content.decode()
    mapped = import_map(html)
    reachable, todo = set(), [entry]
    while todo:  # the graph, read independently of the template tag's own parser
        name = todo.pop()
        if name not in reachable:
            reachable.add(name)
            todo.extend(local_imports((MODULES / name).read_text(encoding="utf-8")))
    assert set(module_graph(entry)) == reachable
    for name in reachable:
        assert mapped[f"/static/chat/{name}"] == f"/static/chat/{name}"
    for name in reachable - {entry}:
        assert f'<link rel="modulepreload" href="/static/chat/{name}">' in html
    assert f'<script type="module" src="/static/chat/{entry}"></script>' in html
    assert {"marked", "dompurify", "highlight.js", "katex"} <= set(mapped)


def test_the_share_page_loads_only_what_share_js_imports():
    assert set(module_graph("share.js")) == {"share.js", "dom.js", "messages.js", "render.js", "tree.js"}
