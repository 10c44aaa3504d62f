"""Daily token budgets and bans: the day's window, the refusals, and a user's day as read back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.errors import CoreError
from llm_bot_core.usage.ledger import IMAGE_DESCRIPTION, TRANSCRIPTION, UsageLedger


def day_window(now: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The start and end of the budget day containing `now`: midnight to midnight in `zone`."""
    day = now.astimezone(zone).date()
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start, end


class BudgetExceeded(CoreError):
    """The user spent their daily tokens; nothing was stored."""

    code = "budget_exceeded"

    def __init__(self, *, now: datetime, resets_at: datetime, spent: int, limit: int) -> None:
        super().__init__(
            f"The daily budget of {limit} tokens is spent ({spent} used); "
            f"it resets at {resets_at.isoformat()}."
        )
        self.resets_at = resets_at
        self.retry_after = max(1, math.ceil((resets_at - now).total_seconds()))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UserBlocked(CoreError):
    """An operator blocked the user; nothing was stored."""

    code = "user_blocked"


@dataclass(frozen=True, slots=True)
class DayUsage:
    user_id: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    calls: int
    audio_seconds: float
    transcriptions: int
    pictures_described: int
    daily_token_limit: int
    resets_at: datetime
    blocked: bool


# From llm_usage itself: usage_daily (migration 0009) is summed per model and purpose, not per
# user, and has no audio column.
_DAY = text(
    """
    SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
           sum(cost), count(*),
           (SELECT daily_token_limit FROM bot_users WHERE user_id = :user_id),
           coalesce((SELECT blocked FROM bot_users WHERE user_id = :user_id), false),
           coalesce(sum(audio_seconds), 0),
           count(*) FILTER (WHERE purpose = :transcription),
           count(*) FILTER (WHERE purpose = :image_description)
    FROM llm_usage WHERE user_id = :user_id AND created_at >= :start
    """
)


class Budgets:
    """The rules of one process: the default limit, the zone whose midnight resets it, the clock."""

    def __init__(
        self, *, engine: AsyncEngine, ledger: UsageLedger, default_limit: int, zone: ZoneInfo
    ) -> None:
        self._engine = engine
        self._ledger = ledger
        self.default_limit = default_limit
        self.zone = zone

    def now(self) -> datetime:
        return self._ledger.clock()

    def window(self) -> tuple[datetime, datetime]:
        return day_window(self.now(), self.zone)

    def pending_tokens(self, user_id: str, since: datetime) -> int:
        return self._ledger.pending_tokens(user_id, since)

    def refusal(self, *, blocked: bool, spent: int, limit: int) -> CoreError:
        """The error a refused message is answered with."""
        if blocked:
            return UserBlocked()
        now = self.now()
        _, resets_at = day_window(now, self.zone)
        return BudgetExceeded(now=now, resets_at=resets_at, spent=spent, limit=limit)

    async def check(self, user_id: str) -> None:
        """Raise the refusal a message of this user would get now (blocked, or the day's
        budget spent); for calls made before any message is stored (transcription)."""
        day = await self.today(user_id)
        spent = day.prompt_tokens + day.completion_tokens
        if day.blocked or (day.daily_token_limit > 0 and spent >= day.daily_token_limit):
            raise self.refusal(blocked=day.blocked, spent=spent, limit=day.daily_token_limit)

    async def today(self, user_id: str) -> DayUsage:
        """What the user has spent since their day began, and the limit that applies."""
        start, end = self.window()
        # The table and the records not yet in it, read with no batch committed in between.
        async with self._ledger.settled(), self._engine.connect() as conn:
            row = (
                await conn.execute(
                    _DAY,
                    {
                        "user_id": user_id,
                        "start": start,
                        "transcription": TRANSCRIPTION,
                        "image_description": IMAGE_DESCRIPTION,
                    },
                )
            ).one()
            pending = self._ledger.pending_records(user_id, start)
        return DayUsage(
            user_id=user_id,
            prompt_tokens=int(row[0]) + sum(r.prompt_tokens for r in pending),
            completion_tokens=int(row[1]) + sum(r.completion_tokens for r in pending),
            cost=_add_costs(row[2], [r.cost for r in pending]),
            calls=int(row[3]) + len(pending),
            audio_seconds=float(row[6]) + sum(r.audio_seconds or 0.0 for r in pending),
            transcriptions=int(row[7]) + sum(r.purpose == TRANSCRIPTION for r in pending),
            pictures_described=int(row[8]) + sum(r.purpose == IMAGE_DESCRIPTION for r in pending),
            daily_token_limit=self.default_limit if row[4] is None else int(row[4]),
            resets_at=end,
            blocked=bool(row[5]),
        )


def _add_costs(stored: float | None, pending: list[float | None]) -> float | None:
    known = [c for c in pending if c is not None]
    if stored is None and not known:
        return None
    return float(stored or 0) + sum(known)
