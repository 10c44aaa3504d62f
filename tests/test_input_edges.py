"""Input edges: text that shows nothing is blank, and ids given as numbers must be integers."""

from __future__ import annotations

import unicodedata

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.api.schemas import HandleRequest, ResetRequest, is_blank
from tests.test_api import assert_error, rows

# Every format character (Cf) of the running Python's Unicode tables, plus whitespace.
FORMAT_CHARS = "".join(
    c for c in map(chr, range(0x110000)) if unicodedata.category(c) == "Cf"
)
INVISIBLE = st.text(alphabet=FORMAT_CHARS + " \t\n\u00a0\u3000\u3164\ufe0f", min_size=1)


@given(INVISIBLE)
def test_text_of_only_invisible_characters_is_blank(text: str) -> None:
    assert is_blank(text)
    with pytest.raises(ValidationError, match="visible character"):
        HandleRequest.model_validate({"user_id": "1", "chat_id": "2", "text": text})


@given(INVISIBLE, st.characters(categories=["L", "N", "P", "S"]), INVISIBLE)
def test_one_visible_character_among_invisible_ones_is_text(
    before: str, visible: str, after: str
) -> None:
    text = before + visible + after
    assert HandleRequest.model_validate({"user_id": "1", "chat_id": "2", "text": text}).text == text


@given(st.integers(min_value=-(10**100), max_value=10**100))
def test_integer_ids_are_accepted_as_their_decimal_string(n: int) -> None:
    request = HandleRequest.model_validate({"user_id": n, "chat_id": n, "text": "x"})
    assert request.user_id == request.chat_id == str(n)
    assert ResetRequest.model_validate({"chat_id": n}).chat_id == str(n)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_ids_are_rejected_even_when_whole(x: float) -> None:
    with pytest.raises(ValidationError, match="must be an integer"):
        HandleRequest.model_validate({"user_id": x, "chat_id": "2", "text": "x"})
    with pytest.raises(ValidationError, match="must be an integer"):
        ResetRequest.model_validate({"chat_id": x})


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "text", ["\u200b", "\ufeff", "\u200c\u200d", "\u2060 \u200b", "\ufeff\n", "\u00ad", "\u3164"]
)
async def test_zero_width_text_is_rejected_like_whitespace(
    app_client: httpx.AsyncClient, db: AsyncEngine, text: str
) -> None:
    response = await app_client.post(
        "/v1/chat/handle", json={"user_id": "1", "chat_id": "2", "text": text}
    )
    assert_error(response, 422, "validation_error")
    assert await rows(db, "SELECT id FROM messages") == []


@pytest.mark.asyncio
@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"1e400", b"1.5", b"12.0", b"true"])
async def test_non_integer_number_ids_are_rejected(
    app_client: httpx.AsyncClient, db: AsyncEngine, number: bytes
) -> None:
    for path, payload in [
        ("/v1/chat/handle", b'{"user_id": %s, "chat_id": "2", "text": "hi"}' % number),
        ("/v1/chat/reset", b'{"chat_id": %s}' % number),
    ]:
        response = await app_client.post(
            path, content=payload, headers={"content-type": "application/json"}
        )
        error = assert_error(response, 422, "validation_error")
        assert error["details"][0]["loc"][-1] in ("user_id", "chat_id")
    assert await rows(db, "SELECT id FROM chat_sessions") == []
