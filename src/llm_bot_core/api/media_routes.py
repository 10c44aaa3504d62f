"""Voice: POST /v1/media/transcriptions turns a recording into the text of a user's message."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from llm_bot_core.api.deps import ServicesDep, require_api_key
from llm_bot_core.api.errors import ApiError, openapi_responses
from llm_bot_core.api.schemas import Identifier, TranscriptionResponse

TRANSCRIPTIONS_PATH = "/v1/media/transcriptions"
# Room for the form fields and multipart boundaries around the recording itself.
MULTIPART_OVERHEAD = 64 * 1024

media = APIRouter(
    prefix="/v1/media",
    dependencies=[Depends(require_api_key)],
    responses=openapi_responses(
        "unauthorized",
        "user_blocked",
        "payload_too_large",
        "audio_too_long",
        "validation_error",
        "audio_unreadable",
        "transcription_empty",
        "budget_exceeded",
        "internal_error",
        "transcription_unavailable",
        "transcription_not_configured",
        "database_unavailable",
    ),
)


@media.post("/transcriptions", response_model=TranscriptionResponse)
async def transcribe(
    services: ServicesDep,
    audio: Annotated[UploadFile, File(description="The recording (OGG/Opus, WAV, MP4/M4A...).")],
    user_id: Annotated[Identifier, Form()],
    chat_id: Annotated[Identifier, Form()],
    duration: Annotated[
        float | None,
        Form(
            ge=0,
            le=7 * 24 * 3600,
            allow_inf_nan=False,
            description="Seconds, as the client knows them (Telegram's duration); used "
            "only for containers whose duration the backend does not read.",
        ),
    ] = None,
    language: Annotated[
        str | None, Form(pattern=r"^[a-z]{2}$", description="ISO-639-1 hint, e.g. ru.")
    ] = None,
) -> TranscriptionResponse:
    """Transcribe a voice message; nothing is stored but the call's usage."""
    limit = services.settings.transcription.voice_max_bytes
    data = await audio.read(limit + 1)
    if len(data) > limit:
        raise ApiError(
            "payload_too_large", f"the recording is larger than {limit} bytes (VOICE_MAX_BYTES)"
        )
    result = await services.voice.transcribe(
        data,
        user_id=user_id,
        chat_id=chat_id,
        filename=audio.filename or "voice.ogg",
        content_type=audio.content_type or "application/octet-stream",
        declared_seconds=duration,
        language=language,
    )
    return TranscriptionResponse(
        text=result.text,
        audio_seconds=round(result.audio_seconds, 3),
        model=result.model,
        language=result.language,
    )
