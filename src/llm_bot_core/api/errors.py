"""Typed failures mapped once to the error shape and an HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_bot_core.api.schemas import ErrorResponse
from llm_bot_core.llm.base import LLMBadResponse, LLMError, LLMNotConfigured, LLMUnavailable
from llm_bot_core.memory.chat import SessionGone

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "The body is not valid JSON."),
    "unauthorized": (401, "Missing or wrong bearer token (BACKEND_API_KEY)."),
    "not_found": (404, "No such endpoint."),
    "method_not_allowed": (405, "Method not allowed on this endpoint."),
    "payload_too_large": (413, "Body or text longer than the configured limit."),
    "unsupported_media_type": (415, "Send the body as application/json."),
    "validation_error": (422, "The body does not match the schema; see details."),
    "session_gone": (409, "The session was deleted while the answer was generated."),
    "llm_unavailable": (502, "The LLM provider failed or timed out; the message was stored."),
    "llm_bad_response": (
        502,
        "The LLM provider returned no usable answer; the message was stored.",
    ),
    "llm_not_configured": (503, "No LLM is configured; the message was stored."),
    "database_unavailable": (503, "The database is unreachable; nothing was stored."),
    "vector_store_unavailable": (503, "The vector store is unreachable; nothing was deleted."),
    "internal_error": (500, "Unexpected error; see the server log with the request id."),
}


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> JSONResponse:
    body = ErrorResponse(
        code=code, message=message, details=details, request_id=correlation_id.get()
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", ERROR_CODES["invalid_json"][1])
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in errors
        ]
        return error_response(422, "validation_error", ERROR_CODES["validation_error"][1], details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
            401: "unauthorized",
        }.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(LLMError)
    async def _llm(_: Request, exc: LLMError) -> JSONResponse:
        status = 503 if isinstance(exc, LLMNotConfigured) else 502
        if isinstance(exc, LLMUnavailable | LLMBadResponse):
            log.warning("LLM failure: %s", exc)
        return error_response(status, exc.code, str(exc))

    @app.exception_handler(SessionGone)
    async def _gone(_: Request, exc: SessionGone) -> JSONResponse:
        return error_response(409, exc.code, str(exc))

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _db(_: Request, exc: Exception) -> JSONResponse:
        log.error("database error: %s", exc.__class__.__name__, exc_info=exc)
        return error_response(503, "database_unavailable", ERROR_CODES["database_unavailable"][1])

    @app.exception_handler(OSError)
    async def _os(_: Request, exc: OSError) -> JSONResponse:
        # asyncpg raises plain OSError/ConnectionRefusedError when the server is down.
        log.error("I/O error: %r", exc)
        return error_response(503, "database_unavailable", ERROR_CODES["database_unavailable"][1])

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", ERROR_CODES["internal_error"][1])
