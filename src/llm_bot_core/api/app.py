"""FastAPI app factory; long-lived clients are built once in lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core import __version__
from llm_bot_core.api.deps import Services
from llm_bot_core.api.errors import install_error_handlers
from llm_bot_core.api.facts_routes import facts
from llm_bot_core.api.limits import CHAT_PATHS, BodySizeLimit, chat_body_limit
from llm_bot_core.api.media_routes import MULTIPART_OVERHEAD, TRANSCRIPTIONS_PATH, media
from llm_bot_core.api.memory_routes import memory
from llm_bot_core.api.persona_routes import personas as persona_routes
from llm_bot_core.api.routes import system, v1
from llm_bot_core.api.usage_routes import usage
from llm_bot_core.config import Settings, get_settings
from llm_bot_core.db.engine import create_engine, resolve_database_url
from llm_bot_core.db.migrate import upgrade_to_head_async
from llm_bot_core.llm.base import ChatModel
from llm_bot_core.llm.openai_compat import UnconfiguredChatModel, build_chat_model
from llm_bot_core.media.transcription import Transcriber, build_transcriber
from llm_bot_core.media.voice import VoiceService
from llm_bot_core.memory.chat import ChatService
from llm_bot_core.memory.erase import EraseService
from llm_bot_core.memory.facts import FactService
from llm_bot_core.memory.jobs import InProcessJobs, JobQueue
from llm_bot_core.memory.personas import PersonaCache
from llm_bot_core.memory.query_rewrite import QueryRewriter
from llm_bot_core.metrics import RequestMetrics
from llm_bot_core.rag.base import SemanticMemory
from llm_bot_core.rag.factory import build_semantic_memory
from llm_bot_core.usage.budget import Budgets
from llm_bot_core.usage.ledger import Clock, UsageLedger, utc_now

log = logging.getLogger(__name__)


def build_jobs(
    settings: Settings,
    engine: AsyncEngine,
    model: ChatModel,
    semantic: SemanticMemory,
    ledger: UsageLedger,
) -> JobQueue:
    """Celery when USE_CELERY_FOR_SUMMARY is set, otherwise asyncio tasks in this process."""
    if settings.worker.use_celery_for_summary:
        from llm_bot_core.worker.dispatch import CeleryJobs

        return CeleryJobs(settings, index_enabled=semantic.enabled)
    return InProcessJobs(
        engine,
        model,
        settings.memory,
        semantic,
        ledger,
        fts_config=settings.rag.rag_fts_config,
        pictures=settings.pictures,
    )


def build_rewriter(settings: Settings, model: ChatModel) -> QueryRewriter | None:
    """The query rewrite before recall when RAG_QUERY_REWRITE is on; None (no call) when off."""
    rag = settings.rag
    if not rag.rag_query_rewrite:
        return None
    return QueryRewriter(model, timeout=rag.rag_timeout, model_name=rag.rag_query_rewrite_model)


def create_app(
    settings: Settings | None = None,
    *,
    model: ChatModel | None = None,
    clock: Clock = utc_now,
    transcriber: Transcriber | None = None,
) -> FastAPI:
    """The backend app; `model`, `clock` and `transcriber` let tests hand in their own."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = resolve_database_url(settings.storage)
        if settings.storage.migrate_on_start:
            await upgrade_to_head_async(url)
        engine = create_engine(url, settings.storage)
        chat_model = model or build_chat_model(settings.llm)
        if isinstance(chat_model, UnconfiguredChatModel):
            log.warning(UnconfiguredChatModel.MESSAGE)
        semantic = await build_semantic_memory(
            settings.rag, engine, data_dir=settings.storage.data_dir
        )
        usage_settings = settings.usage
        ledger = UsageLedger(
            engine, interval=usage_settings.usage_flush_interval_ms / 1000, clock=clock
        )
        budgets = Budgets(
            engine=engine,
            ledger=ledger,
            default_limit=usage_settings.user_daily_token_limit,
            zone=usage_settings.zone,
        )
        jobs = build_jobs(settings, engine, chat_model, semantic, ledger)
        personas = PersonaCache(
            engine,
            fallback_instruction=settings.memory.system_prompt,
            reload_seconds=settings.memory.persona_reload_seconds,
        )
        await personas.start()
        chat = ChatService(
            engine=engine,
            model=chat_model,
            semantic=semantic,
            jobs=jobs,
            settings=settings.memory,
            ledger=ledger,
            budgets=budgets,
            fts_config=settings.rag.rag_fts_config,
            pictures=settings.pictures,
            data_dir=settings.storage.data_dir,
            personas=personas,
            rewriter=build_rewriter(settings, chat_model),
        )
        speech = transcriber or build_transcriber(
            settings.transcription,
            openai_api_key=settings.rag.openai_api_key,
            max_retries=settings.llm.llm_max_retries,
        )
        voice = VoiceService(
            transcriber=speech,
            settings=settings.transcription,
            ledger=ledger,
            budgets=budgets,
        )
        app.state.services = Services(
            settings=settings,
            engine=engine,
            model=chat_model,
            semantic=semantic,
            jobs=jobs,
            chat=chat,
            erase=EraseService(
                engine=engine,
                semantic=semantic,
                ledger=ledger,
                data_dir=settings.storage.data_dir,
            ),
            ledger=ledger,
            budgets=budgets,
            facts=FactService(engine, fts_config=settings.rag.rag_fts_config),
            voice=voice,
            personas=personas,
        )
        try:
            yield
        finally:
            # Answers whose client went away are finished and stored first: they queue jobs.
            await chat.finish_within(settings.server.shutdown_grace_seconds)
            await jobs.shutdown(settings.server.shutdown_grace_seconds)
            # After the summaries, whose calls are accounted too; before the engine goes.
            await ledger.aclose()
            await personas.aclose()
            await semantic.aclose()
            if model is None:
                await chat_model.aclose()
            if transcriber is None:
                await speech.aclose()
            await jobs.aclose()
            await engine.dispose()

    app = FastAPI(
        title="LLM Bot Core",
        version=__version__,
        description="Backend for LLM-powered Telegram bots with multi-level memory.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(memory)
    app.include_router(usage)
    app.include_router(facts)
    app.include_router(media)
    app.include_router(persona_routes)
    app.include_router(system)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.server.max_body_bytes,
        # Routes that take uploads have their own limit: voice, and the chat endpoints' pictures.
        per_path={
            TRANSCRIPTIONS_PATH: settings.transcription.voice_max_bytes + MULTIPART_OVERHEAD,
            **dict.fromkeys(CHAT_PATHS, chat_body_limit(settings)),
        },
    )
    app.add_middleware(RequestMetrics)
    # Outermost: every log line and error body carries the request id (X-Request-ID from the bot).
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID")
    return app
