"""A background job that fails for good leaves a row in job_failures (the dashboard's panel)."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.db.engine import create_engine
from llm_bot_core.llm.openai_compat import build_chat_model
from llm_bot_core.memory.jobs import SUMMARIZE_JOB, InProcessJobs
from llm_bot_core.rag.factory import build_semantic_memory
from llm_bot_core.usage.ledger import UsageLedger
from llm_bot_core.worker.app import SUMMARIZE_TASK
from tests.conftest import make_settings, running_app
from tests.test_cli import free_port


async def test_a_summary_whose_model_is_unreachable_is_recorded_as_a_failed_job(
    settings: Settings, db: AsyncEngine, tmp_path: Path
) -> None:
    async with running_app(settings) as client:
        for n in range(2):
            body = {"user_id": "9", "chat_id": "9", "text": f"message {n}"}
            assert (await client.post("/v1/chat/handle", json=body)).status_code == 200
    async with db.connect() as conn:
        session_id = uuid.UUID(str(await conn.scalar(text("SELECT id FROM chat_sessions"))))

    # The same database, a model nobody answers for: the job's one attempt fails.
    broken = make_settings(
        settings.storage.database_url or "",
        f"http://127.0.0.1:{free_port()}/v1",
        summary_threshold=2,
    )
    engine = create_engine(settings.storage.database_url or "", broken.storage)
    model = build_chat_model(broken.llm)
    semantic = await build_semantic_memory(broken.rag, engine, data_dir=tmp_path)
    ledger = UsageLedger(engine)
    jobs = InProcessJobs(engine, model, broken.memory, semantic, ledger, fts_config="simple")
    try:
        jobs.summarize(session_id, pending=4)
        await jobs.drain()
    finally:
        await ledger.aclose()
        await model.aclose()
        await engine.dispose()

    async with db.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT task, arguments, error, attempts FROM job_failures"
        ))).all()
    assert len(rows) == 1
    task, arguments, error, attempts = rows[0]
    assert task == SUMMARIZE_JOB == SUMMARIZE_TASK  # the same name as the Celery task's
    assert str(session_id) in arguments
    assert error.startswith("LLMUnavailable")
    assert attempts == 1
