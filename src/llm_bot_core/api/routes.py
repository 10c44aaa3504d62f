"""The REST endpoints of the specification."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from llm_bot_core import __version__, metrics
from llm_bot_core.api.deps import ChatServiceDep, ServicesDep, require_api_key
from llm_bot_core.api.errors import ApiError, openapi_responses
from llm_bot_core.api.schemas import (
    ComponentHealth,
    HandleRequest,
    HandleResponse,
    HealthResponse,
    ResetRequest,
    ResetResponse,
)
from llm_bot_core.api.sse import EVENTS_DESCRIPTION, EventStreamResponse, event_stream
from llm_bot_core.memory.chat import UserMessage
from llm_bot_core.memory.pictures import Picture, prepare_pictures

_errors = openapi_responses(
    "invalid_json",
    "unauthorized",
    "user_blocked",
    "session_gone",
    "payload_too_large",
    "validation_error",
    "budget_exceeded",
    "internal_error",
    "llm_unavailable",
    "llm_bad_response",
    "llm_not_configured",
    "database_unavailable",
    "invalid_image",
    "image_too_large",
    "too_many_images",
    "images_not_supported",
)

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_errors)
system = APIRouter()


@v1.post("/chat/handle", response_model=HandleResponse)
async def handle(
    body: HandleRequest, chat: ChatServiceDep, services: ServicesDep, response: Response
) -> HandleResponse:
    """Answer a user's message using the chat's memory."""
    reply = await chat.handle(await _user_message(body, services))
    response.headers["Server-Timing"] = f"llm;dur={reply.llm_seconds * 1000:.2f}"
    return HandleResponse(text=reply.text)


@v1.post(
    "/chat/stream",
    response_class=EventStreamResponse,
    status_code=200,
    responses={200: {"content": {"text/event-stream": {}}, "description": EVENTS_DESCRIPTION}},
)
async def stream(body: HandleRequest, chat: ChatServiceDep, services: ServicesDep) -> Response:
    """Answer like /v1/chat/handle, streaming the text as Server-Sent Events."""
    reply = await chat.stream(await _user_message(body, services))
    return await event_stream(reply)


async def _user_message(body: HandleRequest, services: ServicesDep) -> UserMessage:
    """The request as the chat use case takes it: its length checked, its pictures prepared."""
    _check_length(body, services)
    return UserMessage(
        user_id=body.user_id,
        chat_id=body.chat_id,
        text=body.text,
        chat_type=body.chat_type,
        user_name=body.user_name,
        input_mode=body.input_mode,
        pictures=await _pictures(body, services),
    )


def _check_length(body: HandleRequest, services: ServicesDep) -> None:
    if len(body.text) > services.settings.server.max_message_chars:
        raise ApiError(
            "payload_too_large",
            f"text is longer than {services.settings.server.max_message_chars} characters "
            "(MAX_MESSAGE_CHARS)",
        )


async def _pictures(body: HandleRequest, services: ServicesDep) -> list[Picture]:
    """The request's pictures, checked and downscaled (in a thread: Pillow is CPU-bound)."""
    if not body.images:
        return []
    settings = services.settings.pictures
    if not settings.images_supported:
        raise ApiError(
            "images_not_supported",
            "this bot's model cannot read pictures (IMAGES_SUPPORTED is off); nothing was stored",
        )
    images = [(image.data_base64, image.mime_type) for image in body.images]
    return await asyncio.to_thread(prepare_pictures, images, settings)


@v1.post("/chat/reset", response_model=ResetResponse)
async def reset(body: ResetRequest, chat: ChatServiceDep) -> ResetResponse:
    """Close the chat's active session (Telegram /start), by chat_id or session_id."""
    closed = await chat.reset(chat_id=body.chat_id, session_id=body.session_id)
    return ResetResponse(reset_sessions=closed)


@system.get("/health/live", response_class=PlainTextResponse)
async def live() -> PlainTextResponse:
    """Liveness only: touches neither the database nor the LLM (the benchmark's floor)."""
    return PlainTextResponse("ok")


@system.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics() -> Response:
    """Prometheus metrics: request latency by route, LLM calls and tokens, jobs, DB pool."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@system.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "database unreachable"}},
)
async def health(services: ServicesDep) -> JSONResponse:
    """Liveness and the state of the database, broker, LLM and semantic memory."""
    database = await _check_database(services)
    broker_health = await services.jobs.broker_health()
    broker = ComponentHealth(status=broker_health.status, detail=broker_health.detail)
    settings = services.settings
    llm = (
        ComponentHealth(
            status="ok", detail=f"{settings.llm.chat_model} at {settings.llm.effective_base_url}"
        )
        if settings.llm.configured
        else ComponentHealth(
            status="not_configured", detail="set OPENROUTER_API_KEY or LLM_BASE_URL"
        )
    )
    rag = ComponentHealth(
        status="ok" if services.semantic.enabled else "disabled",
        detail=services.semantic.description,
    )
    ok = database.status == "ok"
    body = HealthResponse(
        status="ok" if ok else "degraded",
        version=__version__,
        database=database,
        broker=broker,
        llm=llm,
        rag=rag,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)


async def _check_database(services: ServicesDep) -> ComponentHealth:
    try:
        async with asyncio.timeout(3):
            async with services.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure is the answer here, not an error of /health
        return ComponentHealth(status="error", detail=type(exc).__name__)
    return ComponentHealth(status="ok")


__all__ = ["system", "v1"]
