"""A fake Telegram Bot API server on 127.0.0.1 that records every call; faults on demand.

Speaks the real protocol (`POST /bot{token}/{method}`, form-encoded or JSON parameters,
`{"ok": true, "result": ...}` envelopes), so the real aiogram client runs against it:
`AiohttpSession(api=TelegramAPIServer.from_base(server.base_url))`. It checks HTML the way
Telegram does (supported tags, nesting, entities, 4096 characters after parsing) and answers
400 "can't parse entities" otherwise; a set webhook gets the updates POSTed, like Telegram.

Run standalone: `python -m llm_bot_core.testing.fake_telegram --port 8999`, then point the bot
at it (TELEGRAM_API_URL=http://127.0.0.1:8999, BOT_TOKEN=123456:TEST-token) and talk to it:
`curl -d '{"text": "hi"}' localhost:8999/_fake/messages`; `curl localhost:8999/_fake/calls`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from llm_bot_core.testing.telegram_html import EntityParseError, parse_telegram_html, utf16_len
from llm_bot_core.testing.threaded import ThreadedServer

MAX_TEXT = 4096
# The cloud Bot API lets bots download files of up to 20 MB (getFile: "file is too big").
MAX_DOWNLOAD = 20 * 1024 * 1024
_JSON_PARAMS = frozenset(
    {
        "allowed_updates",
        "commands",
        "entities",
        "caption_entities",
        "link_preview_options",
        "reply_markup",
        "reply_parameters",
        "scope",
    }
)


@dataclass
class ApiCall:
    """One request the bot made; `params` JSON-decoded where the Bot API sends JSON."""

    method: str
    params: dict[str, Any]
    ok: bool = True
    at: float = field(default_factory=time.monotonic)
    plain_text: str | None = None  # what the user saw, for sendMessage/editMessageText
    result: Any = None  # what the fake answered (the sent Message, for pressing its buttons)

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return int(value) if value is not None and str(value).lstrip("-").isdigit() else None


@dataclass
class _Fault:
    method: str
    status: int
    description: str
    retry_after: int | None
    when: Callable[[dict[str, Any]], bool] | None


class FakeTelegram:
    """State and behaviour of the fake; tests push updates and inspect `calls`."""

    def __init__(self, token: str = "123456:TEST-token", username: str = "test_llm_bot") -> None:
        self.token = token
        self.bot_user = {
            "id": int(token.split(":")[0]),
            "is_bot": True,
            "first_name": "Test Bot",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[ApiCall] = []
        self.webhook: dict[str, Any] | None = None
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_updates: asyncio.Event | None = None
        self._client: aiohttp.ClientSession | None = None
        self.confirmed_offset = 0
        self._deliveries: set[asyncio.Future[None]] = set()
        self.drafts_supported = True
        """False: answer sendMessageDraft like a Bot API server without it (404)."""
        self._files: dict[str, _StoredFile] = {}
        self._file_ids = itertools.count(1)
        self.downloads: list[str] = []
        """file_path of every file downloaded, in order."""

    # --- what tests use ----------------------------------------------------------------
    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates (or POST it to the webhook); its update_id."""
        with self._lock:
            update = {"update_id": next(self._update_ids), **update}
            self._updates.append(update)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_new_update, update)
        return int(update["update_id"])

    def message(
        self,
        text: str | None = None,
        *,
        chat_id: int = 1001,
        user_id: int = 1001,
        chat_type: str = "private",
        language_code: str | None = "en",
        first_name: str = "Alice",
        **fields: Any,
    ) -> dict[str, Any]:
        """A `message` object like Telegram's; `fields` add or override keys."""
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = first_name
        else:
            chat["title"] = "Test group"
        sender: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if language_code:
            sender["language_code"] = language_code
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": sender,
        }
        if text is not None:
            message["text"] = text
            if text.startswith("/"):
                command = text.split()[0]
                message["entities"] = [
                    {"type": "bot_command", "offset": 0, "length": utf16_len(command)}
                ]
        message.update(fields)
        return message

    def send_text(self, text: str, **kwargs: Any) -> dict[str, Any]:
        """Push an update with a new text message; the message."""
        message = self.message(text, **kwargs)
        self.push_update({"message": message})
        return message

    def press(
        self,
        sent: ApiCall,
        data: str,
        *,
        user_id: int | None = None,
        language_code: str | None = "en",
        first_name: str = "Alice",
    ) -> int:
        """Push a `callback_query` update: the user pressed the button `data` under the message
        the bot sent in `sent` (a sendMessage call); its update_id."""
        buttons = [
            b["callback_data"]
            for row in (sent.params.get("reply_markup") or {}).get("inline_keyboard", [])
            for b in row
            if "callback_data" in b
        ]
        if data not in buttons:
            raise AssertionError(f"no button {data!r} under that message; there are {buttons}")
        message = sent.result
        sender: dict[str, Any] = {
            "id": user_id if user_id is not None else message["chat"]["id"],
            "is_bot": False,
            "first_name": first_name,
        }
        if language_code:
            sender["language_code"] = language_code
        query = {
            "id": str(next(self._message_ids)),
            "from": sender,
            "message": message,
            "chat_instance": f"ci{message['chat']['id']}",
            "data": data,
        }
        return self.push_update({"callback_query": query})

    def fail_next(
        self,
        method: str,
        *,
        status: int = 400,
        description: str = "Bad Request: can't parse entities: Unsupported start tag",
        retry_after: int | None = None,
        count: int = 1,
        when: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """The next `count` calls of `method` (matching `when`) fail with this error."""
        with self._lock:
            self._faults.extend(
                _Fault(method, status, description, retry_after, when) for _ in range(count)
            )

    def flood(self, method: str, retry_after: int, count: int = 1) -> None:
        """The next `count` calls of `method` get 429 Too Many Requests with `retry_after`."""
        self.fail_next(
            method,
            status=429,
            retry_after=retry_after,
            count=count,
            description=f"Too Many Requests: retry after {retry_after}",
        )

    def calls_to(
        self, method: str, chat_id: int | None = None, *, ok: bool | None = True
    ) -> list[ApiCall]:
        return [
            c
            for c in list(self.calls)
            if c.method == method
            and (chat_id is None or c.chat_id == chat_id)
            and (ok is None or c.ok == ok)
        ]

    def sent_texts(self, chat_id: int | None = None) -> list[str]:
        """What users saw from successful sendMessage calls, in order."""
        return [c.plain_text or "" for c in self.calls_to("sendMessage", chat_id)]

    async def wait_for(
        self, method: str, count: int = 1, *, chat_id: int | None = None, within: float = 15.0
    ) -> list[ApiCall]:
        """Wait (from any event loop) until `count` successful calls of `method` were made."""
        deadline = time.monotonic() + within
        while True:
            calls = self.calls_to(method, chat_id)
            if len(calls) >= count:
                return calls
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{count} {method} call(s) expected within {within}s, got {len(calls)}; "
                    f"calls: {[(c.method, c.params) for c in self.calls][-10:]}"
                )
            await asyncio.sleep(0.02)

    async def wait_consumed(self, update_id: int, within: float = 10.0) -> None:
        """Wait until the bot confirmed (by its next getUpdates offset) it got `update_id`."""
        deadline = time.monotonic() + within
        while self.confirmed_offset <= update_id:
            if time.monotonic() > deadline:
                raise AssertionError(f"update {update_id} was not consumed within {within}s")
            await asyncio.sleep(0.02)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self._updates.clear()
            self._faults.clear()
            self.webhook = None
            self.drafts_supported = True
            self._files.clear()
            self.downloads.clear()

    # --- files: getFile and downloads (voice messages) -----------------------------------
    def add_file(
        self,
        data: bytes,
        *,
        suffix: str = "oga",
        reported_size: int | None = None,
        folder: str = "voice",
    ) -> dict[str, Any]:
        """Store a file users can send; the `file_id`, `file_unique_id` and `file_size` fields
        of a Telegram file object. `reported_size` makes Telegram state another size."""
        number = next(self._file_ids)
        file_id = f"file-{number}-{len(data)}"
        stored = _StoredFile(
            file_id=file_id,
            file_unique_id=f"u{number}",
            file_path=f"{folder}/file_{number}.{suffix}",
            data=data,
            reported_size=len(data) if reported_size is None else reported_size,
        )
        with self._lock:
            self._files[file_id] = stored
        return {
            "file_id": file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.reported_size,
        }

    def send_voice(self, data: bytes, duration: int, **kwargs: Any) -> dict[str, Any]:
        """Push an update with a voice message (OGG/Opus `data`); the message."""
        voice = {**self.add_file(data), "duration": duration, "mime_type": "audio/ogg"}
        message = self.message(None, voice=voice, **kwargs)
        self.push_update({"message": message})
        return message

    def file_bytes(self, file_id: str) -> bytes:
        """What the file URL serves for `file_id`."""
        with self._lock:
            return self._files[file_id].data


    def photo_message(
        self,
        jpeg: bytes,
        caption: str | None = None,
        *,
        media_group_id: str | None = None,
        as_document: bool = False,
        mime_type: str = "image/jpeg",
        **kwargs: Any,
    ) -> dict[str, Any]:
        """A message with a photo (as Telegram sends it: sizes, the largest last), or with the
        picture as a document; `caption` as a photo's caption."""
        fields: dict[str, Any] = {}
        if as_document:
            fields["document"] = {
                **self.add_file(jpeg, suffix="jpg", folder="documents"),
                "file_name": "picture.jpg",
                "mime_type": mime_type,
            }
        else:
            import io

            from PIL import Image

            with Image.open(io.BytesIO(jpeg)) as image:
                width, height = image.size
            # The thumbnail is never the one to fetch.
            thumb = self.add_file(jpeg[: max(1, len(jpeg) // 4)], suffix="jpg", folder="photos")
            full = self.add_file(jpeg, suffix="jpg", folder="photos")
            fields["photo"] = [
                {**thumb, "width": max(1, width // 4), "height": max(1, height // 4)},
                {**full, "width": width, "height": height},
            ]
        if caption is not None:
            fields["caption"] = caption
        if media_group_id is not None:
            fields["media_group_id"] = media_group_id
        return self.message(None, **fields, **kwargs)

    def send_photo(self, jpeg: bytes, caption: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Push an update with a new photo message (see photo_message); the message."""
        message = self.photo_message(jpeg, caption, **kwargs)
        self.push_update({"message": message})
        return message

    async def _m_getfile(self, params: dict[str, Any], _: ApiCall) -> Any:
        stored = self._files.get(str(params.get("file_id", "")))
        if stored is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        if len(stored.data) > MAX_DOWNLOAD:
            raise _ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.reported_size,
            "file_path": stored.file_path,
        }

    async def _download(self, request: web.Request) -> web.Response:
        """GET /file/bot<token>/<file_path>, as api.telegram.org serves files."""
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        path = request.match_info["file_path"]
        for stored in list(self._files.values()):
            if stored.file_path == path:
                self.downloads.append(path)
                self.calls.append(ApiCall("_download", {"file_path": path}))
                return web.Response(body=stored.data, content_type="application/octet-stream")
        return _error(404, "Not Found")

    # --- the server ----------------------------------------------------------------------
    async def attach(self, _: web.Application | None = None) -> None:
        """Bind to the event loop the server runs in."""
        self._loop = asyncio.get_running_loop()
        self._new_updates = asyncio.Event()
        self._client = aiohttp.ClientSession()

    async def detach(self, _: web.Application | None = None) -> None:
        if self._client is not None:
            await self._client.close()

    def _on_new_update(self, update: dict[str, Any]) -> None:
        if self.webhook is not None:
            task = asyncio.ensure_future(self._post_to_webhook(update))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        elif self._new_updates is not None:
            self._new_updates.set()

    async def _post_to_webhook(self, update: dict[str, Any]) -> None:
        assert self.webhook is not None and self._client is not None
        headers = {}
        if self.webhook.get("secret_token"):
            headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook["secret_token"]
        async with self._client.post(self.webhook["url"], json=update, headers=headers) as resp:
            await resp.read()
            self.webhook.setdefault("deliveries", []).append(resp.status)
        with self._lock:
            if update in self._updates:
                self._updates.remove(update)

    async def handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            body = await request.json()
            params.update(body if isinstance(body, dict) else {})
        elif request.can_read_body:
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        for key in _JSON_PARAMS & params.keys():
            if isinstance(params[key], str):
                params[key] = json.loads(params[key])
        method = request.match_info["method"]
        call = ApiCall(method, params)
        self.calls.append(call)
        fault = self._take_fault(method, params)
        if fault is not None:
            call.ok = False
            return _error(fault.status, fault.description, fault.retry_after)
        handler = getattr(self, f"_m_{method.lower()}", None)
        if handler is None:
            call.ok = False
            return _error(404, "Not Found: method not found")
        try:
            result = await handler(params, call)
        except _ApiError as exc:
            call.ok = False
            return _error(exc.status, exc.description)
        call.result = result
        return web.json_response({"ok": True, "result": result})

    def _take_fault(self, method: str, params: dict[str, Any]) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method.lower() == method.lower() and (
                    fault.when is None or fault.when(params)
                ):
                    self._faults.remove(fault)
                    return fault
        return None

    async def _m_getme(self, _: dict[str, Any], __: ApiCall) -> Any:
        return self.bot_user

    async def _m_getupdates(self, params: dict[str, Any], _: ApiCall) -> Any:
        if self.webhook is not None:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        self.confirmed_offset = max(self.confirmed_offset, offset)
        deadline = time.monotonic() + timeout
        assert self._new_updates is not None
        while True:
            with self._lock:
                # Telegram forgets every update below the offset the bot confirms.
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                ready = self._updates[:limit]
            remaining = deadline - time.monotonic()
            if ready or remaining <= 0:
                return ready
            self._new_updates.clear()
            try:
                await asyncio.wait_for(self._new_updates.wait(), remaining)
            except TimeoutError:
                pass

    async def _m_sendmessage(self, params: dict[str, Any], call: ApiCall) -> Any:
        call.plain_text = self._checked_text(params)
        return self._message_result(params, call.plain_text)

    async def _m_editmessagetext(self, params: dict[str, Any], call: ApiCall) -> Any:
        call.plain_text = self._checked_text(params)
        if "inline_message_id" in params:
            return True
        return self._message_result(
            params, call.plain_text, message_id=int(params.get("message_id", 0))
        )

    async def _m_sendmessagedraft(self, params: dict[str, Any], call: ApiCall) -> Any:
        if not self.drafts_supported:
            raise _ApiError(404, "Not Found: method not found")
        if call.chat_id is None or call.chat_id <= 0:
            raise _ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")  # private chats only
        if not str(params.get("draft_id", "")).lstrip("-").isdigit() or not int(params["draft_id"]):
            raise _ApiError(400, "Bad Request: draft_id must be non-zero")
        if params.get("text"):  # empty: the "Thinking…" placeholder
            call.plain_text = self._checked_text(params)
        return True

    async def _m_answercallbackquery(self, params: dict[str, Any], _: ApiCall) -> Any:
        if not params.get("callback_query_id"):
            raise _ApiError(400, "Bad Request: query is too old and response timeout expired")
        return True

    async def _m_editmessagereplymarkup(self, params: dict[str, Any], _: ApiCall) -> Any:
        return True

    async def _m_sendchataction(self, params: dict[str, Any], _: ApiCall) -> Any:
        if params.get("action") not in {
            "typing",
            "upload_photo",
            "record_video",
            "upload_video",
            "record_voice",
            "upload_voice",
            "upload_document",
            "choose_sticker",
            "find_location",
            "record_video_note",
            "upload_video_note",
        }:
            raise _ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    async def _m_setwebhook(self, params: dict[str, Any], _: ApiCall) -> Any:
        if not params.get("url"):
            self.webhook = None
        else:
            self.webhook = {"url": params["url"], "secret_token": params.get("secret_token")}
        return True

    async def _m_deletewebhook(self, _: dict[str, Any], __: ApiCall) -> Any:
        self.webhook = None
        return True

    async def _m_getwebhookinfo(self, _: dict[str, Any], __: ApiCall) -> Any:
        return {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }

    async def _m_setmycommands(self, _: dict[str, Any], __: ApiCall) -> Any:
        return True

    async def _m_deletemycommands(self, _: dict[str, Any], __: ApiCall) -> Any:
        return True

    async def _m_close(self, _: dict[str, Any], __: ApiCall) -> Any:
        return True

    def _checked_text(self, params: dict[str, Any]) -> str:
        text = str(params.get("text", ""))
        if params.get("parse_mode", "").upper() == "HTML":
            try:
                text = parse_telegram_html(text)
            except EntityParseError as exc:
                raise _ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
        if not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > MAX_TEXT:
            raise _ApiError(400, "Bad Request: message is too long")
        return text

    def _message_result(
        self, params: dict[str, Any], text: str, message_id: int | None = None
    ) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        return {
            "message_id": message_id or next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
            "from": self.bot_user,
            "text": text,
        }

    async def _push_message(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = body.pop("text", None)
        message = self.message(text, **body)
        self.push_update({"message": message})
        return web.json_response(message)

    async def _list_calls(self, _: web.Request) -> web.Response:
        return web.json_response(
            [
                {"method": c.method, "params": c.params, "ok": c.ok, "plain_text": c.plain_text}
                for c in list(self.calls)
            ]
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self.handle)
        app.router.add_get("/file/bot{token}/{file_path:.+}", self._download)
        # Control endpoints for a fake running in another process.
        app.router.add_post("/_fake/messages", self._push_message)
        app.router.add_get("/_fake/calls", self._list_calls)
        return app


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    reported_size: int


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


class FakeTelegramServer(ThreadedServer):
    """Runs a FakeTelegram on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self, fake: FakeTelegram | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.fake = fake or FakeTelegram()

    @property
    def base_url(self) -> str:
        """For TELEGRAM_API_URL / TelegramAPIServer.from_base."""
        return f"http://127.0.0.1:{self.port}"

    def build_app(self) -> web.Application:
        return self.fake.app()

    async def on_start(self) -> None:
        await self.fake.attach()

    async def on_stop(self) -> None:
        await self.fake.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument("--token", default="123456:TEST-token")
    args = parser.parse_args()
    fake = FakeTelegram(token=args.token)
    app = fake.app()
    app.on_startup.append(fake.attach)
    app.on_cleanup.append(fake.detach)
    web.run_app(app, host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
