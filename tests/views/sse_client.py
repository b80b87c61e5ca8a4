"""Parse an SSE body the way the original demo's page did: blocks split on a blank line."""

from __future__ import annotations

import json


def parse(body: str) -> list[tuple[str, object]]:
    """[(event name, decoded data)], comments as ("comment", text)."""
    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                events.append(("comment", line[1:].strip()))
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            payload = "\n".join(data)
            try:
                events.append((name, json.loads(payload)))
            except ValueError:
                events.append((name, payload))
    return events


async def read_stream(response) -> str:
    chunks = [c if isinstance(c, str) else c.decode() async for c in response.streaming_content]
    return "".join(chunks)
