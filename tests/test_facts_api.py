"""The facts API: what the user and operators write is in the next prompt, and what they delete
is in no later prompt."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.memory.prompt import PROFILE_HEADER
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.rag_helpers import recalled_block, say, scalar, whole_prompt
from tests.test_api import assert_error

pytestmark = pytest.mark.asyncio

# A Telegram private chat's id is the user's id.
ALICE = "1001"


def system_message(fake: FakeLLM) -> str:
    messages: list[dict[str, Any]] = fake.chat_requests[-1]["messages"]
    assert messages[0]["role"] == "system"
    assert [m["role"] for m in messages[1:]].count("system") == 0
    return str(messages[0]["content"])


async def add(client: httpx.AsyncClient, user: str, content: str, **extra: str) -> dict[str, Any]:
    response = await client.post(
        f"/v1/memory/users/{user}/facts", json={"content": content, **extra}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_posted_fact_is_in_the_next_system_message_after_the_instruction(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM, settings: Any
) -> None:
    fact = await add(app_client, ALICE, "Allergic to peanuts")
    assert fact["source"] == "user"
    assert fact["superseded_at"] is None and fact["superseded_by"] is None

    await say(app_client, ALICE, ALICE, "What can I eat?")
    system = system_message(fake_llm)
    assert system.startswith(settings.memory.system_prompt)
    profile = system[len(settings.memory.system_prompt) :]
    assert PROFILE_HEADER in profile and "- Allergic to peanuts (since " in profile


async def test_patch_supersedes_and_the_prompt_carries_only_the_new_content(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    old = await add(app_client, ALICE, "Lives in Moscow")
    response = await app_client.patch(
        f"/v1/memory/users/{ALICE}/facts/{old['id']}", json={"content": "Lives in Berlin"}
    )
    assert response.status_code == 200, response.text
    new = response.json()
    assert new["content"] == "Lives in Berlin" and new["id"] != old["id"]

    await say(app_client, ALICE, ALICE, "Where do I live?")
    prompt = whole_prompt(fake_llm)
    assert "Lives in Berlin" in prompt and "Moscow" not in prompt

    current = (await app_client.get(f"/v1/memory/users/{ALICE}/facts")).json()["facts"]
    assert [f["content"] for f in current] == ["Lives in Berlin"]
    history = (await app_client.get(f"/v1/memory/users/{ALICE}/facts?history=true")).json()
    by_id = {f["id"]: f for f in history["facts"]}
    assert by_id[old["id"]]["superseded_by"] == new["id"]
    assert by_id[old["id"]]["superseded_at"] is not None

    again = await app_client.patch(
        f"/v1/memory/users/{ALICE}/facts/{old['id']}", json={"content": "Lives in Paris"}
    )
    assert_error(again, 404, "fact_not_found")


async def test_delete_removes_the_fact_and_its_history_from_every_later_prompt(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    old = await add(app_client, ALICE, "Secret project Nightingale")
    new = (
        await app_client.patch(
            f"/v1/memory/users/{ALICE}/facts/{old['id']}",
            json={"content": "Secret project Nightingale II"},
        )
    ).json()
    response = await app_client.delete(f"/v1/memory/users/{ALICE}/facts/{new['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "deleted": 2}
    assert await scalar(db, "SELECT count(*) FROM facts") == 0

    await say(app_client, ALICE, ALICE, "Tell me about the Nightingale project")
    assert "Secret project" not in whole_prompt(fake_llm)

    missing = await app_client.delete(f"/v1/memory/users/{ALICE}/facts/{new['id']}")
    assert_error(missing, 404, "fact_not_found")


async def test_facts_of_another_user_cannot_be_read_changed_or_deleted(
    app_client: httpx.AsyncClient,
) -> None:
    fact = await add(app_client, "bob", "Plays chess")
    assert (await app_client.get(f"/v1/memory/users/{ALICE}/facts")).json() == {"facts": []}
    patch = await app_client.patch(
        f"/v1/memory/users/{ALICE}/facts/{fact['id']}", json={"content": "x"}
    )
    assert_error(patch, 404, "fact_not_found")
    assert_error(
        await app_client.delete(f"/v1/memory/users/{ALICE}/facts/{fact['id']}"),
        404,
        "fact_not_found",
    )


async def test_a_duplicate_is_stored_once_and_blank_content_is_refused(
    app_client: httpx.AsyncClient,
) -> None:
    first = await add(app_client, ALICE, "Has two cats.")
    second = await add(app_client, ALICE, "has two  cats")
    assert second["id"] == first["id"]
    operator = await add(app_client, ALICE, "Prefers email", source="operator")
    assert operator["source"] == "operator"
    facts = (await app_client.get(f"/v1/memory/users/{ALICE}/facts")).json()["facts"]
    assert len(facts) == 2
    blank = await app_client.post(f"/v1/memory/users/{ALICE}/facts", json={"content": " \u200b"})
    assert_error(blank, 422, "validation_error")


async def test_the_profile_keeps_to_its_budget_and_the_rest_is_recalled_by_relevance(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, profile_tokens=12)
    async with running_app(settings) as client:
        for fact in ("Works as a pilot", "Has a sister Olga", "Drives a green tractor"):
            await add(client, ALICE, fact)
        await say(client, ALICE, ALICE, "Which tractor do I drive?")
        system = system_message(fake_llm)
        # Newest first at equal importance: only the last one fits 12 tokens.
        assert "Drives a green tractor" in system
        assert "Works as a pilot" not in system and "Has a sister Olga" not in system

        await say(client, ALICE, ALICE, "Is my sister coming?")
        assert "Has a sister Olga" in recalled_block(fake_llm)
        assert "Works as a pilot" not in whole_prompt(fake_llm)


async def test_in_a_group_the_profile_holds_only_what_the_speaker_said_there(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    settings = make_settings(clean_db, llm_server.base_url)
    async with running_app(settings) as client:
        await add(client, ALICE, "Private diagnosis: asthma")
        async with db.begin() as conn:
            from sqlalchemy import text

            await conn.execute(
                text(
                    "INSERT INTO facts (user_id, content, source, chat_id) "
                    "VALUES (:u, 'Leads the chess club', 'extracted', '-100')"
                ),
                {"u": ALICE},
            )
        await say(client, ALICE, "-100", "Hello group")
        prompt = whole_prompt(fake_llm)
        assert "Leads the chess club" in prompt and "asthma" not in prompt

        await say(client, ALICE, ALICE, "Hello bot")
        prompt = whole_prompt(fake_llm)
        assert "Leads the chess club" in prompt and "asthma" in prompt

    shared = make_settings(clean_db, llm_server.base_url, facts_in_groups=True)
    async with running_app(shared) as client:
        await say(client, ALICE, "-100", "Hello again")
        assert "asthma" in whole_prompt(fake_llm)


async def test_the_facts_api_is_documented_in_openapi_with_its_404(
    app_client: httpx.AsyncClient,
) -> None:
    spec = (await app_client.get("/openapi.json")).json()
    paths = spec["paths"]
    listing = paths["/v1/memory/users/{user_id}/facts"]
    assert set(listing) == {"get", "post"}
    one = paths["/v1/memory/users/{user_id}/facts/{fact_id}"]
    assert set(one) == {"patch", "delete"}
    for operation in one.values():
        assert operation["responses"]["404"]["description"] == "fact_not_found"
        assert operation["summary"] and operation["description"]


async def test_an_edit_in_the_admin_panel_is_what_recall_matches_from_then_on(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    from sqlalchemy import text

    settings = make_settings(clean_db, llm_server.base_url, profile_tokens=0)
    async with running_app(settings) as client:
        fact = await add(client, ALICE, "Drives a green tractor")
        async with db.begin() as conn:  # as Directus writes it: the content alone
            await conn.execute(
                text("UPDATE facts SET content = 'Rides a red bicycle' WHERE id = :id"),
                {"id": fact["id"]},
            )
        assert await scalar(db, "SELECT lexemes IS NULL FROM facts") is True
        await say(client, ALICE, ALICE, "Where is my tractor?")
        assert "tractor" not in recalled_block(fake_llm)
        await say(client, ALICE, ALICE, "Where is my bicycle?")
        assert "Rides a red bicycle" in recalled_block(fake_llm)
        assert PROFILE_HEADER not in system_message(fake_llm)  # a budget of 0: no profile


async def test_a_streamed_answer_gets_the_same_profile(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    await add(app_client, ALICE, "Allergic to peanuts")
    response = await app_client.post(
        "/v1/chat/stream", json={"user_id": ALICE, "chat_id": ALICE, "text": "What can I eat?"}
    )
    assert response.status_code == 200, response.text
    assert "- Allergic to peanuts (since " in system_message(fake_llm)
