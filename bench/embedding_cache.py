"""An embedder that remembers its vectors on disk, so benchmark reruns skip the model.

Wraps any embedder of the project and keeps its name (the vector space), so stores and results
are the same as without it. Vectors live in an SQLite file under `.cache/` (gitignored), keyed
by the model's name, the kind (query or document) and the text.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm_bot_core.rag.embedders import Embedder, Vector

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PATH = REPO / ".cache" / "embeddings.sqlite"


class CachedEmbedder:
    """Embedder in front of `inner`; `hits` and `misses` count texts served and embedded."""

    def __init__(self, inner: Embedder, path: Path = DEFAULT_PATH, *, queries: bool = True) -> None:
        self._inner = inner
        # Off: queries always go to the model, so a benchmark still times the search's own
        # query embedding while the indexing is replayed from disk.
        self._queries = queries
        self.name = inner.name
        self.dim = inner.dim
        self.min_score = inner.min_score
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, v BLOB)")
        self.hits = 0
        self.misses = 0

    def _key(self, kind: str, text: str) -> str:
        return hashlib.sha256(f"{self.name}\0{kind}\0{text}".encode()).hexdigest()

    def _get(self, keys: Sequence[str]) -> dict[str, Vector]:
        found: dict[str, Vector] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(
                f"SELECT key, v FROM vectors WHERE key IN ({marks})", chunk
            ):
                found[key] = np.frombuffer(blob, dtype=np.float32).tolist()
        return found

    def _put(self, items: dict[str, Vector]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
            [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
        )
        self._db.commit()

    async def embed_documents(
        self, texts: Sequence[str], alone: Sequence[str] | None = None
    ) -> list[Vector]:
        alone = texts if alone is None else alone
        keys = [self._key("doc", t if t == a else f"{t}\0{a}") for t, a in zip(texts, alone,
                                                                          strict=True)]
        found = self._get(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            vectors = await self._inner.embed_documents([texts[i] for i in missing],
                                                        [alone[i] for i in missing])
            fresh = {keys[i]: v for i, v in zip(missing, vectors, strict=True)}
            self._put(fresh)
            found.update(fresh)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        return [found[k] for k in keys]

    async def embed_query(self, text: str) -> Vector:
        if not self._queries:
            return await self._inner.embed_query(text)
        key = self._key("query", text)
        found = self._get([key])
        if key in found:
            self.hits += 1
            return found[key]
        vector = await self._inner.embed_query(text)
        self._put({key: vector})
        self.misses += 1
        return vector

    async def aclose(self) -> None:
        self._db.close()
        await self._inner.aclose()
