"""What the budget and ban check costs the request's first statement; prints one JSON object.

Fills a database with users, sessions and a month of usage rows (one user with many calls today),
then times the first statement of /v1/chat/handle (store the message, read the context, and the
gate) on the server (`EXPLAIN ANALYZE` execution time, each run rolled back), three ways:
no limit (only the bot_users lookup), a limit (plus the day's sum over the usage index), and a
blocked user (refused, nothing inserted).

  python bench/usage_gate.py                   # 2,000 users, 200,000 usage rows
  python bench/usage_gate.py --users 200 --usage-rows 20000 --today 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

from llm_bot_core.db.migrate import upgrade_to_head
from llm_bot_core.memory.store import APPEND_WITH_CONTEXT_SQL


async def fill(conn: Any, users: int, usage_rows: int, today: int, vacuum: bool) -> None:
    await conn.execute(
        "INSERT INTO chat_sessions (user_id, chat_id) "
        "SELECT 'u' || g, 'c' || g FROM generate_series(1, $1) g",
        users,
    )
    await conn.execute(
        "INSERT INTO messages (session_id, role, content) "
        "SELECT s.id, CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END, 'message ' || g "
        "FROM chat_sessions s CROSS JOIN generate_series(1, 20) g"
    )
    # A month of calls spread over the users, and `today` calls of user u1 since midnight.
    await conn.execute(
        "INSERT INTO llm_usage (created_at, user_id, chat_id, purpose, model, prompt_tokens, "
        "completion_tokens) SELECT now() - (random() * interval '30 days'), "
        "'u' || (1 + g % $1), 'c' || (1 + g % $1), 'chat', 'bench', 900, 200 "
        "FROM generate_series(1, $2) g",
        users,
        usage_rows,
    )
    await conn.execute(
        "INSERT INTO llm_usage (created_at, user_id, chat_id, purpose, model, prompt_tokens, "
        "completion_tokens) SELECT now() - (g * interval '1 second'), 'u1', 'c1', 'chat', "
        "'bench', 900, 200 FROM generate_series(1, $1) g",
        today,
    )
    await conn.execute("INSERT INTO bot_users (user_id, blocked) VALUES ('u2', true)")
    # Without VACUUM the day's rows are not all-visible yet (autovacuum has not come by), and the
    # index-only scan visits the table for each: the less favourable case.
    await conn.execute("VACUUM ANALYZE" if vacuum else "ANALYZE")


async def timed(conn: Any, args: tuple[Any, ...], repeat: int) -> dict[str, Any]:
    times: list[float] = []
    plan: Any = None
    for _ in range(repeat):
        tx = conn.transaction()
        await tx.start()
        try:
            raw = await conn.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + APPEND_WITH_CONTEXT_SQL, *args
            )
        finally:
            await tx.rollback()
        plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
        times.append(plan["Execution Time"])
    return {
        "median_ms": round(statistics.median(times), 3),
        "p90_ms": round(sorted(times)[int(len(times) * 0.9)], 3),
    }


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        started = time.perf_counter()
        await fill(conn, args.users, args.usage_rows, args.today, not args.no_vacuum)
        filled = time.perf_counter() - started
        day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if datetime.now(UTC) - day_start < timedelta(minutes=10):
            day_start -= timedelta(days=1)  # just after midnight: keep `today` rows in the day

        def params(user: str, limit: int) -> tuple[Any, ...]:
            chat = "c" + user[1:]
            return (chat, "user", "hello", None, 7, user, None, day_start, limit, 0, "text")

        # Warm the caches and plans once.
        await timed(conn, params("u1", 10**9), 20)
        return {
            "users": args.users,
            "usage_rows": args.usage_rows + args.today,
            "usage_rows_of_user_today": args.today,
            "vacuumed": not args.no_vacuum,
            "fill_seconds": round(filled, 1),
            "statement_no_limit": await timed(conn, params("u1", 0), args.repeat),
            "statement_with_limit": await timed(conn, params("u1", 10**9), args.repeat),
            "statement_blocked_user": await timed(conn, params("u2", 0), args.repeat),
        }
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--usage-rows", type=int, default=200_000)
    parser.add_argument("--today", type=int, default=300, help="calls of the measured user today")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--no-vacuum", action="store_true", help="ANALYZE only (see fill)")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--save", default=None, help="also write bench/results/<SAVE>.json")
    args = parser.parse_args(argv)
    with harness.postgres(args.database_url) as url:
        upgrade_to_head(url)
        result = asyncio.run(measure(url, args))
    harness.emit({"benchmark": "usage_gate", "machine": harness.machine(), **result}, args.save)


if __name__ == "__main__":
    main()
