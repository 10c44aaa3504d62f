"""The bot's handlers: one router per module, combined here in the order they are tried."""

from __future__ import annotations

from aiogram import Router

from llm_bot_core.bot.handlers import (
    chat,
    commands,
    errors,
    memory,
    mode,
    other,
    photos,
    usage,
    voice,
)


def create_router() -> Router:
    """A fresh router tree (a router can belong to one Dispatcher only)."""
    router = Router(name=__name__)
    router.include_routers(
        commands.create_router(),
        memory.create_router(),
        usage.create_router(),
        # Before chat: an audio file with a caption is a recording, not a text message.
        voice.create_router(),
        photos.create_router(),  # before chat: a photo's caption is not a text message
        mode.create_router(),
        chat.create_router(),
        other.create_router(),
        errors.create_router(),
    )
    return router
