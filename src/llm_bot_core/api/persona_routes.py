"""Personas users may choose (/mode), and the one a chat answers with."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from llm_bot_core.api.deps import PersonasDep, require_api_key
from llm_bot_core.api.errors import openapi_responses
from llm_bot_core.db.models import ID_MAX_LEN
from llm_bot_core.memory.personas import Persona

personas = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_api_key)],
    responses=openapi_responses(
        "unauthorized", "validation_error", "internal_error", "database_unavailable"
    ),
)


ChatId = Annotated[str, Path(min_length=1, max_length=ID_MAX_LEN)]


class PersonaOut(BaseModel):
    id: int
    name: str
    is_default: bool


class PersonaList(BaseModel):
    personas: list[PersonaOut]


class ChatPersona(BaseModel):
    chat_id: str
    persona: PersonaOut
    chosen: bool = Field(description="False: the chat chose none (or its choice was deleted).")


class ChoosePersona(BaseModel):
    persona_id: int


def _out(persona: Persona) -> PersonaOut:
    return PersonaOut(id=persona.id, name=persona.name, is_default=persona.is_default)


@personas.get("/personas", response_model=PersonaList)
async def list_personas(cache: PersonasDep) -> PersonaList:
    """The personas an operator marked selectable: what /mode offers."""
    return PersonaList(personas=[_out(p) for p in cache.selectable()])


@personas.get("/chats/{chat_id}/persona", response_model=ChatPersona)
async def chat_persona(chat_id: ChatId, cache: PersonasDep) -> ChatPersona:
    """The persona that answers in this chat: its choice, else the default."""
    persona, chosen = await cache.chosen(chat_id)
    return ChatPersona(chat_id=chat_id, persona=_out(persona), chosen=chosen)


@personas.put(
    "/chats/{chat_id}/persona",
    response_model=ChatPersona,
    responses=openapi_responses("persona_not_found"),
)
async def choose_persona(chat_id: ChatId, body: ChoosePersona, cache: PersonasDep) -> ChatPersona:
    """Answer in this chat with a selectable persona from the next message on."""
    persona = await cache.choose(chat_id, body.persona_id)
    return ChatPersona(chat_id=chat_id, persona=_out(persona), chosen=True)
