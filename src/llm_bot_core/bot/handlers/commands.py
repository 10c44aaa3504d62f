"""/start (a new conversation) and /help."""

from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from llm_bot_core.bot.api_client import BackendClient, BackendError, BackendUnavailable
from llm_bot_core.bot.delivery import reply
from llm_bot_core.bot.handlers.chat import error_text
from llm_bot_core.bot.texts import Lang, t

log = logging.getLogger(__name__)


async def start(message: Message, backend: BackendClient, request_id: str, lang: Lang) -> None:
    """Close the chat's session in the backend, then greet."""
    try:
        closed = await backend.reset_chat(chat_id=message.chat.id, request_id=request_id)
    except (BackendError, BackendUnavailable) as exc:
        log.warning("reset of chat %s failed: %s", message.chat.id, exc)
        await reply(message, error_text(exc, lang))
        return
    log.info("chat %s reset (%d session closed)", message.chat.id, closed)
    name = message.from_user.first_name if message.from_user else ""
    await reply(message, t("greeting", lang, name=name or "👋"))


async def help_(message: Message, bot: Bot, lang: Lang) -> None:
    """List the commands."""
    me = await bot.me()
    await reply(message, t("help", lang, username=me.username or "bot"))


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(start, CommandStart())
    router.message.register(help_, Command("help"))
    return router
