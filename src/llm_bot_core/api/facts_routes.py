"""A user's facts: what the bot knows about them, and their (or an operator's) corrections."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from llm_bot_core.api.deps import FactServiceDep, require_api_key
from llm_bot_core.api.errors import openapi_responses
from llm_bot_core.api.schemas import Fact, FactDeleted, FactList, FactWrite, Identifier
from llm_bot_core.memory.facts import FactRecord

facts = APIRouter(
    prefix="/v1/memory/users/{user_id}/facts",
    dependencies=[Depends(require_api_key)],
    responses=openapi_responses(
        "unauthorized", "validation_error", "internal_error", "database_unavailable"
    ),
)
NOT_FOUND = openapi_responses("fact_not_found")


def _fact(record: FactRecord) -> Fact:
    return Fact.model_validate(record, from_attributes=True)


@facts.get("", response_model=FactList)
async def list_facts(
    user_id: Identifier, service: FactServiceDep, history: bool = False
) -> FactList:
    """The user's current facts, oldest first; `history=true` adds the superseded versions."""
    return FactList(facts=[_fact(f) for f in await service.list(user_id, history=history)])


@facts.post("", response_model=Fact, status_code=status.HTTP_201_CREATED)
async def add_fact(user_id: Identifier, body: FactWrite, service: FactServiceDep) -> Fact:
    """Add a fact in the user's words (in the next prompt); a duplicate returns the known one."""
    return _fact(await service.add(user_id, body.content, source=body.source))


@facts.patch("/{fact_id}", response_model=Fact, responses=NOT_FOUND)
async def correct_fact(
    user_id: Identifier, fact_id: int, body: FactWrite, service: FactServiceDep
) -> Fact:
    """Replace a current fact: returns the new fact, which supersedes the old one."""
    return _fact(await service.replace(user_id, fact_id, body.content, source=body.source))


@facts.delete("/{fact_id}", response_model=FactDeleted, responses=NOT_FOUND)
async def delete_fact(user_id: Identifier, fact_id: int, service: FactServiceDep) -> FactDeleted:
    """Forget a fact and its earlier versions: gone from every later prompt."""
    return FactDeleted(deleted=await service.delete(user_id, fact_id))
