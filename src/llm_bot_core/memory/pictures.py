"""Pictures sent with a message: checked and downscaled on the way in, described for memory later.

On the request path (`prepare_pictures`): each picture is decoded with Pillow, refused when it is
not an image, too large or one too many, turned upright (EXIF), downscaled to IMAGE_MAX_SIDE and
re-encoded as JPEG, so the model gets what it needs and no more. The chat model sees the
pictures as OpenAI image parts of the last user turn (`with_pictures`).

In memory the message's text records them: one `[Picture]` line per picture, then the caption
(`picture_text`); `messages.attachments` keeps the structured record (`{"caption", "images":
[{"mime_type", "width", "height", "bytes", "description", "path"}]}`). Off the reply path the
vision model describes each picture (`describe_pictures`, the job memory.describe_pictures); the
description then replaces its `[Picture]` line (`[Picture: a red bicycle by a fence]`), so the
short-term window, summaries, facts and semantic memory (re-indexed by the trigger on content,
migration 0002) all read it, and "what was in the photo I sent last week?" has an answer.

The JPEGs wait in `pending_pictures` until their description is written, in the transaction that
deletes the row: the job is idempotent, and a worker killed meanwhile leaves the row for a
redelivered task or for the next job's sweep of rows older than STALE_AFTER. The bytes are kept
after that only with KEEP_IMAGES, under DATA_DIR/images/<session id>/ (memory/erase.py deletes
them with the user's data).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import math
import shutil
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from PIL import Image, ImageOps, UnidentifiedImageError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llm_bot_core.config import PictureSettings
from llm_bot_core.errors import CoreError
from llm_bot_core.llm.base import ChatMessage, ChatModel, ImagesNotSupported, LLMBadResponse
from llm_bot_core.metrics import metered_completion
from llm_bot_core.usage.ledger import IMAGE_DESCRIPTION, UsageLedger

log = logging.getLogger(__name__)

PICTURE_MARKER = "[Picture]"
JPEG_QUALITY = 85
# Pixels Pillow may decode: a small file that unpacks to gigapixels is refused, not decoded.
MAX_PIXELS = 50_000_000
# A pending picture older than this is taken up by the next description job (its own job was
# lost: a failed publish, a backend that stopped); a redelivered Celery task comes sooner.
STALE_AFTER_SECONDS = 600
# A picture whose description the provider keeps refusing (not transiently) is given up.
MAX_ATTEMPTS = 3
DESCRIPTION_MAX_TOKENS = 200
DESCRIPTION_MAX_CHARS = 600

DESCRIBE_SYSTEM_PROMPT = (
    "You describe a picture that a user sent to a chat assistant, for the assistant's memory. "
    "In one or two sentences say what it shows: the main objects, people (without guessing who "
    "they are), place, any visible text, and anything the user may ask about later. Write in "
    "the language of the caption if there is one, else in English. Write the description only."
)


class PictureError(CoreError):
    """A picture of the request was refused (invalid_image, image_too_large, too_many_images)."""


@dataclass(frozen=True, slots=True)
class Picture:
    """A checked picture, re-encoded as JPEG for the model."""

    jpeg: bytes
    width: int
    height: int
    mime_type: str
    """The type the client declared."""
    size: int
    """Bytes as sent (decoded from base64)."""

    def data_url(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


def prepare_pictures(images: Sequence[tuple[str, str]], settings: PictureSettings) -> list[Picture]:
    """Check and downscale (data_base64, mime_type) pairs; raises PictureError. CPU-bound: the
    API runs it in a thread."""
    if len(images) > settings.max_images:
        raise PictureError(
            f"{len(images)} pictures; at most {settings.max_images} per message (MAX_IMAGES)",
            code="too_many_images",
        )
    return [_prepare(index, data, mime, settings) for index, (data, mime) in enumerate(images)]


def _prepare(index: int, data: str, mime_type: str, settings: PictureSettings) -> Picture:
    limit = settings.image_max_bytes
    # base64 is 4 characters per 3 bytes: refuse an oversized picture before decoding it.
    if len(data) // 4 * 3 > limit + 3:
        raise _too_large(index, limit)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise PictureError(f"images[{index}] is not valid base64", code="invalid_image") from None
    if len(raw) > limit:
        raise _too_large(index, limit)
    if not mime_type.lower().startswith("image/"):
        raise PictureError(
            f"images[{index}] has mime_type {mime_type!r}, not image/*", code="invalid_image"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise PictureError(
                        f"images[{index}] has more than {MAX_PIXELS} pixels", code="invalid_image"
                    )
                scale = settings.image_max_side / max(opened.size)
                if opened.format == "JPEG" and scale < 1:
                    # Decode at 1/2, 1/4 or 1/8 scale (no smaller than the target): a 12 MP
                    # photo then costs a fraction of its full decode.
                    opened.draft("RGB", (math.ceil(opened.width * scale),
                                         math.ceil(opened.height * scale)))  # fmt: skip
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except PictureError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:  # fmt: skip
        raise PictureError(
            f"images[{index}] is not a picture that can be read ({type(exc).__name__})",
            code="invalid_image",
        ) from None
    image = _rgb(image)
    side = settings.image_max_side
    if max(image.size) > side:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return Picture(
        jpeg=out.getvalue(),
        width=image.width,
        height=image.height,
        mime_type=mime_type,
        size=len(raw),
    )


def _too_large(index: int, limit: int) -> PictureError:
    return PictureError(
        f"images[{index}] is larger than {limit} bytes (IMAGE_MAX_BYTES)", code="image_too_large"
    )


def _rgb(image: Image.Image) -> Image.Image:
    """JPEG has no alpha: transparent parts become white rather than black."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def picture_text(caption: str, descriptions: Sequence[str | None]) -> str:
    """The stored text of a message with pictures: a line per picture, then the caption."""
    lines = [f"[Picture: {d}]" if d else PICTURE_MARKER for d in descriptions]
    if caption.strip():
        lines.append(caption)
    return "\n".join(lines)


