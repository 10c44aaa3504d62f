"""Refusals the bot tells a user once: over budget (until the reset) or blocked."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

# The backend's codes for "this user may not write now"; the bot says so once, then is silent.
REFUSALS = frozenset({"budget_exceeded", "user_blocked"})


class Notices:
    """Which users were told they may not write, and until when that holds; bounded in size."""

    def __init__(self, size: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._told: OrderedDict[tuple[int, str], float] = OrderedDict()
        self._size = size
        self._clock = clock

    def first(self, user_id: int, code: str, retry_after: float | None) -> bool:
        """True when the user is to be told (the first refusal of its kind, or since it ran
        out); remembers that they were."""
        now = self._clock()
        key = (user_id, code)
        until = self._told.get(key)
        if until is not None and now < until:
            return False
        self._told[key] = now + retry_after if retry_after else math.inf
        self._told.move_to_end(key)
        while len(self._told) > self._size:
            self._told.popitem(last=False)
        return True

    def clear(self, user_id: int) -> None:
        """The user was answered again (limit raised, ban lifted): a new refusal is news."""
        for code in REFUSALS:
            self._told.pop((user_id, code), None)


def duration(seconds: float, lang: str) -> str:
    """`3 h 20 min` / `3 ч 20 мин`, rounded up to the minute."""
    minutes = max(1, math.ceil(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    h, m = ("ч", "мин") if lang == "ru" else ("h", "min")
    if hours and minutes:
        return f"{hours} {h} {minutes} {m}"
    return f"{hours} {h}" if hours else f"{minutes} {m}"
