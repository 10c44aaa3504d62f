"""Dependencies: the services built in lifespan, and bearer-token auth."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.api.errors import ApiError
from llm_bot_core.config import Settings
from llm_bot_core.llm.base import ChatModel
from llm_bot_core.media.voice import VoiceService
from llm_bot_core.memory.chat import ChatService
from llm_bot_core.memory.erase import EraseService
from llm_bot_core.memory.facts import FactService
from llm_bot_core.memory.jobs import JobQueue
from llm_bot_core.memory.personas import PersonaCache
from llm_bot_core.rag.base import SemanticMemory
from llm_bot_core.usage.budget import Budgets
from llm_bot_core.usage.ledger import UsageLedger


@dataclass
class Services:
    """Long-lived objects of one backend process."""

    settings: Settings
    engine: AsyncEngine
    model: ChatModel
    semantic: SemanticMemory
    jobs: JobQueue
    chat: ChatService
    erase: EraseService
    ledger: UsageLedger
    budgets: Budgets
    facts: FactService
    voice: VoiceService
    personas: PersonaCache


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_chat_service(services: ServicesDep) -> ChatService:
    return services.chat


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]


async def get_erase_service(services: ServicesDep) -> EraseService:
    return services.erase


EraseServiceDep = Annotated[EraseService, Depends(get_erase_service)]


async def get_budgets(services: ServicesDep) -> Budgets:
    return services.budgets


BudgetsDep = Annotated[Budgets, Depends(get_budgets)]


async def get_fact_service(services: ServicesDep) -> FactService:
    return services.facts


FactServiceDep = Annotated[FactService, Depends(get_fact_service)]


async def get_personas(services: ServicesDep) -> PersonaCache:
    return services.personas


PersonasDep = Annotated[PersonaCache, Depends(get_personas)]

_bearer = HTTPBearer(auto_error=False)


async def require_api_key(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When BACKEND_API_KEY is set, /v1/* needs `Authorization: Bearer <key>`."""
    expected = services.settings.server.backend_api_key
    if expected is None or not expected.get_secret_value():
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ApiError("unauthorized")
