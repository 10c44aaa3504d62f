"""Typed failures mapped once to the error shape; the status comes with the error's code."""

from __future__ import annotations

import logging
from typing import Any

from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_bot_core.api.schemas import ErrorResponse
from llm_bot_core.db.errors import DATABASE_ERRORS, as_core_error
from llm_bot_core.errors import ERROR_CODES, CoreError, codes_with_status

log = logging.getLogger(__name__)


class ApiError(CoreError):
    """An error a route or dependency raises itself: `ApiError("unauthorized", message)`."""

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message, code=code)


def openapi_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a router: each status with the codes it can carry."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERROR_CODES[code].status, []).append(code)
    return {
        status: {"model": ErrorResponse, "description": ", ".join(names)}
        for status, names in sorted(by_status.items())
    }


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(
        code=code, message=message, details=details, request_id=correlation_id.get()
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def respond(exc: CoreError) -> JSONResponse:
    """The one place an error becomes a response; 5xx are logged with the request id."""
    return JSONResponse(
        described(exc).model_dump(exclude_none=True),
        status_code=exc.status,
        headers=exc.headers or None,
    )


def described(exc: CoreError) -> ErrorResponse:
    """The error body of `exc` (a response's, or a stream's `error` event); 5xx are logged."""
    if exc.status == 500:
        log.error("internal error: %r", exc.__cause__ or exc, exc_info=exc.__cause__ or exc)
    elif exc.status >= 500:
        cause = f" ({exc.__cause__!r})" if exc.__cause__ else ""
        log.warning("%s %d: %s%s", exc.code, exc.status, exc, cause)
    return ErrorResponse(code=exc.code, message=exc.message, request_id=correlation_id.get())


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CoreError)
    async def _core(_: Request, exc: CoreError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return respond(CoreError(code="invalid_json"))
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in errors
        ]
        info = ERROR_CODES["validation_error"]
        return error_response(info.status, "validation_error", info.description, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 only when it cannot parse the body (RecursionError on deeply
        # nested JSON, undecodable bytes): that is `invalid_json`.
        codes = codes_with_status(exc.status_code)
        if not codes:  # a status the table lacks is a gap in our mapping: a bug
            return respond(CoreError(f"HTTP {exc.status_code}: {exc.detail}"))
        message = str(exc.detail) if exc.status_code != 400 else ERROR_CODES[codes[0]].description
        return error_response(exc.status_code, codes[0], message)

    async def _database(_: Request, exc: Exception) -> JSONResponse:
        error = as_core_error(exc)
        error.__cause__ = exc
        return respond(error)

    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Runs outside the other middleware (Starlette's ServerErrorMiddleware); the request
        # id is still in the context.
        error = CoreError(code="internal_error")
        error.__cause__ = exc
        return respond(error)
