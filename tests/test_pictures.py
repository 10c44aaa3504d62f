"""Pictures through the API: checked, downscaled, shown to the model, described for memory."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer, decode_image, image_urls
from tests.conftest import drain_jobs, make_settings, running_app
from tests.test_celery import Worker, celery_app_settings, wait_for, worker_fixture

pytestmark = pytest.mark.asyncio


def jpeg(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (220, 20, 20)) -> bytes:
    """A real JPEG made with Pillow."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="JPEG", quality=90)
    return out.getvalue()


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: random pixels."""
    import os

    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG")
    return out.getvalue()


def image(data: bytes, mime_type: str = "image/jpeg") -> dict[str, str]:
    return {"data_base64": base64.b64encode(data).decode(), "mime_type": mime_type}


def body(text_: str = "", *images: dict[str, str], user: str = "u1") -> dict[str, Any]:
    return {"user_id": user, "chat_id": user, "chat_type": "private", "text": text_,
            "images": list(images)}  # fmt: skip


def existing(paths: list[str]) -> list[bool]:
    return [os.path.isfile(p) for p in paths]


async def scalar(db: AsyncEngine, sql: str) -> Any:
    async with db.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


async def flush_usage(client: httpx.AsyncClient) -> None:
    await client.app.state.services.ledger.flush()  # type: ignore[attr-defined]


@pytest.fixture
def picture_settings(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path
) -> Settings:
    return make_settings(
        clean_db, llm_server.base_url, data_dir=tmp_path, max_images=2, image_max_bytes=200_000
    )


@pytest.mark.parametrize(
    ("images", "status", "code"),
    [
        ([image(b"this is not a picture at all")], 422, "invalid_image"),
        ([image(b"\x89PNG\r\n\x1a\n broken")], 422, "invalid_image"),
        ([image(jpeg(), "application/pdf")], 422, "invalid_image"),
        ([{"data_base64": "@@not base64@@", "mime_type": "image/jpeg"}], 422, "invalid_image"),
        ([image(noise_png(400))], 413, "image_too_large"),
        ([image(jpeg()), image(jpeg()), image(jpeg())], 422, "too_many_images"),
    ],
)
async def test_bad_pictures_are_refused_in_the_error_shape_and_nothing_is_stored(
    picture_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM,
    images: list[dict[str, str]], status: int, code: str,
) -> None:  # fmt: skip
    async with running_app(picture_settings) as client:
        response = await client.post("/v1/chat/handle", json=body("look", *images))
        streamed = await client.post("/v1/chat/stream", json=body("look", *images))
    for answer in (response, streamed):
        assert answer.status_code == status, answer.text
        error = answer.json()
        assert error["type"] == "error" and error["code"] == code
        assert error["message"] and error["request_id"]
    assert await scalar(db, "SELECT count(*) FROM messages") == 0
    assert await scalar(db, "SELECT count(*) FROM pending_pictures") == 0
    assert fake_llm.chat_requests == []


async def test_text_may_be_empty_only_with_pictures(
    picture_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with running_app(picture_settings) as client:
        without = await client.post("/v1/chat/handle", json=body(""))
        spec_shape = await client.post(
            "/v1/chat/handle", json={"user_id": "u1", "chat_id": "u1", "text": "hi"}
        )
        picture_only = await client.post("/v1/chat/handle", json=body("", image(jpeg())))
    assert without.status_code == 422 and without.json()["code"] == "validation_error"
    assert spec_shape.status_code == 200 and spec_shape.json()["text"] == "Echo: hi"
    assert picture_only.status_code == 200, picture_only.text


async def test_a_picture_reaches_the_model_downscaled_as_an_image_part_of_the_last_user_turn(
    picture_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    big = jpeg(3200, 2000)
    settings = picture_settings.model_copy(
        update={"pictures": picture_settings.pictures.model_copy(
            update={"image_max_bytes": 5 * 1024 * 1024})},
    )  # fmt: skip
    async with running_app(settings) as client:
        await client.post("/v1/chat/handle", json=body("earlier question"))
        response = await client.post("/v1/chat/handle", json=body("What is this?", image(big)))
        assert response.status_code == 200, response.text
        await drain_jobs(client)

    request = fake_llm.chat_requests[-1]
    last = request["messages"][-1]
    assert last["role"] == "user" and isinstance(last["content"], list)
    text_part, image_part = last["content"]
    assert text_part == {"type": "text", "text": "[Picture]\nWhat is this?"}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    seen = decode_image(url)
    assert seen.format == "JPEG" and seen.size == (1568, 980)  # IMAGE_MAX_SIDE, aspect kept
    # Earlier turns stay text: only the new message carries the picture.
    assert all(isinstance(m["content"], str) for m in request["messages"][:-1])
    assert response.json()["text"] == "Echo: [Picture]\nWhat is this?"

    async with db.connect() as conn:
        row = (
            await conn.execute(text("SELECT content, attachments FROM messages WHERE role = "
                                    "'user' ORDER BY id DESC LIMIT 1"))
        ).one()  # fmt: skip
    attachments = row[1]
    assert attachments["caption"] == "What is this?"
    assert len(attachments["images"]) == 1
    entry = attachments["images"][0]
    assert (entry["mime_type"], entry["width"], entry["height"], entry["bytes"]) == (
        "image/jpeg", 1568, 980, len(big))  # fmt: skip
    assert entry["path"] is None  # KEEP_IMAGES is off


async def test_the_description_is_stored_with_the_message_and_answers_a_later_question(
    picture_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    async with running_app(picture_settings) as client:
        sent = await client.post("/v1/chat/handle", json=body("my bike", image(jpeg(200, 100))))
        assert sent.status_code == 200, sent.text
        await drain_jobs(client)
        await flush_usage(client)
        later = await client.post("/v1/chat/handle", json=body("What was in the photo I sent?"))
        assert later.status_code == 200

    description = "A mostly red picture, 200x100 pixels."
    [describe] = fake_llm.description_requests
    assert len(image_urls(describe["messages"])) == 1
    assert "my bike" in describe["messages"][1]["content"][0]["text"]
    async with db.connect() as conn:
        content, attachments = (
            await conn.execute(text("SELECT content, attachments FROM messages ORDER BY id "
                                    "LIMIT 1"))
        ).one()  # fmt: skip
        usage = list(await conn.execute(text(
            "SELECT purpose, user_id, chat_id FROM llm_usage ORDER BY id")))  # fmt: skip
    assert content == f"[Picture: {description}]\nmy bike"
    assert attachments["images"][0]["description"] == description
    assert await scalar(db, "SELECT count(*) FROM pending_pictures") == 0
    assert ("image_description", "u1", "u1") in [tuple(r) for r in usage]
    # The later prompt holds the description: the window shows the described message.
    history = json.dumps(fake_llm.chat_requests[-1]["messages"], ensure_ascii=False)
    assert description in history


async def test_a_picture_left_pending_by_a_lost_job_is_described_by_the_next_one(
    picture_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    """A worker killed mid-description leaves the row; the next job's sweep takes it up."""
    settings = picture_settings.model_copy(
        update={"pictures": picture_settings.pictures.model_copy(update={"describe_images": False})}
    )
    async with running_app(settings) as client:  # no job queued: as if it were lost
        await client.post("/v1/chat/handle", json=body("lost", image(jpeg(30, 30, (0, 0, 255)))))
        await drain_jobs(client)
    assert await scalar(db, "SELECT count(*) FROM pending_pictures") == 0  # off: not queued
    async with db.begin() as conn:  # queue it as a job that died would have left it
        await conn.execute(text(
            "INSERT INTO pending_pictures (message_id, images, created_at) "
            "SELECT id, ARRAY[CAST(:jpeg AS bytea)], now() - interval '1 hour' FROM messages "
            "WHERE role = 'user'"
        ), {"jpeg": jpeg(30, 30, (0, 0, 255))})  # fmt: skip
    async with running_app(picture_settings) as client:
        await client.post("/v1/chat/handle", json=body("new", image(jpeg(40, 40))))
        await drain_jobs(client)
    async with db.connect() as conn:
        contents = [r[0] for r in await conn.execute(text(
            "SELECT content FROM messages WHERE role = 'user' ORDER BY id"))]  # fmt: skip
    assert contents == [
        "[Picture: A mostly blue picture, 30x30 pixels.]\nlost",
        "[Picture: A mostly red picture, 40x40 pixels.]\nnew",
    ]
    assert await scalar(db, "SELECT count(*) FROM pending_pictures") == 0


