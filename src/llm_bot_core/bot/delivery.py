"""Getting an answer to the user: the typing indicator and sending long, formatted replies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from aiogram import Bot
from aiogram.enums import ChatAction, ChatType, ParseMode
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.types import CallbackQuery, Message, ReplyParameters

from llm_bot_core.bot.formatting import format_answer, to_plain

log = logging.getLogger(__name__)


@asynccontextmanager
async def typing(bot: Bot, message: Message, interval: float) -> AsyncIterator[None]:
    """Show "typing…" until the block ends; Telegram clears it after ~5 s, so repeat it."""

    async def repeat() -> None:
        while True:
            try:
                await bot.send_chat_action(
                    chat_id=message.chat.id,
                    action=ChatAction.TYPING,
                    message_thread_id=message.message_thread_id
                    if message.is_topic_message
                    else None,
                )
            except TelegramAPIError as exc:  # cosmetic: never let it cost the answer
                log.debug("typing indicator failed: %s", exc)
            await asyncio.sleep(interval)

    task = asyncio.create_task(repeat())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def _is_parse_error(exc: TelegramBadRequest) -> bool:
    return "can't parse entities" in exc.message.lower()


async def reply(message: Message, text: str) -> None:
    """Plain text from the bot itself (greetings, refusals, errors)."""
    await message.answer(text, parse_mode=None, reply_parameters=_reply_to(message))


async def settle(query: CallbackQuery, text: str) -> None:
    """Answer a button press and replace the question (and its buttons) with the outcome."""
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.edit_text(text, parse_mode=None, reply_markup=None)


async def send_answer(message: Message, markdown: str) -> int:
    """Send the LLM's Markdown as formatted messages; the number of messages sent."""
    chunks = format_answer(markdown)
    for index, chunk in enumerate(chunks):
        reply_to = _reply_to(message) if index == 0 else None
        try:
            await message.answer(chunk, parse_mode=ParseMode.HTML, reply_parameters=reply_to)
        except TelegramBadRequest as exc:
            if not _is_parse_error(exc):
                raise
            # Telegram disagreed with our HTML: the words matter more than the formatting.
            log.warning("Telegram rejected the HTML (%s); resending as plain text", exc.message)
            await message.answer(to_plain(chunk), parse_mode=None, reply_parameters=reply_to)
    return len(chunks)


def _reply_to(message: Message) -> ReplyParameters | None:
    # In a group the answer quotes the question, so it is clear whom the bot answers.
    if message.chat.type == ChatType.PRIVATE:
        return None
    return ReplyParameters(message_id=message.message_id, allow_sending_without_reply=True)
