"""Building the bot and running it: long polling, or a webhook server."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from contextlib import suppress

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import BotCommand, BotCommandScopeDefault
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from llm_bot_core.bot.api_client import BackendClient
from llm_bot_core.bot.config import BotSettings
from llm_bot_core.bot.handlers import create_router
from llm_bot_core.bot.middlewares import (
    AccessMiddleware,
    LanguageMiddleware,
    RequestIdMiddleware,
    RetryAfterMiddleware,
)
from llm_bot_core.bot.notices import Notices
from llm_bot_core.bot.streaming import DraftGate

log = logging.getLogger(__name__)

COMMANDS = {
    "en": [
        BotCommand(command="start", description="Start a new conversation"),
        BotCommand(command="usage", description="Today's usage and the daily limit"),
        BotCommand(command="mode", description="Choose how I answer"),
        BotCommand(command="help", description="What I can do"),
        BotCommand(command="memory", description="What I know about you"),
        BotCommand(command="remember", description="Remember a fact about you"),
        BotCommand(command="forget", description="Forget a fact: number or words"),
        BotCommand(command="forget_all", description="Erase everything about you"),
    ],
    "ru": [
        BotCommand(command="start", description="Начать новый диалог"),
        BotCommand(command="usage", description="Расход за сегодня и дневной лимит"),
        BotCommand(command="mode", description="Выбрать стиль ответов"),
        BotCommand(command="help", description="Что я умею"),
        BotCommand(command="memory", description="Что я о вас знаю"),
        BotCommand(command="remember", description="Запомнить факт о вас"),
        BotCommand(command="forget", description="Забыть факт: номер или слова"),
        BotCommand(command="forget_all", description="Стереть всё о вас"),
    ],
}


def create_bot(settings: BotSettings) -> Bot:
    """A Bot speaking to TELEGRAM_API_URL that waits out flood control."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    session.middleware(
        RetryAfterMiddleware(settings.telegram_max_retries, settings.telegram_max_retry_after)
    )
    return Bot(settings.bot_token.get_secret_value(), session=session)


def create_dispatcher(settings: BotSettings, backend: BackendClient) -> Dispatcher:
    """The Dispatcher with its routers; handlers get `backend`, `settings`, `drafts`, `notices`
    and `lang` from it."""
    dispatcher = Dispatcher(
        settings=settings, backend=backend, drafts=DraftGate(), notices=Notices()
    )
    dispatcher.update.outer_middleware(RequestIdMiddleware())
    dispatcher.update.outer_middleware(LanguageMiddleware())
    router = create_router()
    access = AccessMiddleware(settings)
    router.message.middleware(access)
    router.callback_query.middleware(access)
    dispatcher.include_router(router)
    dispatcher.startup.register(_on_startup)
    return dispatcher


async def _on_startup(bot: Bot) -> None:
    me = await bot.me()
    log.info("bot @%s (id %s) started", me.username, me.id)
    try:
        await bot.set_my_commands(COMMANDS["en"], scope=BotCommandScopeDefault())
        await bot.set_my_commands(
            COMMANDS["ru"], scope=BotCommandScopeDefault(), language_code="ru"
        )
    except Exception as exc:  # the command menu is a nicety; the bot works without it
        log.warning("could not set the command menu: %s", exc)


async def run_polling(settings: BotSettings, *, handle_signals: bool = True) -> None:
    """Long polling until stopped (Ctrl+C / SIGTERM)."""
    backend = BackendClient(settings)
    bot = create_bot(settings)
    dispatcher = create_dispatcher(settings, backend)
    try:
        # getUpdates is refused while a webhook is set, e.g. after running in webhook mode.
        await bot.delete_webhook(drop_pending_updates=False)
        log.info("long polling %s, backend %s", settings.telegram_api_url, settings.backend_url)
        await dispatcher.start_polling(
            bot, polling_timeout=settings.polling_timeout, handle_signals=handle_signals
        )
    finally:
        await backend.aclose()
        await bot.session.close()


async def start_webhook(settings: BotSettings, bot: Bot, dispatcher: Dispatcher) -> web.AppRunner:
    """Register WEBHOOK_URL with Telegram and serve it on WEBHOOK_HOST:WEBHOOK_PORT."""
    assert settings.webhook_url is not None
    secret = (
        settings.webhook_secret.get_secret_value()
        if settings.webhook_secret
        else secrets.token_urlsafe(32)
    )  # we register it ourselves on every start
    app = web.Application()
    SimpleRequestHandler(dispatcher=dispatcher, bot=bot, secret_token=secret).register(
        app, path=settings.webhook_path
    )
    setup_application(app, dispatcher, bot=bot)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.webhook_host, settings.webhook_port).start()
    await bot.set_webhook(
        settings.webhook_url,
        secret_token=secret,
        allowed_updates=dispatcher.resolve_used_update_types(),
    )
    log.info(
        "webhook %s served on %s:%d%s",
        settings.webhook_url,
        settings.webhook_host,
        settings.webhook_port,
        settings.webhook_path,
    )
    return runner


async def run_webhook(settings: BotSettings) -> None:
    """Serve the webhook until SIGINT/SIGTERM."""
    backend = BackendClient(settings)
    bot = create_bot(settings)
    dispatcher = create_dispatcher(settings, backend)
    runner = await start_webhook(settings, bot, dispatcher)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()  # also closes the bot session (setup_application's shutdown)
        await backend.aclose()


def run(settings: BotSettings) -> None:
    """`llm-bot-core bot`: webhook mode when WEBHOOK_URL is set, long polling otherwise."""
    if settings.webhook_url:
        asyncio.run(run_webhook(settings))
    else:
        asyncio.run(run_polling(settings))
