"""/mode: the personas an operator made selectable, as buttons; a press sets the chat's one."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.filters import Command
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from llm_bot_core.bot.api_client import BackendClient, BackendError, BackendUnavailable
from llm_bot_core.bot.delivery import reply, settle
from llm_bot_core.bot.handlers.chat import error_text
from llm_bot_core.bot.texts import Lang, t

log = logging.getLogger(__name__)

BUTTON_CHARS = 60
CURRENT_MARK = "✓ "


class ChooseMode(CallbackData, prefix="mode"):
    persona_id: int


async def show_modes(message: Message, backend: BackendClient, request_id: str, lang: Lang) -> None:
    """The selectable personas as one button each, the chat's current one ticked."""
    try:
        personas, current = await backend.personas(chat_id=message.chat.id, request_id=request_id)
    except (BackendError, BackendUnavailable) as exc:
        log.warning("personas of chat %s failed: %s", message.chat.id, exc)
        await reply(message, error_text(exc, lang))
        return
    if not personas:
        await reply(message, t("mode_none", lang))
        return
    current_name = next((str(p["name"]) for p in personas if p["id"] == current), "—")
    buttons = [
        [
            InlineKeyboardButton(
                text=(CURRENT_MARK if p["id"] == current else "") + str(p["name"])[:BUTTON_CHARS],
                callback_data=ChooseMode(persona_id=int(p["id"])).pack(),
            )
        ]
        for p in personas
    ]
    await message.answer(
        t("mode_choose", lang, current=current_name),
        parse_mode=None,
        reply_markup=InlineKeyboardMarkup(inline_keyboard=buttons),
    )


async def mode_chosen(
    query: CallbackQuery,
    callback_data: ChooseMode,
    backend: BackendClient,
    request_id: str,
    lang: Lang,
) -> None:
    """A press stores the choice for the chat the buttons were shown in."""
    if not isinstance(query.message, Message):  # the message is too old to be edited
        await query.answer()
        return
    chat_id = query.message.chat.id
    try:
        name = await backend.choose_persona(
            chat_id=chat_id, persona_id=callback_data.persona_id, request_id=request_id
        )
    except (BackendError, BackendUnavailable) as exc:
        # Deleted or hidden by an operator meanwhile.
        if isinstance(exc, BackendError) and exc.code == "persona_not_found":
            await settle(query, t("mode_gone", lang))
            return
        log.warning("choosing persona %s failed: %s", callback_data.persona_id, exc)
        await query.answer(error_text(exc, lang), show_alert=True)
        return
    await settle(query, t("mode_set", lang, name=name))


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(show_modes, Command("mode"))
    router.callback_query.register(mode_chosen, ChooseMode.filter())
    return router
