"""Fact extraction with the scripted fake model: provenance, corrections, retractions, malformed
answers, concurrent jobs, and erasure of what was derived from erased messages."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llm_bot_core.config import Settings
from llm_bot_core.llm.openai_compat import OpenAIChatModel
from llm_bot_core.memory.extraction import ExtractionRun, extract_facts
from llm_bot_core.metrics import FACT_BATCHES
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from llm_bot_core.usage.ledger import UsageLedger
from tests.conftest import make_settings, running_app
from tests.rag_helpers import say, scalar, start_over, whole_prompt
from tests.test_api import rows
from tests.test_facts_api import system_message

pytestmark = pytest.mark.asyncio

ALICE = "1001"


@pytest.fixture
def every_two(clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM) -> Settings:
    return make_settings(clean_db, llm_server.base_url, facts_every=2)


async def current_facts(db: AsyncEngine, user: str = ALICE) -> list[str]:
    found = await rows(
        db,
        "SELECT content FROM facts WHERE user_id = :u AND superseded_at IS NULL ORDER BY id",
        u=user,
    )
    return [r[0] for r in found]


def considered_lines(fake: FakeLLM) -> list[str]:
    """The user messages each extraction request was asked about, in order."""
    lines: list[str] = []
    for request in fake.fact_requests:
        new_part = request["messages"][-1]["content"].split("New messages of the user:\n", 1)[1]
        lines.extend(re.sub(r"^\[\d+\] ", "", line) for line in new_part.splitlines())
    return lines


async def user_messages(db: AsyncEngine) -> list[tuple[int, str]]:
    return [
        (r[0], r[1])
        for r in await rows(db, "SELECT id, content FROM messages WHERE role = 'user' ORDER BY id")
    ]


async def test_facts_are_extracted_with_provenance_and_a_correction_supersedes(
    every_two: Settings, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    async with running_app(every_two) as client:
        await say(client, ALICE, ALICE, "Hi! I live in Moscow.")
        await say(client, ALICE, ALICE, "My name is Alice.")
        assert await current_facts(db) == ["Lives in Moscow", "Name is Alice"]
        ids = {c: i for i, c in await user_messages(db)}
        provenance = await rows(db, "SELECT content, source, source_message_ids FROM facts")
        assert sorted(provenance) == [
            ("Lives in Moscow", "extracted", [ids["Hi! I live in Moscow."]]),
            ("Name is Alice", "extracted", [ids["My name is Alice."]]),
        ]

        await say(client, ALICE, ALICE, "I live in Berlin.")
        await say(client, ALICE, ALICE, "The weather is nice.")
        assert await current_facts(db) == ["Name is Alice", "Lives in Berlin"]
        ((_, successor, when),) = await rows(
            db,
            "SELECT id, superseded_by, superseded_at FROM facts WHERE content = 'Lives in Moscow'",
        )
        assert when is not None
        assert successor == await scalar(
            db, "SELECT id FROM facts WHERE content = 'Lives in Berlin'"
        )

        await say(client, ALICE, ALICE, "I no longer live in Berlin.")
        await say(client, ALICE, ALICE, "Where should I go?")
        assert await current_facts(db) == ["Name is Alice"]
        retracted = await rows(
            db,
            "SELECT superseded_by, superseded_at IS NOT NULL FROM facts "
            "WHERE content = 'Lives in Berlin'",
        )
        assert retracted == [(None, True)]
        await say(client, ALICE, ALICE, "Thanks.")  # the next prompt after the batch
        system = system_message(fake_llm)
        assert "Name is Alice" in system and "Lives in" not in system

        history = (await client.get(f"/v1/memory/users/{ALICE}/facts?history=true")).json()
        assert len(history["facts"]) == 3

    # Each user message was considered exactly once, in order, and each call was counted.
    said = await user_messages(db)
    assert considered_lines(fake_llm) == [c for _, c in said[:6]]
    cost = await rows(
        db,
        "SELECT calls, prompt_tokens > 0, completion_tokens > 0, "
        "last_message_id, skipped_batches FROM fact_extraction",
    )
    assert cost == [(3, True, True, said[5][0], 0)]
    # Structured output was asked for, and every extraction prompt is one system message and
    # one user turn (the strict fixture checks the shape of every prompt).
    assert all(r["response_format"]["type"] == "json_schema" for r in fake_llm.fact_requests)


async def seed(client: httpx.AsyncClient, texts: list[str], user: str = ALICE) -> None:
    for words in texts:
        await say(client, user, user, words)


async def seed_unextracted(database_url: str, llm: FakeLLMServer, texts: list[str]) -> None:
    """The user's messages, stored by an app that extracts no facts."""
    off = make_settings(database_url, llm.base_url, facts_every=0)
    async with running_app(off) as client:
        await seed(client, texts)


class Extractor:
    """`extract_facts` for ALICE's private chat, outside the app, as the job runs it."""

    def __init__(self, database_url: str, llm: FakeLLMServer) -> None:
        self.settings = make_settings(database_url, llm.base_url, facts_every=2)
        self.model = OpenAIChatModel(self.settings.llm)
        self.engine = create_async_engine(database_url)
        self.ledger = UsageLedger(self.engine)

    async def run(self) -> ExtractionRun:
        return await extract_facts(
            self.engine,
            self.model,
            self.settings.memory,
            ALICE,
            ALICE,
            fts_config=self.settings.rag.rag_fts_config,
            ledger=self.ledger,
        )

    async def __aenter__(self) -> Extractor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.ledger.aclose()
        finally:
            await self.engine.dispose()
            await self.model.aclose()


