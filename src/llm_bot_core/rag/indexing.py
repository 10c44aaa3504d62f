"""Indexing through the outbox: claim queued messages, embed them, write vectors and metadata.

A trigger puts every stored user/assistant message into `rag_outbox` in the transaction that
stores it (migration 0002). Indexing claims rows with a lease instead of a lock held across the
embedding call, writes the vector (point id = message id, so a repeat overwrites) and the
`embeddings` row (unique per message), and only then deletes the outbox row. A crash or an
outage at any step leaves the row to be retried with backoff: nothing is lost or duplicated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.rag import russian
from llm_bot_core.rag.embedders import USE_CONTEXT_WORDS, Embedder
from llm_bot_core.rag.search import content_words
from llm_bot_core.rag.vector_store import Point, VectorStore

log = logging.getLogger(__name__)

LEASE_SECONDS = 120
MAX_BACKOFF_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class Labels:
    """How speakers are named in the indexed text (the benchmark passes the real names)."""

    user: str = "User"
    assistant: str = "Assistant"

    def of(self, role: str) -> str:
        return self.user if role == "user" else self.assistant


def indexed_text(
    role: str, content: str, labels: Labels, context: Sequence[tuple[str, str]] = ()
) -> str:
    """What gets embedded: the speaker's name, and the preceding turn(s) as context.

    The speaker's name matters: on LoCoMo, dropping it cut recall by a third. The preceding
    turn disambiguates short answers ("Yes, two of them!") without changing whose words they are.
    """
    lines = [f"{labels.of(r)}: {c[:300]}" for r, c in context]
    lines.append(f"{labels.of(role)}: {content}")
    return "\n".join(lines)


# Claim due rows: push their next attempt past the lease, so a concurrent indexer (the worker,
# the backend's sweeper) skips them, while a crashed one's rows come back after the lease.
_LEASE = f"""
    UPDATE rag_outbox SET next_attempt_at = now() + interval '{LEASE_SECONDS} seconds',
                          attempts = attempts + 1
    WHERE message_id IN ({{pick}})
    RETURNING message_id, attempts
"""

# The messages just stored (the job queued after a reply): only those ids.
_CLAIM_IDS = text(
    _LEASE.format(
        pick="""SELECT message_id FROM rag_outbox
                WHERE next_attempt_at <= now() AND message_id = ANY(CAST(:ids AS bigint[]))
                ORDER BY message_id LIMIT :limit FOR UPDATE SKIP LOCKED"""
    )
)

# Whatever is due (the sweeper, a reindex): round-robin over users, each one's oldest row first,
# then each one's second, so one user's backlog takes one slot per turn instead of holding back
# everyone else's new messages until it drains. Ranking the whole outbox cost 0.5 s per claim
# at 100,000 rows (a reindex), so the candidates are its oldest and newest rows (two short
# index scans): a new message stays among the newest until it is claimed, unless one user sends
# more than that many messages after it. FOR UPDATE cannot sit beside a window function.
_CLAIM_DUE = text(
    _LEASE.format(
        pick="""
        WITH candidates AS (
            (SELECT message_id FROM rag_outbox WHERE next_attempt_at <= now()
             ORDER BY message_id LIMIT :window)
            UNION
            (SELECT message_id FROM rag_outbox WHERE next_attempt_at <= now()
             ORDER BY message_id DESC LIMIT :window)),
        ranked AS (
            SELECT c.message_id,
                   row_number() OVER (PARTITION BY coalesce(m.user_id, s.user_id)
                                      ORDER BY c.message_id) AS turn
            FROM candidates c
            JOIN messages m ON m.id = c.message_id
            JOIN chat_sessions s ON s.id = m.session_id)
        SELECT o.message_id FROM rag_outbox o JOIN ranked r ON r.message_id = o.message_id
        WHERE o.next_attempt_at <= now()
        ORDER BY r.turn, o.message_id LIMIT :limit FOR UPDATE OF o SKIP LOCKED"""
    )
)
# How many of the outbox's oldest and of its newest rows a due claim ranks.
_CANDIDATE_WINDOW = 256

# Whose private memory a message is: its author's (or, an assistant turn, the user answered),
# in a private chat only. A group's messages belong to the chat's memory and to nobody's.
_OWNER = "CASE WHEN s.chat_type = 'private' THEN coalesce(m.user_id, s.user_id) END"

_READ = text(
    f"""
    SELECT m.id, m.session_id, m.role, m.content, m.created_at, {_OWNER}, s.chat_id,
           (SELECT coalesce(json_agg(json_build_array(p.role, p.content) ORDER BY p.id), '[]')
              FROM (SELECT id, role, content FROM messages p
                    WHERE p.session_id = m.session_id AND p.id < m.id
                      AND p.role IN ('user', 'assistant')
                    ORDER BY p.id DESC LIMIT :context) p) AS context
    FROM messages m JOIN chat_sessions s ON s.id = m.session_id
    WHERE m.id = ANY(CAST(:ids AS bigint[]))
    """
)

# importance (0..1), the documented rule: how much there is to remember in the message.
# Content words (lexemes left after the text search configuration drops stop words) saturate at
# six; the user's own words count fully and the assistant's half (the assistant mostly restates);
# a number (date, amount, age) adds 0.2. Small talk such as "ок" or "спасибо!" scores near 0,
# and search drops messages with fewer than two content words (search.MIN_CONTENT_WORDS; a
# negation, or the first person of a user's statement, counts as one: "Я никогда не курил.",
# "Я вегетарианец.").
_IMPORTANCE = """
    LEAST(1.0, (LEAST(length(to_tsvector(CAST(:cfg AS regconfig), m.content)), 6) / 6.0)
               * CASE m.role WHEN 'user' THEN 1.0 ELSE 0.5 END
               + CASE WHEN m.content ~ '[0-9]' THEN 0.2 ELSE 0 END)
