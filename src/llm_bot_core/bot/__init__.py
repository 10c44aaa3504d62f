"""The Telegram bot (aiogram 3): config, backend client, handlers, entry point.

It talks to the backend only over HTTP; run it with `llm-bot-core bot`.
"""
