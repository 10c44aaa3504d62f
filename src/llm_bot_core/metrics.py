"""Prometheus metrics of the backend and the worker; /metrics serves them.

With several uvicorn workers, `llm-bot-core serve` points PROMETHEUS_MULTIPROC_DIR at a fresh
directory before the workers start, so a scrape of any worker sees the sum over all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_bot_core.llm.base import ChatMessage, ChatModel, Completion, LLMError, StreamItem

T = TypeVar("T")

# Buckets span a local fake LLM (sub-millisecond) to a slow provider (a minute).
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

HTTP_LATENCY = Histogram(
    "llmbot_http_request_duration_seconds",
    "Time from request start to the last byte of the response, by route template.",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
LLM_LATENCY = Histogram(
    "llmbot_llm_request_duration_seconds",
    "Chat-completion calls (including the SDK's retries), by purpose and outcome.",
    ["purpose", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
LLM_TOKENS = Counter(
    "llmbot_llm_tokens_total",
    "Tokens reported by the provider, by purpose (chat, summary) and kind (prompt, completion).",
    ["purpose", "kind"],
)
LLM_ANSWERS = Counter(
    "llmbot_llm_answers_total",
    "Completed chat completions by purpose and the model that answered (LLM_FALLBACK_MODELS).",
    ["purpose", "model"],
)
LLM_FIRST_TOKEN = Histogram(
    "llmbot_llm_first_token_seconds",
    "Streamed completions: time from the call to the first text delta, by purpose.",
    ["purpose"],
    buckets=_LATENCY_BUCKETS,
)
JOBS = Counter(
    "llmbot_jobs_total",
    "Background jobs by kind (summary, index) and outcome (ok, failed, publish_failed).",
    ["job", "outcome"],
)
FACT_BATCHES = Counter(
    "llmbot_fact_batches_total",
    "Fact extraction batches by outcome (ok; skipped after two malformed answers).",
    ["outcome"],
)
JOB_LAG = Histogram(
    "llmbot_job_queue_lag_seconds",
    "Time a background job waited between being queued and starting.",
    ["job"],
    buckets=_LATENCY_BUCKETS,
)
JOB_DURATION = Histogram(
    "llmbot_job_duration_seconds",
    "Time a background job ran.",
    ["job"],
    buckets=_LATENCY_BUCKETS,
)
DB_POOL_CHECKED_OUT = Gauge(
    "llmbot_db_pool_checked_out",
    "Database connections currently in use.",
    multiprocess_mode="livesum",
)
DB_POOL_OPEN = Gauge(
    "llmbot_db_pool_open",
    "Database connections currently open (in use or idle in the pool).",
    multiprocess_mode="livesum",
)


class UsageAccount(Protocol):
    """Where a call's usage is accounted, bound to whom it was made for (usage/ledger.py)."""

    def record(self, purpose: str, completion: Completion) -> None:
        """Note the call; returns at once, never raises."""
        ...


async def metered_completion(
    chat_model: ChatModel,
    purpose: str,
    messages: list[ChatMessage],
    /,
    *,
    account: UsageAccount | None,
    **kwargs: Any,
) -> Completion:
    """`model.complete` with its latency, outcome and tokens recorded under `purpose`, and its
    usage noted in `account` (None only for calls nobody pays for)."""
    started = time.perf_counter()
    try:
        completion = await chat_model.complete(messages, **kwargs)
    except LLMError as exc:
        LLM_LATENCY.labels(purpose, exc.code).observe(time.perf_counter() - started)
        raise
    _record(purpose, started, completion)
    if account is not None:
        account.record(purpose, completion)
    return completion


async def metered_stream(
    chat_model: ChatModel,
    purpose: str,
    messages: list[ChatMessage],
    /,
    *,
    account: UsageAccount | None,
    **kwargs: Any,
) -> AsyncIterator[StreamItem]:
    """`model.stream` with the metrics of `metered_completion` and the time to first delta;
    the final Completion's usage is noted in `account`."""
    started = time.perf_counter()
    first = True
    try:
        async for item in chat_model.stream(messages, **kwargs):
            if isinstance(item, Completion):
                _record(purpose, started, item)
                if account is not None:
                    account.record(purpose, item)
            elif first:
                first = False
                LLM_FIRST_TOKEN.labels(purpose).observe(time.perf_counter() - started)
            yield item
    except LLMError as exc:
        LLM_LATENCY.labels(purpose, exc.code).observe(time.perf_counter() - started)
        raise


def _record(purpose: str, started: float, completion: Completion) -> None:
    LLM_LATENCY.labels(purpose, "ok").observe(time.perf_counter() - started)
    LLM_ANSWERS.labels(purpose, completion.model).inc()
    if completion.prompt_tokens:
        LLM_TOKENS.labels(purpose, "prompt").inc(completion.prompt_tokens)
    if completion.completion_tokens:
        LLM_TOKENS.labels(purpose, "completion").inc(completion.completion_tokens)


async def timed_job(job: str, queued_at: float | None, run: Callable[[], Awaitable[T]]) -> T:
    """Run a background job, recording its queue lag, duration and outcome."""
    started = time.time()
    if queued_at is not None:
        JOB_LAG.labels(job).observe(max(0.0, started - queued_at))
    try:
        result = await run()
    except BaseException:
        JOBS.labels(job, "failed").inc()
        raise
    finally:
        JOB_DURATION.labels(job).observe(time.time() - started)
    JOBS.labels(job, "ok").inc()
    return result


def instrument_pool(engine: AsyncEngine) -> None:
    """Keep the pool gauges current from the pool's own events (no work at scrape time)."""
    pool = engine.sync_engine.pool
    event.listen(pool, "connect", lambda *_: DB_POOL_OPEN.inc())
    event.listen(pool, "close", lambda *_: DB_POOL_OPEN.dec())
    event.listen(pool, "close_detached", lambda *_: DB_POOL_OPEN.dec())
    event.listen(pool, "checkout", lambda *_: DB_POOL_CHECKED_OUT.inc())
    event.listen(pool, "checkin", lambda *_: DB_POOL_CHECKED_OUT.dec())


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Pure ASGI middleware: one histogram observation per HTTP request, by route template.

    It also adds `Server-Timing: app;dur=<ms>`, the time from the request reaching the app to
    its response starting, so a client can subtract the `llm` entry and get the backend's own
    overhead without the network and its own scheduling in it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed_ms = (time.perf_counter() - started) * 1000
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"server-timing", b"app;dur=%.2f" % elapsed_ms),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # Unknown paths share one label, so scanners cannot blow up the series count.
            template = getattr(route, "path", None) or "unmatched"
            HTTP_LATENCY.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
