"""Files users send, fetched through the Bot API: getFile, then the file URL of TELEGRAM_API_URL.

Telegram's cloud Bot API serves files of up to 20 MB; a local Bot API server serves more. The
limit is checked before anything is downloaded (from the size Telegram reports) and again while
the bytes arrive, so a file whose size was not reported cannot grow past it.
"""

from __future__ import annotations

import io

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest

DOWNLOAD_TIMEOUT = 60
CHUNK = 64 * 1024


class FileTooLarge(Exception):
    """The file is larger than the bot may download."""

    def __init__(self, size: int | None, limit: int) -> None:
        super().__init__(f"file of {size if size is not None else 'unknown'} bytes > {limit}")
        self.size = size
        self.limit = limit


async def download(bot: Bot, file_id: str, *, max_bytes: int, size: int | None = None) -> bytes:
    """The file's bytes; FileTooLarge when it is (or turns out) larger than `max_bytes`.

    `size`: what the message said (voice.file_size), checked before any request is made."""
    if size is not None and size > max_bytes:
        raise FileTooLarge(size, max_bytes)
    try:
        file = await bot.get_file(file_id)
    except TelegramBadRequest as exc:
        if "too big" in exc.message.lower():  # over the Bot API server's own limit
            raise FileTooLarge(size, max_bytes) from exc
        raise
    if file.file_size is not None and file.file_size > max_bytes:
        raise FileTooLarge(file.file_size, max_bytes)
    if not file.file_path:
        raise FileTooLarge(file.file_size, max_bytes)  # Telegram gives no path past its limit
    url = bot.session.api.file_url(bot.token, file.file_path)
    buffer = io.BytesIO()
    async for chunk in bot.session.stream_content(
        url, timeout=DOWNLOAD_TIMEOUT, chunk_size=CHUNK, raise_for_status=True
    ):
        buffer.write(chunk)
        if buffer.tell() > max_bytes:
            raise FileTooLarge(buffer.tell(), max_bytes)
    return buffer.getvalue()
