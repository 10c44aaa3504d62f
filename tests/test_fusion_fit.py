"""bench/fusion_fit.py's fit: the weights it learns rank the evidence first, and the product's
`rank` replays them (the figures of docs/retrieval-experiments.md come from these two)."""

from __future__ import annotations

import importlib
import random
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from llm_bot_core.rag.search import FEATURES, Candidate, SearchOptions, rank

ROOT = Path(__file__).resolve().parents[1]


def fusion_fit() -> Any:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module("fusion_fit")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def turn(mid: int, content: str, role: str = "user") -> Candidate:
    return Candidate(message_id=mid, role=role, content=content, created_at=None,
                     content_words=3, user_id="u", session_id="s")


def question(rng: random.Random, n: int) -> tuple[Any, ...]:
    """A question whose fact the full-text side finds first while the dense side puts it
    anywhere among small talk: the weights must learn to trust the full-text side here."""
    rows = {i: turn(i, f"small talk number {i} about nothing") for i in range(1, n)}
    rows[n] = turn(n, "the fact itself")
    dense = sorted(((mid, rng.uniform(0.7, 0.9)) for mid in rows), key=lambda x: -x[1])
    lexical = [(n, 5.0), (1, 1.0)]
    return "what was the fact", dense, lexical, rows


def test_the_fitted_weights_rank_the_evidence_first_through_the_products_rank() -> None:
    module = fusion_fit()
    rng = random.Random(3)
    options = SearchOptions(limit=1, min_score=-1.0)
    questions = [question(rng, 12) for _ in range(30)]
    items = [module.item(q, dense, lexical, rows, options, lambda mid: mid == 12)
             for q, dense, lexical, rows in questions]
    assert all(item is not None for item in items)
    x, y = items[0]
    assert x.shape[1] == len(FEATURES) and np.isclose(y.sum(), 1.0)
    learned = module.fit(items)
    weights = dict(zip(FEATURES, learned.vector(), strict=True))
    assert weights["lexical_score"] > 0 and weights["lexical_rank"] > 0
    # New questions of the same kind, ranked by the product with the fitted weights.
    fitted = replace(options, learned=learned)
    unfitted = replace(options, learned=replace(learned, **dict.fromkeys(FEATURES, 0.0)))
    found = sum(rank(q, dense, lexical, rows, fitted)[0].message_id == len(rows)
                for q, dense, lexical, rows in (question(rng, 12) for _ in range(20)))
    assert found == 20
    # All-zero weights leave the order to chance (a tie keeps the candidates' order).
    q, dense, lexical, rows = question(rng, 12)
    assert rank(q, dense, lexical, rows, unfitted)[0].message_id == dense[0][0]


def test_a_recording_s_options_read_back_with_their_learned_weights() -> None:
    # russian_replay records a call's options by name (asdict), which stores Learned as a dict.
    current = fusion_fit()._current  # russian_replay's, as the fit reads recordings
    weights = replace(SearchOptions(limit=5, min_score=0.1).learned, dense_z=0.5)
    recorded = asdict(SearchOptions(limit=5, min_score=0.1, candidates=120, learned=weights))
    del recorded["repeat_copies"]  # a field added after the recording: its default
    options = current(recorded)
    assert options == SearchOptions(limit=5, min_score=0.1, candidates=120, learned=weights)
    assert options.dense_read == 120 and options.learned.dense_z == 0.5
