"""Every prompt is one strict chat templates accept: one system message, then alternating
user/assistant turns from a user turn to a user turn, with nothing stored silently lost."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.llm.base import LLMBadResponse
from llm_bot_core.llm.openai_compat import OpenAIChatModel
from llm_bot_core.llm.strict_chat import ALTERNATION_ERROR, assert_strict_chat, chat_problems
from llm_bot_core.memory.prompt import (
    CONTEXT_MARKERS,
    EARLIER_REPLY_MARKER,
    RECALL_FOOTER,
    RECALL_HEADER,
    SUMMARY_HEADER,
    build_prompt,
)
from llm_bot_core.memory.store import StoredMessage, Summary
from llm_bot_core.memory.summary import SUMMARY_SYSTEM_PROMPT, summary_prompt
from llm_bot_core.rag.base import RecalledFact
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import drain_jobs, make_settings, running_app

SYSTEM = "You are a helpful assistant."
WHEN = datetime(2026, 11, 24, tzinfo=UTC)


def msg(i: int, role: str, content: str | None = None) -> StoredMessage:
    return StoredMessage(id=i, role=role, content=content or f"{role} {i}")


def fact(content: str) -> RecalledFact:
    return RecalledFact(message_id=1, role="user", content=content, created_at=WHEN, score=0.9)


# --- the checker ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "problem"),
    [
        ([], "empty"),
        (["user"], "not the system message"),
        (["system"], "no user turn"),
        (["system", "system", "user"], "only the first"),
        (["system", "user", "system"], "only the first"),
        (["system", "user", "user"], "both user turns"),
        (["system", "assistant", "user"], "opens the conversation as assistant"),
        (["system", "user", "assistant"], "ends with an assistant turn"),
        (["system", "user", "tool", "user"], "role 'tool'"),
    ],
)
def test_checker_names_what_a_strict_template_rejects(roles: list[str], problem: str) -> None:
    messages = [{"role": role, "content": "x"} for role in roles]
    problems = chat_problems(messages)
    assert any(problem in p for p in problems), problems
    with pytest.raises(ValueError, match="Conversation roles must alternate"):
        assert_strict_chat(messages)


def test_checker_accepts_alternating_turns_and_wants_text_content() -> None:
    good = [{"role": r, "content": "x"} for r in ("system", "user", "assistant", "user")]
    assert chat_problems(good) == []
    assert chat_problems([*good[:-1], {"role": "user", "content": None}]) == [
        "message 3 (user) has no text content"
    ]


# --- the chat prompt builder: the three ways today's prompts were rejected --------------------


def test_summary_and_recalled_memory_add_no_system_messages_after_the_first() -> None:
    prompt = build_prompt(
        SYSTEM, Summary(3, "The user has a dog.", 10), [msg(11, "user", "Name my dog?")],
        [fact("My dog is Ryzhik"), fact("I live in Omsk")],
    )
    assert_strict_chat(prompt)
    assert prompt[0] == {"role": "system", "content": f"{SYSTEM}\n\n{SUMMARY_HEADER}\n"
                                                      "The user has a dog."}
    assert prompt[1] == {"role": "user", "content": f"{RECALL_HEADER}\n"
                         "- [2026-11-24, user] My dog is Ryzhik\n"
                         "- [2026-11-24, user] I live in Omsk\n"
                         f"{RECALL_FOOTER}\n\nName my dog?"}


def test_an_unanswered_message_shares_the_user_turn_with_the_next() -> None:
    window = [msg(1, "user", "hi"), msg(2, "assistant", "hello"), msg(3, "user", "first"),
              msg(4, "user", "second")]
    prompt = build_prompt(SYSTEM, None, window)
    assert prompt[1:] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "first\n\nsecond"},
    ]


def test_a_window_opening_with_a_reply_keeps_it_as_context_of_the_first_user_turn() -> None:
    window = [msg(1, "assistant", "Your dog is Ryzhik."), msg(2, "user", "thanks")]
    prompt = build_prompt(SYSTEM, None, window)
    assert prompt[1:] == [
        {"role": "user", "content": f"{EARLIER_REPLY_MARKER}\nYour dog is Ryzhik.\n\nthanks"}
    ]


def test_stored_system_and_tool_messages_are_marked_context_on_the_user_side() -> None:
    window = [msg(1, "user", "weather?"), msg(2, "assistant", "checking"),
              msg(3, "tool", "sunny, 20C"), msg(4, "assistant", "It is sunny."),
              msg(5, "system", "the user is on holiday"), msg(6, "user", "and tomorrow?")]
    prompt = build_prompt(SYSTEM, None, window)
    assert_strict_chat(prompt)
    assert prompt[1:] == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "checking"},
        {"role": "user", "content": f"{CONTEXT_MARKERS['tool']}\nsunny, 20C"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": f"{CONTEXT_MARKERS['system']}\nthe user is on holiday\n\n"
                                    "and tomorrow?"},
    ]


# --- every builder, on arbitrary windows ------------------------------------------------------

contents = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
windows = st.lists(
    st.tuples(st.sampled_from(["user", "assistant", "system", "tool"]), contents), max_size=12
).map(lambda items: [StoredMessage(id=i + 1, role=r, content=c) for i, (r, c) in
                     enumerate(items)])
summaries = st.none() | st.builds(Summary, st.integers(1, 9), contents, st.integers(0, 99))
facts = st.lists(st.builds(fact, contents), max_size=3)


@given(system=contents, summary=summaries, recent=windows, recalled=facts)
def test_chat_prompt_of_any_window_is_strict_and_loses_nothing(
    system: str, summary: Summary | None, recent: list[StoredMessage],
    recalled: list[RecalledFact],
) -> None:
    prompt = build_prompt(system, summary, recent, recalled)
    content = [str(m["content"]) for m in prompt]  # build_prompt writes text only
    assert chat_problems(prompt) == []
    assert content[0].startswith(system)
    if summary is not None and summary.content.strip():
        assert content[0].endswith(f"{SUMMARY_HEADER}\n{summary.content}")
    # Every stored message appears, in order, in the turns after the system message.
    turns = "\n\n".join(content[1:])
    position = 0
    for message in recent:
        position = turns.index(message.content, position) + len(message.content)
    if recalled:
        assert content[-1].startswith(RECALL_HEADER)
    if recent and recent[-1].role == "user":  # chat's case: the question closes the prompt
        assert content[-1].endswith(recent[-1].content)


@given(previous=summaries, chunk=windows)
def test_summary_prompt_of_any_chunk_is_strict(
    previous: Summary | None, chunk: list[StoredMessage]
) -> None:
    prompt = summary_prompt(previous, chunk)
    assert chat_problems(prompt) == []
    assert prompt[0]["content"] == SUMMARY_SYSTEM_PROMPT


# --- what the model server receives -----------------------------------------------------------


@pytest.mark.raw_prompts
async def test_strict_fake_rejects_what_a_strict_template_server_rejects(
    llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    fake_llm.strict = True
    bad: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "a"},
                      {"role": "system", "content": "recalled"}, {"role": "user", "content": "b"}]
    async with httpx.AsyncClient(base_url=llm_server.base_url) as client:
        response = await client.post("/chat/completions", json={"model": "m", "messages": bad})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(ALTERNATION_ERROR)
    assert [problems for _, problems in fake_llm.prompt_violations] == [
        ["message 2 is a system message; only the first may be one",
         "messages 1 and 3 are both user turns"]
    ]
    # Through the real client the rejection is a bad response, which is not retried.
    model = OpenAIChatModel(make_settings("postgresql://unused/db", llm_server.base_url,
                                          llm_max_retries=2).llm)
    try:
        with pytest.raises(LLMBadResponse):
            await model.complete(bad)
    finally:
        await model.aclose()
    assert len(fake_llm.chat_requests) == 2


async def test_every_prompt_a_conversation_sends_is_accepted_by_a_strict_server(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    # An even window, summaries every 4 messages, a failed call, and an operator's system note
    # and a tool result stored between turns: each way a prompt used to break the invariant.
    settings = make_settings(clean_db, llm_server.base_url, short_history_limit=4,
                             summary_threshold=4)
    assert fake_llm.strict  # set by conftest for every test without the raw_prompts marker
    chat = {"user_id": "u", "chat_id": "c", "chat_type": "private"}
    async with running_app(settings) as client:
        for i in range(3):
            ok = await client.post("/v1/chat/handle", json={**chat, "text": f"question {i}"})
            assert ok.status_code == 200, ok.text
        await drain_jobs(client)  # the failure is for the chat call, not a summary in flight
        fake_llm.fail_next(1, status=503)
        failed = await client.post("/v1/chat/handle", json={**chat, "text": "unanswered"})
        assert failed.status_code == 502
        async with db.begin() as conn:
            await conn.execute(text(
                "INSERT INTO messages (session_id, role, content) "
                "SELECT id, r, c FROM chat_sessions, (VALUES ('system', 'note'), "
                "('tool', 'result')) AS v(r, c)"))
        for i in range(3, 6):
            ok = await client.post("/v1/chat/handle", json={**chat, "text": f"question {i}"})
            assert ok.status_code == 200, ok.text
        await drain_jobs(client)

    sent = [r["messages"] for r in fake_llm.requests if r.get("_kind") == "chat"]
    assert len(fake_llm.summary_requests) >= 2
    assert [chat_problems(messages) for messages in sent] == [[]] * len(sent)
    assert fake_llm.prompt_violations == []
    # The prompt after the failure still holds the unanswered message, the note and the tool
    # result, each marked, in the user turn before the next question.
    after_failure = fake_llm.chat_requests[4]["messages"]
    assert after_failure[-1]["content"] == (
        f"unanswered\n\n{CONTEXT_MARKERS['system']}\nnote\n\n{CONTEXT_MARKERS['tool']}\nresult"
        "\n\nquestion 3"
    )
