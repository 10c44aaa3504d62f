"""The admin panel: a real Directus over a migrated test database, its REST API and a real browser.

The first run installs Node 22 and Directus into the cache (minutes); later runs reuse it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from llm_bot_core.admin.install import DirectusInstall, InstallError, ensure_installed
from llm_bot_core.admin.layout import GUARD_FLOW_ID
from llm_bot_core.admin.provision import (
    OPERATOR_ROLE_ID,
    SPEC_TABLES,
    VIEWER_ROLE_ID,
    provision,
)
from llm_bot_core.admin.server import DirectusConfig, DirectusServer
from llm_bot_core.db.migrate import upgrade_to_head
from llm_bot_core.testing.fake_llm import FakeLLMServer
from tests.conftest import make_settings, running_app, unavailable

pytestmark = pytest.mark.directus

ROOT = Path(__file__).resolve().parents[1]
# README's screenshots; retaken into docs/img with UPDATE_SCREENSHOTS=1 (else into a temp dir,
# so that a test run leaves the work tree clean).
SCREENSHOTS = ("directus-messages.png", "directus-session.png")
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ADMIN = ("admin@example.com", "admin-password-1")
OPERATOR = ("operator@example.com", "operator-password-1")
VIEWER = ("viewer@example.com", "viewer-password-1")
GREETING = "Привет, расскажи, что ты умеешь?"

# Metadata Directus keeps about our tables; provisioning is idempotent when none of it changes.
DIRECTUS_STATE = (
    "SELECT collection, icon, display_template, note, sort FROM directus_collections",
    "SELECT collection, field, special, interface, options, display, display_options, readonly, "
    "validation::text, validation_message FROM directus_fields",
    "SELECT many_collection, many_field, one_collection, one_field FROM directus_relations",
    "SELECT id, name, admin_access, app_access FROM directus_policies",
    "SELECT id, name FROM directus_roles",
    "SELECT role, policy FROM directus_access",
    "SELECT policy, collection, action, fields FROM directus_permissions",
    "SELECT collection, layout, layout_query::text, filter::text FROM directus_presets",
    "SELECT id, status, trigger, options::text, operation FROM directus_flows",
    "SELECT id, flow, type, options::text, resolve, reject FROM directus_operations",
    "SELECT count(*) FROM directus_activity WHERE action <> 'login'",  # logging in is not a change
    "SELECT count(*) FROM directus_revisions",
)
BACKEND_DDL = (
    "SELECT table_name, column_name, data_type, is_nullable, column_default "
    "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ANY(:t)",
    "SELECT conname, conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE conrelid::regclass::text = ANY(:t)",
    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(:t)",
)


async def _query(url: str, sql: str, **params: object) -> list[tuple]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return sorted((tuple(r) for r in await conn.execute(text(sql), params)), key=repr)
    finally:
        await engine.dispose()


def snapshot(url: str, queries: tuple[str, ...]) -> list[list[tuple]]:
    async def take() -> list[list[tuple]]:
        return [await _query(url, sql, t=list(SPEC_TABLES)) for sql in queries]

    return asyncio.run(take())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Directus:
    url: str
    database_url: str
    server: DirectusServer
    ddl_before: list[list[tuple]]
    ddl_after: list[list[tuple]]
    first_changes: list[str]

    @contextmanager
    def login(self, who: tuple[str, str]) -> Iterator[httpx.Client]:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            response = client.post("/auth/login", json={"email": who[0], "password": who[1]})
            assert response.status_code == 200, response.text
            client.headers["Authorization"] = f"Bearer {response.json()['data']['access_token']}"
            yield client


@pytest.fixture(scope="session")
def directus_install() -> DirectusInstall:
    cache = os.environ.get("DIRECTUS_CACHE_DIR")
    try:
        return ensure_installed(Path(cache) if cache else None)
    except InstallError as exc:
        unavailable(f"Directus could not be installed: {exc}")
        raise


@pytest.fixture(scope="session")
def directus_database(database_url: str) -> Iterator[str]:
    """A database of its own on the test server, with the backend's migrations applied."""
    name = f"llmbot_directus_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        engine = create_async_engine(database_url, poolclass=NullPool,
                                     isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    upgrade_to_head(url)
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def directus(directus_install: DirectusInstall, directus_database: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directus]:
    work_dir = tmp_path_factory.mktemp("directus")
    config = DirectusConfig(
        database_url=directus_database, admin_email=ADMIN[0], admin_password=ADMIN[1],
        key=uuid.uuid4().hex, secret=uuid.uuid4().hex, work_dir=work_dir,
        port=_free_port(), log_level="info",
    )
    with (work_dir / "directus.log").open("wb") as output:
        server = DirectusServer(directus_install, config, output=output)
        try:
            began = time.monotonic()
            server.bootstrap()
            bootstrap_seconds = time.monotonic() - began
            startup = server.start()
        except Exception:
            server.stop()
            print((work_dir / "directus.log").read_text(errors="replace")[-5000:])
            raise
        print(f"\ndirectus: bootstrap {bootstrap_seconds:.1f}s, start to healthy {startup:.1f}s, "
              f"RSS {server.rss_bytes() / 2**20:.0f} MB")
        try:
            before = snapshot(directus_database, BACKEND_DDL)
            changes = provision(server.url, *ADMIN)
            after = snapshot(directus_database, BACKEND_DDL)
            yield Directus(server.url, directus_database, server, before, after, changes)
        finally:
            print(f"directus: RSS at the end {server.rss_bytes() / 2**20:.0f} MB")
            server.stop()


