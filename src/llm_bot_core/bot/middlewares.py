"""Cross-cutting steps around handlers and Bot API calls: request ids, access, limits, 429s."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramRetryAfter, TelegramServerError
from aiogram.methods import SendChatAction, SendMessageDraft, TelegramMethod
from aiogram.methods.base import Response, TelegramType
from aiogram.types import CallbackQuery, Message, TelegramObject, User
from asgi_correlation_id import correlation_id

from llm_bot_core.bot.config import BotSettings
from llm_bot_core.bot.delivery import reply
from llm_bot_core.bot.texts import Lang, lang_of, t

log = logging.getLogger(__name__)

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class RequestIdMiddleware(BaseMiddleware):
    """One id per update, in the bot's log lines and the backend's (X-Request-ID)."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        request_id = str(uuid.uuid4())
        token = correlation_id.set(request_id)
        data["request_id"] = request_id
        try:
            return await handler(event, data)
        finally:
            correlation_id.reset(token)


class LanguageMiddleware(BaseMiddleware):
    """The user's language, resolved once per update and handed to handlers as `lang`."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        # aiogram's own outer middleware has already found the sender of any kind of update.
        user: User | None = data.get("event_from_user")
        data["lang"] = lang_of(user.language_code if user else None)
        return await handler(event, data)


class _Bounded(OrderedDict[int, float]):
    """Remembers at most `size` keys, forgetting the oldest."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: int, value: float) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class SlidingWindowLimiter:
    """At most `limit` events per `window` seconds for each key."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._events: dict[int, deque[float]] = {}

    def hit(self, key: int) -> float:
        """0 if the event is allowed (and counted), else seconds until it would be."""
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            return events[0] + self.window - now
        events.append(now)
        if len(self._events) > 10_000:  # forget idle users so memory stays bounded
            for idle in [k for k, v in self._events.items() if not v]:
                del self._events[idle]
        return 0.0


class AccessMiddleware(BaseMiddleware):
    """Allowlists and the per-user rate limit; one polite refusal, then silence."""

    def __init__(self, settings: BotSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.users = settings.allowed_user_ids
        self.chats = settings.allowed_chat_ids
        self.restricted = settings.access_restricted
        self.limiter = (
            SlidingWindowLimiter(settings.rate_limit_messages, settings.rate_limit_window, clock)
            if settings.rate_limit_messages
            else None
        )
        self._clock = clock
        self._refused = _Bounded(10_000)
        self._warned_until = _Bounded(10_000)

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        if isinstance(event, CallbackQuery):
            return await self._button(handler, event, data)
        if not isinstance(event, Message):
            return await handler(event, data)
        user_id = event.from_user.id if event.from_user else event.chat.id
        lang: Lang = data["lang"]
        if not self._allowed(user_id, event.chat.id):
            log.info("refused user %s in chat %s (not in ALLOWED_*_IDS)", user_id, event.chat.id)
            if user_id not in self._refused:
                self._refused.remember(user_id, self._clock())
                await reply(event, t("not_allowed", lang))
            return None
        wait = self.limiter.hit(user_id) if self.limiter is not None else 0.0
        if wait:
            now = self._clock()
            log.info("rate limited user %s for %.0f s", user_id, wait)
            if self._warned_until.get(user_id, 0.0) <= now:
                self._warned_until.remember(user_id, now + wait)
                await reply(event, t("rate_limited", lang, seconds=max(1, round(wait))))
            return None
        return await handler(event, data)

    async def _button(self, handler: Handler, event: CallbackQuery, data: dict[str, Any]) -> Any:
        # A button press acts as its user (confirm /forget_all, pick a mode...), so it passes
        # the same allowlist and counts against the same rate limit as a message. A refused
        # press still gets its callback answered, or the user's button keeps spinning.
        chat_id = event.message.chat.id if event.message else event.from_user.id
        lang: Lang = data["lang"]
        if not self._allowed(event.from_user.id, chat_id):
            log.info("refused a button from user %s in chat %s", event.from_user.id, chat_id)
            await event.answer(t("not_allowed", lang), show_alert=True)
            return None
        wait = self.limiter.hit(event.from_user.id) if self.limiter is not None else 0.0
        if wait:
            log.info("rate limited a button from user %s for %.0f s", event.from_user.id, wait)
            await event.answer(t("rate_limited", lang, seconds=max(1, round(wait))))
            return None
        return await handler(event, data)

    def _allowed(self, user_id: int, chat_id: int) -> bool:
        return not self.restricted or user_id in self.users or chat_id in self.chats


class RetryAfterMiddleware(BaseRequestMiddleware):
    """Honour Telegram's flood control (429 retry_after) and retry its 5xx answers."""

    def __init__(self, max_retries: int, max_retry_after: float) -> None:
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        attempt = 0
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                # A late typing indicator or draft is worthless; waiting for it would delay the
                # answer (the draft streamer waits out retry_after itself, skipping drafts).
                if (
                    isinstance(method, SendChatAction | SendMessageDraft)
                    or attempt >= self.max_retries
                    or exc.retry_after > self.max_retry_after
                ):
                    raise
                delay: float = exc.retry_after
                log.warning(
                    "Telegram flood control on %s: waiting %s s", type(method).__name__, delay
                )
            except TelegramServerError as exc:
                if attempt >= self.max_retries:
                    raise
                delay = min(2.0**attempt, 10.0)
                log.warning(
                    "Telegram %s failed (%s): retrying in %.0f s", type(method).__name__, exc, delay
                )
            attempt += 1
            await asyncio.sleep(delay)
