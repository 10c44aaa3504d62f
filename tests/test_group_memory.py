"""Group chats through the API: who said what, and private memory stays private.

Alice and Bob share a group; each also has a private chat with the bot. The three findings of
issue 12 are the first three tests, with each vector store (and its lexical side).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.rag.base import Scope
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.rag_helpers import has_pgvector, recalled_block, say, scalar, services, whole_prompt

pytestmark = pytest.mark.asyncio

GROUP = "-100777"
ALICE, BOB = "11", "12"


@pytest.fixture(params=("pgvector", "qdrant-local"))
async def rag_settings(
    request: pytest.FixtureRequest, clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM,
    tmp_path: Path,
) -> Settings:
    """A short window, so that what is asked about can only come back through recall."""
    overrides: dict[str, object] = {
        "rag_enabled": True, "rag_embedder": "local", "short_history_limit": 2,
        "data_dir": tmp_path, "summary_threshold": 4,
        "rag_timeout": 30.0,  # a loaded machine must not turn a positive control into a skip
    }
    if request.param == "pgvector":
        if not await has_pgvector(clean_db):
            pytest.skip("this PostgreSQL has no pgvector")
    else:
        overrides["qdrant_path"] = tmp_path / "qdrant"
    return make_settings(clean_db, llm_server.base_url, **overrides)


async def in_group(client: httpx.AsyncClient, user: str, text: str) -> str:
    name = {ALICE: "Alice", BOB: "Bob"}[user]
    return await say(client, user, GROUP, text, chat_type="group", name=name)


async def in_private(client: httpx.AsyncClient, user: str, text: str) -> str:
    return await say(client, user, user, text, chat_type="private")


def turns(prompt: list[dict[str, str]]) -> list[tuple[str, str]]:
    """The conversation turns of a prompt, without its system messages."""
    return [(m["role"], m["content"]) for m in prompt if m["role"] != "system"]


async def small_talk(client: httpx.AsyncClient, user: str, chat: str = GROUP) -> None:
    """Pushes what came before out of the two-message window."""
    for text in ("Погода сегодня хорошая.", "Пойду прогуляюсь."):
        if chat == GROUP:
            await in_group(client, user, text)
        else:
            await in_private(client, user, text)


async def test_group_messages_keep_their_authors_and_stay_out_of_members_private_chats(
    rag_settings: Settings, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    async with running_app(rag_settings) as client:
        await in_group(client, ALICE, "Всем привет!")  # Alice opens the group's session
        await in_group(client, BOB, "У меня аллергия на арахис, живу на улице Ленина 5.")
        bobs_turn = fake_llm.chat_requests[-1]["messages"]
        await in_group(client, ALICE, "А я люблю кататься на велосипеде.")
        alices_turn = fake_llm.chat_requests[-1]["messages"]
        await small_talk(client, ALICE)

        # Each turn has its author; the group's session belongs to the chat.
        authors = await scalar(db, """
            SELECT json_agg(json_build_array(m.user_id, m.user_name) ORDER BY m.id)
            FROM messages m WHERE m.role = 'user'""")
        assert authors[:3] == [[ALICE, "Alice"], [BOB, "Bob"], [ALICE, "Alice"]]
        assert await scalar(db, "SELECT user_id FROM chat_sessions") is None
        # The model is told who said what, and who is asking.
        assert turns(bobs_turn)[-1][1].endswith(
            "\n\n[Bob] У меня аллергия на арахис, живу на улице Ленина 5.")
        role, last = turns(alices_turn)[-1]
        assert role == "user"
        assert "\nEcho: [Bob] У меня аллергия на арахис, живу на улице Ленина 5.\n\n" in last
        assert last.endswith("\n\n[Alice] А я люблю кататься на велосипеде.")
        assert "group chat" in alices_turn[0]["content"]
        # The group's summary (every 4 messages) keeps who said what too.
        summarized = fake_llm.summary_requests[0]["messages"][-1]["content"]
        assert "[Alice] Всем привет!" in summarized
        assert "[Bob] У меня аллергия на арахис" in summarized
        assert "[assistant] Echo: [Bob]" in summarized

        await in_private(client, ALICE, "Напомни, на что у меня аллергия и где я живу?")
        private = whole_prompt(fake_llm)
        assert "арахис" not in private and "Ленина" not in private
        assert "[Alice]" not in private  # private prompts are as before: no speaker labels
        # Recall is not simply off: the group itself remembers Bob's words, from anyone.
        await in_group(client, ALICE, "Бобу что нельзя есть? Какая у него аллергия?")
        assert "[Bob] У меня аллергия на арахис" in recalled_block(fake_llm)


async def test_private_memory_never_reaches_a_group_prompt(
    rag_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with running_app(rag_settings) as client:
        await in_private(client, BOB, "Мой PIN-код банковской карты 7314.")
        await small_talk(client, BOB, chat=BOB)
        await in_group(client, ALICE, "Привет!")

        await in_group(client, BOB, "Какой у меня PIN-код банковской карты?")
        assert "7314" not in whole_prompt(fake_llm)

        # In his own private chat the same question finds it.
        await in_private(client, BOB, "Какой у меня PIN-код банковской карты?")
        assert "7314" in recalled_block(fake_llm)


async def test_erasing_a_user_removes_their_group_messages_and_keeps_everyone_elses(
    rag_settings: Settings, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    async with running_app(rag_settings) as client:
        await in_group(client, ALICE, "Всем привет, я Алиса!")
        await in_group(client, BOB, "У меня аллергия на арахис, живу на улице Ленина 5.")
        await in_group(client, ALICE, "Мой любимый цвет — бирюзовый.")
        await small_talk(client, ALICE)
        await in_private(client, BOB, "Мой PIN-код банковской карты 7314.")
        session = await scalar(db, "SELECT id FROM chat_sessions WHERE chat_id = :c", c=GROUP)
        # The first summary (every 4 messages) ends with Bob's words: it was derived from them.
        summaries = await scalar(db, "SELECT string_agg(content, ' ') FROM conversation_summaries")
        assert "арахис" in summaries
        bob_said = await scalar(
            db, "SELECT array_agg(id) FROM messages WHERE user_id = :u AND session_id = :s",
            u=BOB, s=session)
        assert len(bob_said) == 2  # his message and the answer to it

        response = await client.delete(f"/v1/memory/users/{BOB}")
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "deleted_sessions": 1, "deleted_messages": 4}

        # The group's session survives with the others' messages; nothing of Bob's remains.
        assert await scalar(db, "SELECT id FROM chat_sessions WHERE is_active") == session
        assert await scalar(db, "SELECT count(*) FROM messages WHERE user_id = :u", u=BOB) == 0
        assert await scalar(db, "SELECT count(*) FROM messages WHERE user_id = :u", u=ALICE) == 8
        assert await scalar(db, "SELECT count(*) FROM embeddings e WHERE e.message_id = "
                                "ANY(:ids)", ids=bob_said) == 0
        assert await scalar(db, "SELECT count(*) FROM lexical_stats WHERE lexeme = 'арахис'") == 0
        assert await scalar(db, "SELECT count(*) FROM conversation_summaries "
                                "WHERE content LIKE '%арахис%'") == 0
        semantic = services(client).semantic
        vectors = await semantic._store.search(
            await semantic._embedder.embed_query("аллергия на арахис"), Scope(chat_id=GROUP),
            [], 100)
        assert {mid for mid, _ in vectors}.isdisjoint(bob_said)

        await in_group(client, ALICE, "У кого аллергия на арахис? Кто живёт на улице Ленина?")
        group = whole_prompt(fake_llm)
        assert "арахис" not in group.replace(
            "[Alice] У кого аллергия на арахис? Кто живёт на улице Ленина?", "")
        assert "Ленина 5" not in group
        await in_group(client, ALICE, "Какой мой любимый цвет?")
        assert "бирюзовый" in recalled_block(fake_llm)


async def test_lexical_search_of_a_private_scope_never_returns_group_messages(
    rag_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with running_app(rag_settings) as client:
        await in_group(client, BOB, "Кодовое слово для склада: гиппопотам.")
        await in_private(client, ALICE, "Моё кодовое слово для дачи: жираф.")
        _, searcher = await services(client).semantic.ready()

        private = await searcher.lexical("кодовое слово", Scope(user_id=ALICE), [], 40)
        group = await searcher.lexical("кодовое слово", Scope(chat_id=GROUP), [], 40)
        bob = await searcher.lexical("кодовое слово", Scope(user_id=BOB), [], 40)

        contents = await _contents(client, [mid for mid, _ in private])
        assert contents and all("жираф" in c for c in contents)
        assert all("гиппопотам" in c for c in await _contents(client, [m for m, _ in group]))
        assert bob == []  # what Bob said in the group is the group's, not his private memory


async def _contents(client: httpx.AsyncClient, ids: list[int]) -> list[str]:
    from sqlalchemy import text

    async with services(client).engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT content FROM messages WHERE id = ANY(:ids) ORDER BY id"), {"ids": ids})
        return [r[0] for r in rows]


async def test_chat_kind_defaults_to_private_only_when_the_chat_is_the_user(
    settings: Settings, db: AsyncEngine
) -> None:
    async with running_app(settings) as client:
        await say(client, "42", "42", "hi")
        await say(client, "42", "-5", "hi")
        await say(client, "42", "77", "hi", chat_type="private")
        kinds = await scalar(db, """SELECT json_agg(json_build_array(chat_id, chat_type, user_id)
                                    ORDER BY chat_id) FROM chat_sessions""")
    assert kinds == [["-5", "group", None], ["42", "private", "42"], ["77", "private", "42"]]


async def test_a_session_keeps_its_kind_whatever_a_later_request_says(
    rag_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with running_app(rag_settings) as client:
        await in_private(client, BOB, "Мой PIN-код банковской карты 7314.")
        await small_talk(client, BOB, chat=BOB)
        await in_group(client, ALICE, "Привет!")
        # A client calling the group private cannot open Bob's private memory to it.
        await say(client, BOB, GROUP, "Какой у меня PIN-код банковской карты?",
                  chat_type="private")
        assert "7314" not in whole_prompt(fake_llm)


async def test_a_group_turn_is_labelled_only_with_a_name_the_client_gave(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    async with running_app(settings) as client:
        await say(client, "1", "-5", "no name")
        assert turns(fake_llm.chat_requests[-1]["messages"])[-1] == ("user", "no name")
        await say(client, "2", "-5", "with a name", name=" Ann [admin]\n")
        last = turns(fake_llm.chat_requests[-1]["messages"])[-1][1]
        assert last == "[Ann admin] with a name"
        assert "group chat" in fake_llm.chat_requests[-1]["messages"][0]["content"]


async def test_a_question_about_the_asker_recalls_their_own_words_in_a_group(
    rag_settings: Settings, fake_llm: FakeLLM, clean_db: str, llm_server: FakeLLMServer,
    tmp_path: Path,
) -> None:
    """Both members say what they do; each asking "what do I do?" with one recalled fragment
    gets their own statement, not the other member's (whose "I" is not the asker)."""
    settings = make_settings(
        clean_db, llm_server.base_url, rag_enabled=True, rag_embedder="local",
        short_history_limit=2, data_dir=tmp_path, summary_threshold=4, rag_timeout=30.0,
        qdrant_path=rag_settings.rag.qdrant_path, rag_top_k=1,
    )
    async with running_app(settings) as client:
        await in_group(client, ALICE, "Я работаю учительницей в школе.")
        await in_group(client, BOB, "Я работаю водителем автобуса.")
        await small_talk(client, ALICE)
        await small_talk(client, BOB)

        await in_group(client, ALICE, "Кем я работаю?")
        alices = recalled_block(fake_llm)
        await in_group(client, BOB, "Кем я работаю?")
        bobs = recalled_block(fake_llm)
    assert "учительницей" in alices and "водителем" not in alices
    assert "водителем" in bobs and "учительницей" not in bobs
