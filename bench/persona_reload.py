"""How long a persona edit takes to reach a backend process's cache (LISTEN/NOTIFY).

Two PersonaCache instances (as two backend processes would hold) on one database; each trial
UPDATEs the default persona's instruction and times until both caches hold it. Also what a
reload costs (SELECT of every persona) with `--personas` rows. Prints JSON.

    python bench/persona_reload.py [--trials 200] [--personas 50] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from sqlalchemy import text

from llm_bot_core.config import StorageSettings
from llm_bot_core.db.engine import create_engine
from llm_bot_core.db.migrate import upgrade_to_head
from llm_bot_core.memory.personas import PersonaCache


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = create_engine(url, StorageSettings(database_url=url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE personas RESTART IDENTITY CASCADE"))
        caches = [
            PersonaCache(engine, fallback_instruction="seed", reload_seconds=600) for _ in range(2)
        ]
        for cache in caches:
            await cache.start()
        async with engine.begin() as conn:
            for n in range(args.personas - 1):
                await conn.execute(
                    text("INSERT INTO personas (name, instruction) VALUES (:n, :i)"),
                    {"n": f"p{n}", "i": "x" * 2000},
                )
        await asyncio.sleep(0.5)
        seen: list[float] = []
        for trial in range(args.trials):
            wanted = f"instruction {trial}"
            started = time.perf_counter()
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE personas SET instruction = :i WHERE is_default"), {"i": wanted}
                )
            # Polling is the measurement: the caches expose no event to wait on.
            while not all(c.default().instruction == wanted for c in caches):  # noqa: ASYNC110
                await asyncio.sleep(0.0005)
            seen.append((time.perf_counter() - started) * 1000)
        reloads: list[float] = []
        for _ in range(args.trials):
            started = time.perf_counter()
            await caches[0].reload()
            reloads.append((time.perf_counter() - started) * 1000)
        for cache in caches:
            await cache.aclose()
    finally:
        await engine.dispose()
    return {
        "trials": args.trials,
        "personas": args.personas,
        "edit_to_both_caches_ms": harness.pcts(seen),
        "reload_ms": harness.pcts(reloads),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--personas", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--save", default=None, help="also write bench/results/<name>.json")
    args = parser.parse_args(argv)
    with harness.postgres(args.database_url) as url:
        upgrade_to_head(url)
        result = asyncio.run(measure(url, args))
    harness.emit({"benchmark": "persona_reload", "machine": harness.machine(), **result}, args.save)


if __name__ == "__main__":
    main()
