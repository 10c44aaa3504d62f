"""One user floods semantic memory: do the other users' recalls slow down?

The hostile user sends six 16,000-character messages at once. Each goes the way the chat use
case takes it: stored, recalled against (the whole message is the query), answered with an
echo of the same length, and both messages indexed in the background. Meanwhile other users
keep asking short questions; their searches run exactly as recall runs them (RAG_TIMEOUT
included: a search cut by the timeout is answered without recalled memory and counted as
`timed_out`). The same users' searches are first measured on a quiet system.

It runs in-process, against an embedded PostgreSQL with pgvector and the local e5 model, like
bench/locomo_retrieval.py: the embedder thread and the event loop are the backend's own.
Prints one JSON object; `p95_ratio` (flood / quiet) should stay under 2.

    python bench/flood.py
    python bench/flood.py --rounds 3 --save flood
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

from llm_bot_core.config import Settings
from llm_bot_core.db.engine import create_engine
from llm_bot_core.db.migrate import upgrade_to_head
from llm_bot_core.memory import store
from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.factory import build_semantic_memory
from llm_bot_core.rag.memory import VectorSemanticMemory

FACTS = [
    "My sister Masha has her birthday on the 12th of March.",
    "Я работаю инженером в Казани уже пять лет.",
    "Our dog is called Bruno and he is afraid of thunder.",
    "В августе мы летим в Калининград к бабушке.",
    "I am allergic to peanuts, so no satay for me.",
    "Мой любимый фильм — «Сталкер» Тарковского.",
    "We moved to a flat on Lenina street in 2021.",
    "По вторникам я хожу на плавание в 7 утра.",
]
QUESTIONS = [
    "When is Masha's birthday?",
    "Где я работаю?",
    "What is the dog's name?",
    "Куда мы летим летом?",
    "What am I allergic to?",
    "Какой мой любимый фильм?",
    "Where do we live now?",
    "Когда у меня плавание?",
]
WORDS = (
    "memory embedding window token queue batch thread model search index vector outbox "
    "память очередь поток модель поиск индекс вектор сообщение пользователь ответ длинный "
    "текст окно лимит нагрузка быстро медленно recall flood hostile message reply"
).split()


def flood_text(chars: int, seed: int) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


async def say(engine: AsyncEngine, user: str, content: str) -> tuple[Any, int]:
    """Store a user message the way the chat use case does; returns (session id, message id)."""
    async with engine.connect() as conn:
        appended, _, _ = await store.append_user_message_with_context(
            conn,
            user_id=user,
            chat_id=user,
            content=content,
            limit=2,
            gate=store.Gate.no_limit(),
        )
        await conn.commit()
    return appended.session_id, appended.message_id


async def reply(engine: AsyncEngine, session_id: Any, content: str) -> int:
    async with engine.connect() as conn:
        appended = await store.append_message_to_session(
            conn, session_id=session_id, role="assistant", content=content, tokens=None
        )
        await conn.commit()
    assert appended is not None
    return appended.message_id


async def seed(engine: AsyncEngine, memory: VectorSemanticMemory, users: list[str]) -> float:
    """Give every other user some memory; returns the indexing rate (messages per second)."""
    for user in users:
        for fact in FACTS:
            session_id, _ = await say(engine, user, fact)
            await reply(engine, session_id, f"Noted: {fact}")
    started = time.perf_counter()
    indexed = await memory.sweep(batch=64)
    return indexed / (time.perf_counter() - started)


@dataclass
class Tally:
    ms: list[float] = field(default_factory=list)
    timed_out: int = 0


async def searching_user(
    memory: VectorSemanticMemory, user: str, stop: asyncio.Event, out: Tally
) -> None:
    """Ask questions one after another (as recall does) until told to stop."""
    timeout = memory._settings.rag_timeout
    n = 0
    while not stop.is_set():
        question = QUESTIONS[n % len(QUESTIONS)]
        n += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await memory.search(question, Scope(user_id=user))
        except TimeoutError:
            out.timed_out += 1
        out.ms.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.2)  # the user reads the answer


async def hostile_message(
    engine: AsyncEngine, memory: VectorSemanticMemory, user: str, content: str, max_chars: int
) -> None:
    """One flood message, as ChatService.handle and InProcessJobs treat it."""
    session_id, user_msg = await say(engine, user, content)
    await memory.recall(
        user_id=user,
        chat_id=user,
        private=True,
        session_id=session_id,
        query=content,
        exclude_message_ids=[],
    )
    indexing = [asyncio.create_task(memory.index_messages([user_msg]))]
    answer = f"Echo: {content}"[:max_chars]
    indexing.append(
        asyncio.create_task(memory.index_messages([await reply(engine, session_id, answer)]))
    )
    await asyncio.gather(*indexing)


async def phase(
    memory: VectorSemanticMemory, users: list[str], *, seconds: float | None, flood: Any = None
) -> dict[str, Any]:
    stop = asyncio.Event()
    outs = {u: Tally() for u in users}
    tasks = [asyncio.create_task(searching_user(memory, u, stop, outs[u])) for u in users]
    started = time.perf_counter()
    if flood is not None:
        await flood
    else:
        await asyncio.sleep(seconds or 0)
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*tasks)
    ms = [x for o in outs.values() for x in o.ms]
    return {
        "samples": ms,
        "seconds": round(elapsed, 2),
        "searches": len(ms),
        "timed_out": sum(o.timed_out for o in outs.values()),
        "search_ms": {
            "p50": round(harness.percentile(ms, 50), 1),
            "p95": round(harness.percentile(ms, 95), 1),
            "max": round(max(ms), 1) if ms else None,
        },
    }


async def run(args: argparse.Namespace, database_url: str, workdir: Path) -> dict[str, Any]:
    settings = Settings(
        _env_file=None, database_url=database_url, data_dir=workdir, rag_enabled=True,
        rag_embedder="local", local_embedding_model="e5+use", db_pool_size=8,
    )  # fmt: skip
    engine = create_engine(database_url, settings.storage)
    memory = await build_semantic_memory(
        settings.rag, engine, data_dir=settings.storage.data_dir, sweeper=False
    )
    if not isinstance(memory, VectorSemanticMemory):
        raise SystemExit("semantic memory did not start (see the log)")
    users = [f"user-{i}" for i in range(args.users)]
    index_per_s = await seed(engine, memory, users)
    rounds = []
    pooled: dict[str, list[float]] = {"quiet": [], "flood": []}
    for r in range(args.rounds):
        quiet = await phase(memory, users, seconds=args.quiet_seconds)
        hostile = f"hostile-{r}"
        texts = [flood_text(args.chars, seed=r * 100 + i) for i in range(args.messages)]
        cap = settings.memory.max_reply_chars
        flood = asyncio.gather(*(hostile_message(engine, memory, hostile, t, cap) for t in texts))
        loud = await phase(memory, users, seconds=None, flood=flood)
        pooled["quiet"] += quiet.pop("samples")
        pooled["flood"] += loud.pop("samples")
        rounds.append({
            "quiet": quiet, "flood": loud,
            "p95_ratio": round(loud["search_ms"]["p95"] / quiet["search_ms"]["p95"], 2),
        })  # fmt: skip
        print(rounds[-1], file=sys.stderr, flush=True)
    await memory.aclose()
    await engine.dispose()
    return {
        "benchmark": "flood",
        "machine": harness.machine(),
        "embedder": memory._embedder.name,
        "other_users": args.users,
        "flood": {"messages": args.messages, "chars_each": args.chars},
        "seed_index_per_s": round(index_per_s, 1),
        "rounds": rounds,
        "p95_ratio_median": statistics.median(r["p95_ratio"] for r in rounds),
        # One round's p95 rests on ~180 searches and moves a lot; all rounds' searches pooled:
        "pooled": {
            "searches": {k: len(v) for k, v in pooled.items()},
            "p95_ms": {k: round(harness.percentile(v, 95), 1) for k, v in pooled.items()},
            "p95_ratio": round(
                harness.percentile(pooled["flood"], 95) / harness.percentile(pooled["quiet"], 95), 2
            ),
        },
        "flood_seconds_median": statistics.median(r["flood"]["seconds"] for r in rounds),
        "target": "flood p95 / quiet p95 < 2",
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--users", type=int, default=4, help="other users searching meanwhile")
    p.add_argument("--messages", type=int, default=6, help="flood messages, sent at once")
    p.add_argument("--chars", type=int, default=16000, help="length of each flood message")
    p.add_argument("--quiet-seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3, help="quiet + flood pairs, back to back")
    p.add_argument("--database-url", default=None)
    p.add_argument("--save", default=None, help="also write bench/results/<SAVE>.json")
    args = p.parse_args()
    import logging
    import tempfile

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="flood-bench-"))
    workdir.chmod(0o755)  # pgserver runs PostgreSQL as its own user when we are root
    with harness.postgres(args.database_url) as url:
        upgrade_to_head(url)
        result = asyncio.run(run(args, url, workdir))
    harness.emit(result, args.save)


if __name__ == "__main__":
    main()
