"""/usage: what the user has spent today and their daily limit, as the backend counts it."""

from __future__ import annotations

import logging
import math
from datetime import datetime

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from llm_bot_core.bot.api_client import BackendClient, BackendError, BackendUnavailable
from llm_bot_core.bot.delivery import reply
from llm_bot_core.bot.handlers.chat import error_text, speaker
from llm_bot_core.bot.notices import duration
from llm_bot_core.bot.texts import Lang, t

log = logging.getLogger(__name__)


async def show_usage(message: Message, backend: BackendClient, request_id: str, lang: Lang) -> None:
    """Today's tokens, calls and cost, voice and pictures, the limit and when the day resets."""
    user_id, _ = speaker(message)
    try:
        data = await backend.usage(user_id=user_id, request_id=request_id)
    except (BackendError, BackendUnavailable) as exc:
        log.warning("usage of %s failed: %s", user_id, exc)
        await reply(message, error_text(exc, lang))
        return
    await reply(message, usage_text(data, lang))


def usage_text(data: dict[str, object], lang: Lang) -> str:
    """GET /v1/usage/users/{id}'s answer in the user's words."""
    today = data.get("today")
    today = today if isinstance(today, dict) else {}
    prompt = int(today.get("prompt_tokens") or 0)
    completion = int(today.get("completion_tokens") or 0)
    tokens = prompt + completion
    limit_value = data.get("daily_token_limit")
    limit = limit_value if isinstance(limit_value, int) else 0
    limit_line = (
        t("usage_limit", lang, limit=limit, left=max(limit - tokens, 0))
        if limit
        else t("usage_no_limit", lang)
    )
    media = _media_lines(today, lang)
    cost = today.get("cost")
    cost_line = t("usage_cost", lang, cost=float(cost)) if isinstance(cost, int | float) else ""
    resets_at = datetime.fromisoformat(str(data["resets_at"]))
    wait = (resets_at - datetime.now(resets_at.tzinfo)).total_seconds()
    return t(
        "usage",
        lang,
        tokens=tokens,
        prompt=prompt,
        completion=completion,
        calls=int(today.get("calls") or 0),
        media=media,
        limit=limit_line,
        cost=cost_line,
        wait=duration(wait, lang),
    )


def _media_lines(today: dict[str, object], lang: Lang) -> str:
    """Voice and pictures, each only when there were some today (most days have neither)."""
    lines = ""
    transcriptions, seconds = _number(today, "transcriptions"), _number(today, "audio_seconds")
    if transcriptions or seconds:
        lines += t("usage_voice", lang, count=int(transcriptions), seconds=math.ceil(seconds))
    if pictures := _number(today, "pictures_described"):
        lines += t("usage_pictures", lang, count=int(pictures))
    return lines


def _number(values: dict[str, object], key: str) -> float:
    value = values.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(show_usage, Command("usage"))
    return router