"""

# One statement for the whole batch: the lexical statistics triggers then lock the rows they
# share with a concurrent batch in one sorted pass, where a statement per message could
# interleave two batches' locks into a deadlock.
_UPSERT_METADATA = text(
    f"""
    INSERT INTO embeddings (session_id, message_id, role, content, importance, created_at,
                            user_id, chat_id, model, lexemes)
    SELECT m.session_id, m.id, m.role, m.content, {_IMPORTANCE}, m.created_at,
           {_OWNER}, s.chat_id, :model, to_tsvector(CAST(:cfg AS regconfig), x.indexed)
    FROM unnest(CAST(:ids AS bigint[]), CAST(:texts AS text[])) AS x(message_id, indexed)
    JOIN messages m ON m.id = x.message_id
    JOIN chat_sessions s ON s.id = m.session_id
    ORDER BY m.id
    ON CONFLICT (message_id) DO UPDATE SET
        session_id = EXCLUDED.session_id, role = EXCLUDED.role, content = EXCLUDED.content,
        importance = EXCLUDED.importance, user_id = EXCLUDED.user_id,
        chat_id = EXCLUDED.chat_id, model = EXCLUDED.model, lexemes = EXCLUDED.lexemes
    """
)

T = TypeVar("T")


class Outbox:
    """The lease bookkeeping of an outbox table (messages' and facts'): after claimed rows'
    work, delete them when done, hand them back on cancellation, or record the failure with
    backoff."""

    def __init__(self, table: str, key: str) -> None:
        ids = f"{key} = ANY(CAST(:ids AS bigint[]))"
        # Only rows still under our lease: if the row was edited meanwhile, its trigger
        # re-queued it with next_attempt_at = now(), and that newer version must still be done.
        self.done = text(f"DELETE FROM {table} WHERE {ids} AND next_attempt_at > now()")
        # Only rows still under our lease, as in `done`.
        self._release = text(
            f"UPDATE {table} SET next_attempt_at = now(), attempts = greatest(attempts - 1, 0) "
            f"WHERE {ids} AND next_attempt_at > now()"
        )
        self._failed = text(
            f"UPDATE {table} SET last_error = :error, next_attempt_at = now() + "
            f"make_interval(secs => LEAST(:max_backoff, 5 * power(2, attempts))) WHERE {ids}"
        )

    async def settle(
        self, engine: AsyncEngine, claimed: list[int], work: Callable[[], Awaitable[T]]
    ) -> T:
        """`work()` on the claimed rows; raises what it raised, after recording it."""
        try:
            return await work()
        except asyncio.CancelledError:
            # Shutdown: hand the rows back now, or they would sit out the lease (a restart
            # within LEASE_SECONDS would skip them). A cancelled attempt is not a failed one.
            async with engine.begin() as conn:
                await conn.execute(self._release, {"ids": claimed})
            raise
        except Exception as exc:
            async with engine.begin() as conn:
                await conn.execute(
                    self._failed,
                    {"ids": claimed, "error": repr(exc)[:1000], "max_backoff": MAX_BACKOFF_SECONDS},
                )
            raise


_OUTBOX = Outbox("rag_outbox", "message_id")


class Indexer:
    """Moves messages from the outbox into the vector store and the `embeddings` table."""

    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder,
        store: VectorStore,
        *,
        fts_config: str,
        context_turns: int,
        labels: Labels | None = None,
    ) -> None:
        self._engine = engine
        self._embedder = embedder
        self._store = store
        self._cfg = fts_config
        self._context = context_turns
        self.labels = labels or Labels()

    async def index(self, message_ids: Sequence[int] | None, limit: int = 64) -> int:
        """Index due outbox rows (only `message_ids` when given); returns how many were indexed.

        Raises on an embedder or store outage after recording it on the claimed rows.
        """
        async with self._engine.begin() as conn:
            if message_ids is None:
                params = {"limit": limit, "window": max(_CANDIDATE_WINDOW, limit)}
                rows = await conn.execute(_CLAIM_DUE, params)
            else:
                rows = await conn.execute(_CLAIM_IDS, {"ids": list(message_ids), "limit": limit})
            claimed = [r[0] for r in rows]
        if not claimed:
            return 0
        return await _OUTBOX.settle(self._engine, claimed, lambda: self._index_claimed(claimed))

    async def _index_claimed(self, ids: list[int]) -> int:
        async with self._engine.connect() as conn:
            rows = list(await conn.execute(_READ, {"ids": ids, "context": self._context}))
        pairs = [self._texts(r) for r in rows]
        texts, alone = [whole for whole, _ in pairs], [read for _, read in pairs]
        vectors = await self._embedder.embed_documents(texts, alone) if rows else []
        points = [
            Point(
                message_id=r[0],
                vector=v,
                session_id=r[1],
                user_id=r[5],
                chat_id=r[6],
                role=r[2],
                created_at=r[4],
            )
            for r, v in zip(rows, vectors, strict=True)
        ]
        await self._store.upsert(points)
        # Off the event loop: the lemmas of a 16,000-character message take ~10 ms.
        lexical = await asyncio.to_thread(lambda: [russian.lexical_text(t) for t in texts])
        async with self._engine.begin() as conn:
            if rows:
                await conn.execute(
                    _UPSERT_METADATA,
                    {
                        "ids": [r[0] for r in rows],
                        "texts": lexical,
                        "model": self._embedder.name,
                        "cfg": self._cfg,
                    },
                )
            # Claimed ids whose message is gone were deleted with it (cascade); the rest are done.
            await conn.execute(_OUTBOX.done, {"ids": ids})
        return len(rows)

    def _texts(self, row: Any) -> tuple[str, str]:
        """What gets embedded: the message with its context, and what a model misled by a
        context that says little reads (e5+use's USE): the message alone when its context has
        fewer than USE_CONTEXT_WORDS content words, else the same."""
        raw: list[Any] = row[7] if isinstance(row[7], list) else orjson.loads(row[7] or "[]")
        context = [(c[0], c[1]) for c in raw]
        whole = indexed_text(row[2], row[3], self.labels, context)
        said = set().union(*(content_words(c) for _, c in context))
        if len(said) >= USE_CONTEXT_WORDS:
            return whole, whole
        return whole, indexed_text(row[2], row[3], self.labels)

    async def enqueue_all(self) -> int:
        """Queue every conversation message again (reindex, a new embedding space)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text(
                    """INSERT INTO rag_outbox (message_id)
                   SELECT id FROM messages WHERE role IN ('user', 'assistant')
                   ON CONFLICT (message_id) DO UPDATE SET next_attempt_at = now(), attempts = 0"""
                )
            )
            return result.rowcount or 0

    async def enqueue_stale(self) -> int:
        """Queue messages whose vector is missing or lives in another embedding space.

        `embeddings.model` names the space each message was last embedded into, so switching
        the model back and forth re-embeds exactly what the current space lacks.
        """
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text(
                    """INSERT INTO rag_outbox (message_id)
                   SELECT m.id FROM messages m LEFT JOIN embeddings e ON e.message_id = m.id
                   WHERE m.role IN ('user', 'assistant')
                     AND (e.id IS NULL OR e.model IS DISTINCT FROM :model)
                   ON CONFLICT (message_id) DO NOTHING"""
                ),
                {"model": self._embedder.name},
            )
            return result.rowcount or 0

    async def pending(self) -> tuple[int, datetime | None]:
        """How many messages wait in the outbox, and the oldest enqueue time."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT count(*), min(enqueued_at) FROM rag_outbox"))
            ).one()
            return int(row[0]), row[1]
