"""An OpenAI-compatible speech-to-text server: POST /v1/audio/transcriptions, multipart.

Speaks the wire protocol of OpenAI's API (form fields `file`, `model`, `response_format`,
`language`; `json`, `text` and `verbose_json` answers; the `{"error": {...}}` shape), so the
real openai SDK runs against it. The transcript is scripted: by the recording's bytes
(`script`), the next answers queued (`say_next`), or `default_text`. Faults and latency on
demand; every request is recorded.

Run standalone: `python -m llm_bot_core.testing.fake_transcription --port 9998`, then set
TRANSCRIPTION_BASE_URL=http://127.0.0.1:9998/v1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from llm_bot_core.media.audio import AudioUnreadable, audio_duration
from llm_bot_core.testing.threaded import ThreadedServer

DEFAULT_TEXT = "Hello from a voice message"


@dataclass
class TranscriptionRequest:
    model: str
    filename: str
    content_type: str
    size: int
    response_format: str
    language: str | None
    authorization: str | None


class FakeTranscription:
    """State of the fake; tests script answers and inspect `requests`."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.default_text = DEFAULT_TEXT
        self.requests: list[TranscriptionRequest] = []
        self.latency = 0.0
        self._by_audio: dict[str, str] = {}
        self._queued: list[str] = []
        self._faults: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def script(self, audio: bytes, text: str) -> None:
        """Answer `text` whenever this recording is sent."""
        self._by_audio[hashlib.sha256(audio).hexdigest()] = text

    def say_next(self, *texts: str) -> None:
        """The next requests are answered with these texts, in order (before any script)."""
        with self._lock:
            self._queued.extend(texts)

    def fail_next(self, status: int = 500, message: str = "server error", count: int = 1) -> None:
        with self._lock:
            self._faults.extend([(status, message)] * count)

    def reset(self) -> None:
        with self._lock:
            self.default_text = DEFAULT_TEXT
            self.requests.clear()
            self.latency = 0.0
            self._by_audio.clear()
            self._queued.clear()
            self._faults.clear()

    async def handle(self, request: web.Request) -> web.Response:
        if self.api_key is not None and request.headers.get("Authorization") != (
            f"Bearer {self.api_key}"
        ):
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if not request.content_type.startswith("multipart/form-data"):
            return _error(400, "Expected a multipart/form-data body.", "invalid_request")
        form = await request.post()
        upload = form.get("file")
        model = form.get("model")
        if not isinstance(upload, web.FileField):
            return _error(400, "Missing required parameter: 'file'.", "missing_required_parameter")
        if not isinstance(model, str) or not model:
            return _error(400, "Missing required parameter: 'model'.", "missing_required_parameter")
        audio = upload.file.read()
        response_format = str(form.get("response_format") or "json")
        language = form.get("language")
        self.requests.append(
            TranscriptionRequest(
                model=model,
                filename=upload.filename,
                content_type=upload.content_type,
                size=len(audio),
                response_format=response_format,
                language=language if isinstance(language, str) else None,
                authorization=request.headers.get("Authorization"),
            )
        )
        if self.latency:
            await asyncio.sleep(self.latency)
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            return _error(fault[0], fault[1], "server_error")
        try:
            seconds = audio_duration(audio)
        except AudioUnreadable:
            seconds = None
        if seconds is None:  # as OpenAI answers a file it cannot decode
            return _error(
                400,
                "Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', "
                "'mpga', 'oga', 'ogg', 'wav', 'webm']",
                "invalid_value",
            )
        text = self._text_for(audio)
        if response_format == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        body: dict[str, Any] = {
            "text": text,
            "usage": {"type": "duration", "seconds": math.ceil(seconds)},
        }
        if response_format == "verbose_json":
            body.update(
                task="transcribe", language=language or "english", duration=seconds, segments=[]
            )
        return web.json_response(body)

    def _text_for(self, audio: bytes) -> str:
        with self._lock:
            if self._queued:
                return self._queued.pop(0)
        return self._by_audio.get(hashlib.sha256(audio).hexdigest(), self.default_text)

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "whisper-1", "object": "model"}]}
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/audio/transcriptions", self.handle)
        app.router.add_post("/audio/transcriptions", self.handle)
        return app


def _error(status: int, message: str, code: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status=status,
    )


class FakeTranscriptionServer(ThreadedServer):
    """Runs a FakeTranscription on 127.0.0.1 in a background thread."""

    def __init__(self, fake: FakeTranscription | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.fake = fake or FakeTranscription()

    @property
    def base_url(self) -> str:
        """For TRANSCRIPTION_BASE_URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def build_app(self) -> web.Application:
        return self.fake.app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9998)
    parser.add_argument("--text", default=DEFAULT_TEXT, help="what every recording says")
    args = parser.parse_args()
    fake = FakeTranscription()
    fake.default_text = args.text
    web.run_app(fake.app(), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