def image_parts(pictures: Sequence[Picture]) -> list[dict[str, Any]]:
    """OpenAI content parts for the pictures (base64 data URLs)."""
    return [{"type": "image_url", "image_url": {"url": p.data_url()}} for p in pictures]


def with_pictures(prompt: list[ChatMessage], pictures: Sequence[Picture]) -> list[ChatMessage]:
    """The prompt with the pictures as image parts of its last (user) turn."""
    if not pictures:
        return prompt
    last = prompt[-1]
    assert last["role"] == "user" and isinstance(last["content"], str)  # build_prompt's shape
    parts = [{"type": "text", "text": last["content"]}, *image_parts(pictures)]
    return [*prompt[:-1], {"role": "user", "content": parts}]


# --- storing ---------------------------------------------------------------------------------

_RECORD = text(
    """
    WITH m AS (
        UPDATE messages SET attachments = CAST(CAST(:attachments AS text) AS jsonb)
        WHERE id = :message_id RETURNING id
    )
    INSERT INTO pending_pictures (message_id, images)
    SELECT id, CAST(:images AS bytea[]) FROM m WHERE CAST(:describe AS boolean)
    """
)


def images_dir(data_dir: Path, session_id: uuid.UUID | str) -> Path:
    """Where KEEP_IMAGES keeps a session's pictures."""
    return data_dir / "images" / str(session_id)


async def record_pictures(
    conn: AsyncConnection,
    *,
    message_id: int,
    session_id: uuid.UUID,
    caption: str,
    pictures: Sequence[Picture],
    settings: PictureSettings,
    data_dir: Path,
) -> None:
    """Record the pictures of a stored message, and queue them for their description."""
    paths: list[str | None] = [None] * len(pictures)
    if settings.keep_images:
        paths = list(
            await asyncio.to_thread(_keep, images_dir(data_dir, session_id), message_id, pictures)
        )
    attachments = {
        "caption": caption,
        "images": [
            {
                "mime_type": p.mime_type,
                "width": p.width,
                "height": p.height,
                "bytes": p.size,
                "description": None,
                "path": path,
            }
            for p, path in zip(pictures, paths, strict=True)
        ],
    }
    await conn.execute(
        _RECORD,
        {
            "message_id": message_id,
            "attachments": orjson.dumps(attachments).decode(),
            "images": [p.jpeg for p in pictures],
            "describe": settings.describing,
        },
    )


