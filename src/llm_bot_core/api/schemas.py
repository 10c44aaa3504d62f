"""Request and response bodies, exactly as the specification's JSON shows."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from llm_bot_core.db.models import ID_MAX_LEN

# Telegram ids are numbers; accepting them as JSON numbers too spares every client a str().
# PostgreSQL text cannot hold NUL: refuse it here (422) rather than fail in the database.
NO_NUL = r"^[^\x00]*$"

Identifier = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=ID_MAX_LEN, pattern=NO_NUL),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class HandleRequest(_Strict):
    user_id: Identifier = Field(examples=["12345"])
    chat_id: Identifier = Field(examples=["67890"])
    text: str = Field(
        min_length=1,
        pattern=NO_NUL,
        description="The user's message; must contain a non-space character. "
        "Longer than MAX_MESSAGE_CHARS (default 16000) is rejected with 413.",
        examples=["Привет, расскажи, что ты умеешь?"],
    )

    @model_validator(mode="after")
    def _text_not_blank(self) -> HandleRequest:
        if not self.text.strip():
            raise ValueError("text must contain a non-space character")
        return self


class HandleResponse(BaseModel):
    text: str = Field(examples=["Привет! Я бэкенд-для Телеграм-бота с памятью и RAG."])
    type: Literal["message"] = "message"


class ResetRequest(_Strict):
    chat_id: Identifier | None = Field(default=None, examples=["67890"])
    session_id: uuid.UUID | None = Field(
        default=None, examples=["550e8400-e29b-41d4-a716-446655440000"]
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ResetRequest:
        if (self.chat_id is None) == (self.session_id is None):
            raise ValueError("give exactly one of chat_id or session_id")
        return self


class ResetResponse(BaseModel):
    status: Literal["ok"] = "ok"
    reset_sessions: int = Field(ge=0, description="Sessions closed; 0 for unknown or closed ids.")


class ComponentHealth(BaseModel):
    status: Literal["ok", "error", "disabled", "not_configured"]
    detail: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    database: ComponentHealth
    broker: ComponentHealth
    llm: ComponentHealth
    rag: ComponentHealth


class ErrorResponse(BaseModel):
    """The one error shape of every endpoint."""

    type: Literal["error"] = "error"
    code: str = Field(description="Stable machine-readable code, e.g. validation_error.")
    message: str
    details: list[dict[str, Any]] | None = None
    request_id: str | None = None
