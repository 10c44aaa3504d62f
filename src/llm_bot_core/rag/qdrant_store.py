"""The Qdrant vector store: a Qdrant server, or its embedded local mode for one process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_bot_core.rag.base import Scope, VectorStoreUnavailable
from llm_bot_core.rag.vector_store import Point, collection_name


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

        flt = _filter(scope)
        if exclude:
            flt.must_not = [models.HasIdCondition(has_id=list(exclude))]
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

        try:
            await self._client.delete(
                self.collection,
                points_selector=models.FilterSelector(filter=_filter(scope)),
                wait=True,
            )
        except Exception as exc:
            raise VectorStoreUnavailable(f"qdrant delete: {exc!r}") from exc

    async def delete_messages(self, message_ids: Sequence[int]) -> None:
        from qdrant_client import models

        if not message_ids:
            return
        try:
            await self._client.delete(
                self.collection,
                points_selector=models.PointIdsList(points=list(message_ids)),
                wait=True,
            )
        except Exception as exc:
            raise VectorStoreUnavailable(f"qdrant delete: {exc!r}") from exc

    async def count(self) -> int:
        return int((await self._client.count(self.collection, exact=True)).count)

    async def aclose(self) -> None:
        await self._client.close()


def _filter(scope: Scope) -> Any:
    """The scope as a Qdrant filter: every scope column set must match; a group's memory also
    excludes points that belong to someone's private memory."""
    from qdrant_client import models

    must: list[Any] = [
        models.FieldCondition(key=name, match=models.MatchValue(value=str(value)))
        for name in ("session_id", "chat_id", "user_id")
        if (value := getattr(scope, name)) is not None
    ]
    if not must:
        raise ValueError("empty scope")
    if scope.shared:
        must.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="user_id")))
    return models.Filter(must=must)
