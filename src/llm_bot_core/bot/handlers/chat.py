"""Text messages (and captions) go to the backend; its answer comes back formatted."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.types import Message

from llm_bot_core.bot.api_client import BackendClient, BackendError, BackendUnavailable
from llm_bot_core.bot.config import BotSettings
from llm_bot_core.bot.delivery import reply, send_answer, typing
from llm_bot_core.bot.handlers.filters import Addressed
from llm_bot_core.bot.notices import REFUSALS, Notices, duration
from llm_bot_core.bot.streaming import DraftGate, stream_answer
from llm_bot_core.bot.texts import Lang, t

log = logging.getLogger(__name__)

# Codes with their own text; of the rest, the retryable ones (llm_bot_core.errors) are
# "temporarily unavailable, try again in a minute", anything else the generic error.
_ERROR_KEYS = {
    "llm_unavailable": "llm_unavailable",
    "llm_bad_response": "llm_unavailable",
    "llm_not_configured": "llm_not_configured",
    "payload_too_large": "too_long",
}


def error_text(exc: BackendError | BackendUnavailable, language: Lang) -> str:
    """A short message in the user's language for a backend failure."""
    if isinstance(exc, BackendUnavailable):
        return t("backend_timeout" if exc.timed_out else "backend_unavailable", language)
    if exc.code == "budget_exceeded":
        return t("budget_exceeded", language, wait=duration(exc.retry_after or 0, language))
    if exc.code == "user_blocked":
        return t("user_blocked", language)
    fallback = "backend_unavailable" if exc.retryable else "error"
    return t(_ERROR_KEYS.get(exc.code, fallback), language)


async def answer_text(
    message: Message,
    text: str,
    bot: Bot,
    backend: BackendClient,
    settings: BotSettings,
    request_id: str,
    lang: Lang,
    drafts: DraftGate,
    notices: Notices,
    input_mode: str = "text",
) -> None:
    """Ask the backend and send its answer: streamed as drafts in private chats, otherwise
    with "typing…" meanwhile. A user the backend refuses (over budget, blocked) is told once,
    then silence. The voice handler calls it with a transcript and `input_mode` "voice"."""
    user_id, user_name = speaker(message)
    try:
        if settings.stream_replies and message.chat.type == ChatType.PRIVATE and drafts.open:
            answer = await stream_answer(
                message, text, bot, backend, settings, drafts,
                user_id=user_id, user_name=user_name, request_id=request_id,
                input_mode=input_mode,
            )  # fmt: skip
        else:
            async with typing(bot, message, settings.typing_interval):
                answer = await ask_backend(
                    backend, message, text, request_id, input_mode=input_mode
                )
    except (BackendError, BackendUnavailable) as exc:
        if await told_refusal(message, exc, lang, notices, user_id):
            return
        log.warning("backend failed for chat %s: %s", message.chat.id, exc)
        await reply(message, error_text(exc, lang))
        return
    if sent := await deliver_answer(message, answer, lang, notices, user_id):
        log.info("answered chat %s in %d message(s)", message.chat.id, sent)


def speaker(message: Message) -> tuple[int, str | None]:
    """The id and name the backend knows the message's author by."""
    sender = message.from_user
    # A channel post or an anonymous group admin has no user: the chat speaks for itself.
    if sender is None:
        return message.chat.id, message.chat.title
    return sender.id, sender.full_name or sender.username


async def ask_backend(
    backend: BackendClient,
    message: Message,
    text: str,
    request_id: str,
    *,
    input_mode: str = "text",
    images: Sequence[tuple[bytes, str]] = (),
) -> str:
    """POST /v1/chat/handle for this message: its chat, its author, `text` and `images`."""
    user_id, user_name = speaker(message)
    return await backend.handle_chat(
        user_id=user_id,
        chat_id=message.chat.id,
        text=text,
        chat_type=message.chat.type,
        user_name=user_name,
        request_id=request_id,
        input_mode=input_mode,
        images=images,
    )


async def deliver_answer(
    message: Message, answer: str, lang: Lang, notices: Notices, user_id: int
) -> int:
    """Send the backend's answer; the user was answered, so a later refusal is told again.
    An empty answer is reported as an error. The number of messages sent."""
    notices.clear(user_id)
    if not answer.strip():
        await reply(message, t("error", lang))
        return 0
    return await send_answer(message, answer)


async def told_refusal(
    message: Message,
    exc: BackendError | BackendUnavailable,
    lang: Lang,
    notices: Notices,
    user_id: int,
) -> bool:
    """A ban or a spent budget: said once, later ones stay silent; False for any other error."""
    if not (isinstance(exc, BackendError) and exc.code in REFUSALS):
        return False
    log.info("backend refused user %s: %s", user_id, exc.code)
    if notices.first(user_id, exc.code, exc.retry_after):
        await reply(message, error_text(exc, lang))
    return True


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(answer_text, F.text | F.caption, Addressed())
    return router