async def test_a_malformed_answer_is_asked_again_once_then_the_batch_is_skipped(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    messages = ["My car is Volvo.", "Hello.", "My dog is Rex.", "Bye."]
    await seed_unextracted(clean_db, llm_server, messages)
    skipped_before = FACT_BATCHES.labels("skipped")._value.get()
    async with Extractor(clean_db, llm_server) as extractor:
        fake_llm.malformed_facts = 1  # the first batch: one bad answer, then a good one
        first = await extractor.run()
        assert (first.batches, first.skipped, first.added) == (2, 0, 2)
        assert await current_facts(db) == ["Car is Volvo", "Dog is Rex"]
        assert "response_format" not in fake_llm.fact_requests[1]  # the retry asks plainly

        await seed_unextracted(clean_db, llm_server, ["My cat is Tom.", "Ok."])
        fake_llm.malformed_facts = 2
        second = await extractor.run()
        again = await extractor.run()
    assert (second.batches, second.skipped, second.added) == (1, 1, 0)
    assert again.batches == 0  # skipped means considered: not asked about again
    assert await current_facts(db) == ["Car is Volvo", "Dog is Rex"]
    assert FACT_BATCHES.labels("skipped")._value.get() == skipped_before + 1
    assert await rows(
        db, "SELECT calls, skipped_batches, last_message_id FROM fact_extraction"
    ) == [(5, 1, (await user_messages(db))[-1][0])]


async def test_concurrent_jobs_consider_each_message_once_and_store_each_fact_once(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    await seed_unextracted(clean_db, llm_server, [f"My hobby{i} is sport{i}." for i in range(7)])
    fake_llm.facts_latency = 0.05  # the jobs overlap while each waits for the model
    async with Extractor(clean_db, llm_server) as extractor:
        runs = await asyncio.gather(*(extractor.run() for _ in range(5)))
    assert sum(r.batches for r in runs) == 3
    facts = await current_facts(db)
    assert sorted(facts) == sorted(f"Hobby{i} is sport{i}" for i in range(6))
    said = await user_messages(db)
    # Every call is the user's cost, the ones whose batch another job wrote first too.
    assert await rows(db, "SELECT last_message_id, calls FROM fact_extraction") == [
        (said[5][0], len(fake_llm.fact_requests))
    ]
    # ... and is in the usage ledger, under the user and the chat (counts against their budget).
    assert await rows(
        db,
        "SELECT user_id, chat_id, count(*) FROM llm_usage WHERE purpose = 'facts' "
        "GROUP BY user_id, chat_id",
    ) == [(ALICE, ALICE, len(fake_llm.fact_requests))]


async def test_erasing_a_session_or_the_user_takes_the_facts_drawn_from_it_out_of_every_prompt(
    every_two: Settings, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    async with running_app(every_two) as client:
        await seed(client, ["My car is Volvo.", "Nice."])
        first = await scalar(db, "SELECT id FROM chat_sessions")
        await start_over(client, ALICE)
        await seed(client, ["My dog is Barbossa.", "Good."])
        written = await client.post(
            f"/v1/memory/users/{ALICE}/facts", json={"content": "Likes rooibos"}
        )
        assert written.status_code == 201
        assert await current_facts(db) == ["Car is Volvo", "Dog is Barbossa", "Likes rooibos"]

        assert (await client.delete(f"/v1/memory/sessions/{first}")).status_code == 200
        assert await current_facts(db) == ["Dog is Barbossa", "Likes rooibos"]
        await say(client, ALICE, ALICE, "What do I drive?")
        assert "Volvo" not in whole_prompt(fake_llm)

        assert (await client.delete(f"/v1/memory/users/{ALICE}")).status_code == 200
        assert await scalar(db, "SELECT count(*) FROM facts") == 0
        assert await scalar(db, "SELECT count(*) FROM fact_extraction") == 0
        await say(client, ALICE, ALICE, "Who am I?")
        prompt = whole_prompt(fake_llm)
        assert "Barbossa" not in prompt and "rooibos" not in prompt and "Volvo" not in prompt


async def test_in_a_group_facts_are_learned_for_that_group_without_showing_private_ones(
    every_two: Settings, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    async with running_app(every_two) as client:
        private = await client.post(
            f"/v1/memory/users/{ALICE}/facts", json={"content": "Diagnosis is asthma"}
        )
        assert private.status_code == 201
        await seed_in(client, "-100", ["My dog is Barbossa.", "Hi all!", "Anyone here?"])
        assert await rows(db, "SELECT content, chat_id FROM facts ORDER BY id") == [
            ("Diagnosis is asthma", None),
            ("Dog is Barbossa", "-100"),
        ]
        prompt = whole_prompt(fake_llm)
        assert "Dog is Barbossa" in prompt and "asthma" not in prompt
    # The extraction request of the group's batch did not carry the private fact either.
    assert all("asthma" not in str(r["messages"]) for r in fake_llm.fact_requests)


async def seed_in(client: httpx.AsyncClient, chat: str, texts: list[str]) -> None:
    for words in texts:
        await say(client, ALICE, chat, words)


async def test_in_a_group_each_speakers_facts_are_their_own(
    every_two: Settings, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    async with running_app(every_two) as client:
        for user, words in (
            (ALICE, "My dog is Barbossa."),
            ("2002", "My cat is Tom."),
            (ALICE, "Nice to meet you."),
            ("2002", "Same here."),
            (ALICE, "Who has pets?"),
            ("2002", "Me."),
        ):
            await say(client, user, "-100", words)
        found = await rows(db, "SELECT user_id, content, chat_id FROM facts ORDER BY user_id")
        assert found == [(ALICE, "Dog is Barbossa", "-100"), ("2002", "Cat is Tom", "-100")]
        await say(client, "2002", "-100", "What do you know about me?")
        prompt = whole_prompt(fake_llm)
        assert "Cat is Tom" in prompt and "Dog is Barbossa" not in system_message(fake_llm)
