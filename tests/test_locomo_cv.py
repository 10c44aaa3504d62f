"""bench/locomo_cv.py keeps working: a tiny dialogue set in LoCoMo's format, cross-validated
through the real PostgreSQL, indexing and local embedder, run as the command it is."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.conftest import TABLES
from tests.rag_helpers import has_pgvector

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[1]


def conversation(n: int, a: str, b: str, pet: str, city: str) -> dict[str, Any]:
    """Two sessions of one pair; the evidence turns carry the answers, the rest is small talk."""
    return {
        "sample_id": f"conv-{n}",
        "conversation": {
            "speaker_a": a,
            "speaker_b": b,
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": a, "dia_id": "D1:1", "text": f"Hi {b}! How was your weekend?"},
                {"speaker": b, "dia_id": "D1:2", "text": "Pretty quiet, I read a lot of books."},
                {"speaker": a, "dia_id": "D1:3", "text": f"I adopted a {pet} yesterday!"},
                {"speaker": b, "dia_id": "D1:4", "text": f"A {pet} is such a great companion."},
            ],
            "session_2_date_time": "10:00 am on 2 July, 2023",
            "session_2": [
                {"speaker": a, "dia_id": "D2:1", "text": f"I am moving to {city} next month."},
                {"speaker": b, "dia_id": "D2:2", "text": f"Wow, {city} is a beautiful place!"},
                {"speaker": a, "dia_id": "D2:3", "text": "The weather has been nice lately."},
                {"speaker": b, "dia_id": "D2:4", "text": "Yes, sunny days all week long."},
            ],
        },
        "qa": [
            {"question": f"When did {a} adopt a {pet}?", "answer": "7 May 2023",
             "evidence": ["D1:3"], "category": 2},
            {"question": f"Where is {a} moving to?", "answer": city, "evidence": ["D2:1"],
             "category": 4},
            {"question": f"What pet does {a} have and where will they live?",
             "answer": f"{pet}, {city}", "evidence": ["D1:3", "D2:1"], "category": 1},
            {"question": "What is unanswerable?", "answer": "", "evidence": [], "category": 5},
        ],
    }


def run_cv(data: Path, cache: Path, url: str) -> dict[str, Any]:
    command = [
        sys.executable, str(ROOT / "bench" / "locomo_cv.py"), "--data", str(data),
        "--cache", str(cache), "--database-url", url,
        "--only", "baseline", "--only", "when → turns with a time",
        "--only", "neighbouring turns",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


async def test_cross_validation_reports_held_in_and_held_out_folds_and_matches_the_product(
    clean_db: str, tmp_path: Path
) -> None:
    if not await has_pgvector(clean_db):
        pytest.skip("this PostgreSQL has no pgvector")
    data = tmp_path / "locomo.json"
    data.write_text(json.dumps([
        conversation(1, "Anna", "Ben", "kitten", "Lisbon"),
        conversation(2, "Carl", "Dana", "parrot", "Oslo"),
        conversation(3, "Eve", "Finn", "puppy", "Kyoto"),
    ]))
    cache = tmp_path / "embeddings.sqlite"
    result = await asyncio.to_thread(run_cv, data, cache, clean_db)

    assert result["conversations"] == ["conv-1", "conv-2", "conv-3"]
    assert result["turns_indexed"] == 24
    assert result["questions"] == 9  # category 5 is left out
    assert result["embedding_cache"]["misses"] > 0
    baseline = result["experiments"]["baseline"]
    # One fold per conversation, each held out once.
    assert [f["held_out"] for f in baseline["folds"]] == ["conv-1", "conv-2", "conv-3"]
    for side in ("held_in", "held_out"):
        r5 = baseline[side]["all"]["r5"]
        assert 0 <= r5["min"] <= r5["mean"] <= r5["max"] <= 1 and r5["sd"] >= 0
        assert set(baseline[side]) == {"all", "1", "2", "4"}
    dates = result["experiments"]["when → turns with a time"]
    grid = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
    assert all(f["chosen"]["date_boost"] in grid for f in dates["folds"])
    assert dates["default"]["date_boost"] in grid
    assert dates["held_out_gain_r5"] == round(
        dates["held_out"]["all"]["r5"]["mean"] - baseline["held_out"]["all"]["r5"]["mean"], 4
    )
    # The product's own search gives what the replay of its ranking gives.
    check = result["product_defaults"]
    assert check["all_dev"] == check["replayed"]
    assert check["all_dev"]["all"]["n"] == 9

    # A second run, on an emptied database, reads every vector from the cache.
    engine = create_async_engine(clean_db, poolclass=NullPool)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    await engine.dispose()
    again = await asyncio.to_thread(run_cv, data, cache, clean_db)
    assert again["embedding_cache"]["misses"] == 0
    assert again["experiments"]["baseline"] == baseline
