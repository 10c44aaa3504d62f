"""Answers streamed into Telegram: fake Telegram -> bot -> backend stream -> fake LLM stream."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.bot.formatting import check_html, to_plain, utf16_len
from llm_bot_core.bot.streaming import draft_html
from llm_bot_core.config import Settings
from llm_bot_core.memory.streaming import ReplyText
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer
from tests.bot_support import (  # noqa: F401 - fixtures
    BackendServer,
    backend_fixture,
    make_bot_settings,
    rows,
    running_bot,
    settle,
    telegram_fixture,
    telegram_server_fixture,
)
from tests.conftest import make_settings

ANSWERS = "SELECT role, content FROM messages ORDER BY id"


@pytest.fixture(params=["http", "openai"])
def settings(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, request: pytest.FixtureRequest
) -> Settings:
    """The backend with each LLM client (LLM_CLIENT)."""
    return make_settings(clean_db, llm_server.base_url, llm_client=request.param)


def slow_stream(fake_llm: FakeLLM, answer: str, chunk_chars: int = 6, delay: float = 0.04) -> None:
    fake_llm.reply = lambda messages: answer
    fake_llm.chunk_chars, fake_llm.chunk_delay = chunk_chars, delay


async def test_private_answer_streams_as_drafts_then_the_final_message_is_what_was_stored(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:  # fmt: skip
    answer = "Here is **the plan**:\n\n" + " ".join(f"step {i} is done," for i in range(25))
    slow_stream(fake_llm, answer)
    bot_settings = make_bot_settings(telegram_server, backend.url, stream_draft_interval=0.1)
    async with running_bot(bot_settings):
        question = telegram.send_text("what is the plan?", chat_id=601)
        final = await telegram.wait_for("sendMessage", chat_id=601)

    drafts = telegram.calls_to("sendMessageDraft", chat_id=601)
    assert len(drafts) >= 2
    assert not telegram.calls_to("sendMessageDraft", ok=False)
    assert {int(d.params["draft_id"]) for d in drafts} == {question["message_id"]}
    for draft in drafts:
        assert draft.params["parse_mode"] == "HTML"
        check_html(draft.params["text"])
        assert draft.at < final[0].at
    shown = [d.plain_text or "" for d in drafts]
    assert all(len(a) < len(b) for a, b in itertools.pairwise(shown))  # it grows
    assert all(final[0].plain_text.startswith(s) for s in shown)  # type: ignore[union-attr]
    assert final[0].plain_text == to_plain(draft_html(answer))
    typing = telegram.calls_to("sendChatAction", chat_id=601)
    assert typing and typing[0].at < drafts[0].at  # "typing…" until the first draft
    assert await rows(db, ANSWERS) == [("user", "what is the plan?"), ("assistant", answer)]
    assert fake_llm.chat_requests[-1]["stream"] is True


async def test_drafts_keep_their_interval_and_wait_out_flood_control(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:  # fmt: skip
    slow_stream(fake_llm, " ".join(f"word{i}" for i in range(80)), chunk_chars=4, delay=0.03)
    telegram.flood("sendMessageDraft", retry_after=1)
    bot_settings = make_bot_settings(telegram_server, backend.url, stream_draft_interval=0.3)
    async with running_bot(bot_settings):
        telegram.send_text("go", chat_id=602)
        await telegram.wait_for("sendMessage", chat_id=602)

    refused = telegram.calls_to("sendMessageDraft", chat_id=602, ok=False)
    drafts = telegram.calls_to("sendMessageDraft", chat_id=602)
    assert len(refused) == 1  # a late draft is worthless: the 429 is not retried as such
    assert drafts and drafts[0].at - refused[0].at >= 0.95  # but no draft before retry_after
    gaps = [b.at - a.at for a, b in itertools.pairwise(drafts)]
    assert all(gap >= 0.28 for gap in gaps)
    assert telegram.sent_texts(chat_id=602) == [" ".join(f"word{i}" for i in range(80))]


async def test_a_bot_api_server_without_drafts_gets_typing_and_the_final_message(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:  # fmt: skip
    telegram.drafts_supported = False
    slow_stream(fake_llm, "A fine answer that takes a moment to arrive.", delay=0.05)
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("first", chat_id=603)
        await telegram.wait_for("sendMessage", 1, chat_id=603)
        telegram.send_text("second", chat_id=603)
        await telegram.wait_for("sendMessage", 2, chat_id=603)

    assert telegram.sent_texts(chat_id=603) == ["A fine answer that takes a moment to arrive."] * 2
    assert len(telegram.calls_to("sendMessageDraft", ok=None)) == 1  # not asked again
    assert telegram.calls_to("sendChatAction", chat_id=603)


async def test_groups_and_stream_replies_off_use_typing_and_the_plain_endpoint(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:  # fmt: skip
    group = -100777
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.push_update({"message": telegram.message(
            "@test_llm_bot hello group", chat_id=group, user_id=5, chat_type="supergroup",
            entities=[{"type": "mention", "offset": 0, "length": 13}])})  # fmt: skip
        # The fake model echoes the last turn, which in a group names its speaker.
        assert (await telegram.wait_for("sendMessage", chat_id=group))[0].plain_text == (
            "Echo: [Alice] hello group"
        )
    off = make_bot_settings(telegram_server, backend.url, stream_replies=False)
    async with running_bot(off):
        telegram.send_text("private, not streamed", chat_id=604)
        sent = await telegram.wait_for("sendMessage", chat_id=604)
    assert sent[0].plain_text == "Echo: private, not streamed"
    assert telegram.calls_to("sendMessageDraft", ok=None) == []
    assert [r.get("stream", False) for r in fake_llm.chat_requests] == [False, False]


async def test_provider_failure_mid_stream_tells_the_user_and_stores_no_partial_answer(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:  # fmt: skip
    slow_stream(fake_llm, "This answer will break off in the middle of it.", chunk_chars=3)
    fake_llm.fail_stream_next(6, "drop")
    bot_settings = make_bot_settings(telegram_server, backend.url, stream_draft_interval=0.1)
    async with running_bot(bot_settings):
        telegram.send_text("question", chat_id=605)
        sent = await telegram.wait_for("sendMessage", chat_id=605)

    assert telegram.calls_to("sendMessageDraft", chat_id=605)  # the start was shown
    assert sent[0].plain_text == (
        "The model did not answer this time. Please try again — your message was saved."
    )
    assert await rows(db, ANSWERS) == [("user", "question")]
    assert len(fake_llm.chat_requests) == 1  # a failure mid-answer is not repeated


async def test_bot_gone_mid_stream_the_backend_still_stores_the_whole_answer(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:  # fmt: skip
    slow_stream(fake_llm, "Slow words arrive one by one.", chunk_chars=5, delay=0.6)
    bot_settings = make_bot_settings(telegram_server, backend.url, backend_timeout=0.3)
    async with running_bot(bot_settings):
        telegram.send_text("slow please", chat_id=606)
        sent = await telegram.wait_for("sendMessage", chat_id=606)
        assert sent[0].plain_text == "The answer is taking too long. Please try again a bit later."
        for _ in range(100):
            if len(await rows(db, ANSWERS)) == 2:
                break
            await asyncio.sleep(0.05)
    assert await rows(db, ANSWERS) == [
        ("user", "slow please"), ("assistant", "Slow words arrive one by one.")]  # fmt: skip
    assert len(fake_llm.chat_requests) == 1


async def test_drafts_of_a_long_answer_with_code_are_valid_single_messages(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:  # fmt: skip
    code = "\n".join(f"x{i} = values[{i}] < limit && ok  # <tag>" for i in range(150))
    answer = "Intro with *emphasis*.\n\n```python\n" + code + "\n```\n\nAnd **the end**."
    slow_stream(fake_llm, answer, chunk_chars=400, delay=0.05)
    bot_settings = make_bot_settings(telegram_server, backend.url, stream_draft_interval=0.1)
    async with running_bot(bot_settings):
        telegram.send_text("code please", chat_id=607)
        await telegram.wait_for("sendMessage", 2, chat_id=607)
        await settle(0.3)

    drafts = telegram.calls_to("sendMessageDraft", chat_id=607)
    assert len(drafts) >= 3
    assert not telegram.calls_to("sendMessageDraft", chat_id=607, ok=False)
    assert any("<pre>" in d.params["text"] for d in drafts)
    for draft in drafts:
        check_html(draft.params["text"])
        assert utf16_len(draft.params["text"]) <= 4096


@pytest.mark.parametrize(
    "partial",
    [
        "Some **bold",
        "Some **bold ",
        "```python\nprint('a < b')",
        "text & `code",
        "1. item\n2. ite",
        "x" * 9000,
    ],
)
def test_draft_of_unfinished_markdown_is_valid_html_of_one_message(partial: str) -> None:
    html = draft_html(partial)
    check_html(html)
    assert 0 < utf16_len(html) <= 4096


def test_reply_text_sends_the_stripped_answer_cut_at_the_limit() -> None:
    text = ReplyText(limit=5)
    sent = [text.feed(d) for d in ["  \n ", "ab", "c   ", "  ", "def", "more"]]
    assert "".join(sent) == text.text == "  \n abc     defmore".strip()[:5] == "abc  "
    assert text.full

    whole = ReplyText(limit=100)
    sent = [whole.feed(d) for d in [" a", " b ", "\n"]]
    assert "".join(sent) == whole.text == "a b" and sent[-1] == ""
