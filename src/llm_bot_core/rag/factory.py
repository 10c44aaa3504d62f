"""Builds the configured semantic memory (the RAG issue fills this in)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.rag.base import DisabledSemanticMemory, SemanticMemory


async def build_semantic_memory(settings: Settings, engine: AsyncEngine) -> SemanticMemory:
    return DisabledSemanticMemory()
