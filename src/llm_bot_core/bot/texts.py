"""What the bot itself says, in Russian and English, chosen by the user's `language_code`.

The language is resolved once per update (`LanguageMiddleware`) and reaches handlers as `lang`.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["ru", "en"]


TEXTS: dict[str, dict[Lang, str]] = {
    "greeting": {
        "ru": "Привет, {name}! Я начал новый диалог и помню только то, что вы скажете дальше. "
        "Напишите вопрос, а /help покажет команды.",
        "en": "Hi, {name}! I've started a new conversation and remember only what you say from "
        "now on. Ask me anything; /help lists the commands.",
    },
    "help": {
        "ru": "Я отвечаю на текстовые сообщения и помню контекст разговора.\n\n"
        "/start — начать диалог заново (забыть текущий разговор)\n"
        "/usage — расход за сегодня и дневной лимит\n"
        "/help — эта справка\n\n"
        "В группах я отвечаю, когда меня упоминают (@{username}) или отвечают на моё "
        "сообщение.",
        "en": "I answer text messages and remember the conversation.\n\n"
        "/start — start over (forget the current conversation)\n"
        "/usage — today's usage and your daily limit\n"
        "/help — this help\n\n"
        "In groups I answer when mentioned (@{username}) or when you reply to my message.",
    },
    "text_only": {
        "ru": "Пока я понимаю только текст. Напишите сообщение словами "
        "(подпись к фото тоже подойдёт).",
        "en": "For now I understand text only. Please write your message "
        "(a caption on a photo works too).",
    },
    "not_allowed": {
        "ru": "Извините, этот бот доступен только определённым пользователям.",
        "en": "Sorry, this bot is only available to certain users.",
    },
    "rate_limited": {
        "ru": "Слишком много сообщений подряд. Подождите немного ({seconds} с) и попробуйте снова.",
        "en": "Too many messages in a row. Please wait a little ({seconds} s) and try again.",
    },
    "backend_unavailable": {
        "ru": "Сервис временно недоступен. Попробуйте ещё раз через минуту.",
        "en": "The service is temporarily unavailable. Please try again in a minute.",
    },
    "backend_timeout": {
        "ru": "Ответ готовится слишком долго. Попробуйте ещё раз чуть позже.",
        "en": "The answer is taking too long. Please try again a bit later.",
    },
    "llm_unavailable": {
        "ru": "Модель сейчас не ответила. Попробуйте ещё раз — ваше сообщение сохранено.",
        "en": "The model did not answer this time. Please try again — your message was saved.",
    },
    "llm_not_configured": {
        "ru": "Бот ещё не настроен: не подключена языковая модель. Сообщите администратору.",
        "en": "The bot is not set up yet: no language model is connected. "
        "Please tell the administrator.",
    },
    "too_long": {
        "ru": "Сообщение слишком длинное. Сократите его, пожалуйста.",
        "en": "The message is too long. Please shorten it.",
    },
    "budget_exceeded": {
        "ru": "На сегодня ваш лимит исчерпан. Напишите мне снова через {wait} — "
        "с радостью продолжу разговор.",
        "en": "You have used up today's limit. You can write to me again in {wait} — "
        "I'll be glad to continue.",
    },
    "user_blocked": {
        "ru": "Извините, администратор ограничил вам доступ к этому боту.",
        "en": "Sorry, the administrator has restricted your access to this bot.",
    },
    "usage": {
        "ru": "Сегодня: {tokens} токенов ({prompt} в запросах, {completion} в ответах), "
        "обращений к модели: {calls}.\n{limit}{cost}\nНовый день начнётся через {wait}.",
        "en": "Today: {tokens} tokens ({prompt} in prompts, {completion} in answers), "
        "{calls} model calls.\n{limit}{cost}\nA new day starts in {wait}.",
    },
    "usage_limit": {
        "ru": "Лимит: {limit} токенов в день, осталось {left}.",
        "en": "Limit: {limit} tokens a day, {left} left.",
    },
    "usage_no_limit": {
        "ru": "Дневного лимита нет.",
        "en": "No daily limit.",
    },
    "usage_cost": {
        "ru": "\nСтоимость: ${cost:.4f}.",
        "en": "\nCost: ${cost:.4f}.",
    },
    "error": {
        "ru": "Что-то пошло не так. Попробуйте ещё раз.",
        "en": "Something went wrong. Please try again.",
    },
}


def lang_of(language_code: str | None) -> Lang:
    """Russian for Russian-language clients, English for everyone else."""
    code = (language_code or "").lower().split("-")[0]
    return "ru" if code == "ru" else "en"


def t(key: str, lang: Lang, **values: object) -> str:
    """The bot's text `key` in the user's language."""
    text = TEXTS[key][lang]
    return text.format(**values) if values else text
