"""Russian recall, end to end through the chat API: does the fact reach the prompt's RAG block?

A user tells personal facts among small talk (and near-duplicate small talk) over several
sessions, each ended by /start; then, in a new session, asks about each fact in other words and
other word forms. The assistant's replies come from a fake OpenAI-compatible server cycling
generic answers ("Понятно!", "Хорошо, я запомню."), which are near duplicates too. Recall is the
share of questions whose fact appears in the prompt actually sent to the model, with the
product's defaults (top-K, similarity threshold, de-duplication). Prints one JSON object.

    python bench/russian_recall.py [--store pgvector|qdrant-local] [--embedder e5|use]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from llm_bot_core.api.app import create_app
from llm_bot_core.config import Settings
from llm_bot_core.db.migrate import upgrade_to_head
from llm_bot_core.memory.prompt import RECALL_FOOTER, RECALL_HEADER
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer

DATA = Path(__file__).resolve().parent / "data" / "russian_memory.json"


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text())
    return data


async def evaluate(settings: Settings, fake: FakeLLM, data: dict[str, Any] | None = None,
                   user: str = "ru-user", chat: str = "ru-chat") -> dict[str, Any]:
    """Run the dialogue through a fresh app and score every question."""
    data = data or load()
    replies = itertools.cycle(data["assistant_replies"])
    fake.reply = lambda messages: next(replies)
    app = create_app(settings)
    misses: list[dict[str, Any]] = []
    found = 0
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b")
        jobs = app.state.services.jobs

        async def say(message: str) -> None:
            response = await client.post("/v1/chat/handle",
                                         json={"user_id": user, "chat_id": chat,
                                               "chat_type": "private", "text": message})
            response.raise_for_status()
            await jobs.drain()

        for session in data["sessions"]:
            for message in session:
                await say(message)
            await client.post("/v1/chat/reset", json={"chat_id": chat})
        for item in data["questions"]:
            fact = data["sessions"][item["fact"][0]][item["fact"][1]]
            await say(item["q"])
            last_turn = fake.chat_requests[-1]["messages"][-1]["content"]
            block = (last_turn.split(RECALL_FOOTER, 1)[0]
                     if last_turn.startswith(RECALL_HEADER) else "")
            if fact in block:
                found += 1
            else:
                misses.append({"question": item["q"], "fact": fact,
                               "recalled": block.splitlines()[1:]})
        await client.aclose()
        description = getattr(app.state.services.semantic, "description", "off")
    total = len(data["questions"])
    return {"questions": total, "recall": round(found / total, 4), "found": found,
            "semantic_memory": description, "top_k": settings.rag.rag_top_k, "misses": misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("pgvector", "qdrant-local"), default="pgvector")
    parser.add_argument("--embedder", choices=("e5", "use"), default="e5")
    parser.add_argument("--misses", action="store_true", help="list the questions missed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="ru-recall-"))
    workdir.chmod(0o755)
    try:
        from llm_bot_core.db.embedded import start_embedded_postgres

        url = start_embedded_postgres(workdir)
        upgrade_to_head(url)
        with FakeLLMServer() as server:
            settings = Settings(
                _env_file=None, database_url=url, data_dir=workdir, llm_base_url=server.base_url,
                migrate_on_start=False, rag_enabled=True, rag_embedder="local",
                local_embedding_model=args.embedder,
                qdrant_path=workdir / "qdrant" if args.store == "qdrant-local" else None)
            result = asyncio.run(evaluate(settings, server.fake))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.misses:
        result["misses"] = [m["question"] for m in result["misses"]]
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
