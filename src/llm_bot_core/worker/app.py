"""The Celery application (Redis broker from CELERY_BROKER_URL)."""

from __future__ import annotations

from celery import Celery

from llm_bot_core.config import get_settings

SUMMARIZE_TASK = "memory.summarize_session"
INDEX_TASK = "rag.index_messages"


def create_celery(broker_url: str | None = None) -> Celery:
    settings = get_settings()
    app = Celery("llm_bot_core", broker=broker_url or settings.celery_broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        # Ack after the task finished: a worker killed mid-summary leaves the message to be
        # redelivered, and the task is idempotent, so redoing it is safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.summary_lock_seconds},
        worker_hijack_root_logger=False,
        imports=["llm_bot_core.worker.tasks"],
    )
    return app


celery_app = create_celery()
