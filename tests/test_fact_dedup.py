"""Exact and near duplicates are never stored twice by extraction (the scripted fake model
proposes them; the backend refuses them): a normalized exact match always, a near duplicate by
meaning when semantic memory is on (same content words and close vectors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.rag_helpers import say
from tests.test_api import rows

pytestmark = pytest.mark.asyncio

ALICE = "1001"
KNOWN = "Has been allergic to peanuts since childhood"


def extracting(clean_db: str, llm_server: FakeLLMServer, tmp_path: Path, rag: bool) -> Settings:
    overrides: dict[str, object] = {"facts_every": 2}
    if rag:
        overrides |= {
            "rag_enabled": True,
            "rag_embedder": "local",
            "qdrant_path": tmp_path / "qdrant",
            "data_dir": tmp_path,
        }
    return make_settings(clean_db, llm_server.base_url, **overrides)


async def facts(db: AsyncEngine) -> list[tuple[str, str, bool]]:
    found = await rows(db, "SELECT content, source, superseded_at IS NULL FROM facts ORDER BY id")
    return [(r[0], r[1], r[2]) for r in found]


@pytest.mark.parametrize("rag", [False, True], ids=["lexical", "semantic"])
async def test_a_normalized_exact_duplicate_makes_no_new_row(
    rag: bool,
    clean_db: str,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    db: AsyncEngine,
    tmp_path: Path,
) -> None:
    async with running_app(extracting(clean_db, llm_server, tmp_path, rag)) as client:
        written = await client.post(
            f"/v1/memory/users/{ALICE}/facts", json={"content": "lives in  moscow."}
        )
        assert written.status_code == 201
        await say(client, ALICE, ALICE, "Hello! I live in Moscow.")
        await say(client, ALICE, ALICE, "Nice weather.")
        # The model proposed "Lives in Moscow" (a different string): the user's row stays alone.
        assert fake_llm.fact_requests
        assert await facts(db) == [("lives in  moscow.", "user", True)]


async def test_a_near_duplicate_by_meaning_makes_no_new_row_and_a_new_fact_does(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    async with running_app(extracting(clean_db, llm_server, tmp_path, rag=True)) as client:
        written = await client.post(f"/v1/memory/users/{ALICE}/facts", json={"content": KNOWN})
        assert written.status_code == 201
        await say(client, ALICE, ALICE, "By the way, I am allergic to peanuts.")
        await say(client, ALICE, ALICE, "And I am allergic to cats.")
        assert await facts(db) == [
            (KNOWN, "user", True),
            ("Allergic to cats", "extracted", True),
        ]


async def test_without_semantic_memory_only_the_wording_is_compared(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    async with running_app(extracting(clean_db, llm_server, tmp_path, rag=False)) as client:
        await client.post(f"/v1/memory/users/{ALICE}/facts", json={"content": KNOWN})
        await say(client, ALICE, ALICE, "By the way, I am allergic to peanuts.")
        await say(client, ALICE, ALICE, "And I am allergic to cats.")
        contents = [c for c, _, _ in await facts(db)]
        assert contents == [KNOWN, "Allergic to peanuts", "Allergic to cats"]


async def test_in_a_group_only_the_groups_own_facts_make_a_near_duplicate(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    # A private fact is not shown in the group (FACTS_IN_GROUPS=false), so saying it there is
    # new to the group: it is stored for the group, not dropped as a duplicate of the private one.
    async with running_app(extracting(clean_db, llm_server, tmp_path, rag=True)) as client:
        await client.post(f"/v1/memory/users/{ALICE}/facts", json={"content": KNOWN})
        await say(client, ALICE, ALICE, "Hello!")  # indexes the private fact
        await say(client, ALICE, "-100", "By the way, I am allergic to peanuts.")
        await say(client, ALICE, "-100", "Hello everyone.")
        found = await rows(db, "SELECT content, chat_id FROM facts ORDER BY id")
        assert [tuple(r) for r in found] == [(KNOWN, None), ("Allergic to peanuts", "-100")]
