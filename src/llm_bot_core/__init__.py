"""LLM Bot Core: a backend for LLM-powered Telegram bots with multi-level memory."""

__version__ = "0.1.0"
