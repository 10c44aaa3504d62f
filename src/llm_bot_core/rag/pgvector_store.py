"""The pgvector store: vectors in a table of the project's own PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llm_bot_core.rag.base import Scope, VectorStoreUnavailable
from llm_bot_core.rag.vector_store import Point, collection_name

if TYPE_CHECKING:
    from llm_bot_core.rag.embedders import Embedder

log = logging.getLogger(__name__)


class PgvectorMissing(Exception):
    """The PostgreSQL server has no `vector` extension (or we may not create it)."""


def _vector_literal(vector: Sequence[float] | np.ndarray) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in vector) + "]"


async def _exists(conn: AsyncConnection, table: str) -> bool:
    return (await conn.execute(text("SELECT to_regclass(:t)"), {"t": table})).scalar() is not None


# Any constant; the backend and workers starting together must not race on DDL.
_DDL_LOCK = 7_221_004_003


# Chat turns of both languages our users write in; their mean embedding is the centre the
# binary codes of a vector table are taken around (see PgVectorStore).
CENTRE_TEXTS = (
    "Привет! Как дела?",
    "Hi, how are you doing today?",
    "Я работаю бухгалтером в небольшой фирме.",
    "My daughter starts school in September.",
    "Вчера ходили с друзьями в кино, фильм понравился.",
    "Can you recommend a good book about history?",
    "У меня аллергия на орехи.",
    "We adopted a puppy last weekend, his name is Max.",
    "Напомни, пожалуйста, во сколько у меня встреча.",
    "The weather has been terrible all week.",
    "Спасибо, ты очень помог!",
    "I'm planning a trip to Japan next spring.",
    "Мой брат живёт в Казани и работает врачом.",
    "What's the best way to learn Python?",
    "Купил новый велосипед, катаюсь каждый день.",
    "She loves painting landscapes on weekends.",
    "Сколько стоит доставка в Новосибирск?",
    "I've been feeling stressed about work lately.",
    "Ок",
    "Thanks!",
    "Давай обсудим план на завтра.",
    "Our team won the match 3-1 yesterday.",
    "Я переехал в Санкт-Петербург два года назад.",
    "Do you remember what I told you about my sister?",
    "Люблю готовить пасту с морепродуктами.",
    "The meeting was moved to Thursday at 10 am.",
    "Какие документы нужны для визы?",
    "I finished reading that novel you suggested.",
    "У нас сломалась стиральная машина.",
    "He's been volunteering at the animal shelter.",
)


class PgVectorStore:
    """Vectors in a table of the same PostgreSQL, next to the messages they come from.

    Search is exact within the scope, in two steps that never return fewer than K rows (unlike
    a filtered HNSW scan):
    1. A covering btree on the scope column holds each row's binary code: one bit per
       dimension, whether the vector lies above the table's centre in it. An index-only scan
       ranks the scope's rows by Hamming distance of the codes, reading 48 bytes per row of a
       384-d model instead of the whole vector.
    2. The best RERANK of them are ranked by exact cosine.
    Codes around zero would be useless for models like e5, whose vectors all point one way;
    around the centre (the mean embedding of CENTRE_TEXTS, fixed when the table is created),
    the exact top 10 of LoCoMo questions at 10k messages per user was 98-99 % inside the
    Hamming top 400. At that size the search took 3-4 ms instead of 7-9 ms for the exact scan.

    Vectors are stored as `halfvec` (16-bit floats): half the bytes per row, and 16 bits keep
    cosine to about three decimal places, well inside the differences that rank memories.
    Rows reference messages with ON DELETE CASCADE, so deleting data deletes vectors.
    """

    RERANK = 400

    def __init__(self, engine: AsyncEngine, embedder: Embedder) -> None:
        self._engine = engine
        # Searches are single statements: autocommit saves the BEGIN and ROLLBACK round trips.
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._embedder = embedder
        self.dim = dim = embedder.dim
        self.table = collection_name("rag_hvec_", embedder.name, dim)
        # Tables of earlier versions held 32-bit vectors without codes; prepare() converts them.
        self._legacy_table = collection_name("rag_vec_", embedder.name, dim)
        self.description = f"pgvector table {self.table} ({embedder.name}, {dim}-d halfvec)"

    async def prepare(self) -> bool:
        async with self._engine.connect() as conn:
            if await _exists(conn, self.table):
                return False
        # Before taking the DDL lock: embedding the centre texts takes a moment.
        centre = np.asarray(await self._embedder.embed_documents(CENTRE_TEXTS)).mean(axis=0)
        async with self._engine.begin() as conn:
            available = (
                await conn.execute(
                    text(
                        "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
                    )
                )
            ).first()
            if available is None:
                raise PgvectorMissing("the PostgreSQL server has no `vector` extension installed")
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _DDL_LOCK})
            try:
                async with conn.begin_nested():
                    await conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            except Exception as exc:
                raise PgvectorMissing(f"CREATE EXTENSION vector failed: {exc}") from exc
            if await _exists(conn, self.table):  # another process created it meanwhile
                return False
            t, dim = self.table, self.dim
            # PLAIN storage keeps the vector in the row: no TOAST fetch per row on an exact scan.
            storage = "ALTER COLUMN embedding SET STORAGE PLAIN" if dim <= 3600 else ""
            for ddl in (
                # The centre is a constant of the function, and the function (immutable) is
                # what both the stored codes and the query's code are computed with.
                f"""CREATE FUNCTION {t}_code(halfvec) RETURNS bit({dim})
                    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
                    SELECT CAST(binary_quantize(
                        $1 - CAST('{_vector_literal(centre)}' AS halfvec({dim}))) AS bit({dim}))
                    $$""",
                f"""CREATE TABLE {t} (
                      message_id bigint PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
                      session_id uuid NOT NULL,
                      user_id varchar(128),
                      chat_id varchar(128) NOT NULL,
                      role varchar(16) NOT NULL,
                      created_at timestamptz NOT NULL,
                      embedding halfvec({dim}) NOT NULL,
                      code bit({dim}) GENERATED ALWAYS AS ({t}_code(embedding)) STORED)""",
                f"ALTER TABLE {t} {storage}" if storage else "",
                f"CREATE INDEX {t}_user ON {t} (user_id) INCLUDE (message_id, code)",
                f"CREATE INDEX {t}_chat ON {t} (chat_id) INCLUDE (message_id, code)",
                f"CREATE INDEX {t}_session ON {t} (session_id)",
                f"COMMENT ON TABLE {t} IS "
                f"'llm-bot-core vectors of {self._embedder.name}, {dim} dimensions'",
            ):
                if ddl:
                    await conn.execute(text(ddl))
            if not await _exists(conn, self._legacy_table):
                return True
            # The vectors are already computed: convert them rather than embed everything again.
            copied = await conn.execute(
                text(
                    f"""INSERT INTO {t} (message_id, session_id, user_id, chat_id, role,
                                         created_at, embedding)
                        SELECT message_id, session_id, user_id, chat_id, role, created_at,
                               CAST(embedding AS halfvec)
                        FROM {self._legacy_table}"""
                )
            )
            await conn.execute(text(f"DROP TABLE {self._legacy_table}"))
            log.warning(
                "converted %d vectors of %s to halfvec in %s",
                copied.rowcount,
                self._legacy_table,
                t,
            )
            return False

    async def upsert(self, points: Sequence[Point]) -> None:
        if not points:
            return
        sql = text(
            f"""INSERT INTO {self.table}
                  (message_id, session_id, user_id, chat_id, role, created_at, embedding)
                SELECT m.id, :session_id, :user_id, :chat_id, :role, :created_at,
                       CAST(:embedding AS halfvec)
                FROM messages m WHERE m.id = :message_id
                ON CONFLICT (message_id) DO UPDATE SET embedding = EXCLUDED.embedding,
                  session_id = EXCLUDED.session_id, user_id = EXCLUDED.user_id,
                  chat_id = EXCLUDED.chat_id, role = EXCLUDED.role"""
        )
        params = [
            {
                "message_id": p.message_id,
                "session_id": p.session_id,
                "user_id": p.user_id,
                "chat_id": p.chat_id,
                "role": p.role,
                "created_at": p.created_at,
                "embedding": _vector_literal(p.vector),
            }
            for p in points
        ]
        try:
            async with self._engine.begin() as conn:
                await conn.execute(sql, params)
        except Exception as exc:
            raise VectorStoreUnavailable(f"pgvector upsert: {exc!r}") from exc

    async def search(
        self, vector: list[float], scope: Scope, exclude: Sequence[int], limit: int
    ) -> list[tuple[int, float]]:
        where, params = scope.where()
        t = self.table
        sql = text(
            f"""SELECT message_id, 1 - (embedding <=> CAST(:q AS halfvec)) AS similarity
                FROM {t}
                WHERE message_id = ANY(ARRAY(
                    SELECT message_id FROM {t}
                    WHERE {where} AND message_id <> ALL(CAST(:exclude AS bigint[]))
                    ORDER BY code <~> {t}_code(CAST(:q AS halfvec))
                    LIMIT :rerank))
                ORDER BY similarity DESC LIMIT :limit"""
        )
        try:
            async with self._reads.connect() as conn:
                rows = await conn.execute(
                    sql,
                    {
                        **params,
                        "exclude": list(exclude),
                        "q": _vector_literal(vector),
                        "limit": limit,
                        "rerank": max(self.RERANK, limit),
                    },
                )
                return [(int(r[0]), float(r[1])) for r in rows]
        except Exception as exc:
            raise VectorStoreUnavailable(f"pgvector search: {exc!r}") from exc

    async def delete(self, scope: Scope) -> None:
        where, params = scope.where()
        async with self._engine.begin() as conn:
            await conn.execute(text(f"DELETE FROM {self.table} WHERE {where}"), params)

    async def delete_messages(self, message_ids: Sequence[int]) -> None:
        # The rows also go with their messages (ON DELETE CASCADE); this is for symmetry with
        # stores outside the database, and for erasing vectors before the rows.
        async with self._engine.begin() as conn:
            await conn.execute(
                text(f"DELETE FROM {self.table} WHERE message_id = ANY(CAST(:ids AS bigint[]))"),
                {"ids": list(message_ids)},
            )

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int(
                (await conn.execute(text(f"SELECT count(*) FROM {self.table}"))).scalar() or 0
            )

    async def aclose(self) -> None:
        return None
