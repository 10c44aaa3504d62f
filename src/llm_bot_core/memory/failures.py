"""Background jobs that failed for good, kept in `job_failures` for the operators' dashboard.

A failure the job runner retries (Celery's autoretry) is not one yet: only the last attempt's is
written, by the worker's `task_failure` signal or, in-process, by the job itself.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.db.models import JobFailure

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000


async def record_failure(
    engine: AsyncEngine, *, task: str, arguments: Any, error: BaseException, attempts: int = 1
) -> None:
    """Write one row to job_failures; never raises (a failure to write it is only logged)."""
    row = {
        "task": task,
        "arguments": json.dumps(arguments, default=str, ensure_ascii=False),
        "error": f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS],
        "attempts": attempts,
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(JobFailure), row)
    except Exception as exc:  # the database may be why the job failed
        log.error("could not record the failure of %s: %r", task, exc)
