"""`{% page_modules "app.js" %}`: the head of a page whose script is an ES module of
chat/static/chat/ (no build step): the import map, a preload of each module it imports, and
the entry script. One place for every page, so adding a module never means editing templates."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from django import template

register = template.Library()

MODULES = Path(__file__).resolve().parent.parent / "static" / "chat"
# The page's modules import each other as `import ... from "./name.js";` (one line each).
LOCAL_IMPORT = re.compile(r'^import\b[^;\n]*\bfrom\s+"\./([\w.-]+\.js)";', re.MULTILINE)


@functools.cache
def module_graph(entry: str) -> tuple[str, ...]:
    """`entry` and every module it imports, directly or not, in a stable order."""
    seen: list[str] = []
    todo = [entry]
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.append(name)
        with open(os.path.join(MODULES, name), encoding="utf-8") as source:  # os.path: pathlib refuses a template literal (SafeString)
            todo.extend(LOCAL_IMPORT.findall(source.read()))
    return tuple(seen)


@register.inclusion_tag("chat/_modules.html", takes_context=True)
def page_modules(context, entry: str) -> dict:
    modules = module_graph(entry)
    return {"request": context["request"], "entry": entry, "modules": modules, "imported": modules[1:]}
