"""What RAG_QUERY_REWRITE adds to a reply's latency, on the real stack; prints one JSON object.

The stack is bench/load.py's (PostgreSQL, the fake LLM in its own process, `llm-bot-core serve`)
with semantic memory on (the default local embedder, pgvector). Serial /v1/chat/handle requests
in chats that keep talking, with the rewrite off and on, alternated `--repeat` times on a fresh
backend each. The fake LLM answers every call after `--llm-latency-ms`, so the rewrite costs one
such wait plus what the stack adds around it (`overhead_ms`: the p50 difference minus that wait:
the prompt, the HTTP round trip, the usage record). A real model's rewrite adds its own latency:
a short answer from a small fast model, a few hundred ms.

  python bench/query_rewrite.py --save query_rewrite     # about 2 minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

MESSAGES = (
    "Мой брат Олег переехал в Калининград прошлой осенью.",
    "Больше всего я люблю солнечную погоду.",
    "На майские я поеду к нему в гости.",
    "Какая там сейчас погода?",
    "А что мне взять с собой в дорогу?",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--llm-latency-ms", type=float, default=0.0, help="fake LLM, every call")
    p.add_argument("--requests", type=int, default=150, help="measured requests per run")
    p.add_argument("--repeat", type=int, default=2, help="off/on pairs")
    p.add_argument("--database-url", default=None)
    p.add_argument("--save", default=None, help="also write bench/results/<SAVE>.json")
    return p.parse_args(argv)


async def serial(base_url: str, requests: int, run: int) -> list[float]:
    """Client-measured milliseconds of `requests` serial replies (after 20 warm-up ones)."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        for n in range(requests + 20):
            chat = f"r{run}-{n // len(MESSAGES)}"
            body = {"user_id": chat, "chat_id": chat, "text": MESSAGES[n % len(MESSAGES)]}
            started = time.perf_counter()
            async with session.post(f"{base_url}/v1/chat/handle", json=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {await response.text()}")
            if n >= 20:
                latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs: dict[str, list[float]] = {"off": [], "on": []}
    with (
        harness.postgres(args.database_url) as url,
        harness.fake_llm(args.llm_latency_ms) as llm_url,
    ):
        for run in range(args.repeat):
            for mode in ("off", "on"):
                env = harness.backend_env(
                    url,
                    llm_url,
                    rag_enabled="true",
                    rag_embedder="local",
                    rag_query_rewrite="true" if mode == "on" else "false",
                    facts_every=0,
                )
                with harness.backend(env, workers=1) as base_url:
                    tag = f"{mode}{run}"
                    runs[mode] += harness.run_async(serial(base_url, args.requests, run * 2 + 1))
                    print(f"{tag}: done", file=sys.stderr)
    off, on = harness.pcts(runs["off"]), harness.pcts(runs["on"])
    assert off is not None and on is not None
    harness.emit(
        {
            "benchmark": "query_rewrite",
            "machine": harness.machine(),
            "llm_latency_ms": args.llm_latency_ms,
            "requests_per_mode": len(runs["off"]),
            "handle_ms_off": off,
            "handle_ms_on": on,
            "overhead_ms": round(on["p50"] - off["p50"] - args.llm_latency_ms, 2),
        },
        args.save,
    )


if __name__ == "__main__":
    main()
