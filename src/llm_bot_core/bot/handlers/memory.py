"""The user's control over what the bot knows about them: /memory, /forget, /forget_all, /remember.

Numbers are positions in the list `GET .../facts` returns (current facts, oldest first), which
is how /memory numbers them; /forget re-reads that list rather than keeping the last one shown,
so a bot restart or a second device changes nothing. New facts go to the end, so the numbers
the user saw stay valid unless a fact was corrected or removed in between; /forget therefore
always says which fact it removed.

Only in private chats: a group would see the list.
"""

from __future__ import annotations

import logging
import re

from aiogram import F, Router
from aiogram.enums import ChatType
from aiogram.filters import Command, CommandObject
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from llm_bot_core.bot.api_client import BackendClient, BackendError, BackendUnavailable, UserFact
from llm_bot_core.bot.delivery import reply, settle
from llm_bot_core.bot.handlers.chat import error_text, speaker
from llm_bot_core.bot.texts import Lang, t

log = logging.getLogger(__name__)

# Telegram allows 4096 characters per message; a fact is at most 2,000.
LIST_CHUNK = 3500
BUTTON_CHARS = 60
MAX_CHOICES = 10


class ForgetFact(CallbackData, prefix="mem_fact"):
    """A button under "which one?": forget this fact (0: cancel)."""

    fact_id: int


class EraseAll(CallbackData, prefix="mem_erase"):
    """The /forget_all confirmation's buttons."""

    confirm: bool


def fact_line(number: int, fact: UserFact, lang: Lang) -> str:
    when = fact.created_at.strftime("%d.%m.%Y" if lang == "ru" else "%Y-%m-%d")
    return f"{number}. {fact.content} ({when})"


def chunks(lines: list[str], limit: int = LIST_CHUNK) -> list[str]:
    """Lines joined into messages of at most `limit` characters (a line is never split)."""
    out: list[str] = []
    for line in lines:
        if out and len(out[-1]) + 1 + len(line) <= limit:
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def matching(facts: list[UserFact], words: str) -> list[tuple[int, UserFact]]:
    """(number, fact) of the facts containing every word (as a substring: "Берлин" finds
    "в Берлине"), case-insensitively."""
    wanted = re.findall(r"\w+", words.casefold())
    return [
        (number, fact)
        for number, fact in enumerate(facts, start=1)
        if wanted and all(w in fact.content.casefold() for w in wanted)
    ]


async def show_memory(
    message: Message, backend: BackendClient, request_id: str, lang: Lang
) -> None:
    """List the user's current facts, numbered, with the date each was learned."""
    try:
        facts = await backend.list_facts(user_id=speaker(message)[0], request_id=request_id)
    except (BackendError, BackendUnavailable) as exc:
        log.warning("listing facts failed: %s", exc)
        await reply(message, error_text(exc, lang))
        return
    if not facts:
        await reply(message, t("memory_empty", lang))
        return
    lines = [t("memory_header", lang)]
    lines += [fact_line(n, f, lang) for n, f in enumerate(facts, start=1)]
    lines += ["", t("memory_footer", lang)]
    for text in chunks(lines):
        await reply(message, text)


async def remember(
    message: Message, command: CommandObject, backend: BackendClient, request_id: str, lang: Lang
) -> None:
    """Store a fact in the user's own words."""
    content = (command.args or "").strip()
    if not content:
        await reply(message, t("remember_usage", lang))
        return
    try:
        stored = await backend.add_fact(
            user_id=speaker(message)[0], content=content, request_id=request_id
        )
    except (BackendError, BackendUnavailable) as exc:
        log.warning("adding a fact failed: %s", exc)
        await reply(message, error_text(exc, lang))
        return
    await reply(message, t("remembered", lang, fact=stored))


