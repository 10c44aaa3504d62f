"""Vector stores behind one interface: pgvector in the project's PostgreSQL, or Qdrant.

Every store keeps one collection (table) per embedding space, named after the embedder and its
dimension, so changing the model starts a new collection instead of mixing vectors of two
models (or failing on a dimension mismatch) in one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from llm_bot_core.rag.embedders import Embedder

log = logging.getLogger(__name__)


class VectorStoreUnavailable(Exception):
    """The store cannot be reached or refused the operation; the caller retries later."""


class PgvectorMissing(Exception):
    """The PostgreSQL server has no `vector` extension (or we may not create it)."""


@dataclass(frozen=True, slots=True)
class Point:
    message_id: int
    vector: list[float]
    session_id: uuid.UUID
    user_id: str
    chat_id: str
    role: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose memory a search or a deletion covers; exactly one field is set."""

    user_id: str | None = None
    chat_id: str | None = None
    session_id: uuid.UUID | None = None

    def field(self) -> tuple[str, str]:
        for name in ("user_id", "chat_id", "session_id"):
            value = getattr(self, name)
            if value is not None:
                return name, str(value)
        raise ValueError("empty scope")


class VectorStore(Protocol):
    description: str

    async def prepare(self) -> bool:
        """Create the collection if needed; True when it was just created (so it is empty)."""
        ...

    async def upsert(self, points: Sequence[Point]) -> None: ...

    async def search(
        self, vector: list[float], scope: Scope, exclude: Sequence[int], limit: int
    ) -> list[tuple[int, float]]:
        """(message_id, cosine similarity) best first, exact within the scope."""
        ...

    async def delete(self, scope: Scope) -> None: ...

    async def count(self) -> int: ...

    async def aclose(self) -> None: ...


def collection_name(prefix: str, embedder_name: str, dim: int) -> str:
    """A stable identifier of an embedding space, safe as a table or collection name."""
    slug = re.sub(r"[^a-z0-9]+", "_", embedder_name.lower()).strip("_")[:32]
    digest = hashlib.sha1(embedder_name.encode()).hexdigest()[:6]
    return f"{prefix}{slug}_{digest}_{dim}"


