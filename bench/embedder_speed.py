"""Indexing rate and query latency of the local embedders, in paired rounds in one process.

Each round embeds the same LoCoMo turns (each with the turn before it as context, as indexing
does) through `LocalEmbedder.embed_documents` in batches of 64, then embeds the same questions
one at a time through `embed_query`, with every embedder in turn, the order reversed every
other round, so a change of machine speed during the run falls on all of them alike. Reports
each embedder's turns/s and question p50/p95, and each one's rate as a share of the first
embedder's, round by round (median and mean of the pairs). No database: the model alone.

    python bench/embedder_speed.py [--embedders e5,e5+use] [--rounds 10] [--turns 192]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from locomo_retrieval import default_data, percentile, turn_text, turns_of

from llm_bot_core.rag.embedders import LocalEmbedder
from llm_bot_core.rag.indexing import Labels, indexed_text


def corpus(data: Path, turns: int, questions: int) -> tuple[list[str], list[str]]:
    """LoCoMo's turns as indexing embeds them (`indexed_text`, the turn before as context)."""
    samples = json.loads(data.read_text())
    texts: list[str] = []
    for sample in samples:
        conversation = sample["conversation"]
        labels = Labels(user=conversation["speaker_a"], assistant=conversation["speaker_b"])
        context: list[tuple[str, str]] = []
        for _, _, turn in turns_of(conversation):
            role = "user" if turn["speaker"] == conversation["speaker_a"] else "assistant"
            texts.append(indexed_text(role, turn_text(turn), labels, context))
            context = [(role, turn_text(turn))]
    asked = [qa["question"] for sample in samples for qa in sample["qa"]]
    return texts[:turns], asked[:questions]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    texts, questions = corpus(Path(args.data), args.turns, args.questions)
    embedders = {name: LocalEmbedder(name) for name in args.embedders.split(",")}
    rates: dict[str, list[float]] = {name: [] for name in embedders}
    asked: dict[str, list[float]] = {name: [] for name in embedders}
    try:
        for embedder in embedders.values():
            await embedder.warm_up()
        for round_ in range(args.rounds):
            order = list(embedders) if round_ % 2 == 0 else list(embedders)[::-1]
            for name in order:
                embedder = embedders[name]
                started = time.perf_counter()
                for i in range(0, len(texts), 64):
                    await embedder.embed_documents(texts[i : i + 64])
                rates[name].append(len(texts) / (time.perf_counter() - started))
                for question in questions:
                    started = time.perf_counter()
                    await embedder.embed_query(question)
                    asked[name].append(1000 * (time.perf_counter() - started))
    finally:
        for embedder in embedders.values():
            await embedder.aclose()
    first = next(iter(embedders))
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(),
                    "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]},
        "turns": len(texts),
        "mean_chars": round(statistics.fmean(map(len, texts)), 1),
        "rounds": args.rounds,
        "embedders": {},
    }
    for name in embedders:
        ratios = [a / b for a, b in zip(rates[name], rates[first], strict=True)]
        result["embedders"][name] = {
            "turns_per_s": {"median": round(statistics.median(rates[name]), 1),
                            "rounds": [round(r, 1) for r in rates[name]]},
            f"rate_vs_{first}": {"median": round(statistics.median(ratios), 3),
                                 "mean": round(statistics.fmean(ratios), 3)},
            "question_ms": {"p50": round(percentile(asked[name], 0.5), 2),
                            "p95": round(percentile(asked[name], 0.95), 2)},
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(default_data()))
    parser.add_argument("--embedders", default="e5,e5+use", help="comma-separated; the first "
                        "is the one the others' rates are compared with")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--turns", type=int, default=192)
    parser.add_argument("--questions", type=int, default=50)
    print(json.dumps(asyncio.run(run(parser.parse_args())), ensure_ascii=False))


if __name__ == "__main__":
    main()