async def forget(
    message: Message, command: CommandObject, backend: BackendClient, request_id: str, lang: Lang
) -> None:
    """Forget a fact by its /memory number, or by words: at once when one fact matches, after
    a choice among buttons when several do."""
    query = (command.args or "").strip()
    if not query:
        await reply(message, t("forget_usage", lang))
        return
    user_id = speaker(message)[0]
    try:
        facts = await backend.list_facts(user_id=user_id, request_id=request_id)
        if query.isdigit():
            number = int(query)
            if not 1 <= number <= len(facts):
                await reply(message, t("forget_no_number", lang, number=number))
                return
            found = [(number, facts[number - 1])]
        else:
            found = matching(facts, query)
        if not found:
            await reply(message, t("forget_no_match", lang, words=query))
            return
        if len(found) == 1:
            fact = found[0][1]
            await backend.delete_fact(user_id=user_id, fact_id=fact.id, request_id=request_id)
            await reply(message, t("forgotten", lang, fact=fact.content))
            return
    except (BackendError, BackendUnavailable) as exc:
        log.warning("forgetting failed: %s", exc)
        await reply(message, error_text(exc, lang))
        return
    buttons = [
        [
            InlineKeyboardButton(
                text=_shorten(f"{number}. {fact.content}"),
                callback_data=ForgetFact(fact_id=fact.id).pack(),
            )
        ]
        for number, fact in found[:MAX_CHOICES]
    ]
    buttons.append(
        [InlineKeyboardButton(text=t("cancel", lang), callback_data=ForgetFact(fact_id=0).pack())]
    )
    await message.answer(
        t("forget_choose", lang, words=query),
        parse_mode=None,
        reply_markup=InlineKeyboardMarkup(inline_keyboard=buttons),
    )


async def forget_chosen(
    query: CallbackQuery,
    callback_data: ForgetFact,
    backend: BackendClient,
    request_id: str,
    lang: Lang,
) -> None:
    """A button under "which one?": forget that fact (of the user who pressed it)."""
    if callback_data.fact_id == 0:
        await settle(query, t("cancelled", lang))
        return
    user_id = query.from_user.id
    try:
        facts = await backend.list_facts(user_id=user_id, request_id=request_id)
        fact = next((f for f in facts if f.id == callback_data.fact_id), None)
        if fact is None:
            await settle(query, t("forget_gone", lang))
            return
        await backend.delete_fact(user_id=user_id, fact_id=fact.id, request_id=request_id)
    except (BackendError, BackendUnavailable) as exc:
        # Pressed twice, or removed meanwhile.
        if isinstance(exc, BackendError) and exc.code == "fact_not_found":
            await settle(query, t("forget_gone", lang))
            return
        log.warning("forgetting fact %s failed: %s", callback_data.fact_id, exc)
        await query.answer(error_text(exc, lang), show_alert=True)
        return
    await settle(query, t("forgotten", lang, fact=fact.content))


async def ask_erase_all(message: Message, lang: Lang) -> None:
    """Ask before erasing everything about the user."""
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=t("forget_all_yes", lang), callback_data=EraseAll(confirm=True).pack()
                ),
                InlineKeyboardButton(
                    text=t("cancel", lang), callback_data=EraseAll(confirm=False).pack()
                ),
            ]
        ]
    )
    await message.answer(t("forget_all_confirm", lang), parse_mode=None, reply_markup=keyboard)


async def erase_all(
    query: CallbackQuery,
    callback_data: EraseAll,
    backend: BackendClient,
    request_id: str,
    lang: Lang,
) -> None:
    """The confirmation: erase the messages, summaries, facts and vectors of who pressed it."""
    if not callback_data.confirm:
        await settle(query, t("cancelled", lang))
        return
    try:
        messages = await backend.erase_user(user_id=query.from_user.id, request_id=request_id)
    except (BackendError, BackendUnavailable) as exc:
        log.warning("erasing user %s failed: %s", query.from_user.id, exc)
        await query.answer(error_text(exc, lang), show_alert=True)
        return
    log.info("user %s erased (%d messages)", query.from_user.id, messages)
    await settle(query, t("forget_all_done", lang, messages=messages))


async def private_only(message: Message, lang: Lang) -> None:
    """The memory commands in a group: the list would be shown to everyone."""
    await reply(message, t("memory_private_only", lang))


def _shorten(text: str) -> str:
    return text if len(text) <= BUTTON_CHARS else text[: BUTTON_CHARS - 1] + "…"


def create_router() -> Router:
    router = Router(name=__name__)
    commands = ("memory", "forget", "forget_all", "remember")
    private = F.chat.type == ChatType.PRIVATE
    router.message.register(show_memory, Command("memory"), private)
    router.message.register(forget, Command("forget"), private)
    router.message.register(ask_erase_all, Command("forget_all"), private)
    router.message.register(remember, Command("remember"), private)
    router.message.register(private_only, Command(*commands))
    router.callback_query.register(forget_chosen, ForgetFact.filter())
    router.callback_query.register(erase_all, EraseAll.filter())
    return router
