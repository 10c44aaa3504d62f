"""Retrieval recall of semantic memory on LoCoMo, through the project's own indexing and search.

Each conversation becomes one user: its sessions become closed chat sessions and its turns
messages (speaker A as "user", speaker B as "assistant", their names as speaker labels), stored
in a real PostgreSQL, indexed by the outbox indexer with the configured embedder and store, and
every question of categories 1-4 is asked through the same search that recall uses (with the
similarity threshold off, so that 10 results can be ranked). Prints one JSON object.

    python bench/locomo_retrieval.py                      # embedded PostgreSQL, pgvector, e5
    python bench/locomo_retrieval.py --store qdrant-local --pad-to 10000

LoCoMo is CC BY-NC 4.0: evaluation only, never copied into this repository.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.db.engine import create_engine
from llm_bot_core.db.migrate import upgrade_to_head
from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.factory import build_semantic_memory
from llm_bot_core.rag.indexing import Labels
from llm_bot_core.rag.memory import VectorSemanticMemory
from llm_bot_core.rag.pgvector_store import PgVectorStore
from llm_bot_core.rag.search import SearchOptions, rank

REPO = Path(__file__).resolve().parent.parent
CATEGORIES = (1, 2, 3, 4)


def default_data() -> Path:
    """LOCOMO_DATA, else `shared/bench/locomo/locomo_dev.json` beside the checkout (or beside
    its parent, for a worktree under wt/), else /work/shared's copy."""
    if env := os.environ.get("LOCOMO_DATA"):
        return Path(env)
    relative = Path("shared", "bench", "locomo", "locomo_dev.json")
    places = [REPO.parent / relative, REPO.parent.parent / relative, Path("/work") / relative]
    return next((p for p in places if p.exists()), places[0])


DEFAULT_DATA = default_data()


