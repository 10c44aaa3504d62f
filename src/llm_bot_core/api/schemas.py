"""Request and response bodies, exactly as the specification's JSON shows."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from llm_bot_core.db.models import ID_MAX_LEN, NAME_MAX_LEN

# PostgreSQL text cannot hold NUL: refuse it here (422) rather than fail in the database.
NO_NUL = r"^[^\x00]*$"

# Invisible characters that are not whitespace to str.isspace() yet show nothing: besides the
# format characters (category Cf: U+200B-U+200D, U+2060, the BOM U+FEFF, U+00AD...), the
# default-ignorable letters and marks: Hangul fillers, the combining grapheme joiner and the
# variation selectors.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0") | frozenset(
    map(chr, range(0xFE00, 0xFE10))
)


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace and invisible characters."""
    return all(c.isspace() or c in _INVISIBLE or unicodedata.category(c) == "Cf" for c in text)


def _integer_id(value: Any) -> Any:
    # Telegram ids are numbers; accepting them as JSON integers too spares every client a
    # str(). A float is not an id: 1.5, 1e400 (inf) and NaN would become "1.5", "inf", "nan".
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        raise ValueError("an id given as a number must be an integer")
    return value


Identifier = Annotated[
    str,
    BeforeValidator(_integer_id),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=ID_MAX_LEN, pattern=NO_NUL),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


ChatType = Literal["private", "group", "supergroup", "channel"]


class ImageIn(_Strict):
    """A picture sent with the message (memory/pictures.py checks and downscales it)."""

    data_base64: str = Field(
        min_length=1, description="The picture's bytes, base64.", examples=["/9j/4AAQSkZJRg..."]
    )
    mime_type: str = Field(min_length=1, max_length=100, pattern=NO_NUL, examples=["image/jpeg"])


class HandleRequest(_Strict):
    user_id: Identifier = Field(examples=["12345"])
    chat_id: Identifier = Field(examples=["67890"])
    chat_type: ChatType | None = Field(
        default=None,
        description="The chat's kind (Telegram's chat.type). Memory is scoped by it: a private "
        "chat recalls what this user said in private chats, a group only what was said in "
        "that group. Omitted: a chat whose chat_id equals the user_id is private, any other is "
        "a group. A session keeps the kind it was opened with.",
        examples=["private"],
    )
    user_name: (
        Annotated[
            str,
            StringConstraints(
                strip_whitespace=True, min_length=1, max_length=NAME_MAX_LEN, pattern=NO_NUL
            ),
        ]
        | None
    ) = Field(
        default=None,
        description="The sender's display name; group prompts label each turn with it.",
        examples=["Alice"],
    )
    input_mode: Literal["text", "voice"] = Field(
        default="text",
        description="How the user gave the message: typed, or spoken (`text` is then the "
        "transcript from /v1/media/transcriptions). Stored with the message; the prompt marks "
        "a voice message as transcribed speech.",
    )
    text: str = Field(
        default="",
        pattern=NO_NUL,
        description="The user's message; must contain a visible character (whitespace and "
        "zero-width characters alone are blank), unless `images` are sent: then it is their "
        "caption and may be empty. "
        "Longer than MAX_MESSAGE_CHARS (default 16000) is rejected with 413.",
        examples=["Привет, расскажи, что ты умеешь?"],
    )
    images: list[ImageIn] | None = Field(
        default=None,
        description="Pictures sent with the message, given to the model as image parts. At "
        "most MAX_IMAGES (422 too_many_images), each at most IMAGE_MAX_BYTES decoded (413 "
        "image_too_large) and readable as an image (422 invalid_image); 422 "
        "images_not_supported when the model cannot read pictures.",
    )

    @model_validator(mode="after")
    def _text_not_blank(self) -> HandleRequest:
        if not self.images and is_blank(self.text):
            raise ValueError("text must contain a visible character")
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


# --- facts (api/facts_routes.py) -------------------------------------------------------------

FACT_MAX_CHARS = 2000


class Fact(BaseModel):
    id: int
    content: str
    source: Literal["extracted", "user", "operator"]
    created_at: datetime
    superseded_at: datetime | None
    superseded_by: int | None = Field(description="The fact that replaced this one, if any.")


class FactList(BaseModel):
    facts: list[Fact]


class FactWrite(_Strict):
    content: str = Field(
        min_length=1,
        max_length=FACT_MAX_CHARS,
        pattern=NO_NUL,
        examples=["Живу в Берлине с 2026 года."],
    )
    source: Literal["user", "operator"] = Field(
        default="user", description="Who wrote it: the user (bot, API) or an operator."
    )

    @model_validator(mode="after")
    def _not_blank(self) -> FactWrite:
        if is_blank(self.content):
            raise ValueError("content must contain a visible character")
        self.content = self.content.strip()
        return self


class FactDeleted(BaseModel):
    status: Literal["ok"] = "ok"
    deleted: int = Field(ge=1, description="Rows deleted: the fact and the versions it replaced.")


# --- voice (api/media_routes.py) --------------------------------------------------------------


class TranscriptionResponse(BaseModel):
    text: str = Field(
        description="The recognised text, whitespace collapsed; never empty (422 "
        "transcription_empty instead).",
        examples=["Привет, напомни, что я говорил про отпуск?"],
    )
    audio_seconds: float = Field(ge=0, description="Length of the recording, as accounted.")
    model: str = Field(examples=["whisper-1"])
    language: str | None = Field(default=None, description="As the provider reports it.")
