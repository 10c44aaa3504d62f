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
        "ru": "Я отвечаю на текст, голосовые сообщения и картинки и помню контекст разговора.\n\n"
        "/start — начать диалог заново (забыть текущий разговор)\n"
        "/usage — расход за сегодня и дневной лимит\n"
        "/mode — выбрать стиль ответов\n"
        "/help — эта справка\n"
        "/memory — что я о вас знаю; /forget — забыть факт; /forget_all — стереть всё\n"
        "/remember текст — запомнить факт\n\n"
        "В группах я отвечаю, когда меня упоминают (@{username}) или отвечают на моё "
        "сообщение.",
        "en": "I answer text and voice messages and pictures and remember the conversation.\n\n"
        "/start — start over (forget the current conversation)\n"
        "/usage — today's usage and your daily limit\n"
        "/mode — choose how I answer\n"
        "/help — this help\n"
        "/memory — what I know about you; /forget — forget a fact; /forget_all — erase all\n"
        "/remember text — remember a fact\n\n"
        "In groups I answer when mentioned (@{username}) or when you reply to my message.",
    },
    "text_only": {
        "ru": "Пока я понимаю только текст. Напишите сообщение словами "
        "(подпись к фото тоже подойдёт).",
        "en": "For now I understand text only. Please write your message "
        "(a caption on a photo works too).",
    },
    # --- pictures (bot/handlers/photos.py) ---------------------------------------------------
    "images_not_supported": {
        "ru": "Извините, модель этого бота не умеет смотреть картинки. Опишите, пожалуйста, "
        "словами, что на них.",
        "en": "Sorry, this bot's model cannot look at pictures. Please describe in words what "
        "they show.",
    },
    "invalid_image": {
        "ru": "Не получилось открыть эту картинку. Попробуйте отправить её как фото "
        "(JPEG или PNG).",
        "en": "I couldn't open this picture. Please try sending it as a photo (JPEG or PNG).",
    },
    "image_too_large": {
        "ru": "Картинка слишком большая. Отправьте её как фото или уменьшите.",
        "en": "The picture is too large. Please send it as a photo or make it smaller.",
    },
    "too_many_images": {
        "ru": "Слишком много картинок в одном сообщении. Отправьте, пожалуйста, поменьше.",
        "en": "Too many pictures in one message. Please send fewer.",
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
        "обращений к модели: {calls}.{media}\n{limit}{cost}\nНовый день начнётся через {wait}.",
        "en": "Today: {tokens} tokens ({prompt} in prompts, {completion} in answers), "
        "{calls} model calls.{media}\n{limit}{cost}\nA new day starts in {wait}.",
    },
    "usage_voice": {
        "ru": "\nГолосовых распознано: {count} ({seconds} с).",
        "en": "\nVoice messages transcribed: {count} ({seconds} s).",
    },
    "usage_pictures": {
        "ru": "\nКартинок описано: {count}.",
        "en": "\nPictures described: {count}.",
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
    # --- voice messages (handlers/voice.py) ---
    "voice_not_configured": {
        "ru": "Голосовые сообщения здесь пока не распознаются — напишите, пожалуйста, текстом. "
        "Администратор может включить их: TRANSCRIPTION_BASE_URL (и TRANSCRIPTION_API_KEY) "
        "или OPENAI_API_KEY.",
        "en": "Voice messages aren't recognised here yet — please type your message. "
        "The administrator can turn them on: TRANSCRIPTION_BASE_URL (and "
        "TRANSCRIPTION_API_KEY) or OPENAI_API_KEY.",
    },
    "voice_empty": {
        "ru": "Не удалось ничего разобрать в этом сообщении. Попробуйте записать ещё раз "
        "или напишите текстом.",
        "en": "I couldn't make out anything in that message. Please try recording it again "
        "or type it.",
    },
    "voice_too_long": {
        "ru": "Запись слишком длинная: я распознаю до {limit}. Запишите покороче, пожалуйста.",
        "en": "That recording is too long: I transcribe up to {limit}. Please record a "
        "shorter one.",
    },
    "voice_too_large": {
        "ru": "Файл слишком большой: я принимаю записи до {size}.",
        "en": "That file is too large: I accept recordings of up to {size}.",
    },
    "voice_unreadable": {
        "ru": "Не получилось прочитать эту запись. Попробуйте отправить голосовое сообщение.",
        "en": "I couldn't read that recording. Please try sending a voice message instead.",
    },
    "voice_unavailable": {
        "ru": "Распознавание речи сейчас не отвечает. Попробуйте ещё раз чуть позже "
        "или напишите текстом.",
        "en": "Speech recognition isn't responding right now. Please try again a bit later "
        "or type your message.",
    },
    # --- the user's memory (handlers/memory.py) ---
    "memory_private_only": {
        "ru": "Память о вас показываю и меняю только в личном чате со мной.",
        "en": "I show and change what I remember about you only in a private chat with me.",
    },
    "memory_empty": {
        "ru": "Я пока ничего о вас не знаю. Расскажите о себе или используйте /remember.",
        "en": "I don't know anything about you yet. Tell me about yourself or use /remember.",
    },
    "memory_header": {
        "ru": "Что я о вас знаю:",
        "en": "What I know about you:",
    },
    "memory_footer": {
        "ru": "Забыть: /forget номер или /forget слова. Стереть всё: /forget_all.",
        "en": "To forget: /forget number or /forget words. To erase everything: /forget_all.",
    },
    "remember_usage": {
        "ru": "Напишите, что запомнить: /remember У меня аллергия на орехи",
        "en": "Tell me what to remember: /remember I'm allergic to nuts",
    },
    "remembered": {
        "ru": "Запомнил: {fact}",
        "en": "Remembered: {fact}",
    },
    "forget_usage": {
        "ru": "Что забыть? /forget номер из /memory или /forget слова из факта.",
        "en": "What should I forget? /forget a number from /memory or /forget words of the fact.",
    },
    "forget_no_number": {
        "ru": "Факта с номером {number} нет. Посмотрите список: /memory",
        "en": "There is no fact number {number}. See the list: /memory",
    },
    "forget_no_match": {
        "ru": "Не нашёл фактов со словами «{words}». Посмотрите список: /memory",
        "en": 'I found no fact with the words "{words}". See the list: /memory',
    },
    "forget_choose": {
        "ru": "Под «{words}» подходит несколько фактов. Какой забыть?",
        "en": 'Several facts match "{words}". Which one should I forget?',
    },
    "forgotten": {
        "ru": "Забыл: {fact}",
        "en": "Forgotten: {fact}",
    },
    "forget_gone": {
        "ru": "Этого факта уже нет.",
        "en": "That fact is already gone.",
    },
    "forget_all_confirm": {
        "ru": "Стереть всё, что я о вас храню: сообщения, сводки и факты? Это необратимо.",
        "en": "Erase everything I store about you: messages, summaries and facts? "
        "This cannot be undone.",
    },
    "forget_all_yes": {"ru": "Да, стереть всё", "en": "Yes, erase everything"},
    "cancel": {"ru": "Отмена", "en": "Cancel"},
    "cancelled": {"ru": "Отменено.", "en": "Cancelled."},
    "forget_all_done": {
        "ru": "Готово: я стёр всё, что о вас хранил ({messages} сообщ.).",
        "en": "Done: I erased everything I stored about you ({messages} messages).",
    },
    # /mode (bot/handlers/mode.py)
    "mode_choose": {
        "ru": "Сейчас: {current}. Выберите, как мне отвечать в этом чате:",
        "en": "Now: {current}. Choose how I should answer in this chat:",
    },
    "mode_none": {
        "ru": "Других режимов пока нет.",
        "en": "There are no other modes yet.",
    },
    "mode_set": {
        "ru": "Готово: дальше отвечаю в режиме «{name}».",
        "en": "Done: from now on I answer as “{name}”.",
    },
    "mode_gone": {
        "ru": "Этого режима больше нет. Наберите /mode, чтобы выбрать другой.",
        "en": "That mode is no longer available. Send /mode to choose another.",
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
