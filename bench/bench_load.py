"""Load test: many SSE and WebSocket clients at once against a real server, with random
disconnects, then a check of the database and of the server's memory.

One `manage.py serve` process with the fake model on 127.0.0.1. Half the clients ask over
POST /stream (SSE), half over /ws/chat/; each asks question after question, and about one
question in five is abandoned mid-answer (the SSE stream or the socket is closed). After each
round the server is left to go idle and then:

- errors: any unexpected status, error event or frame, or exception (must be 0);
- every completed answer is stored exactly once: its conversation holds one question and one
  answer, with the streamed text and `finish_reason: stop`; no answer is left `generating`;
- the server's resident memory (RSS) after each round: flat across rounds means no leak.

Prints tables (with the CPU) and writes bench/results/load.json. Bounded: rounds x seconds of
load plus start-up. Usage: .venv/bin/python bench/bench_load.py [--clients 200] [--rounds 3]
[--seconds 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_info, describe  # noqa: E402
from tests.server import ServerFactory  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DISCONNECT_P = 0.2


class Tally:
    def __init__(self):
        self.completed: list[tuple[str, str]] = []  # (conversation_id, response)
        self.abandoned = 0
        self.errors: list[str] = []

    def error(self, what: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(what)
        else:
            self.errors.append("…")
            self.errors = self.errors[:21]
        self.error_count = getattr(self, "error_count", 0) + 1


async def sse_client(url: str, index: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(index)
    async with httpx.AsyncClient(timeout=120) as client:
        turn = 0
        while time.monotonic() < deadline:
            turn += 1
            query = f"sse client {index} question {turn} " + "words " * rng.randint(2, 12)
            abandon_after = rng.randint(1, 5) if rng.random() < DISCONNECT_P else None
            try:
                async with client.stream("POST", f"{url}/stream", json={"query": query}) as response:
                    if response.status_code != 200:
                        tally.error(f"sse status {response.status_code}: {(await response.aread())[:200]!r}")
                        continue
                    deltas, event = 0, ""
                    async for line in response.aiter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            if event == "error":
                                tally.error(f"sse error event: {line[:200]}")
                                break
                            data = json.loads(line[5:])
                            if data.get("finished"):
                                if data["finish_reason"] != "stop" or data["response"] != "You said: " + query:
                                    tally.error(f"sse wrong answer: {line[:200]}")
                                tally.completed.append((data["conversation_id"], data["response"]))
                                break
                            deltas += 1
                            if abandon_after is not None and deltas >= abandon_after:
                                tally.abandoned += 1
                                break  # leaving the block closes the stream: the server cancels
            except Exception as exc:  # noqa: BLE001 - counted, the client goes on
                tally.error(f"sse {type(exc).__name__}: {exc}")


async def ws_client(ws_url: str, origin: str, index: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(10_000 + index)
    turn = 0
    while time.monotonic() < deadline:
        try:
            async with connect(f"{ws_url}/ws/chat/", origin=origin, open_timeout=60) as socket:
                while time.monotonic() < deadline:
                    turn += 1
                    query = f"ws client {index} question {turn} " + "words " * rng.randint(2, 12)
                    abandon_after = rng.randint(1, 5) if rng.random() < DISCONNECT_P else None
                    await socket.send(json.dumps({"type": "chat", "query": query, "request_id": str(turn)}))
                    deltas = 0
                    while True:
                        frame = json.loads(await asyncio.wait_for(socket.recv(), 120))
                        if frame["type"] == "delta":
                            deltas += 1
                        elif frame["type"] == "done":
                            if frame["finish_reason"] != "stop" or frame["response"] != "You said: " + query:
                                tally.error(f"ws wrong answer: {str(frame)[:200]}")
                            tally.completed.append((frame["conversation_id"], frame["response"]))
                            break
                        elif frame["type"] == "error":
                            tally.error(f"ws error frame: {str(frame)[:200]}")
                            break
                        if abandon_after is not None and deltas >= abandon_after:
                            break
                    if abandon_after is not None and deltas >= abandon_after:
                        tally.abandoned += 1
                        break  # close the socket mid-answer (a program's answer is then cancelled)
        except Exception as exc:  # noqa: BLE001
            tally.error(f"ws {type(exc).__name__}: {exc}")


async def wait_idle(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            health = (await client.get(f"{url}/healthz")).json()
            if health["queue"] == 0 and health["running"] == 0:
                await asyncio.sleep(1.0)  # answers being saved after their last event
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("the server did not go idle")


def check_database(db_path: str, completed: list[tuple[str, str]]) -> dict:
    """Every completed answer stored once, with its text; nothing left generating."""
    problems = []
    with sqlite3.connect(db_path) as db:
        for conversation_id, response in completed:
            rows = db.execute(
                "SELECT role, content, finish_reason FROM chat_message WHERE conversation_id = ? ORDER BY position",
                (conversation_id.replace("-", ""),),
            ).fetchall()
            answers = [r for r in rows if r[0] == "assistant"]
            if len(rows) != 2 or len(answers) != 1 or answers[0][1:] != (response, "stop"):
                problems.append((conversation_id, rows[:4]))
        generating = db.execute("SELECT COUNT(*) FROM chat_message WHERE finish_reason = 'generating'").fetchone()[0]
        stored_done = db.execute(
            "SELECT COUNT(*) FROM chat_message WHERE role = 'assistant' AND finish_reason = 'stop'").fetchone()[0]
    return {"checked": len(completed), "problems": len(problems), "examples": problems[:3],
            "left_generating": generating, "stored_complete_answers": stored_done}


def table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)))


async def round_of_load(server, clients: int, seconds: float) -> tuple[Tally, float]:
    tally = Tally()
    deadline = time.monotonic() + seconds
    started = time.perf_counter()
    half = clients // 2
    await asyncio.gather(
        *(sse_client(server.url, i, deadline, tally) for i in range(half)),
        *(ws_client(server.ws_url, server.url, i, deadline, tally) for i in range(clients - half)),
    )
    return tally, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="load per round")
    parser.add_argument("--quick", action="store_true", help="40 clients, 3 rounds of 5 s")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds = 40, 5.0
    machine = cpu_info()
    print(describe(machine))
    results: dict = {"machine": machine, "clients": args.clients, "seconds_per_round": args.seconds,
                     "disconnect_probability": DISCONNECT_P, "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        factory = ServerFactory(Path(tmp))
        try:
            server = factory.start(env={
                "CHATGLM_FAKE_DELAY_MS": "5",
                "CHATGLM_MAX_QUEUE": str(max(64, args.clients + 16)),
                "CHATGLM_LOG_LEVEL": "WARNING",
            })
            process = psutil.Process(server.process.pid)
            db_path = server.env["DATABASE_URL"].removeprefix("sqlite:///")
            rss_start = process.memory_info().rss
            for number in range(1, args.rounds + 1):
                tally, wall = asyncio.run(round_of_load(server, args.clients, args.seconds))
                asyncio.run(wait_idle(server.url))
                stored = check_database(db_path, tally.completed)
                row = {
                    "round": number,
                    "wall_s": round(wall, 1),
                    "completed": len(tally.completed),
                    "turns_per_s": round(len(tally.completed) / wall, 1),
                    "abandoned": tally.abandoned,
                    "errors": getattr(tally, "error_count", 0),
                    "stored_once": stored["checked"] - stored["problems"],
                    "db_problems": stored["problems"],
                    "left_generating": stored["left_generating"],
                    "rss_mib": round(process.memory_info().rss / 2**20, 1),
                }
                results["rounds"].append({**row, "error_examples": tally.errors, "db_examples": stored["examples"]})
                print(f"round {number}: {row}", flush=True)
        finally:
            factory.stop_all()
    rounds = results["rounds"]
    results["rss_start_mib"] = round(rss_start / 2**20, 1)
    results["rss_growth_after_first_round_mib"] = round(rounds[-1]["rss_mib"] - rounds[0]["rss_mib"], 1) if rounds else None
    table(f"{args.clients} clients (half SSE, half WebSocket) on the fake model, {args.seconds:g} s a round, "
          f"{DISCONNECT_P:.0%} of questions abandoned mid-answer",
          rounds, ["round", "wall_s", "completed", "turns_per_s", "abandoned", "errors", "stored_once", "db_problems",
                   "left_generating", "rss_mib"])
    print(f"\nServer RSS: {results['rss_start_mib']} MiB at start; "
          f"{results['rss_growth_after_first_round_mib']} MiB growth from round 1 to round {len(rounds)}")
    for r in rounds:
        for example in r["error_examples"][:5]:
            print(f"  round {r['round']} error: {example}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {RESULTS / 'load.json'}")


if __name__ == "__main__":
    main()
