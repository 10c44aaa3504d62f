"""The usage ledger: one record per model call, written in batches off the reply's path.

`record` only appends to a list; a flush runs USAGE_FLUSH_INTERVAL_MS later (at once when a
batch is full) and writes everything collected meanwhile in one transaction. At shutdown
`aclose` writes what is left, so a normal stop loses nothing. Until a record is written, the
budget check of this process adds it from here (`pending_tokens`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.db.models import LlmUsage
from llm_bot_core.llm.base import Completion

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
BATCH_SIZE = 500

# Purposes that GET /v1/usage/users/{id} counts apart from the rest (llm_usage.purpose).
TRANSCRIPTION = "transcription"
IMAGE_DESCRIPTION = "image_description"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    created_at: datetime
    user_id: str | None
    chat_id: str | None
    purpose: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    audio_seconds: float | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# Operators find every user who has spent anything in the admin panel, to limit or block them.
_KNOW_USERS = text(
    "INSERT INTO bot_users (user_id) SELECT DISTINCT unnest(CAST(:ids AS varchar[])) "
    "ON CONFLICT (user_id) DO NOTHING"
)


class UsageLedger:
    """Collects usage records of one process and writes them in batches."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        interval: float = 0.2,
        clock: Clock = utc_now,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._engine = engine
        self._interval = interval
        self.clock = clock
        self._batch_size = batch_size
        self._buffer: list[UsageRecord] = []
        self._writing: list[UsageRecord] = []  # the batch of the running flush
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._last_failed = False
        # Held while a batch is committed, and by a reader of the table and `pending_records`
        # together (`settled`): otherwise a batch committed after the reader's query began and
        # before it read the pending records is counted nowhere.
        self._commit = asyncio.Lock()

    def account(self, user_id: str | None, chat_id: str | None) -> Account:
        """What a model call made for this user and chat is recorded under."""
        return Account(self, user_id, chat_id)

    def record(
        self,
        purpose: str,
        completion: Completion,
        *,
        user_id: str | None,
        chat_id: str | None,
        audio_seconds: float | None = None,
    ) -> None:
        """Note one call's usage; returns at once and never raises (no I/O here).

        `audio_seconds`: the length of the recording a transcription call was billed for."""
        entry = UsageRecord(
            created_at=self.clock(),
            user_id=user_id,
            chat_id=chat_id,
            purpose=purpose,
            model=completion.model[:200],
            prompt_tokens=max(completion.prompt_tokens or 0, 0),
            completion_tokens=max(completion.completion_tokens or 0, 0),
            cost=completion.cost,
            audio_seconds=audio_seconds,
        )
        self._buffer.append(entry)
        self._schedule()

    def pending_records(self, user_id: str, since: datetime) -> list[UsageRecord]:
        """This user's records since `since` that are noted here but not yet in the table.

        A scan: the buffer holds one flush interval of calls (a hundred at 500 calls/s).
        """
        return [
            r
            for batch in (self._writing, self._buffer)
            for r in batch
            if r.user_id == user_id and r.created_at >= since
        ]

    @asynccontextmanager
    async def settled(self) -> AsyncIterator[None]:
        """While held, no batch is committed: what the table holds and `pending_records` agree."""
        async with self._commit:
            yield

    def pending_tokens(self, user_id: str, since: datetime) -> int:
        """Tokens of `pending_records`: the budget check adds them to what the table holds."""
        return sum(r.tokens for r in self.pending_records(user_id, since))

    async def flush(self) -> None:
        """Write everything recorded so far (waits for a flush already running)."""
        while self._flushing is not None or self._buffer:
            if self._flushing is None:
                self._start_flush()
            assert self._flushing is not None
            await asyncio.shield(self._flushing)
            if self._buffer and self._last_failed:
                return  # the database refuses: the records stay for the next attempt

    async def aclose(self) -> None:
        """At shutdown: write what is left; what cannot be written is logged."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()
        if self._buffer:
            log.error("usage: %d records could not be written at shutdown", len(self._buffer))

    def _schedule(self) -> None:
        if self._flushing is not None:
            return  # the running flush reschedules when it finishes
        if len(self._buffer) >= self._batch_size or self._interval <= 0:
            self._start_flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._flushing is None and self._buffer:
            self._start_flush()

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._buffer = self._buffer, []
        self._writing = batch
        self._flushing = asyncio.get_running_loop().create_task(self._write(batch))

    async def _write(self, batch: list[UsageRecord]) -> None:
        try:
            async with self._commit, self._engine.begin() as conn:
                await conn.execute(
                    insert(LlmUsage),
                    [
                        {
                            "created_at": r.created_at,
                            "user_id": r.user_id,
                            "chat_id": r.chat_id,
                            "purpose": r.purpose,
                            "model": r.model,
                            "prompt_tokens": r.prompt_tokens,
                            "completion_tokens": r.completion_tokens,
                            "cost": r.cost,
                            "audio_seconds": r.audio_seconds,
                        }
                        for r in batch
                    ],
                )
                users = sorted({r.user_id for r in batch if r.user_id is not None})
                if users:
                    await conn.execute(_KNOW_USERS, {"ids": users})
        except Exception as exc:  # kept, not lost: the next flush tries again
            self._last_failed = True
            self._buffer[:0] = batch
            log.warning("usage: writing %d records failed, will retry: %r", len(batch), exc)
        else:
            self._last_failed = False
        finally:
            self._writing = []
            self._flushing = None
            if self._buffer and self._timer is None:
                # Later rather than at once after a failure, so a down database is not hammered.
                delay = max(self._interval, 1.0) if self._last_failed else self._interval
                self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)


@dataclass(frozen=True, slots=True)
class Account:
    """A ledger bound to the user and chat a model call is made for (see metered_completion)."""

    ledger: UsageLedger
    user_id: str | None
    chat_id: str | None

    def record(self, purpose: str, completion: Completion) -> None:
        self.ledger.record(purpose, completion, user_id=self.user_id, chat_id=self.chat_id)