async def test_a_description_keeps_the_facts_and_summaries_drawn_from_its_message(
    picture_settings: Settings, db: AsyncEngine
) -> None:
    """Writing a description edits the message, but retracts nothing: the edit trigger that
    forgets what was derived from an edited message (migration 0012) lets it be."""
    settings = picture_settings.model_copy(
        update={"pictures": picture_settings.pictures.model_copy(update={"describe_images": False})}
    )
    async with running_app(settings) as client:
        await client.post("/v1/chat/handle", json=body("my dog Rex", image(jpeg(30, 30))))
        await drain_jobs(client)
    async with db.begin() as conn:  # a fact and a summary drawn from it before it was described
        await conn.execute(text(
            "INSERT INTO facts (user_id, content, source, source_message_ids) "
            "SELECT 'u1', 'Has a dog named Rex', 'extracted', ARRAY[id] FROM messages "
            "WHERE role = 'user'"
        ))  # fmt: skip
        await conn.execute(text(
            "INSERT INTO conversation_summaries (session_id, version, content, last_message_id) "
            "SELECT session_id, 1, 'The user showed their dog Rex.', max(id) FROM messages "
            "GROUP BY session_id"
        ))  # fmt: skip
        await conn.execute(text(
            "INSERT INTO pending_pictures (message_id, images, created_at) "
            "SELECT id, ARRAY[CAST(:jpeg AS bytea)], now() - interval '1 hour' FROM messages "
            "WHERE role = 'user'"
        ), {"jpeg": jpeg(30, 30)})  # fmt: skip
    async with running_app(picture_settings) as client:
        await client.post("/v1/chat/handle", json=body("another", image(jpeg(40, 40))))
        await drain_jobs(client)
    assert await scalar(db, "SELECT count(*) FROM pending_pictures") == 0
    assert await scalar(
        db, "SELECT content FROM messages WHERE role = 'user' ORDER BY id LIMIT 1"
    ) == "[Picture: A mostly red picture, 30x30 pixels.]\nmy dog Rex"
    assert await scalar(db, "SELECT count(*) FROM facts WHERE content = 'Has a dog named Rex'") == 1
    assert await scalar(
        db, "SELECT count(*) FROM conversation_summaries WHERE content LIKE '%dog Rex%'"
    ) == 1
    # An operator's edit still forgets what the old wording said.
    async with db.begin() as conn:
        await conn.execute(text(
            "UPDATE messages SET content = 'edited' WHERE id = (SELECT min(id) FROM messages)"))
    assert await scalar(db, "SELECT count(*) FROM facts WHERE content = 'Has a dog named Rex'") == 0


