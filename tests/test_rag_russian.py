"""The Russian recall test (bench/russian_recall.py) as a regression guard on the default setup."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings
from tests.rag_helpers import has_pgvector

pytestmark = pytest.mark.asyncio

BENCH = Path(__file__).resolve().parent.parent / "bench" / "russian_recall.py"


def bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("russian_recall", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_facts_told_in_russian_come_back_when_asked_in_other_words(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    overrides: dict[str, object] = {"rag_enabled": True, "rag_embedder": "local",
                                    "data_dir": tmp_path}
    if not await has_pgvector(clean_db):
        overrides["qdrant_path"] = tmp_path / "qdrant"
    settings = make_settings(clean_db, llm_server.base_url, **overrides)

    result = await bench_module().evaluate(settings, fake_llm)

    # Measured 0.84 with the defaults (0.88-0.92 with less lexical weight); the misses are
    # paraphrases with no shared word ("Кем я тружусь?" for "Я работаю бухгалтером"), where
    # the small e5 model is weakest. The bar leaves room for one more miss on another CPU.
    assert result["questions"] == 25
    assert result["recall"] >= 0.8, result["misses"]
