"""Erasing stored memory: a session's or a user's messages, summaries and vectors."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from llm_bot_core.api.deps import EraseServiceDep, require_api_key
from llm_bot_core.api.errors import ApiError, openapi_responses
from llm_bot_core.memory.erase import Erased
from llm_bot_core.rag.base import VectorStoreUnavailable

memory = APIRouter(
    prefix="/v1/memory",
    dependencies=[Depends(require_api_key)],
    responses=openapi_responses(
        "unauthorized",
        "validation_error",
        "internal_error",
        "database_unavailable",
        "vector_store_unavailable",
    ),
)


class EraseResponse(BaseModel):
    status: str = "ok"
    deleted_sessions: int = Field(ge=0)
    deleted_messages: int = Field(ge=0)


async def _erased(erasing: Awaitable[Erased]) -> EraseResponse:
    try:
        gone = await erasing
    except VectorStoreUnavailable as exc:
        message = "The vector store is unreachable; nothing was deleted, retry later."
        raise ApiError("vector_store_unavailable", message) from exc
    return EraseResponse(deleted_sessions=gone.sessions, deleted_messages=gone.messages)


@memory.delete("/sessions/{session_id}", response_model=EraseResponse)
async def erase_session(session_id: uuid.UUID, erase: EraseServiceDep) -> EraseResponse:
    """Delete one session with its messages, summaries, embeddings and vectors."""
    return await _erased(erase.erase_session(session_id))


@memory.delete("/users/{user_id}", response_model=EraseResponse)
async def erase_user(user_id: str, erase: EraseServiceDep) -> EraseResponse:
    """Delete all sessions of a user with their messages, summaries, embeddings and vectors."""
    return await _erased(erase.erase_user(user_id))
