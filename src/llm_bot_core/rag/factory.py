"""Builds the configured semantic memory: embedder, vector store, fallbacks when one is missing."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import RagSettings
from llm_bot_core.rag import russian, thesaurus
from llm_bot_core.rag.base import DisabledSemanticMemory, SemanticMemory
from llm_bot_core.rag.embedders import Embedder, LocalEmbedder, OpenAIEmbedder, build_embedder
from llm_bot_core.rag.indexing import Labels
from llm_bot_core.rag.memory import StoreFactory, VectorSemanticMemory
from llm_bot_core.rag.pgvector_store import PgVectorStore
from llm_bot_core.rag.qdrant_store import QdrantStore
from llm_bot_core.rag.vector_store import VectorStore

log = logging.getLogger(__name__)


async def build_semantic_memory(
    settings: RagSettings,
    engine: AsyncEngine,
    *,
    data_dir: Path,
    sweeper: bool = True,
    labels: Labels | None = None,
) -> SemanticMemory:
    """RAG_ENABLED decides; unset, semantic memory is on whenever an embedder is available.

    `data_dir` (DATA_DIR) holds the local Qdrant the pgvector fallback opens.
    `sweeper` starts the outbox retry loop in this process (the backend; not the Celery worker,
    whose event loop only runs during a task).
    """
    if settings.rag_enabled is False:
        log.info("semantic memory off (RAG_ENABLED=false)")
        return DisabledSemanticMemory()
    embedder = build_embedder(settings)
    if embedder is None:
        return DisabledSemanticMemory()
    open_store = await choose_store(settings, engine, data_dir)
    if open_store is None:
        await embedder.aclose()
        return DisabledSemanticMemory()
    memory = VectorSemanticMemory(engine, embedder, open_store, settings, labels=labels)
    if isinstance(embedder, LocalEmbedder):
        await embedder.warm_up()  # load the weights now, not during the first user's message
    try:
        await memory.ready()
    except Exception as exc:  # the outbox keeps the work; the store is opened again on next use
        log.warning("semantic memory is configured but not reachable yet: %r", exc)
    if sweeper:
        memory.start_sweeper()
        # The searching process only (the worker indexes): a second or two of loading.
        if settings.rag_query_expansion:
            await asyncio.to_thread(russian.neighbours)
        if settings.rag_thesaurus:
            await asyncio.to_thread(thesaurus.thesaurus)
    return memory


async def choose_store(
    settings: RagSettings, engine: AsyncEngine, data_dir: Path
) -> StoreFactory | None:
    """QDRANT_URL, else QDRANT_PATH, else pgvector; without pgvector, RAG_PGVECTOR_FALLBACK."""
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    if settings.qdrant_url:
        return _qdrant(url=settings.qdrant_url, api_key=api_key)
    if settings.qdrant_path:
        return _qdrant(path=str(settings.qdrant_path))
    missing = await pgvector_missing(engine)
    if missing is None:
        return _pgvector(engine)
    where = make_url(str(engine.url)).render_as_string(hide_password=True)
    if settings.rag_pgvector_fallback == "qdrant" and _qdrant_installed():
        path = data_dir / "qdrant"
        log.warning(
            "pgvector is not available in %s (%s). Semantic memory falls back to Qdrant local "
            "mode under %s (single process). Install pgvector on the server, or set QDRANT_URL, "
            "to silence this.",
            where,
            missing,
            path.resolve(),
        )
        return _qdrant(path=str(path))
    log.warning(
        "pgvector is not available in %s (%s): semantic memory (RAG) is OFF. Install pgvector "
        "on the server, or set QDRANT_URL / QDRANT_PATH.",
        where,
        missing,
    )
    return None


async def pgvector_missing(engine: AsyncEngine) -> str | None:
    """Why the `vector` extension cannot be used here, or None when it can."""
    try:
        async with engine.connect() as conn:
            # Creating a non-trusted extension takes a superuser; a trusted one, CREATE on the db.
            row = (
                await conn.execute(
                    text(
                        """SELECT installed_version IS NOT NULL,
                          coalesce(installed_version, default_version),
                          (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                          OR (has_database_privilege(current_database(), 'CREATE')
                              AND coalesce((SELECT bool_or(trusted)
                                            FROM pg_available_extension_versions
                                            WHERE name = 'vector'), false))
                   FROM pg_available_extensions WHERE name = 'vector'"""
                    )
                )
            ).first()
    except Exception as exc:
        return f"could not check: {exc!r}"
    if row is None:
        return "the server has no `vector` extension package"
    installed, version, may_create = row
    if not installed and not may_create:
        return "the `vector` extension is not created and this role may not create it"
    if _version(version) < MIN_PGVECTOR:
        # halfvec and binary_quantize, which the store's tables use, came in pgvector 0.7.
        return f"pgvector {version} is older than 0.7 (ALTER EXTENSION vector UPDATE)"
    return None


MIN_PGVECTOR = (0, 7)


def _version(text_: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in (text_ or "0").split(".")[:2])
    except ValueError:
        return (0,)


def _qdrant_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("qdrant_client") is not None


def _pgvector(engine: AsyncEngine) -> StoreFactory:
    async def open_store(embedder: Embedder) -> VectorStore:
        await _learn_dim(embedder)
        return PgVectorStore(engine, embedder)

    return open_store


def _qdrant(
    *, url: str | None = None, path: str | None = None, api_key: str | None = None
) -> StoreFactory:
    from pathlib import Path

    async def open_store(embedder: Embedder) -> VectorStore:
        await _learn_dim(embedder)
        return QdrantStore(
            embedder.name, embedder.dim, url=url, path=Path(path) if path else None, api_key=api_key
        )

    return open_store


async def _learn_dim(embedder: Embedder) -> None:
    if isinstance(embedder, OpenAIEmbedder) and not embedder.dim:
        await embedder.probe()