async def test_vision_model_answers_and_describes_pictures_only(
    picture_settings: Settings, fake_llm: FakeLLM
) -> None:
    settings = picture_settings.model_copy(
        update={"pictures": picture_settings.pictures.model_copy(
            update={"vision_model": "vision-model"})},
    )  # fmt: skip
    async with running_app(settings) as client:
        await client.post("/v1/chat/handle", json=body("plain text"))
        await client.post("/v1/chat/handle", json=body("", image(jpeg())))
        await drain_jobs(client)
    assert [r["model"] for r in fake_llm.chat_requests] == ["test-model", "vision-model"]
    assert [r["model"] for r in fake_llm.description_requests] == ["vision-model"]


async def test_pictures_are_refused_when_the_model_cannot_read_them(
    picture_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    off = picture_settings.model_copy(
        update={"pictures": picture_settings.pictures.model_copy(
            update={"images_supported": False})},
    )  # fmt: skip
    async with running_app(off) as client:
        configured = await client.post("/v1/chat/handle", json=body("hi", image(jpeg())))
    assert configured.status_code == 422
    assert configured.json()["code"] == "images_not_supported"
    assert await scalar(db, "SELECT count(*) FROM messages") == 0
    assert fake_llm.requests == []

    fake_llm.vision = False  # a text-only model: the provider says so (OpenRouter's 404)
    async with running_app(picture_settings) as client:
        refused = await client.post("/v1/chat/handle", json=body("hi", image(jpeg())))
        streamed = await client.post("/v1/chat/stream", json=body("again", image(jpeg())))
        await drain_jobs(client)
    assert refused.status_code == 422
    assert refused.json()["code"] == "images_not_supported"
    # Refused before the first delta: the stream answers with the plain error shape.
    assert streamed.status_code == 422
    assert streamed.json()["code"] == "images_not_supported"
    assert "cannot read pictures" in refused.json()["message"]
    # The provider's refusal comes after the message was stored (as other model failures);
    # its pictures are not left pending for a description that cannot be made.
    assert await scalar(db, "SELECT count(*) FROM messages WHERE role = 'user'") == 2
    assert await scalar(db, "SELECT count(*) FROM pending_pictures") == 0


async def test_kept_pictures_live_under_data_dir_until_the_user_is_erased(
    picture_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    keep = picture_settings.model_copy(
        update={"pictures": picture_settings.pictures.model_copy(update={"keep_images": True})}
    )
    async with running_app(keep) as client:
        await client.post("/v1/chat/handle", json=body("mine", image(jpeg()), user="keeper"))
        await client.post("/v1/chat/handle", json=body("other", image(jpeg()), user="other"))
        await drain_jobs(client)
        async with db.connect() as conn:
            paths = [r[0] for r in await conn.execute(text(
                "SELECT attachments->'images'->0->>'path' FROM messages "
                "WHERE attachments IS NOT NULL ORDER BY id"))]  # fmt: skip
        assert existing(paths) == [True, True]
        assert all(Path(p).is_relative_to(tmp_path / "images") for p in paths)
        assert Image.open(paths[0]).format == "JPEG"
        erased = await client.delete("/v1/memory/users/keeper")
        assert erased.status_code == 200, erased.text
    assert existing(paths) == [False, True]  # another user's picture stays


async def test_erasing_a_session_or_a_group_member_deletes_their_kept_pictures_only(
    picture_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    keep = picture_settings.model_copy(
        update={"pictures": picture_settings.pictures.model_copy(update={"keep_images": True})}
    )
    group = {"chat_id": "-100", "chat_type": "group"}
    async with running_app(keep) as client:
        await client.post("/v1/chat/handle", json=body("private", image(jpeg()), user="a"))
        await client.post("/v1/chat/handle", json={**body("in group", image(jpeg()), user="a"),
                                                   **group})  # fmt: skip
        await client.post("/v1/chat/handle", json={**body("theirs", image(jpeg()), user="b"),
                                                   **group})  # fmt: skip
        await drain_jobs(client)
        async with db.connect() as conn:
            found = [tuple(r) for r in await conn.execute(text(
                "SELECT m.session_id, m.attachments->'images'->0->>'path' FROM messages m "
                "WHERE attachments IS NOT NULL ORDER BY m.id"))]  # fmt: skip
        paths = [p for _, p in found]
        assert existing(paths) == [True, True, True]
        erased = await client.delete(f"/v1/memory/sessions/{found[0][0]}")
        assert erased.status_code == 200, erased.text
        assert existing(paths) == [False, True, True]
        erased = await client.delete("/v1/memory/users/a")
        assert erased.status_code == 200, erased.text
    assert existing(paths) == [False, False, True]  # the group's other member keeps theirs


async def test_the_lean_http_client_also_reports_a_model_without_vision(
    picture_settings: Settings, fake_llm: FakeLLM
) -> None:
    lean = picture_settings.model_copy(
        update={"llm": picture_settings.llm.model_copy(update={"llm_client": "http"})}
    )
    fake_llm.vision = False
    async with running_app(lean) as client:
        handled = await client.post("/v1/chat/handle", json=body("hi", image(jpeg())))
        streamed = await client.post("/v1/chat/stream", json=body("hi", image(jpeg())))
        text_only = await client.post("/v1/chat/handle", json=body("just text"))
        await drain_jobs(client)
    assert handled.status_code == 422 and handled.json()["code"] == "images_not_supported"
    assert streamed.status_code == 422 and streamed.json()["code"] == "images_not_supported"
    assert text_only.status_code == 200


async def test_stream_endpoint_takes_pictures_too(
    picture_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with running_app(picture_settings) as client:
        response = await client.post("/v1/chat/stream", json=body("streamed", image(jpeg())))
        await drain_jobs(client)
    assert response.status_code == 200
    assert "event: done" in response.text
    assert len(image_urls(fake_llm.chat_requests[-1]["messages"])) == 1
    assert len(fake_llm.description_requests) == 1


@pytest.fixture
def queue() -> str:
    return f"llmbot-pictures-{uuid.uuid4().hex[:8]}"


worker = worker_fixture()


@pytest.fixture
def celery_settings(
    clean_db: str, redis_url: str, llm_server: FakeLLMServer, queue: str, fake_llm: FakeLLM
) -> Settings:
    return celery_app_settings(clean_db, llm_server.base_url, redis_url, queue)


@pytest.mark.celery
async def test_the_celery_worker_describes_pictures(
    celery_settings: Settings, fake_llm: FakeLLM, worker: Worker, db: AsyncEngine
) -> None:
    async with running_app(celery_settings) as client:
        response = await client.post("/v1/chat/handle", json=body("via celery", image(jpeg())))
        assert response.status_code == 200, response.text
        await drain_jobs(client)  # the publish
    await wait_for(db, "SELECT count(*) FROM pending_pictures", 0)
    await wait_for(
        db,
        "SELECT content FROM messages WHERE role = 'user'",
        "[Picture: A mostly red picture, 64x48 pixels.]\nvia celery",
    )
    await wait_for(db, "SELECT count(*) FROM llm_usage WHERE purpose = 'image_description'", 1)


@pytest.mark.celery
async def test_a_worker_killed_mid_description_leaves_the_picture_to_the_redelivered_task(
    celery_settings: Settings, fake_llm: FakeLLM, worker: Worker, db: AsyncEngine
) -> None:
    async with running_app(celery_settings) as client:
        response = await client.post("/v1/chat/handle", json=body("killed", image(jpeg())))
        assert response.status_code == 200, response.text
        fake_llm.latency = 5.0  # the description call hangs while the worker is killed
        await drain_jobs(client)
    await worker.kill_once_asked(lambda: fake_llm.description_requests, "a description")
    assert await scalar(db, "SELECT count(*) FROM pending_pictures") == 1
    fake_llm.latency = 0.0
    worker.start()  # the task is redelivered after the visibility timeout
    await wait_for(db, "SELECT count(*) FROM pending_pictures", 0, timeout=60)
    assert await scalar(db, "SELECT content FROM messages WHERE role = 'user'") == (
        "[Picture: A mostly red picture, 64x48 pixels.]\nkilled"
    )
