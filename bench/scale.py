"""Scale: /v1/chat/handle latency on an empty database vs one holding 1M messages in 10k sessions.

One stack (PostgreSQL, fake LLM at 0 ms, backend with --workers N). First run: chats that each
have a session and a couple of messages, in an otherwise empty database. Then the database is
filled with SQL (generate_series; sessions' messages interleaved the way real traffic writes
them, each session with a summary) and ANALYZEd, and the same load runs on chats picked from the
filled sessions. Prints one JSON object; `p50_ratio`/`p99_ratio` are filled / empty, target
<= 1.2 (the memory queries are index lookups: messages(session_id, id), the partial unique index
on active chat_id, conversation_summaries(session_id, version)).

  python bench/scale.py
  python bench/scale.py --sessions 10000 --messages-per-session 100 --concurrency 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--messages-per-session", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--chats", type=int, default=200, help="chats driven in each run")
    p.add_argument("--messages", type=int, default=10, help="messages per driven chat")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--database-url", default=None)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--save", default=None, help="also write bench/results/<SAVE>.json")
    return p.parse_args(argv)


FILL = [
    """
    INSERT INTO chat_sessions (user_id, chat_id, is_active, messages_since_summary)
    SELECT 'scale-' || i, 'scale-' || i, true, 0 FROM generate_series(0, $1 - 1) i
    """,
    # Ordered by turn, then session: a session's messages are spread over the whole table,
    # as when many chats talk at once (the harder case for the window query).
    """
    INSERT INTO messages (session_id, role, content, created_at)
    SELECT s.id, CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END,
           'prefilled turn ' || n || ' of ' || s.chat_id || ': ' || repeat('lorem ipsum ', 10),
           now() - interval '30 days' + n * interval '1 minute'
    FROM generate_series(1, $1) n CROSS JOIN chat_sessions s
    WHERE s.chat_id LIKE 'scale-%'
    ORDER BY n, s.id
    """,
    """
    INSERT INTO conversation_summaries (session_id, version, content, last_message_id)
    SELECT session_id, 1, 'A summary of the earlier conversation, a few sentences long.',
           max(id)
    FROM messages
    WHERE session_id IN (SELECT id FROM chat_sessions WHERE chat_id LIKE 'scale-%')
    GROUP BY session_id
    """,
]


async def fill(db_url: str, sessions: int, per_session: int) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    started = time.perf_counter()
    try:
        await conn.execute(FILL[0], sessions)
        await conn.execute(FILL[1], per_session)
        await conn.execute(FILL[2])
        # Settle what a bulk load leaves behind (autovacuum of 1M new rows, dirty buffers), so
        # the run measures the data's size rather than maintenance that happens once.
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM chat_sessions),"
            " pg_size_pretty(pg_total_relation_size('messages'))"
        )
    finally:
        await conn.close()
    return {
        "messages": counts[0],
        "sessions": counts[1],
        "messages_table_size": counts[2],
        "fill_seconds": round(time.perf_counter() - started, 1),
    }


async def query_times(db_url: str, chat_id: str, repeat: int = 30) -> dict[str, Any]:
    """Server-side execution time of the context read for one chat, and the plan's scans: the
    part of the request that grows with the database if an index is missing."""
    import statistics

    import asyncpg

    from llm_bot_core.memory.store import CONTEXT_SQL as sql

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        session_id = await conn.fetchval(
            "SELECT id FROM chat_sessions WHERE chat_id = $1 AND is_active", chat_id
        )
        times = []
        plan: Any = None
        for _ in range(repeat):
            raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, session_id, 8)
            plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
            times.append(plan["Execution Time"])
    finally:
        await conn.close()

    def scans(node: dict[str, Any]) -> list[str]:
        found = [f"{node['Node Type']} {node.get('Index Name', node.get('Relation Name', ''))}"]
        for child in node.get("Plans", []):
            found += scans(child)
        return [f for f in found if "Scan" in f]

    return {
        "context_query_ms_median": round(statistics.median(times), 3),
        "scans": sorted(set(scans(plan["Plan"]))),
    }


async def measure(base_url: str, args: argparse.Namespace, chat_ids: list[str]) -> harness.Samples:
    # Two messages first, so every measured chat already has an active session in both runs.
    await harness.drive_chats(
        base_url, tag="warm", chats=len(chat_ids), messages=2, concurrency=args.concurrency,
        max_seconds=60, chat_ids=chat_ids,
    )  # fmt: skip
    return await harness.drive_chats(
        base_url,
        tag="run",
        chats=len(chat_ids),
        messages=args.messages,
        concurrency=args.concurrency,
        max_seconds=args.max_seconds,
        chat_ids=chat_ids,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    step = max(1, args.sessions // args.chats)
    with harness.postgres(args.database_url) as db_url:
        with harness.fake_llm(0) as llm_url:
            env = harness.backend_env(db_url, llm_url)
            with harness.backend(env, args.workers) as base_url:
                empty_chats = [f"empty-{i}" for i in range(args.chats)]
                empty = harness.summarize(harness.run_async(measure(base_url, args, empty_chats)))
                empty["context_query"] = harness.run_async(query_times(db_url, empty_chats[0]))
                print(json.dumps({"empty": empty}), file=sys.stderr, flush=True)
                filled_info = harness.run_async(
                    fill(db_url, args.sessions, args.messages_per_session)
                )
                print(json.dumps({"fill": filled_info}), file=sys.stderr, flush=True)
                scale_chats = [f"scale-{i * step}" for i in range(args.chats)]
                filled = harness.summarize(harness.run_async(measure(base_url, args, scale_chats)))
                filled["context_query"] = harness.run_async(query_times(db_url, scale_chats[0]))
                # Noise check: short new chats again, now on the full database. If these are as
                # slow as the filled ones, the difference is the machine, not the data.
                fresh_chats = [f"fresh-{i}" for i in range(args.chats)]
                fresh = harness.summarize(harness.run_async(measure(base_url, args, fresh_chats)))
    result = {
        "benchmark": "scale",
        "machine": harness.machine(),
        "concurrency": args.concurrency,
        "workers": args.workers,
        "database": filled_info,
        "empty": empty,
        "filled": filled,
        "new_chats_on_filled": fresh,
        "p50_ratio": round(filled["latency_ms"]["p50"] / empty["latency_ms"]["p50"], 3),
        "p99_ratio": round(filled["latency_ms"]["p99"] / empty["latency_ms"]["p99"], 3),
    }
    return harness.emit(result, args.save)


if __name__ == "__main__":
    main()
