"""What a user has spent today and the limit that applies to them."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from llm_bot_core.api.deps import BudgetsDep, require_api_key
from llm_bot_core.api.errors import openapi_responses

usage = APIRouter(
    prefix="/v1/usage",
    dependencies=[Depends(require_api_key)],
    responses=openapi_responses(
        "unauthorized", "validation_error", "internal_error", "database_unavailable"
    ),
)


class DayTotals(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cost: float | None = Field(description="Sum of what the provider reported; null: none did.")
    calls: int = Field(ge=0)


class UserUsage(BaseModel):
    user_id: str
    today: DayTotals
    daily_token_limit: int = Field(ge=0, description="Tokens per day; 0: no limit.")
    resets_at: datetime = Field(description="The next midnight in BOT_TIMEZONE.")
    blocked: bool = False


@usage.get("/users/{user_id}", response_model=UserUsage)
async def user_usage(user_id: str, budgets: BudgetsDep) -> UserUsage:
    """Tokens, cost and calls of the user's model calls since midnight (BOT_TIMEZONE)."""
    day = await budgets.today(user_id)
    return UserUsage(
        user_id=day.user_id,
        today=DayTotals(
            prompt_tokens=day.prompt_tokens,
            completion_tokens=day.completion_tokens,
            cost=day.cost,
            calls=day.calls,
        ),
        daily_token_limit=day.daily_token_limit,
        resets_at=day.resets_at,
        blocked=day.blocked,
    )
