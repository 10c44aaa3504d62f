"""Cost of the profile statement on the request path, by how many current facts the user has.

Runs memory/facts.py's `read_profile` (the one extra statement per request) against an embedded
PostgreSQL (or --database-url's server), migrated to head, with N facts of 40-60 characters for
the user, and a 12-word message as the lexical query. Prints one JSON object: per N, the
statement's latency (ms, p50/p95 over --repeat runs) and how many facts fit PROFILE_TOKENS=300.

  python bench/profile_cost.py [--database-url postgresql://...] [--repeat 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from llm_bot_core.db.migrate import upgrade_to_head_async
from llm_bot_core.memory.facts import read_profile

SIZES = (0, 10, 50, 200, 500)
MESSAGE = "Напомни, пожалуйста, как зовут мою сестру и где она теперь живёт с детьми?"


async def measure(url: str, repeat: int) -> dict[str, object]:
    await upgrade_to_head_async(url)
    engine = create_async_engine(url)
    results: dict[str, object] = {}
    try:
        for size in SIZES:
            async with engine.begin() as conn:
                await conn.execute(text("TRUNCATE facts CASCADE"))  # its outbox and vectors too
                await conn.execute(
                    text(
                        "INSERT INTO facts (user_id, content, source, importance, lexemes) "
                        "SELECT 'u', c, 'extracted', (g % 10) / 10.0, to_tsvector('russian', c) "
                        "FROM generate_series(1, :n) g, "
                        "LATERAL (SELECT 'Факт номер ' || g || ': сестра Ольга живёт в городе ' "
                        "|| g AS c) x"
                    ),
                    {"n": size},
                )
            seconds: list[float] = []
            fitted = 0
            async with engine.connect() as conn:
                for _ in range(repeat):
                    started = time.perf_counter()
                    profile = await read_profile(
                        conn,
                        user_id="u",
                        chat_id="u",
                        all_chats=True,
                        fts_config="russian",
                        message=MESSAGE,
                        budget=300,
                    )
                    seconds.append(time.perf_counter() - started)
                    fitted = len(profile.lines)
            results[str(size)] = {
                "ms": harness.pcts([s * 1000 for s in seconds]),
                "facts_in_profile": fitted,
            }
    finally:
        await engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    with harness.postgres(args.database_url) as url:
        results = asyncio.run(measure(url, args.repeat))
    print(json.dumps({"machine": harness.machine(), "by_facts": results}))


if __name__ == "__main__":
    main()