@pytest.fixture(scope="session")
def users(directus: Directus) -> None:
    with directus.login(ADMIN) as admin:
        for (email, password), role in ((OPERATOR, OPERATOR_ROLE_ID), (VIEWER, VIEWER_ROLE_ID)):
            response = admin.post("/users", json={"email": email, "password": password,
                                                  "role": role})
            assert response.status_code == 200, response.text


@pytest.fixture(scope="session")
def conversation(directus: Directus, llm_server: FakeLLMServer) -> dict[str, str]:
    """A real exchange through /v1/chat/handle, stored in Directus's database."""

    async def chat() -> None:
        settings = make_settings(directus.database_url, llm_server.base_url)
        async with running_app(settings) as client:
            for text_ in ("Меня зовут Анна, я люблю горы.", GREETING):
                response = await client.post("/v1/chat/handle", json={
                    "user_id": "12345", "chat_id": "67890", "chat_type": "private",
                    "text": text_})
                assert response.status_code == 200, response.text

    llm_server.fake.reset()
    asyncio.run(chat())
    return {"user": GREETING, "assistant": f"Echo: {GREETING}"}


# --- provisioning ----------------------------------------------------------------------------


def test_provisioning_registers_the_four_tables_without_touching_their_ddl(
    directus: Directus,
) -> None:
    assert directus.first_changes, "the first run registers collections"
    assert directus.ddl_after == directus.ddl_before
    with directus.login(ADMIN) as admin:
        collections = {c["collection"]: c for c in admin.get("/collections").json()["data"]}
        for table in SPEC_TABLES:
            assert collections[table]["meta"] is not None, table
        assert collections["messages"]["meta"]["display_template"] == "{{role}}: {{content}}"
        assert "alembic_version" not in collections
        relation = admin.get("/relations/messages/session_id").json()["data"]
        assert relation["related_collection"] == "chat_sessions"
        assert relation["meta"]["one_field"] == "messages"
        readonly = admin.get("/fields/messages/created_at").json()["data"]["meta"]["readonly"]
        assert readonly is True


def test_second_provisioning_changes_nothing(directus: Directus) -> None:
    before = snapshot(directus.database_url, DIRECTUS_STATE)
    assert provision(directus.url, *ADMIN) == []
    assert snapshot(directus.database_url, DIRECTUS_STATE) == before


def test_reprovisioning_picks_up_a_column_added_by_a_later_migration(directus: Directus) -> None:
    async def ddl(sql: str) -> None:
        engine = create_async_engine(directus.database_url, poolclass=NullPool)
        async with engine.begin() as conn:
            await conn.execute(text(sql))
        await engine.dispose()

    asyncio.run(ddl("ALTER TABLE messages ADD COLUMN operator_note text"))
    try:
        provision(directus.url, *ADMIN)
        with directus.login(ADMIN) as admin:
            fields = [f["field"] for f in admin.get("/fields/messages").json()["data"]]
            assert "operator_note" in fields
            listed = admin.get("/items/messages", params={"fields": "id,operator_note"})
            assert listed.status_code == 200, listed.text
    finally:
        asyncio.run(ddl("ALTER TABLE messages DROP COLUMN operator_note"))
        provision(directus.url, *ADMIN)


