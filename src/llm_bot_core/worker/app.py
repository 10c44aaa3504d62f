"""The Celery application (Redis broker from CELERY_BROKER_URL)."""

from __future__ import annotations

from celery import Celery

from llm_bot_core.config import WorkerSettings, get_settings

SUMMARIZE_TASK = "memory.summarize_session"
INDEX_TASK = "rag.index_messages"
EXTRACT_FACTS_TASK = "memory.extract_facts"
DESCRIBE_PICTURES_TASK = "memory.describe_pictures"
BROKER_SOCKET_TIMEOUT = 5.0


def create_celery(settings: WorkerSettings | None = None) -> Celery:
    settings = settings or get_settings().worker
    app = Celery("llm_bot_core", broker=settings.celery_broker_url)
    app.conf.update(
        task_default_queue=settings.celery_queue,
        task_serializer="json",
        accept_content=["json"],
        # Ack after the task finished: a worker killed mid-summary leaves the message to be
        # redelivered, and the task is idempotent, so redoing it is safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # An unacknowledged task (its worker died) is redelivered after the visibility timeout;
        # sweep for such tasks often enough that this is what bounds the delay.
        broker_transport_options={
            "visibility_timeout": settings.summary_lock_seconds,
            "unacked_restore_interval": max(1, min(60, settings.summary_lock_seconds // 5)),
            "unacked_restore_throttle": 1,
            # Without them a broker that stops answering (failover, a dropped NAT entry) makes a
            # publish wait forever, and the backend's exit waits for that publishing thread.
            "socket_timeout": BROKER_SOCKET_TIMEOUT,
            "socket_connect_timeout": BROKER_SOCKET_TIMEOUT,
        },
        worker_hijack_root_logger=False,
        imports=["llm_bot_core.worker.tasks"],
    )
    return app


celery_app = create_celery()
