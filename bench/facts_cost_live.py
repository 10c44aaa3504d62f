"""Fact extraction cost per 100 user messages, measured through the real backend.

bench/facts_cost.py computes the cost from the requests the job would build; this one runs the
job. The app runs in process with its defaults (FACTS_EVERY=6, semantic memory off) on an
embedded PostgreSQL, against the fake model, and speaker A's first 100 turns of a LoCoMo
conversation go through /v1/chat/handle as one user's messages in a private chat. Every
extraction request the fake model receives is counted: calls (retries included), prompt tokens
as characters / 4 plus 4 per message (as bench/prompt_size.py counts them), completion tokens of
the answers the same way. The scripted extractor answers each batch with --facts-per-batch new
facts of about --fact-chars characters (what bench/facts_cost.py assumes), so the known facts
the job sends grow as in production; `fact_extraction` (the per-user counters an operator
queries) is read back too, with the fake's word-count usage.

  python bench/facts_cost_live.py [--data locomo_dev.json] [--conversation 0]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))

from facts_cost import DEFAULT_DATA, MESSAGES, user_turns
from harness import postgres

from llm_bot_core.api.app import create_app
from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import (
    FakeLLM,
    FakeLLMServer,
    default_reply,
    is_extraction_request,
)

USER = "100500"


def tokens(messages: list[dict[str, Any]]) -> int:
    return sum(math.ceil(len(str(m.get("content", ""))) / 4) + 4 for m in messages)


class Extractor:
    """Scripted answers: `per_batch` new facts of about `chars` characters each."""

    def __init__(self, per_batch: int, chars: int) -> None:
        self.per_batch, self.chars = per_batch, chars
        self.answers: list[str] = []
        self.made = 0

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        if not is_extraction_request(messages):
            return default_reply(messages)
        operations = []
        for _ in range(self.per_batch):
            self.made += 1
            content = f"Fact number {self.made} about the user: ".ljust(self.chars, "x")
            operations.append(
                {"op": "add", "fact": None, "content": content, "importance": 0.7, "messages": [1]}
            )
        answer = json.dumps({"operations": operations})
        self.answers.append(answer)
        return answer


async def replay(settings: Settings, turns: list[str]) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            for turn in turns:
                body = {"user_id": USER, "chat_id": USER, "text": turn}
                response = await client.post("/v1/chat/handle", json=body)
                response.raise_for_status()
                await app.state.services.jobs.drain()


async def counters(url: str) -> dict[str, Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT sum(calls), sum(prompt_tokens), sum(completion_tokens), "
                        "(SELECT count(*) FROM facts) FROM fact_extraction"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    return {
        "calls": int(row[0] or 0),
        "prompt_tokens_fake_usage": int(row[1] or 0),
        "completion_tokens_fake_usage": int(row[2] or 0),
        "facts_stored": int(row[3]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--conversation", type=int, default=0)
    parser.add_argument("--facts-per-batch", type=int, default=2)
    parser.add_argument("--fact-chars", type=int, default=40)
    args = parser.parse_args()
    turns = user_turns(args.data, args.conversation)[:MESSAGES]
    extractor = Extractor(args.facts_per_batch, args.fact_chars)
    fake = FakeLLM(reply=extractor)
    with FakeLLMServer(fake) as server, postgres() as url:
        settings = Settings(
            _env_file=None,
            database_url=url,
            llm_base_url=server.base_url,
            openrouter_model="bench-model",
            rag_enabled=False,
        )
        asyncio.run(replay(settings, turns))
        stored = asyncio.run(counters(url))
    requests = fake.fact_requests
    prompt = sum(tokens(r["messages"]) for r in requests)
    completion = sum(math.ceil(len(a) / 4) for a in extractor.answers)
    print(
        json.dumps(
            {
                "user_messages": len(turns),
                "facts_every": settings.memory.facts_every,
                "calls": len(requests),
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "tokens_per_call": round((prompt + completion) / max(len(requests), 1)),
                "fact_extraction_row": stored,
                "assumed": {"facts_per_batch": args.facts_per_batch, "fact_chars": args.fact_chars},
            }
        )
    )


if __name__ == "__main__":
    main()
