"""Summarization isolation: /v1/chat/handle latency with slow summaries running vs without.

For each mode (in-process asyncio tasks, and a Celery worker over Redis) it runs the same load
twice against a fresh backend: once with summaries effectively off (SUMMARY_THRESHOLD=1000000)
and once with SUMMARY_THRESHOLD small and the summarizer's LLM call taking 2 s (the fake LLM's
--summary-latency-ms). It prints one JSON object; `p99_ratio` is with / without, target <= 1.2.

  python bench/isolation.py                       # both modes
  python bench/isolation.py --modes inprocess --concurrency 50 --chats 100 --messages 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

PCTS = ("p50", "p99")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--modes", nargs="+", default=["inprocess", "celery"])
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--chats", type=int, default=100)
    p.add_argument("--messages", type=int, default=12, help="messages per chat")
    p.add_argument("--threshold", type=int, default=4, help="SUMMARY_THRESHOLD of the slow run")
    p.add_argument("--summary-latency-ms", type=float, default=2000.0)
    p.add_argument("--llm-latency-ms", type=float, default=0.0, help="chat replies' latency")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--broker", default="redis://127.0.0.1:6379/12", help="Redis for Celery mode")
    p.add_argument("--database-url", default=None)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--repeat", type=int, default=3, help="alternating pairs per mode")
    p.add_argument("--save", default=None, help="also write bench/results/<SAVE>.json")
    return p.parse_args(argv)


async def measure(base_url: str, args: argparse.Namespace, tag: str) -> harness.Samples:
    await harness.drive_chats(
        base_url, tag=f"{tag}-warm", chats=args.concurrency, messages=2,
        concurrency=args.concurrency, max_seconds=20,
    )  # fmt: skip
    return await harness.drive_chats(
        base_url,
        tag=tag,
        chats=args.chats,
        messages=args.messages,
        concurrency=args.concurrency,
        max_seconds=args.max_seconds,
    )


async def summaries_written(db_url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM conversation_summaries"))
    finally:
        await conn.close()


def one(args: argparse.Namespace, db_url: str, llm_url: str, mode: str, slow: bool) -> dict:
    settings: dict[str, Any] = {
        "summary_threshold": args.threshold if slow else 1_000_000,
        "use_celery_for_summary": mode == "celery",
    }
    if mode == "celery":
        settings |= {"celery_broker_url": args.broker, "celery_queue": f"bench-{uuid.uuid4().hex}"}
    env = harness.backend_env(db_url, llm_url, **settings)
    tag = f"{mode}-{'slow' if slow else 'off'}-{uuid.uuid4().hex[:6]}"
    with harness.backend(env, args.workers) as base_url:  # it migrates the database first
        before = harness.run_async(summaries_written(db_url))
        if mode == "celery":
            with harness.celery_worker(env):
                samples = harness.run_async(measure(base_url, args, tag))
        else:
            samples = harness.run_async(measure(base_url, args, tag))
        if slow:  # let the summaries queued during the run land before counting them
            time.sleep(args.summary_latency_ms / 1000 + 3)
        written = harness.run_async(summaries_written(db_url)) - before
    return {"summaries_written_during_run": written, **harness.summarize(samples)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    modes: dict[str, Any] = {}
    with harness.postgres(args.database_url) as db_url:
        with harness.fake_llm(args.llm_latency_ms, args.summary_latency_ms) as llm_url:
            for mode in args.modes:
                # Alternate the two variants, so a neighbour's burst on a shared machine hits
                # both alike; the ratio is taken between the medians over the repeats.
                runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
                for _ in range(args.repeat):
                    for variant, slow in (("without", False), ("with", True)):
                        run = one(args, db_url, llm_url, mode, slow=slow)
                        runs[variant].append(run)
                        print(json.dumps({mode: {variant: run}}), file=sys.stderr, flush=True)
                med = {
                    v: {
                        q: statistics.median(r["latency_ms"][q] for r in rs) for q in ("p50", "p99")
                    }
                    for v, rs in runs.items()
                }
                modes[mode] = {
                    "without_summaries": runs["without"],
                    "with_slow_summaries": runs["with"],
                    "median_latency_ms": med,
                    "p99_ratio": round(med["with"]["p99"] / med["without"]["p99"], 3),
                    "p50_ratio": round(med["with"]["p50"] / med["without"]["p50"], 3),
                }
    result = {
        "benchmark": "summary_isolation",
        "machine": harness.machine(),
        "concurrency": args.concurrency,
        "summary_threshold": args.threshold,
        "summary_llm_latency_ms": args.summary_latency_ms,
        "chat_llm_latency_ms": args.llm_latency_ms,
        "workers": args.workers,
        "modes": modes,
    }
    return harness.emit(result, args.save)


if __name__ == "__main__":
    main()