def _vector_literal(vector: Sequence[float] | np.ndarray) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in vector) + "]"


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
        self._embedder_name = embedder.name

    async def prepare(self) -> bool:
        async with self._engine.connect() as conn:
            exists = await conn.execute(text("SELECT to_regclass(:t)"), {"t": self.table})
            if exists.scalar() is not None:
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
            exists = await conn.execute(text("SELECT to_regclass(:t)"), {"t": self.table})
            if exists.scalar() is not None:
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
                      user_id varchar(128) NOT NULL,
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
                f"'llm-bot-core vectors of {self._embedder_name}, {dim} dimensions'",
            ):
                if ddl:
                    await conn.execute(text(ddl))
            legacy = await conn.execute(text("SELECT to_regclass(:t)"), {"t": self._legacy_table})
            if legacy.scalar() is None:
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
        column, value = scope.field()
        t = self.table
        sql = text(
            f"""SELECT message_id, 1 - (embedding <=> CAST(:q AS halfvec)) AS similarity
                FROM {t}
                WHERE message_id = ANY(ARRAY(
                    SELECT message_id FROM {t}
                    WHERE {column} = :value AND message_id <> ALL(CAST(:exclude AS bigint[]))
                    ORDER BY code <~> {t}_code(CAST(:q AS halfvec))
                    LIMIT :rerank))
                ORDER BY similarity DESC LIMIT :limit"""
        )
        try:
            async with self._reads.connect() as conn:
                rows = await conn.execute(
                    sql,
                    {
                        "value": value,
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
        column, value = scope.field()
        cast = "CAST(:value AS uuid)" if column == "session_id" else ":value"
        async with self._engine.begin() as conn:
            await conn.execute(
                text(f"DELETE FROM {self.table} WHERE {column} = {cast}"), {"value": value}
            )

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int(
                (await conn.execute(text(f"SELECT count(*) FROM {self.table}"))).scalar() or 0
            )

    async def aclose(self) -> None:
        return None


class QdrantStore:
    """Qdrant server (QDRANT_URL) or its embedded local mode (QDRANT_PATH), same client API.

    Local mode is for one process (it locks its directory) and scans linearly with filters, which
    stays fast up to some tens of thousands of points; use a server beyond that or with workers.
    """

    def __init__(
        self,
        embedder_name: str,
        dim: int,
        *,
        url: str | None = None,
        path: Path | None = None,
        api_key: str | None = None,
        client: Any = None,
    ) -> None:
        from qdrant_client import AsyncQdrantClient

        if client is None:
            if url:
                client = AsyncQdrantClient(url=url, api_key=api_key, timeout=10)
            else:
                assert path is not None
                path.mkdir(parents=True, exist_ok=True)
                client = AsyncQdrantClient(path=str(path))
        self._client = client
        self._local = url is None
        self.dim = dim
        self.collection = collection_name("llm_bot_core_", embedder_name, dim)
        where = url or f"local mode at {path}"
        self.description = f"Qdrant {where}, collection {self.collection} ({dim}-d)"

    async def prepare(self) -> bool:
        from qdrant_client import models

        try:
            if await self._client.collection_exists(self.collection):
                info = await self._client.get_collection(self.collection)
                size = getattr(info.config.params.vectors, "size", None)
                if size is not None and size != self.dim:
                    raise VectorStoreUnavailable(
                        f"collection {self.collection} holds {size}-d vectors, not {self.dim}-d"
                    )
                return False
            await self._client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
            )
            if not self._local:  # local mode has no payload indexes (it warns and ignores them)
                for key in ("user_id", "chat_id", "session_id"):
                    await self._client.create_payload_index(
                        self.collection, key, field_schema=models.PayloadSchemaType.KEYWORD
                    )
            return True
        except VectorStoreUnavailable:
            raise
        except Exception as exc:
            raise VectorStoreUnavailable(f"qdrant prepare: {exc!r}") from exc

    async def upsert(self, points: Sequence[Point]) -> None:
        from qdrant_client import models

        if not points:
            return
        batch = [
            models.PointStruct(
                id=p.message_id,  # the message id: re-indexing overwrites, never duplicates
                vector=p.vector,
                payload={
                    "message_id": p.message_id,
                    "session_id": str(p.session_id),
                    "user_id": p.user_id,
                    "chat_id": p.chat_id,
                    "role": p.role,
                    "created_at": p.created_at.isoformat(),
                },
            )
            for p in points
        ]
        try:
            await self._client.upsert(self.collection, points=batch, wait=True)
        except Exception as exc:
            raise VectorStoreUnavailable(f"qdrant upsert: {exc!r}") from exc

    async def search(
        self, vector: list[float], scope: Scope, exclude: Sequence[int], limit: int
    ) -> list[tuple[int, float]]:
        from qdrant_client import models

        column, value = scope.field()
        flt = models.Filter(
            must=[models.FieldCondition(key=column, match=models.MatchValue(value=value))],
            must_not=[models.HasIdCondition(has_id=list(exclude))] if exclude else None,
        )
        try:
            # exact=True: a filtered HNSW search may return fewer than `limit` points.
            result = await self._client.query_points(
                self.collection,
                query=vector,
                query_filter=flt,
                limit=limit,
                search_params=None if self._local else models.SearchParams(exact=True),
                with_payload=False,
            )
        except Exception as exc:
            raise VectorStoreUnavailable(f"qdrant search: {exc!r}") from exc
        return [(int(p.id), float(p.score)) for p in result.points]

    async def delete(self, scope: Scope) -> None:
        from qdrant_client import models

        column, value = scope.field()
        flt = models.Filter(
            must=[models.FieldCondition(key=column, match=models.MatchValue(value=value))]
        )
        try:
            await self._client.delete(
                self.collection, points_selector=models.FilterSelector(filter=flt), wait=True
            )
        except Exception as exc:
            raise VectorStoreUnavailable(f"qdrant delete: {exc!r}") from exc

    async def count(self) -> int:
        return int((await self._client.count(self.collection, exact=True)).count)

    async def aclose(self) -> None:
        await self._client.close()