def test_alembic_autogenerate_does_not_see_directus_tables(directus: Directus) -> None:
    """A developer autogenerating the next migration must not get `drop_table('directus_*')`."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from llm_bot_core.db.migrate import include_name
    from llm_bot_core.db.models import Base

    async def diff() -> list[object]:
        engine = create_async_engine(directus.database_url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_name": include_name}),
                    Base.metadata))
        finally:
            await engine.dispose()

    assert "directus" not in repr(asyncio.run(diff()))


# --- the compose stack's directus services, against this real Directus -------------------------


def test_compose_healthcheck_of_directus_passes_on_a_running_directus(
    directus: Directus, directus_install: DirectusInstall
) -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    test = compose["services"]["directus"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "node", "-e"]
    script = test[3].replace("http://127.0.0.1:8055", directus.url)
    probe = subprocess.run([str(directus_install.node), "-e", script], timeout=30, check=False)
    assert probe.returncode == 0, f"the compose healthcheck fails on a healthy Directus: {script}"


def test_compose_provisioning_command_runs_against_a_running_directus(
    directus: Directus, tmp_path: Path
) -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["directus_provision"]["command"]
    command = [directus.url if arg == "http://directus:8055" else arg for arg in command]
    env = {**os.environ, "ADMIN_EMAIL": ADMIN[0], "ADMIN_PASSWORD": ADMIN[1],
           "DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://unused@127.0.0.1:1/none"}
    result = subprocess.run([sys.executable, "-m", "llm_bot_core.cli", *command], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "provisioning done: 0 change(s)" in result.stderr + result.stdout


# --- roles over REST ---------------------------------------------------------------------------


def test_operator_reads_and_fixes_dialogues_but_cannot_create_or_change_schema(
    directus: Directus, users: None, conversation: dict[str, str], llm_server: FakeLLMServer
) -> None:
    async def one_more() -> None:
        settings = make_settings(directus.database_url, llm_server.base_url)
        async with running_app(settings) as client:
            await client.post("/v1/chat/handle",
                              json={"user_id": "777", "chat_id": "777", "text": "delete me"})

    asyncio.run(one_more())
    with directus.login(OPERATOR) as op:
        listed = op.get("/items/messages", params={"sort": "-created_at", "limit": "-1"})
        assert listed.status_code == 200, listed.text
        contents = [m["content"] for m in listed.json()["data"]]
        assert conversation["user"] in contents and conversation["assistant"] in contents

        session_id = next(m["session_id"] for m in listed.json()["data"]
                          if m["content"] == conversation["user"])
        session = op.get(f"/items/chat_sessions/{session_id}",
                         params={"fields": "user_id,chat_id,messages.content,messages.role"})
        assert session.status_code == 200, session.text
        through_relation = [m["content"] for m in session.json()["data"]["messages"]]
        assert conversation["user"] in through_relation
        assert session.json()["data"]["user_id"] == "12345"

        doomed = next(m for m in listed.json()["data"] if m["content"] == "delete me")
        fixed = op.patch(f"/items/messages/{doomed['id']}", json={"content": "fixed by operator"})
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["data"]["content"] == "fixed by operator"
        assert op.delete(f"/items/messages/{doomed['id']}").status_code == 204
        assert op.get(f"/items/messages/{doomed['id']}").status_code == 403  # gone
        reply = next(m for m in listed.json()["data"] if m["content"] == "Echo: delete me")
        assert op.delete(f"/items/messages/{reply['id']}").status_code == 204

        closed = op.patch(f"/items/chat_sessions/{session_id}", json={"is_active": True})
        assert closed.status_code == 200, closed.text
        for table in ("conversation_summaries", "embeddings"):
            assert op.get(f"/items/{table}").status_code == 200
        assert op.post("/items/messages", json={"session_id": session_id, "role": "user",
                                                "content": "x"}).status_code == 403
        assert op.post("/collections", json={"collection": "x"}).status_code == 403
        assert op.post("/users", json={"email": "x@example.com"}).status_code == 403
        assert op.patch("/fields/messages/content", json={"meta": {"note": "x"}}).status_code == 403

    rows = asyncio.run(_query(directus.database_url,
                              "SELECT content FROM messages m JOIN chat_sessions s "
                              "ON s.id = m.session_id WHERE s.chat_id = '777'"))
    assert rows == []


def test_viewer_reads_everything_and_every_write_is_forbidden(
    directus: Directus, users: None, conversation: dict[str, str]
) -> None:
    with directus.login(VIEWER) as viewer:
        for table in SPEC_TABLES:
            assert viewer.get(f"/items/{table}").status_code == 200, table
        messages = viewer.get("/items/messages").json()["data"]
        assert conversation["user"] in [m["content"] for m in messages]
        message, session_id = messages[0], messages[0]["session_id"]
        assert viewer.patch(f"/items/messages/{message['id']}",
                            json={"content": "x"}).status_code == 403
        assert viewer.delete(f"/items/messages/{message['id']}").status_code == 403
        assert viewer.patch(f"/items/chat_sessions/{session_id}",
                            json={"is_active": False}).status_code == 403
        assert viewer.post("/items/messages", json={"session_id": session_id, "role": "user",
                                                    "content": "x"}).status_code == 403


# --- what each role may do beyond its collections ------------------------------------------------


def _ids(directus: Directus) -> dict[str, str]:
    with directus.login(ADMIN) as admin:
        roles = {r["name"]: r["id"] for r in admin.get("/roles").json()["data"]}
        users = {u["email"]: u["id"] for u in admin.get(
            "/users", params={"fields": "id,email"}).json()["data"]}
    return {"admin_role": roles["Administrator"], "admin": users[ADMIN[0]],
            "operator": users[OPERATOR[0]], "viewer": users[VIEWER[0]]}


HIDE_ALL = {"id": {"_eq": -1}}


@pytest.mark.parametrize("who", [VIEWER, OPERATOR], ids=["viewer", "operator"])
def test_viewers_and_operators_create_and_edit_only_their_own_presets(
    directus: Directus, users: None, who: tuple[str, str]
) -> None:
    ids = _ids(directus)
    me = ids["viewer" if who is VIEWER else "operator"]
    shared_before = asyncio.run(_query(directus.database_url,
                                       'SELECT id FROM directus_presets WHERE "user" IS NULL'))
    with directus.login(who) as client:
        planted = [
            {"collection": "messages", "role": ids["admin_role"], "filter": HIDE_ALL},  # no user
            {"collection": "messages", "filter": HIDE_ALL},  # everyone's default view
            {"collection": "messages", "user": None, "role": ids["admin_role"]},
            {"collection": "messages", "user": ids["admin"], "filter": HIDE_ALL},
            {"collection": "messages", "bookmark": "All messages", "filter": HIDE_ALL},
            [{"collection": "chat_sessions", "user": me}, {"collection": "chat_sessions"}],
        ]
        for body in planted:
            response = client.post("/presets", json=body)
            assert response.status_code in (400, 403), (body, response.text)
            assert "user" in response.json()["errors"][0]["message"], response.text

        own = client.post("/presets", json={"collection": "messages", "user": me,
                                            "filter": {"role": {"_eq": "user"}}})
        assert own.status_code == 200, own.text
        bookmark = client.post("/presets", json={"collection": "messages", "user": me,
                                                 "bookmark": "Mine", "filter": HIDE_ALL})
        assert bookmark.status_code == 200, bookmark.text
        own_id = own.json()["data"]["id"]
        assert client.patch(f"/presets/{own_id}", json={"layout": "tabular"}).status_code == 200
        for steal in ({"user": None}, {"user": ids["admin"]}):
            assert client.patch(f"/presets/{own_id}", json=steal).status_code in (400, 403)
        shared = client.get("/presets", params={"filter[user][_null]": "true"}).json()["data"]
        assert shared, "the provisioned default views are readable"
        for preset in shared:
            edit = client.patch(f"/presets/{preset['id']}", json={"filter": HIDE_ALL})
            assert edit.status_code == 403, edit.text
            assert client.delete(f"/presets/{preset['id']}").status_code == 403
        assert client.delete(f"/presets/{own_id}").status_code == 204
    shared_after = asyncio.run(_query(directus.database_url,
                                      'SELECT id FROM directus_presets WHERE "user" IS NULL'))
    assert shared_after == shared_before
    with directus.login(ADMIN) as admin:  # the administrator still sees every message
        mine = admin.get("/presets", params={"filter[user][_eq]": ids["admin"]}).json()["data"]
        assert mine == []
        assert admin.get("/items/messages", params={"limit": "1"}).json()["data"]


def test_provisioning_removes_shared_presets_planted_in_the_database(
    directus: Directus, users: None
) -> None:
    ids = _ids(directus)

    async def plant() -> None:
        engine = create_async_engine(directus.database_url, poolclass=NullPool)
        async with engine.begin() as conn:
            for user, role, bookmark in ((None, ids["admin_role"], None), (None, None, None),
                                         (None, OPERATOR_ROLE_ID, "Open sessions"),
                                         (ids["operator"], None, "Mine")):
                await conn.execute(text(
                    'INSERT INTO directus_presets ("user", role, bookmark, collection, layout, '
                    "filter) VALUES (:user, :role, :bookmark, 'messages', 'tabular', :filter)"),
                    {"user": user, "role": role, "bookmark": bookmark,
                     "filter": '{"id": {"_eq": -1}}'})
            # ... and a filter on the provisioned default view itself.
            await conn.execute(text(
                "UPDATE directus_presets SET filter = '{\"id\": {\"_eq\": -1}}' "
                "WHERE collection = 'chat_sessions' AND \"user\" IS NULL AND role IS NULL"))
        await engine.dispose()

    before = asyncio.run(_query(directus.database_url,
                                'SELECT id, collection FROM directus_presets WHERE "user" IS NULL'))
    asyncio.run(plant())
    changes = provision(directus.url, *ADMIN)
    assert len([c for c in changes if c.startswith("removed a shared")]) == 3, changes
    assert "updated default view of chat_sessions" in changes
    after = asyncio.run(_query(
        directus.database_url,
        'SELECT id, collection FROM directus_presets WHERE "user" IS NULL'))
    assert after == before
    left = asyncio.run(_query(directus.database_url, "SELECT \"user\", bookmark FROM "
                              "directus_presets WHERE filter::text LIKE '%-1%'"))
    assert (uuid.UUID(ids["operator"]), "Mine") in left  # a user's own bookmark is theirs
    assert all(user is not None for user, _ in left)
    assert provision(directus.url, *ADMIN) == []


def test_comments_viewers_none_operators_without_mentions(
    directus: Directus, users: None, conversation: dict[str, str]
) -> None:
    ids = _ids(directus)
    with directus.login(OPERATOR) as op:
        message = op.get("/items/messages", params={"limit": "1"}).json()["data"][0]
        target = {"collection": "messages", "item": str(message["id"])}
        plain = op.post("/comments", json={**target, "comment": "the answer was fixed"})
        assert plain.status_code == 200, plain.text
        mention = op.post("/comments", json={**target, "comment": f"look @{ids['admin']}"})
        assert mention.status_code == 400, mention.text
        assert "comment" in mention.json()["errors"][0]["message"]
        edit = op.patch(f"/comments/{plain.json()['data']['id']}",
                        json={"comment": f"@{ids['admin']}"})
        assert edit.status_code == 400, edit.text
    with directus.login(VIEWER) as viewer:
        response = viewer.post("/comments", json={**target, "comment": "a viewer's note"})
        assert response.status_code == 400, response.text
    with directus.login(ADMIN) as admin:
        response = admin.post("/comments", json={**target, "comment": f"@{ids['operator']} ok"})
        assert response.status_code == 200, response.text
        comments = admin.get("/comments", params={"filter[item][_eq]": target["item"]})
        assert sorted(c["comment"] for c in comments.json()["data"]) == [
            f"@{ids['operator']} ok", "the answer was fixed"]


@pytest.mark.parametrize("who", [VIEWER, OPERATOR], ids=["viewer", "operator"])
def test_only_administrators_manage_users_roles_policies_and_permissions(
    directus: Directus, users: None, who: tuple[str, str]
) -> None:
    ids = _ids(directus)
    with directus.login(who) as client:
        attempts = [
            ("POST", "/users", {"email": "new@example.com", "password": "x" * 12}),
            ("PATCH", f"/users/{ids['admin']}", {"email": "mine@example.com"}),
            ("DELETE", f"/users/{ids['admin']}", None),
            ("PATCH", "/users/me", {"role": ids["admin_role"]}),
            ("POST", "/roles", {"name": "Root"}),
            ("PATCH", f"/roles/{VIEWER_ROLE_ID}", {"name": "x"}),
            ("POST", "/policies", {"name": "Root", "admin_access": True}),
            ("PATCH", "/policies/5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0004", {"admin_access": True}),
            ("POST", "/permissions", {"policy": "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0004",
                                      "collection": "messages", "action": "update"}),
            ("POST", "/access", {"role": VIEWER_ROLE_ID,
                                 "policy": "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0002"}),
            ("PATCH", f"/flows/{GUARD_FLOW_ID}", {"status": "inactive"}),
            ("POST", "/collections", {"collection": "x"}),
        ]
        for method, path, body in attempts:
            response = client.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)
        for table in SPEC_TABLES:
            assert client.post(f"/items/{table}", json={}).status_code == 403, table
    with directus.login(ADMIN) as admin:
        me = admin.get(f"/users/{ids['viewer' if who is VIEWER else 'operator']}").json()["data"]
        assert me["role"] == (VIEWER_ROLE_ID if who is VIEWER else OPERATOR_ROLE_ID)
        flow = admin.get(f"/flows/{GUARD_FLOW_ID}").json()["data"]
        assert flow["status"] == "active"


@pytest.fixture
def sessions(directus: Directus, llm_server: FakeLLMServer) -> dict[str, str]:
    """Two sessions of one chat (the first closed by /v1/chat/reset) and their messages."""
    chat = f"edits-{uuid.uuid4().hex[:6]}"

    async def talk() -> None:
        settings = make_settings(directus.database_url, llm_server.base_url)
        async with running_app(settings) as client:
            for step in ("first", "reset", "second"):
                if step == "reset":
                    response = await client.post("/v1/chat/reset", json={"chat_id": chat})
                else:
                    response = await client.post("/v1/chat/handle", json={
                        "user_id": "edits", "chat_id": chat, "text": step})
                assert response.status_code == 200, response.text

    asyncio.run(talk())
    rows = asyncio.run(_query(directus.database_url,
                              "SELECT id::text, is_active FROM chat_sessions WHERE chat_id = :c",
                              c=chat))
    return {"closed": next(i for i, a in rows if not a), "active": next(i for i, a in rows if a)}


def test_operator_edits_the_database_would_refuse_get_a_readable_answer(
    directus: Directus, users: None, sessions: dict[str, str]
) -> None:
    with directus.login(OPERATOR) as op:
        def session(sid: str) -> dict[str, object]:
            return op.get(f"/items/chat_sessions/{sid}").json()["data"]

        # The database completes the state: unticking "Is Active" stamps closed_at ...
        closed = op.patch(f"/items/chat_sessions/{sessions['active']}", json={"is_active": False})
        assert closed.status_code == 200, closed.text
        assert closed.json()["data"]["closed_at"] is not None
        # ... reactivating clears it ...
        reopened = op.patch(f"/items/chat_sessions/{sessions['active']}",
                            json={"is_active": True})
        assert reopened.status_code == 200, reopened.text
        assert reopened.json()["data"]["closed_at"] is None
        # ... and a second active session of the chat is a conflict, said so.
        second = op.patch(f"/items/chat_sessions/{sessions['closed']}", json={"is_active": True})
        assert second.status_code == 400, second.text
        assert "unique" in second.json()["errors"][0]["message"]
        assert session(sessions["closed"])["is_active"] is False

        for value in (1000, -1, 0):
            counter = op.patch(f"/items/chat_sessions/{sessions['active']}",
                               json={"messages_since_summary": value})
            assert counter.status_code == 400, counter.text
            assert "messages_since_summary" in counter.json()["errors"][0]["message"]
        message = op.get("/items/messages", params={
            "filter[session_id][_eq]": sessions["active"], "limit": "1"}).json()["data"][0]
        role = op.patch(f"/items/messages/{message['id']}", json={"role": "robot"})
        assert role.status_code == 400, role.text
        assert "role" in role.json()["errors"][0]["message"]
        assert op.get(f"/items/messages/{message['id']}").json()["data"]["role"] == "user"
    rows = asyncio.run(_query(directus.database_url,
                              "SELECT messages_since_summary FROM chat_sessions WHERE id = :i",
                              i=uuid.UUID(sessions["active"])))
    assert rows == [(2,)]


# --- usage, limits and bans ---------------------------------------------------------------------


def test_operator_blocks_and_limits_a_user_viewer_only_reads_and_the_backend_obeys(
    directus: Directus, users: None, conversation: dict[str, str], llm_server: FakeLLMServer
) -> None:
    with directus.login(VIEWER) as viewer:
        usage = viewer.get("/items/llm_usage", params={"filter[user_id][_eq]": "12345"})
        assert usage.status_code == 200, usage.text
        assert {u["purpose"] for u in usage.json()["data"]} == {"chat"}
        assert viewer.get("/items/bot_users/12345").status_code == 200
        assert viewer.patch("/items/bot_users/12345", json={"blocked": True}).status_code == 403
    with directus.login(OPERATOR) as op:
        row = op.get("/items/llm_usage", params={"limit": "1"}).json()["data"][0]
        assert op.patch(f"/items/llm_usage/{row['id']}", json={"cost": 0}).status_code == 403
        negative = op.patch("/items/bot_users/12345", json={"daily_token_limit": -5})
        assert negative.status_code == 400, negative.text
        assert "limit" in negative.json()["errors"][0]["message"]
        blocked = op.patch("/items/bot_users/12345", json={"blocked": True})
        assert blocked.status_code == 200, blocked.text
        # A user who never wrote can be limited in advance.
        ahead = op.post("/items/bot_users", json={"user_id": "555", "daily_token_limit": 1})
        assert ahead.status_code == 200, ahead.text

    async def ask(user_id: str) -> httpx.Response:
        settings = make_settings(directus.database_url, llm_server.base_url)
        async with running_app(settings) as client:
            return await client.post("/v1/chat/handle", json={
                "user_id": user_id, "chat_id": user_id, "text": "hello"})

    try:
        refused = asyncio.run(ask("12345"))
        assert refused.status_code == 403 and refused.json()["code"] == "user_blocked"
        assert asyncio.run(ask("555")).status_code == 200
        limited = asyncio.run(ask("555"))
        assert limited.status_code == 429 and limited.json()["code"] == "budget_exceeded"
    finally:
        asyncio.run(_execute(directus.database_url,
                             "UPDATE bot_users SET blocked = false WHERE user_id = '12345'"))


async def _execute(url: str, sql: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


# --- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium (Playwright's own browser download does not work everywhere)."""
    if not CHROMIUM.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(argv, env=env, check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT, timeout=900)
    if not CHROMIUM.exists():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)")
    return CHROMIUM


