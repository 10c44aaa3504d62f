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
    calls: int = Field(ge=0, description="Model calls of every kind, transcriptions included.")
    audio_seconds: float = Field(
        ge=0, description="Seconds of voice messages transcribed (what the provider bills)."
    )
    transcriptions: int = Field(ge=0, description="Voice messages transcribed.")
    pictures_described: int = Field(
        ge=0, description="Pictures the vision model described (one call each)."
    )


class UserUsage(BaseModel):
    user_id: str
    today: DayTotals
    daily_token_limit: int = Field(ge=0, description="Tokens per day; 0: no limit.")
    resets_at: datetime = Field(description="The next midnight in BOT_TIMEZONE.")
    blocked: bool = False


@usage.get("/users/{user_id}", response_model=UserUsage)
async def user_usage(user_id: str, budgets: BudgetsDep) -> UserUsage:
    """The user's tokens, cost, calls, voice and pictures since midnight (BOT_TIMEZONE)."""
    day = await budgets.today(user_id)
    return UserUsage(
        user_id=day.user_id,
        today=DayTotals(
            prompt_tokens=day.prompt_tokens,
            completion_tokens=day.completion_tokens,
            cost=day.cost,
            calls=day.calls,
            audio_seconds=round(day.audio_seconds, 3),
            transcriptions=day.transcriptions,
            pictures_described=day.pictures_described,
        ),
        daily_token_limit=day.daily_token_limit,
        resets_at=day.resets_at,
        blocked=day.blocked,
    )
