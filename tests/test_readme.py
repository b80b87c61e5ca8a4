"""The README tells the truth about configuration: every variable the code reads is documented."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIABLE = re.compile(r"\b(?:CHATGLM|DJANGO)_[A-Z0-9_]+\b|\b(?:DATABASE|REDIS)_URL\b")
# Read by tools, not by this project's code: nothing for a deployer to set.
NOT_SETTINGS = {"DJANGO_SETTINGS_MODULE"}


def variables_read_by_code() -> set[str]:
    found = set()
    for folder in ("chat", "chatglm_site"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found - NOT_SETTINGS


def test_every_variable_the_code_reads_is_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`((?:CHATGLM|DJANGO)_[A-Z0-9_]+|(?:DATABASE|REDIS)_URL)`", readme))
    missing = sorted(variables_read_by_code() - documented)
    assert not missing, f"read by the code but not documented in README.md: {missing}"


def test_the_scan_finds_variables():
    # The check above would pass vacuously if the pattern stopped matching the code's style.
    assert {"CHATGLM_MODEL", "CHATGLM_API_KEYS", "DATABASE_URL"} <= variables_read_by_code()
