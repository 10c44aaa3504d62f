"""Semantic memory as the chat use case sees it: recall before answering, index after storing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import RagSettings
from llm_bot_core.rag import russian, thesaurus
from llm_bot_core.rag.base import RecalledFact, Scope, VectorStoreUnavailable
from llm_bot_core.rag.embedders import Embedder, Vector
from llm_bot_core.rag.fact_index import FactIndexer
from llm_bot_core.rag.indexing import Indexer, Labels
from llm_bot_core.rag.search import Hit, Searcher, SearchOptions
from llm_bot_core.rag.vector_store import VectorStore

log = logging.getLogger(__name__)

StoreFactory = Callable[[Embedder], Awaitable[VectorStore]]
# How many facts past the profile's budget recall adds by meaning (memory/facts.py adds as many
# by shared words; the prompt shows at most that many of both).
FACT_HITS = 3


class VectorSemanticMemory:
    """Hybrid semantic memory over a vector store; see SemanticMemory for the contract.

    The store is opened lazily (and again after a failure), so an embedding server or Qdrant
    that is down when the backend starts only delays indexing: the outbox keeps the work.
    """

    enabled = True

    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder,
        open_store: StoreFactory,
        settings: RagSettings,
        *,
        labels: Labels | None = None,
    ) -> None:
        self._engine = engine
        self._embedder = embedder
        self._open_store = open_store
        self._settings = settings
        self._labels = labels or Labels()
        self._store: VectorStore | None = None
        self._indexer: Indexer | None = None
        self._searcher: Searcher | None = None
        self._facts = FactIndexer(engine, embedder, fts_config=settings.rag_fts_config)
        self._opening = asyncio.Lock()
        self._sweeper: asyncio.Task[Any] | None = None
        self._open_failed_at: float | None = None
        self.description = f"{embedder.name}, store not opened yet"

    # --- lifecycle ---------------------------------------------------------------------------

    async def ready(self) -> tuple[Indexer, Searcher]:
        """Open the store (once); raises while the embedder or the store is unreachable."""
        if self._indexer is not None and self._searcher is not None:
            return self._indexer, self._searcher
        async with self._opening:
            if self._indexer is None or self._searcher is None:
                # While the store is known to be down, fail at once instead of making every
                # message wait for a connection timeout; the sweeper tries again later.
                failed, cooldown = self._open_failed_at, self._settings.rag_retry_seconds
                if failed is not None and time.monotonic() - failed < cooldown:
                    raise VectorStoreUnavailable("vector store unreachable (retrying later)")
                try:
                    store = await self._open_store(self._embedder)
                    created = await store.prepare()
                except Exception:
                    self._open_failed_at = time.monotonic()
                    raise
                self._open_failed_at = None
                s = self._settings
                indexer = Indexer(
                    self._engine,
                    self._embedder,
                    store,
                    fts_config=s.rag_fts_config,
                    context_turns=s.rag_context_turns,
                    labels=self._labels,
                )
                # A new collection (first start, an emptied Qdrant) needs every message; a
                # model change needs those last embedded by another model.
                queued = await (indexer.enqueue_all() if created else indexer.enqueue_stale())
                if queued:
                    log.warning(
                        "%s: %d stored messages queued for indexing into it",
                        store.description,
                        queued,
                    )
                if facts := await self._facts.enqueue_stale():
                    log.info("%d facts queued for indexing in %s", facts, self._embedder.name)
                self._store = store
                self._indexer = indexer
                self._searcher = Searcher(
                    self._engine,
                    self._embedder,
                    store,
                    s.rag_fts_config,
                    expand=expander(s),
                )
                self.description = (
                    f"{store.description}; scope={s.rag_scope}, "
                    f"lexical weight={s.rag_lexical_weight}"
                )
                log.info("semantic memory: %s", self.description)
        assert self._indexer is not None and self._searcher is not None
        return self._indexer, self._searcher

    def start_sweeper(self) -> None:
        """Retry the outbox periodically in this process (the backend; the worker only indexes)."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="rag outbox sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # an outage; the rows keep their backoff in the outbox
                log.warning("semantic indexing deferred: %r", exc)
            await asyncio.sleep(self._settings.rag_retry_seconds)

    async def sweep(self, batch: int = 64) -> int:
        """Index every due outbox row; returns how many messages were indexed."""
        indexer, _ = await self.ready()
        total = 0
        while (done := await indexer.index(None, limit=batch)) > 0:
            total += done
        return total + await self._facts.drain(batch)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._store is not None:
            await self._store.aclose()
        await self._embedder.aclose()

    # --- the SemanticMemory protocol -----------------------------------------------------------

    async def index_messages(self, message_ids: Sequence[int]) -> int:
        done = 0
        try:
            indexer, _ = await self.ready()
            done = await indexer.index(list(message_ids), limit=max(len(message_ids), 1))
        except Exception as exc:
            # Not lost: the rows stay in the outbox and the sweeper retries them with backoff.
            log.warning("indexing of %s deferred: %r", list(message_ids), exc)
        try:
            # Facts written since (extraction, the API, an operator) ride along: one cheap
            # claim when there are none. They need no vector store, only the embedder.
            await self._facts.drain()
        except Exception as exc:
            log.warning("fact indexing deferred: %r", exc)
        return done

    async def recall(
        self,
        *,
        user_id: str,
        chat_id: str,
        private: bool,
        session_id: uuid.UUID,
        query: str,
        exclude_message_ids: Sequence[int],
        fact_ids: Sequence[int] = (),
        rewrite: str | None = None,
    ) -> list[RecalledFact]:
        scope = recall_scope(
            user_id=user_id,
            chat_id=chat_id,
            private=private,
            per_chat=self._settings.rag_scope == "chat",
        )
        # The query's vector, kept for the facts: embedding it again cost a second forward pass
        # (a second paid request with an API).
        vectors: list[Vector] = []
        try:
            async with asyncio.timeout(self._settings.rag_timeout):
                hits = await self.search(
                    query,
                    scope,
                    exclude_message_ids,
                    rewrite=rewrite,
                    embedded=vectors.append,
                    asker=user_id,
                )
        except Exception as exc:  # an outage means no recalled memory, never a failed reply
            log.warning("recall skipped: %r", exc)
            hits = []
        # Facts are ranked by meaning alone: by the standalone query when there is one (the
        # vector the search made, if it got that far: facts need no vector store).
        facts = await self._recall_facts(
            rewrite or query, vectors[0] if vectors else None, fact_ids
        )
        return facts + [
            RecalledFact(
                message_id=h.message_id,
                role=h.role,
                content=h.content,
                created_at=h.created_at,
                score=h.score,
                user_name=h.user_name,
            )
            for h in hits
        ]

    async def _recall_facts(
        self, query: str, vector: Vector | None, fact_ids: Sequence[int]
    ) -> list[RecalledFact]:
        """The facts among `fact_ids` (past the profile's budget) closest to the query (its
        `vector` when already made), as recalled fragments with the negated fact id; nothing
        on an outage."""
        if not fact_ids:
            return []
        try:
            async with asyncio.timeout(self._settings.rag_timeout):
                if vector is None:
                    vector = await self._embedder.embed_query(query)
                min_score = _first(self._settings.rag_min_score, self._embedder.min_score)
                found = await self._facts.search(
                    vector, fact_ids, limit=FACT_HITS, min_score=min_score
                )
        except Exception as exc:
            log.warning("fact recall skipped: %r", exc)
            return []
        return [
            RecalledFact(
                message_id=-h.fact_id,
                role="user",
                content=h.content,
                created_at=h.created_at,
                score=h.similarity,
            )
            for h in found
        ]

    async def search(
        self,
        query: str,
        scope: Scope,
        exclude: Sequence[int] = (),
        *,
        limit: int | None = None,
        min_score: float | None = None,
        rewrite: str | None = None,
        embedded: Callable[[Vector], None] | None = None,
        asker: str | None = None,
    ) -> list[Hit]:
        """The search behind recall (the benchmark calls it directly); `rewrite` and `embedded`:
        as Searcher.search takes them; `asker`: who asks (SearchOptions.asker)."""
        _, searcher = await self.ready()
        s = self._settings
        options = SearchOptions(
            limit=limit or s.rag_top_k,
            min_score=_first(min_score, s.rag_min_score, self._embedder.min_score),
            lexical_weight=s.rag_lexical_weight,
            asker=asker,
        )
        return await searcher.search(
            query, scope, exclude, options, rewrite=rewrite, embedded=embedded
        )

    async def duplicate_facts(
        self, user_id: str, contents: Sequence[str], *, threshold: float, chat_id: str | None
    ) -> list[bool]:
        try:
            # Off the reply path: a cold local model may take a while to load.
            async with asyncio.timeout(max(self._settings.rag_timeout, 30.0)):
                return await self._facts.duplicates(
                    user_id, contents, threshold=threshold, chat_id=chat_id
                )
        except Exception as exc:  # the lexical check under the lock still applies
            log.warning("near-duplicate check of facts skipped: %r", exc)
            return [False] * len(contents)

    async def forget(self, scope: Scope) -> None:
        """Delete the vectors of a session or a user (their rows are deleted by the caller)."""
        await self.ready()
        assert self._store is not None
        await self._store.delete(scope)

    async def forget_messages(self, message_ids: Sequence[int]) -> None:
        """Delete the vectors of these messages (their rows are deleted by the caller)."""
        await self.ready()
        assert self._store is not None
        await self._store.delete_messages(message_ids)


def expander(settings: RagSettings) -> Callable[[str], russian.Expansion] | None:
    """The lexical side's query expansion: the thesaurus, navec neighbours, both or none."""
    sources = [
        expand
        for on, expand in (
            (settings.rag_thesaurus, thesaurus.expand),
            (settings.rag_query_expansion, russian.expand),
        )
        if on
    ]
    if not sources:
        return None
    if len(sources) == 1:
        return sources[0]
    return lambda query: russian.merged(expand(query) for expand in sources)


def recall_scope(*, user_id: str, chat_id: str, private: bool, per_chat: bool) -> Scope:
    """What a chat may recall. A private chat: the user's private memory (RAG_SCOPE=chat: that
    chat's part of it). A group: the group's own memory, whatever RAG_SCOPE says; never anyone's
    private chats, whose answers would be read by every member."""
    if not private:
        return Scope(chat_id=chat_id)
    return Scope(user_id=user_id, chat_id=chat_id) if per_chat else Scope(user_id=user_id)


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)