def parse_date(raw: str) -> datetime:
    """LoCoMo's "1:56 pm on 8 May, 2023"."""
    return datetime.strptime(raw.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def turns_of(conversation: dict[str, Any]) -> list[tuple[int, datetime, dict[str, Any]]]:
    out: list[tuple[int, datetime, dict[str, Any]]] = []
    n = 1
    while f"session_{n}" in conversation:
        when = parse_date(conversation[f"session_{n}_date_time"])
        out.extend((n, when, turn) for turn in conversation[f"session_{n}"])
        n += 1
    return out


def turn_text(turn: dict[str, Any]) -> str:
    content = turn["text"]
    if turn.get("blip_caption"):
        content += f" [shares a photo: {turn['blip_caption']}]"
    return content


_EVIDENCE = re.compile(r"D:?(\d+):0*(\d+)")


def normalise_evidence(raw: list[str], known: set[str]) -> tuple[list[str], int, int]:
    """Evidence ids that exist, how many were repaired, how many skipped."""
    found, repaired, skipped = [], 0, 0
    for item in raw:
        for part in re.split(r"[;,]\s*", item):
            part = part.strip()
            if not part:
                continue
            match = _EVIDENCE.fullmatch(part)
            canonical = f"D{match.group(1)}:{match.group(2)}" if match else part
            if canonical in known:
                repaired += canonical != part
                if canonical not in found:
                    found.append(canonical)
            else:
                skipped += 1
    return found, repaired, skipped


async def store_conversation(engine: AsyncEngine, sample: dict[str, Any]) -> dict[int, str]:
    """Insert the conversation as closed sessions of one user; returns message id -> dia_id."""
    conv = sample["conversation"]
    user = sample["sample_id"]
    ids: dict[int, str] = {}
    async with engine.begin() as conn:
        sessions: dict[int, Any] = {}
        for index, (n, when, turn) in enumerate(turns_of(conv)):
            if n not in sessions:
                sessions[n] = (await conn.execute(text(
                    "INSERT INTO chat_sessions (user_id, chat_id, is_active, created_at, "
                    "closed_at) VALUES (:u, :c, false, :t, :t) RETURNING id"),
                    {"u": user, "c": f"{user}-chat", "t": when})).scalar_one()
            role = "user" if turn["speaker"] == conv["speaker_a"] else "assistant"
            # Each turn carries its speaker's name, as a group chat's turns carry their
            # author's display name.
            mid = (await conn.execute(text(
                "INSERT INTO messages (session_id, role, content, created_at, user_name) "
                "VALUES (:s, :r, :c, :t, :n) RETURNING id"),
                {"s": sessions[n], "r": role, "c": turn_text(turn),
                 "t": when + timedelta(seconds=index), "n": turn["speaker"]})).scalar_one()
            ids[mid] = turn["dia_id"]
    return ids


async def pad_user(engine: AsyncEngine, table: str, user: str, target: int) -> int:
    """Grow a user's memory to `target` messages with copies of other users' indexed turns.

    Copies carry their vectors and lexemes, so no re-embedding is needed: this measures search
    latency at scale, not the embedder.
    """
    async with engine.begin() as conn:
        have = (await conn.execute(text("SELECT count(*) FROM embeddings WHERE user_id = :u"),
                                   {"u": user})).scalar_one()
        sid = (await conn.execute(text(
            "INSERT INTO chat_sessions (user_id, chat_id, is_active, closed_at) "
            "VALUES (:u, :c, false, now()) RETURNING id"), {"u": user, "c": f"{user}-pad"}
        )).scalar_one()
        await conn.execute(text("ALTER TABLE messages DISABLE TRIGGER messages_rag_enqueue"))
        while have < target:
            added = (await conn.execute(text(
                f"""WITH src AS (
                      SELECT e.message_id AS src, m.role, m.content, m.created_at,
                             nextval(pg_get_serial_sequence('messages', 'id')) AS new_id
                      FROM embeddings e JOIN messages m ON m.id = e.message_id
                      WHERE e.user_id <> :u AND e.chat_id NOT LIKE '%-pad'
                      ORDER BY random() LIMIT :n),
                    m AS (INSERT INTO messages (id, session_id, role, content, created_at)
                          SELECT new_id, :sid, role, content, created_at FROM src),
                    e AS (INSERT INTO embeddings (session_id, message_id, role, content,
                              importance, created_at, user_id, chat_id, model, lexemes)
                          SELECT :sid, src.new_id, e.role, e.content, e.importance,
                                 e.created_at, :u, :c, e.model, e.lexemes
                          FROM src JOIN embeddings e ON e.message_id = src.src)
                    INSERT INTO {table} (message_id, session_id, user_id, chat_id, role,
                                         created_at, embedding)
                    SELECT src.new_id, :sid, :u, :c, v.role, v.created_at, v.embedding
                    FROM src JOIN {table} v ON v.message_id = src.src"""),
                {"u": user, "c": f"{user}-pad", "sid": sid, "n": min(2000, target - have)},
            )).rowcount
            have += added
            if not added:
                break
        await conn.execute(text("ALTER TABLE messages ENABLE TRIGGER messages_rag_enqueue"))
    return int(have)


async def vacuum(engine: AsyncEngine) -> None:
    """What autovacuum does on a live database, then a checkpoint: a freshly loaded database has
    no statistics and no visibility map yet, and autovacuum and the checkpointer writing out
    the load would compete with the timed searches for the CPU."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))
        await conn.execute(text("CHECKPOINT"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def _time_parts(memory: VectorSemanticMemory, question: str, scope: Scope,
                      parts: dict[str, list[float]]) -> None:
    """The steps of a search on their own: query embedding, vector store, full text, reading
    the candidates' rows, ranking."""
    _, searcher = await memory.ready()
    assert memory._store is not None
    started = time.perf_counter()
    vector = await memory._embedder.embed_query(question)
    embedded = time.perf_counter()
    dense = await memory._store.search(vector, scope, [], 40)
    stored = time.perf_counter()
    lexical = await searcher.lexical(question, scope, [], 40)
    done = time.perf_counter()
    ids = list(dict.fromkeys([mid for mid, _ in dense] + [mid for mid, _ in lexical]))
    options = SearchOptions(limit=10, min_score=-1.0)
    rows = await searcher.candidates(ids, scope, neighbours=options.reads_neighbours)
    read = time.perf_counter()
    rank(question, dense, lexical, rows, options)
    ranked = time.perf_counter()
    parts.setdefault("embed_query", []).append((embedded - started) * 1000)
    parts.setdefault("vector_store", []).append((stored - embedded) * 1000)
    parts.setdefault("full_text", []).append((done - stored) * 1000)
    parts.setdefault("candidates", []).append((read - done) * 1000)
    parts.setdefault("rank", []).append((ranked - read) * 1000)


async def ask_all(
    memory: VectorSemanticMemory, data: list[dict[str, Any]], ids: dict[str, dict[int, str]],
    parts: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    per_cat: dict[int, list[tuple[float, float]]] = {c: [] for c in CATEGORIES}
    per_sample: dict[str, list[tuple[float, float]]] = {}
    latencies: list[float] = []
    repaired = skipped = no_evidence = 0
    for sample in data:
        dia_of = ids[sample["sample_id"]]
        known = set(dia_of.values())
        for qa in sample["qa"]:
            if qa.get("category") not in CATEGORIES:
                continue
            evidence, fixed, dropped = normalise_evidence(qa.get("evidence", []), known)
            repaired += fixed
            skipped += dropped
            if not evidence:
                no_evidence += 1
                continue
            scope = Scope(user_id=sample["sample_id"])
            if parts is not None:
                await _time_parts(memory, str(qa["question"]), scope, parts)
            started = time.perf_counter()
            hits = await memory.search(str(qa["question"]), scope, limit=10, min_score=-1.0)
            latencies.append((time.perf_counter() - started) * 1000)
            found = [dia_of.get(h.message_id) for h in hits]
            r5 = len(set(found[:5]) & set(evidence)) / len(evidence)
            r10 = len(set(found[:10]) & set(evidence)) / len(evidence)
            per_cat[qa["category"]].append((r5, r10))
            per_sample.setdefault(sample["sample_id"], []).append((r5, r10))
    every = [v for vs in per_cat.values() for v in vs]
    breakdown = {name: {"p50": round(percentile(v, 0.5), 2), "p95": round(percentile(v, 0.95), 2)}
                 for name, v in (parts or {}).items()}
    return {
        "search_parts_ms": breakdown,
        "overall": _recall(every),
        "by_category": {str(c): _recall(v) for c, v in per_cat.items()},
        "by_conversation": {name: _recall(v) for name, v in per_sample.items()},
        "search_ms": {"p50": round(percentile(latencies, 0.5), 2),
                      "p95": round(percentile(latencies, 0.95), 2),
                      "mean": round(statistics.fmean(latencies), 2) if latencies else 0.0},
        "evidence": {"repaired_ids": repaired, "skipped_ids": skipped,
                     "questions_without_usable_evidence": no_evidence},
    }


def _recall(values: list[tuple[float, float]]) -> dict[str, Any]:
    if not values:
        return {"recall@5": None, "recall@10": None, "questions": 0}
    return {"recall@5": round(statistics.fmean(v[0] for v in values), 4),
            "recall@10": round(statistics.fmean(v[1] for v in values), 4),
            "questions": len(values)}


async def run(args: argparse.Namespace, database_url: str, workdir: Path) -> dict[str, Any]:
    data = json.loads(Path(args.data).read_text())  # noqa: ASYNC240 - once, before timing
    if args.conversations:
        data = data[: args.conversations]
    settings = Settings(
        _env_file=None, database_url=database_url, data_dir=workdir, rag_enabled=True,
        rag_embedder="openai" if args.embedder == "openai" else "local",
        local_embedding_model=args.embedder if args.embedder != "openai" else "e5+use",
        rag_context_turns=args.context_turns,
        rag_lexical_weight=0.0 if args.dense_only else args.lexical_weight,
        qdrant_path=workdir / "qdrant" if args.store == "qdrant-local" else None,
        db_pool_size=4,
    )
    engine = create_engine(database_url, settings.storage)
    memory = await build_semantic_memory(
        settings.rag, engine, data_dir=settings.storage.data_dir, sweeper=False
    )
    if not isinstance(memory, VectorSemanticMemory):
        raise SystemExit("semantic memory did not start (see the log)")
    if args.cache:
        from embedding_cache import CachedEmbedder

        # Before the store opens: the indexer and the searcher take the embedder then. Stored
        # turns' vectors come from disk (index_per_s no longer measures the model); queries
        # still go to the model, so search latency is the real one.
        memory._embedder = CachedEmbedder(memory._embedder, Path(args.cache), queries=False)
        # build_semantic_memory already opened the store around the plain embedder: open it
        # again (the table exists, nothing is re-queued) so indexing reads the cache.
        memory._indexer = memory._searcher = memory._store = None
    indexer, _ = await memory.ready()
    ids: dict[str, dict[int, str]] = {}
    index_seconds = 0.0
    turns = 0
    for sample in data:
        ids[sample["sample_id"]] = await store_conversation(engine, sample)
        conv = sample["conversation"]
        indexer.labels = Labels(user=conv["speaker_a"], assistant=conv["speaker_b"])
        started = time.perf_counter()
        turns += await memory.sweep(batch=64)
        index_seconds += time.perf_counter() - started
    await vacuum(engine)
    result: dict[str, Any] = {
        "data": str(args.data),
        "embedder": memory._embedder.name,
        "store": memory.description,
        "settings": {"lexical_weight": settings.rag.rag_lexical_weight,
                     "context_turns": args.context_turns,
                     "min_score": "off (ranking measured)"},
        "conversations": len(data),
        "turns_indexed": turns,
        "index_per_s": round(turns / index_seconds, 1) if index_seconds else None,
    }
    result.update(await ask_all(memory, data, ids, parts={}))
    if args.pad_to:
        store = memory._store
        if not isinstance(store, PgVectorStore):
            result["padded"] = "only measured on pgvector"
        else:
            sizes = [await pad_user(engine, store.table, s["sample_id"], args.pad_to)
                     for s in data]
            await vacuum(engine)
            padded = await ask_all(memory, data, ids, parts={})
            result["padded"] = {"messages_per_user": min(sizes), "search_ms": padded["search_ms"],
                                "search_parts_ms": padded["search_parts_ms"],
                                "overall_with_distractors": padded["overall"]}
    await memory.aclose()
    await engine.dispose()
    return result


Run = Callable[[argparse.Namespace, str, Path], Coroutine[Any, Any, dict[str, Any]]]


def run_on_database(bench: Run, args: argparse.Namespace, *, prefix: str) -> None:
    """`bench(args, url, workdir)` on --database-url, or on an embedded PostgreSQL in a temporary
    workdir (removed after), the database migrated first; prints the result as JSON."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)  # pgserver runs PostgreSQL as its own user when we are root
    try:
        if args.database_url:
            url = args.database_url
        else:
            from llm_bot_core.db.embedded import start_embedded_postgres

            url = start_embedded_postgres(workdir)
        upgrade_to_head(url)
        result = asyncio.run(bench(args, url, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a file in LoCoMo's format")
    parser.add_argument("--store", choices=("pgvector", "qdrant-local"), default="pgvector")
    parser.add_argument("--embedder", choices=("e5+use", "e5", "use", "openai"), default="e5+use",
                        help="openai uses OPENAI_API_KEY / EMBEDDINGS_BASE_URL from the env")
    parser.add_argument("--context-turns", type=int, default=1)
    parser.add_argument("--dense-only", action="store_true", help="no lexical side")
    parser.add_argument("--lexical-weight", type=float, default=1.0,
                        help="weight of the BM25 ranking in the fusion (RAG_LEXICAL_WEIGHT)")
    parser.add_argument("--conversations", type=int, default=0, help="only the first N")
    parser.add_argument("--pad-to", type=int, default=0,
                        help="then grow each user to N messages and measure search again")
    parser.add_argument("--cache", default=None,
                        help="an embedding cache file (bench/embedding_cache.py), e.g. "
                        ".cache/embeddings.sqlite: fast reruns, index_per_s not the model")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL with pgvector; default: an embedded one in a temp dir")
    run_on_database(run, parser.parse_args(), prefix="locomo-bench-")


if __name__ == "__main__":
    main()