def _keep(folder: Path, message_id: int, pictures: Sequence[Picture]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, picture in enumerate(pictures):
        path = folder / f"{message_id}-{index}.jpg"
        path.write_bytes(picture.jpeg)
        paths.append(str(path))
    return paths


def forget_kept_pictures(data_dir: Path, session_ids: Sequence[uuid.UUID | str]) -> None:
    """Delete the kept pictures of erased sessions."""
    for session_id in session_ids:
        shutil.rmtree(images_dir(data_dir, session_id), ignore_errors=True)


def forget_kept_message_pictures(data_dir: Path, messages: Sequence[tuple[int, Any]]) -> None:
    """Delete the kept pictures of erased messages, given as (message id, session id)."""
    for message_id, session_id in messages:
        for path in images_dir(data_dir, session_id).glob(f"{message_id}-*.jpg"):
            path.unlink(missing_ok=True)


# --- describing ------------------------------------------------------------------------------

_PENDING = text(
    f"""
    SELECT p.message_id, p.images, m.attachments, m.user_id, s.chat_id
    FROM pending_pictures p
    JOIN messages m ON m.id = p.message_id
    JOIN chat_sessions s ON s.id = m.session_id
    WHERE p.message_id = ANY(CAST(:ids AS bigint[]))
       OR p.created_at < now() - interval '{STALE_AFTER_SECONDS} seconds'
    ORDER BY p.message_id
    LIMIT :limit
    """
)
_DONE = text("DELETE FROM pending_pictures WHERE message_id = :message_id RETURNING message_id")
_WRITE = text(
    "UPDATE messages SET content = :content, "
    "attachments = CAST(CAST(:attachments AS text) AS jsonb) WHERE id = :message_id"
)
_DESCRIBING = text("SELECT set_config('llmbot.describing', 'on', true)")
_FAILED = text(
    "UPDATE pending_pictures SET attempts = attempts + 1 WHERE message_id = :message_id "
    "RETURNING attempts"
)


@dataclass(frozen=True, slots=True)
class DescribeRun:
    described: list[int]
    """Messages whose descriptions were written by this run (to be indexed again)."""
    dropped: int = 0


def describe_prompt(caption: str, picture_url: str) -> list[ChatMessage]:
    """The request that describes one picture."""
    note = f"The user's caption: {caption}" if caption.strip() else "The user wrote no caption."
    return [
        {"role": "system", "content": DESCRIBE_SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": note},
                {"type": "image_url", "image_url": {"url": picture_url}},
            ],
        },
    ]


async def describe_pictures(
    engine: AsyncEngine,
    model: ChatModel,
    settings: PictureSettings,
    message_ids: Sequence[int],
    *,
    ledger: UsageLedger,
    limit: int = 20,
) -> DescribeRun:
    """Describe the pending pictures of these messages (and any stale ones) with the vision
    model, and store the descriptions with their messages. Idempotent; LLMUnavailable is
    raised for a retry, the row staying pending."""
    async with engine.connect() as conn:
        rows = list(await conn.execute(_PENDING, {"ids": list(message_ids), "limit": limit}))
    described: list[int] = []
    dropped = 0
    for message_id, images, attachments, user_id, chat_id in rows:
        record = attachments or {"caption": "", "images": [{} for _ in images]}
        caption = str(record.get("caption") or "")
        account = ledger.account(user_id, chat_id)
        descriptions: list[str] = []
        try:
            for image in images:
                url = "data:image/jpeg;base64," + base64.b64encode(bytes(image)).decode("ascii")
                completion = await metered_completion(
                    model,
                    IMAGE_DESCRIPTION,
                    describe_prompt(caption, url),
                    account=account,
                    model=settings.vision_model,
                    max_tokens=DESCRIPTION_MAX_TOKENS,
                )
                descriptions.append(_one_line(completion.text))
        except ImagesNotSupported:
            log.warning("the vision model cannot read images: message %s stays undescribed",
                        message_id)  # fmt: skip
            async with engine.begin() as conn:
                await conn.execute(_DONE, {"message_id": message_id})
            dropped += 1
            continue
        except LLMBadResponse as exc:
            async with engine.begin() as conn:
                attempts = (await conn.execute(_FAILED, {"message_id": message_id})).scalar()
                if attempts is not None and attempts >= MAX_ATTEMPTS:
                    await conn.execute(_DONE, {"message_id": message_id})
                    dropped += 1
            log.warning("describing the pictures of message %s failed: %s", message_id, exc)
            continue
        entries = list(record.get("images") or [])
        entries += [{} for _ in range(len(descriptions) - len(entries))]
        for entry, description in zip(entries, descriptions, strict=False):
            entry["description"] = description
        record["images"] = entries
        async with engine.begin() as conn:
            # Whoever deletes the pending row writes the description: two jobs on one message
            # (a redelivered task beside the sweep) write it once.
            if (await conn.execute(_DONE, {"message_id": message_id})).first() is None:
                continue
            # The description adds to the message; the edit trigger of migration 0012 keeps
            # the facts and summaries derived from it (they forget only retracted text).
            await conn.execute(_DESCRIBING)
            await conn.execute(
                _WRITE,
                {
                    "message_id": message_id,
                    "content": picture_text(caption, descriptions),
                    "attachments": orjson.dumps(record).decode(),
                },
            )
        described.append(message_id)
    return DescribeRun(described=described, dropped=dropped)


def _one_line(description: str) -> str:
    return " ".join(description.split())[:DESCRIPTION_MAX_CHARS]
