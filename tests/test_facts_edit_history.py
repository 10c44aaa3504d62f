"""An in-place edit of a fact's content (the admin panel, psql) keeps the old wording as history
(migration 0007): what an operator writes is in the next prompt, the old wording in none."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.testing.fake_llm import FakeLLM
from tests.rag_helpers import say, whole_prompt
from tests.test_facts_api import add

pytestmark = pytest.mark.asyncio

BOB = "2002"


async def edit(db: AsyncEngine, fact_id: int, content: str) -> None:
    async with db.begin() as conn:
        await conn.execute(text("UPDATE facts SET content = :c WHERE id = :id"),
                           {"c": content, "id": fact_id})


async def test_editing_content_in_place_keeps_the_old_version_and_the_prompt_has_the_new(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    fact = await add(app_client, BOB, "Works at Siemens")
    await edit(db, fact["id"], "Works at Bosch")

    listed = (await app_client.get(f"/v1/memory/users/{BOB}/facts?history=true")).json()
    assert [(f["content"], f["source"], f["superseded_by"]) for f in listed["facts"]] == [
        ("Works at Siemens", "user", fact["id"]),
        ("Works at Bosch", "operator", None),
    ]
    current = (await app_client.get(f"/v1/memory/users/{BOB}/facts")).json()["facts"]
    assert [(f["id"], f["content"]) for f in current] == [(fact["id"], "Works at Bosch")]

    await say(app_client, BOB, BOB, "Where do I work?")
    prompt = whole_prompt(fake_llm)
    assert "Works at Bosch" in prompt and "Siemens" not in prompt

    # Deleting the edited fact through the API takes its history along.
    deleted = await app_client.delete(f"/v1/memory/users/{BOB}/facts/{fact['id']}")
    assert deleted.json() == {"status": "ok", "deleted": 2}
    async with db.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM facts"))).scalar_one()
    assert left == 0


async def test_history_is_not_edited_and_other_columns_edit_without_a_version(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    fact = await add(app_client, BOB, "Has a cat")
    await edit(db, fact["id"], "Has two cats")
    async with db.begin() as conn:
        await conn.execute(text("UPDATE facts SET importance = 0.3 WHERE id = :id"),
                           {"id": fact["id"]})
        old = (await conn.execute(text("SELECT id FROM facts WHERE superseded_by = :id"),
                                  {"id": fact["id"]})).scalar_one()
    with pytest.raises(IntegrityError, match="history is not edited"):
        await edit(db, old, "Has a dog")
    async with db.connect() as conn:
        versions = (await conn.execute(text("SELECT content FROM facts ORDER BY id"))).all()
    assert [v[0] for v in versions] == ["Has two cats", "Has a cat"]