@pytest.fixture
async def page(chromium: Path) -> AsyncIterator[object]:
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        unavailable(f"playwright is not installed: {exc}")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
        ])
        context = await browser.new_context(viewport={"width": 1440, "height": 810},
                                            locale="en-US")
        try:
            yield await context.new_page()
        finally:
            await browser.close()


async def test_operator_logs_in_and_sees_the_dialogue_in_the_messages_collection(
    directus: Directus, users: None, conversation: dict[str, str], page: object, tmp_path: Path
) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    shots = ROOT / "docs" / "img" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    messages_png, session_png = (shots / name for name in SCREENSHOTS)
    await page.goto(f"{directus.url}/admin/login")
    await page.locator("input[type=email]").fill(OPERATOR[0])
    await page.locator("input[type=password]").fill(OPERATOR[1])
    await page.locator("button[type=submit]").click()
    # The app leaves /admin/login once the session cookie is set.
    await page.wait_for_url(lambda url: "/admin/login" not in url, timeout=30_000)

    await page.goto(f"{directus.url}/admin/content/messages")
    await expect(page.get_by_text(conversation["user"]).first).to_be_visible(timeout=30_000)
    await expect(page.get_by_text(conversation["assistant"]).first).to_be_visible()
    # The layout-options panel opens by default on wide screens; the table is the point here.
    toggle = page.locator(".sidebar-toggle")
    if await toggle.count():
        await toggle.first.click()
        await page.wait_for_timeout(1000)  # let the panel finish sliding away
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(messages_png))

    # A session shows its messages through the o2m relation.
    [(session_id,)] = await _query(directus.database_url,
                                   "SELECT id::text FROM chat_sessions WHERE chat_id = '67890'")
    await page.goto(f"{directus.url}/admin/content/chat_sessions/{session_id}")
    await expect(page.get_by_text(conversation["user"]).first).to_be_visible(timeout=30_000)
    await page.screenshot(path=str(session_png))
    for png in (messages_png, session_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the backend beside Directus ---------------------------------------------------------------


async def test_backend_keeps_working_while_directus_is_connected(
    directus: Directus, users: None, llm_server: FakeLLMServer
) -> None:
    llm_server.fake.reset()
    settings = make_settings(directus.database_url, llm_server.base_url)
    async with running_app(settings) as client, httpx.AsyncClient(base_url=directus.url) as dx:
        token = (await dx.post("/auth/login", json=dict(zip(("email", "password"), OPERATOR,
                                                            strict=True)))).json()["data"]
        dx.headers["Authorization"] = f"Bearer {token['access_token']}"

        async def chat(i: int) -> httpx.Response:
            return await client.post("/v1/chat/handle", json={
                "user_id": f"u{i}", "chat_id": f"busy-{i}", "text": f"parallel {i}"})

        async def browse() -> httpx.Response:
            return await dx.get("/items/messages", params={"limit": "50", "sort": "-id"})

        # The backend writing while an operator browses, and migrations re-run meanwhile.
        migrate = asyncio.to_thread(upgrade_to_head, directus.database_url)
        results = await asyncio.wait_for(
            asyncio.gather(*(chat(i) for i in range(8)), *(browse() for _ in range(8)), migrate),
            timeout=60,
        )
        for response in results[:16]:
            assert isinstance(response, httpx.Response)
            assert response.status_code == 200, response.text
        assert (await client.get("/health")).status_code == 200
    stored = await _query(directus.database_url,
                          "SELECT count(*) FROM messages WHERE content LIKE 'parallel %'")
    assert stored == [(8,)]
    assert directus.server.healthy()


# --- user facts (issue 14) -----------------------------------------------------------------------


def test_facts_collection_operators_correct_with_history_kept_and_the_next_prompt_has_it(
    directus: Directus, users: None, llm_server: FakeLLMServer
) -> None:
    settings = make_settings(directus.database_url, llm_server.base_url)

    async def api(method: str, path: str, **kwargs: object) -> httpx.Response:
        async with running_app(settings) as client:
            return await client.request(method, path, **kwargs)  # type: ignore[arg-type]

    added = asyncio.run(api("POST", "/v1/memory/users/4242/facts",
                            json={"content": "Lives in Moscow"}))
    assert added.status_code == 201, added.text
    fact_id = added.json()["id"]

    with directus.login(VIEWER) as viewer:
        listed = viewer.get("/items/facts", params={"filter[user_id][_eq]": "4242"})
        assert listed.status_code == 200, listed.text
        assert [f["content"] for f in listed.json()["data"]] == ["Lives in Moscow"]
        assert viewer.patch(f"/items/facts/{fact_id}",
                            json={"content": "x"}).status_code == 403
        assert viewer.delete(f"/items/facts/{fact_id}").status_code == 403

    with directus.login(OPERATOR) as op:
        fixed = op.patch(f"/items/facts/{fact_id}", json={"content": "Lives in Berlin"})
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["data"]["source"] == "operator"
        # History is visible: the old wording is an earlier version of the edited fact.
        item = op.get(f"/items/facts/{fact_id}",
                      params={"fields": "content,earlier_versions.content,"
                                        "earlier_versions.superseded_at"}).json()["data"]
        assert item["content"] == "Lives in Berlin"
        assert [v["content"] for v in item["earlier_versions"]] == ["Lives in Moscow"]
        assert item["earlier_versions"][0]["superseded_at"] is not None
        assert op.post("/items/facts", json={"user_id": "4242", "content": "x",
                                             "source": "operator"}).status_code == 403

    llm_server.fake.reset()
    answered = asyncio.run(api("POST", "/v1/chat/handle",
                               json={"user_id": "4242", "chat_id": "4242", "text": "Where?"}))
    assert answered.status_code == 200, answered.text
    system = llm_server.fake.chat_requests[-1]["messages"][0]["content"]
    assert "Lives in Berlin" in system and "Moscow" not in system
    history = asyncio.run(api("GET", "/v1/memory/users/4242/facts", params={"history": "true"}))
    assert [(f["content"], f["superseded_by"]) for f in history.json()["facts"]] == [
        ("Lives in Moscow", fact_id), ("Lives in Berlin", None)]

    with directus.login(OPERATOR) as op:  # deleting the fact in the panel: out of the prompt
        assert op.delete(f"/items/facts/{fact_id}").status_code == 204
    llm_server.fake.reset()
    asyncio.run(api("POST", "/v1/chat/handle",
                    json={"user_id": "4242", "chat_id": "4242", "text": "And now?"}))
    assert "Berlin" not in str(llm_server.fake.chat_requests[-1]["messages"])


# --- personas and the dashboard (issue 17) -------------------------------------------------------


async def test_a_persona_edited_through_directus_is_the_next_system_message_without_a_restart(
    directus: Directus, users: None, llm_server: FakeLLMServer
) -> None:
    llm_server.fake.reset()
    settings = make_settings(directus.database_url, llm_server.base_url,
                             persona_reload_seconds=600)
    async with running_app(settings) as client, httpx.AsyncClient(base_url=directus.url) as dx:
        token = (await dx.post("/auth/login", json=dict(zip(("email", "password"), OPERATOR,
                                                            strict=True)))).json()["data"]
        dx.headers["Authorization"] = f"Bearer {token['access_token']}"
        default = (await dx.get("/items/personas", params={"filter[is_default][_eq]": "true"}))
        assert default.status_code == 200, default.text
        [persona] = default.json()["data"]
        edited = await dx.patch(f"/items/personas/{persona['id']}", json={
            "instruction": "You are the lighthouse keeper.", "temperature": 0.3})
        assert edited.status_code == 200, edited.text
        out_of_range = await dx.patch(f"/items/personas/{persona['id']}",
                                      json={"temperature": 5})
        assert out_of_range.status_code == 400, out_of_range.text
        assert "temperature" in out_of_range.json()["errors"][0]["message"]

        cache = client.app.state.services.personas  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while cache.default().instruction != "You are the lighthouse keeper.":
            assert time.monotonic() < deadline, "the edit did not reach the backend"
            await asyncio.sleep(0.05)
        response = await client.post("/v1/chat/handle", json={
            "user_id": "777", "chat_id": "777", "text": "who are you?"})
        assert response.status_code == 200, response.text
        request = llm_server.fake.chat_requests[-1]
        assert request["messages"][0]["content"].startswith("You are the lighthouse keeper.")
        assert request["temperature"] == 0.3
        created = await dx.post("/items/personas", json={
            "name": "Lighthouse poet", "instruction": "Answer in verse.", "selectable": True})
        assert created.status_code == 200, created.text
        await dx.delete(f"/items/personas/{created.json()['data']['id']}")
        restored = await dx.patch(f"/items/personas/{persona['id']}", json={
            "instruction": persona["instruction"], "temperature": None})
        assert restored.status_code == 200, restored.text


def test_viewers_read_personas_and_the_dashboard_but_edit_neither_personas_nor_limits(
    directus: Directus, users: None, conversation: dict[str, str]
) -> None:
    from llm_bot_core.admin.dashboard import DASHBOARD_ID, PANELS

    with directus.login(VIEWER) as viewer:
        personas = viewer.get("/items/personas")
        assert personas.status_code == 200 and personas.json()["data"], personas.text
        first = personas.json()["data"][0]["id"]
        assert viewer.patch(f"/items/personas/{first}",
                            json={"instruction": "hijacked"}).status_code == 403
        assert viewer.post("/items/personas", json={"name": "x",
                                                    "instruction": "y"}).status_code == 403
        assert viewer.delete(f"/items/personas/{first}").status_code == 403
        assert viewer.patch("/items/bot_users/12345",
                            json={"daily_token_limit": 1}).status_code == 403
        assert viewer.post("/items/bot_users", json={"user_id": "v1"}).status_code == 403
        dashboard = viewer.get(f"/dashboards/{DASHBOARD_ID}")
        assert dashboard.status_code == 200, dashboard.text
        panels = viewer.get("/panels", params={"filter[dashboard][_eq]": DASHBOARD_ID})
        assert {p["id"] for p in panels.json()["data"]} == {p.id for p in PANELS}
        assert viewer.patch(f"/dashboards/{DASHBOARD_ID}",
                            json={"name": "mine"}).status_code == 403
        # What the panels query, as the app asks for it: per-day usage and the top users.
        top = viewer.get("/items/llm_usage", params={
            "aggregate[sum]": "total_tokens", "groupBy[]": "user_id"})
        assert top.status_code == 200, top.text
        assert any(row["user_id"] == "12345" and int(row["sum"]["total_tokens"]) > 0
                   for row in top.json()["data"])
        daily = viewer.get("/items/usage_daily", params={"fields": "day,purpose,total_tokens"})
        assert daily.status_code == 200 and daily.json()["data"], daily.text
    with directus.login(OPERATOR) as op:
        assert op.get(f"/dashboards/{DASHBOARD_ID}").status_code == 200
        assert op.patch(f"/dashboards/{DASHBOARD_ID}", json={"name": "mine"}).status_code == 403
        assert op.post("/items/job_failures", json={
            "task": "x", "arguments": "[]", "error": "e"}).status_code == 403


def test_the_default_persona_cannot_be_unticked_from_the_admin_panel(
    directus: Directus, users: None, conversation: dict[str, str]
) -> None:
    with directus.login(OPERATOR) as op:
        [default] = op.get("/items/personas",
                           params={"filter[is_default][_eq]": "true"}).json()["data"]
        refused = op.patch(f"/items/personas/{default['id']}", json={"is_default": False})
        assert refused.status_code == 400, refused.text
        assert "is_default" in refused.json()["errors"][0]["message"]  # the form shows why
    rows = asyncio.run(_query(directus.database_url,
                              "SELECT count(*) FROM personas WHERE is_default"))
    assert rows == [(1,)]


async def test_operator_sees_the_dashboard_in_the_browser(
    directus: Directus, users: None, conversation: dict[str, str], page: object, tmp_path: Path
) -> None:
    from playwright.async_api import Page, expect

    from llm_bot_core.admin.dashboard import DASHBOARD_ID

    assert isinstance(page, Page)
    shots = ROOT / "docs" / "img" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    await page.goto(f"{directus.url}/admin/login")
    await page.locator("input[type=email]").fill(OPERATOR[0])
    await page.locator("input[type=password]").fill(OPERATOR[1])
    # The app routes itself after logging in; waiting for that "navigation" can hang.
    await page.locator("button[type=submit]").click(no_wait_after=True)
    await page.wait_for_url(lambda url: "/admin/login" not in url, timeout=30_000)
    # The app asks for every panel's data in one GraphQL query: one bad panel empties them all.
    answers: list[str] = []

    async def keep(response: object) -> None:
        if "/graphql" in response.url:  # type: ignore[attr-defined]
            answers.append(await response.text())  # type: ignore[attr-defined]

    page.on("response", keep)
    await page.goto(f"{directus.url}/admin/insights/{DASHBOARD_ID}")
    await expect(page.get_by_text("Messages per day").first).to_be_visible(timeout=30_000)
    await expect(page.get_by_text("Top users by tokens, 30 days").first).to_be_visible()
    await page.wait_for_timeout(3000)  # the charts draw after their queries return
    assert answers, "the dashboard asked for no data"
    assert not [a for a in answers if '"errors"' in a], answers
    toggle = page.locator(".sidebar-toggle")
    if await toggle.count():
        await toggle.first.click()
        await page.wait_for_timeout(1000)
    shots.mkdir(parents=True, exist_ok=True)
    png = shots / "directus-dashboard.png"
    await page.screenshot(path=str(png), full_page=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
