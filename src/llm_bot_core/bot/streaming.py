"""Answers that grow in a private chat as message drafts (sendMessageDraft) while generated.

The typing indicator shows until the first draft does; every draft is complete Telegram HTML
(an open code block closed, at most one message long); drafts go at most once per
STREAM_DRAFT_INTERVAL and wait out a 429's retry_after by skipping, never by queueing. The
final answer is then sent as today (bot/delivery.py), which replaces the draft.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, aclosing, suppress

from aiogram import Bot
from aiogram.enums import ParseMode
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramNotFound,
    TelegramRetryAfter,
)
from aiogram.types import Message

from llm_bot_core.bot.api_client import BackendClient, BackendUnavailable, Done
from llm_bot_core.bot.config import BotSettings
from llm_bot_core.bot.delivery import typing
from llm_bot_core.bot.formatting import format_answer, to_plain

log = logging.getLogger(__name__)

# A Bot API server without sendMessageDraft is asked again after this long, not per message.
REFUSED_PAUSE = 600.0


class DraftGate:
    """Whether to try drafts at all: off for a while after the server said it has no such method."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._closed_until = 0.0

    @property
    def open(self) -> bool:
        return self._clock() >= self._closed_until

    def close_for_a_while(self) -> None:
        self._closed_until = self._clock() + REFUSED_PAUSE


def draft_html(markdown: str) -> str:
    """Telegram HTML for an unfinished answer: open Markdown is closed, and once the text is
    longer than one message the draft shows its last message, as it will be sent."""
    parts = format_answer(_closed(markdown))
    return parts[-1] if parts else ""


def _closed(markdown: str) -> str:
    """Close what the model has opened but not yet closed, so a draft shows no stray marks."""
    if markdown.count("```") % 2:
        return markdown + "\n```"  # inside a code block nothing else is markup
    inline = markdown.replace("```", "")
    for mark in ("**", "__", "~~", "`"):
        if inline.count(mark) % 2:
            head, _, tail = markdown.rpartition(mark)
            # "**bo" becomes "**bo**"; a mark with nothing after it yet is not shown at all.
            markdown = markdown.rstrip() + mark if tail.strip() else head + tail
            inline = markdown.replace("```", "")
    return markdown


class DraftStreamer:
    """Shows the latest text as a draft, at most once per `interval`, in its own task."""

    def __init__(self, bot: Bot, message: Message, interval: float, gate: DraftGate) -> None:
        self._bot = bot
        self._chat_id = message.chat.id
        self._thread_id = message.message_thread_id if message.is_topic_message else None
        self._draft_id = message.message_id  # non-zero, and unique in the chat
        self._interval = interval
        self._gate = gate
        self._latest = ""
        self._sent = ""
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.active = gate.open
        """False once Telegram refused a draft: the answer then comes as a plain message."""
        self.shown = False
        """A draft is on the user's screen."""

    def show(self, text: str) -> None:
        """Make `text` the next draft; returns at once."""
        if not self.active or self._closed:
            return
        self._latest = text
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop drafting; a draft already on its way lands before the final message is sent."""
        self._closed = True
        async with self._lock:
            pass
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            async with self._lock:
                if self._closed or not self.active:
                    return
                html = draft_html(self._latest)
                pause = await self._send(html) if html and html != self._sent else 0.0
            await asyncio.sleep(pause)

    async def _send(self, html: str) -> float:
        """Send one draft; how long to wait before the next one."""
        try:
            try:
                await self._draft(html, ParseMode.HTML)
            except TelegramBadRequest as exc:
                if "can't parse entities" not in exc.message.lower():
                    raise
                await self._draft(to_plain(html), None)  # the words matter more
        except TelegramRetryAfter as exc:
            log.info("draft flood control: next draft in %s s", exc.retry_after)
            return float(exc.retry_after)
        except TelegramAPIError as exc:
            self.active = False
            if isinstance(exc, TelegramNotFound):  # the server has no sendMessageDraft
                self._gate.close_for_a_while()
            log.warning("Telegram refused the draft (%s); the answer comes when complete", exc)
            return 0.0
        self._sent = html
        self.shown = True
        return self._interval

    async def _draft(self, text: str, parse_mode: ParseMode | None) -> None:
        await self._bot.send_message_draft(
            chat_id=self._chat_id,
            draft_id=self._draft_id,
            text=text,
            parse_mode=parse_mode,
            message_thread_id=self._thread_id,
        )


async def stream_answer(
    message: Message,
    text: str,
    bot: Bot,
    backend: BackendClient,
    settings: BotSettings,
    gate: DraftGate,
    *,
    user_id: int,
    user_name: str | None,
    request_id: str,
    input_mode: str = "text",
) -> str:
    """The backend's answer to `text`, shown as drafts while it is generated; its final text."""
    drafts = DraftStreamer(bot, message, settings.stream_draft_interval, gate)
    indicator = AsyncExitStack()
    await indicator.enter_async_context(typing(bot, message, settings.typing_interval))
    events = backend.stream_chat(
        user_id=user_id,
        chat_id=message.chat.id,
        text=text,
        chat_type=message.chat.type,
        user_name=user_name,
        request_id=request_id,
        input_mode=input_mode,
    )
    so_far = ""
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Done):
                    return event.text
                so_far += event
                drafts.show(so_far)
                if drafts.shown:
                    await indicator.aclose()  # the growing draft says "working" from now on
    finally:
        await drafts.close()
        await indicator.aclose()
    raise BackendUnavailable("backend stream ended without its answer", maybe_processed=True)
