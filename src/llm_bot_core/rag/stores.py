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
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

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


def _vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in vector) + "]"


# Any constant; the backend and workers starting together must not race on DDL.
_DDL_LOCK = 7_221_004_003


class PgVectorStore:
    """Vectors in a table of the same PostgreSQL, next to the messages they come from.

    Search is exact: a btree on the scope column narrows to one user's rows and cosine is
    computed over them. One user's memory is thousands to tens of thousands of rows, where an
    exact scan takes milliseconds, and unlike a filtered HNSW scan it never returns fewer than
    K rows. Rows reference messages with ON DELETE CASCADE, so deleting data deletes vectors.
    """

    def __init__(self, engine: AsyncEngine, embedder_name: str, dim: int) -> None:
        self._engine = engine
        self.dim = dim
        self.table = collection_name("rag_vec_", embedder_name, dim)
        self.description = f"pgvector table {self.table} ({embedder_name}, {dim}-d)"
        self._embedder_name = embedder_name

    async def prepare(self) -> bool:
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
            t = self.table
            # PLAIN storage keeps the vector in the row: no TOAST fetch per row on an exact scan.
            storage = "ALTER COLUMN embedding SET STORAGE PLAIN" if self.dim <= 1800 else ""
            for ddl in (
                f"""CREATE TABLE {t} (
                      message_id bigint PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
                      session_id uuid NOT NULL,
                      user_id varchar(128) NOT NULL,
                      chat_id varchar(128) NOT NULL,
                      role varchar(16) NOT NULL,
                      created_at timestamptz NOT NULL,
                      embedding vector({self.dim}) NOT NULL)""",
                f"ALTER TABLE {t} {storage}" if storage else "",
                f"CREATE INDEX {t}_user ON {t} (user_id)",
                f"CREATE INDEX {t}_chat ON {t} (chat_id)",
                f"CREATE INDEX {t}_session ON {t} (session_id)",
                f"COMMENT ON TABLE {t} IS "
                f"'llm-bot-core vectors of {self._embedder_name}, {self.dim} dimensions'",
            ):
                if ddl:
                    await conn.execute(text(ddl))
            return True

    async def upsert(self, points: Sequence[Point]) -> None:
        if not points:
            return
        sql = text(
            f"""INSERT INTO {self.table}
                  (message_id, session_id, user_id, chat_id, role, created_at, embedding)
                SELECT m.id, :session_id, :user_id, :chat_id, :role, :created_at,
                       CAST(:embedding AS vector)
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
        # The table has no approximate (HNSW/IVF) index on purpose: the scope's rows come from
        # the btree and are ranked exactly by a top-N sort.
        sql = text(
            f"""SELECT message_id, 1 - distance FROM (
                  SELECT message_id, embedding <=> CAST(:q AS vector) AS distance
                  FROM {self.table}
                  WHERE {column} = :value AND message_id <> ALL(CAST(:exclude AS bigint[]))) d
                ORDER BY distance LIMIT :limit"""
        )
        try:
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    sql,
                    {
                        "value": value,
                        "exclude": list(exclude),
                        "q": _vector_literal(vector),
                        "limit": limit,
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
