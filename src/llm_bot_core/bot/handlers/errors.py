"""The last resort: an update that failed is logged, and polling goes on."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.types import ErrorEvent

log = logging.getLogger(__name__)


async def log_error(event: ErrorEvent) -> bool:
    """Log the failure with its update id; True marks it handled."""
    log.error(
        "update %s failed: %r", event.update.update_id, event.exception, exc_info=event.exception
    )
    return True


def create_router() -> Router:
    router = Router(name=__name__)
    router.errors.register(log_error)
    return router
