"""Every error code of the API in one list: its HTTP status, what it means, and whether the
same request may be sent again.

The API answers with it (handlers, OpenAPI responses, the body-limit middleware) and the bot
reads it (what to retry, what to tell the user), so this module imports neither of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorCode:
    status: int
    description: str
    # Nothing was stored or changed and the cause is passing: the client may send the same
    # request again (the bot does, and tells the user the service is temporarily unavailable).
    retryable: bool = False


ERROR_CODES: dict[str, ErrorCode] = {
    "invalid_json": ErrorCode(400, "The body is not valid JSON (or is nested too deeply)."),
    "unauthorized": ErrorCode(401, "Missing or wrong bearer token (BACKEND_API_KEY)."),
    "not_found": ErrorCode(404, "No such endpoint."),
    "fact_not_found": ErrorCode(404, "The user has no such fact (or, for PATCH, no current one)."),
    "persona_not_found": ErrorCode(404, "No selectable persona with this id."),
    "method_not_allowed": ErrorCode(405, "Method not allowed on this endpoint."),
    "user_blocked": ErrorCode(403, "An operator blocked this user; nothing was stored."),
    "session_gone": ErrorCode(409, "The session was deleted while the answer was generated."),
    "payload_too_large": ErrorCode(413, "Body or text longer than the configured limit."),
    "image_too_large": ErrorCode(
        413, "A picture is larger than IMAGE_MAX_BYTES (decoded); nothing was stored."
    ),
    "invalid_image": ErrorCode(
        422, "An entry of `images` is not a picture Pillow can read; nothing was stored."
    ),
    "too_many_images": ErrorCode(
        422, "More pictures than MAX_IMAGES in one message; nothing was stored."
    ),
    "images_not_supported": ErrorCode(
        422,
        "The model cannot read pictures: IMAGES_SUPPORTED is off (nothing was stored) or the "
        "provider refused the image (the message and its caption were stored).",
    ),
    "unsupported_media_type": ErrorCode(415, "Send the body as application/json."),
    "validation_error": ErrorCode(
        422, "The request does not match the schema or holds a value that cannot be stored."
    ),
    "budget_exceeded": ErrorCode(
        429,
        "The user's daily token budget is spent; nothing was stored. Retry-After gives the "
        "seconds until it resets (midnight in BOT_TIMEZONE).",
    ),
    "internal_error": ErrorCode(500, "Unexpected error; see the server log with the request id."),
    "llm_unavailable": ErrorCode(
        502, "The LLM provider failed or timed out; the message was stored."
    ),
    "llm_bad_response": ErrorCode(
        502, "The LLM provider returned no usable answer; the message was stored."
    ),
    "llm_not_configured": ErrorCode(503, "No LLM is configured; the message was stored."),
    "database_unavailable": ErrorCode(
        503, "The database is unreachable; nothing was stored.", retryable=True
    ),
    # Voice (POST /v1/media/transcriptions): nothing is stored in memory by that route.
    "transcription_not_configured": ErrorCode(
        503,
        "No speech-to-text endpoint is configured (TRANSCRIPTION_BASE_URL, "
        "TRANSCRIPTION_API_KEY or OPENAI_API_KEY).",
    ),
    "transcription_unavailable": ErrorCode(
        502, "The speech-to-text provider failed or timed out; nothing was stored."
    ),
    "transcription_empty": ErrorCode(
        422, "Nothing was recognised in the recording; nothing was stored."
    ),
    "audio_unreadable": ErrorCode(
        422, "The upload is not a readable recording, or its duration cannot be told."
    ),
    "audio_too_long": ErrorCode(413, "The recording is longer than VOICE_MAX_SECONDS."),
    "vector_store_unavailable": ErrorCode(
        503, "The vector store is unreachable; nothing was deleted.", retryable=True
    ),
}

RETRYABLE_CODES = frozenset(code for code, info in ERROR_CODES.items() if info.retryable)


def codes_with_status(status: int) -> list[str]:
    """The codes answered with this HTTP status, in table order."""
    return [code for code, info in ERROR_CODES.items() if info.status == status]


class CoreError(Exception):
    """A failure with a code of ERROR_CODES: the API answers with the code's status, once."""

    code: str = "internal_error"

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        if self.code not in ERROR_CODES:  # a typo would otherwise surface as a 500 at runtime
            raise ValueError(f"unknown error code {self.code!r}")
        super().__init__(message or ERROR_CODES[self.code].description)

    @property
    def status(self) -> int:
        return ERROR_CODES[self.code].status

    @property
    def message(self) -> str:
        return str(self)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the body (Retry-After, say)."""
        return {}
