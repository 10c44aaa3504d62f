"""Run Directus against the backend's database: its environment, bootstrap, start, readiness."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from sqlalchemy.engine import make_url

from llm_bot_core.admin.install import DirectusInstall
from llm_bot_core.db.engine import normalize_url

# Directus reads many generic names (PORT, HOST, LOG_LEVEL, REDIS, CACHE_*...) that the backend's
# environment may also set; the child gets only these from ours, plus what we set explicitly.
PASSTHROUGH = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)

# alembic_version is the backend's bookkeeping, not data anyone should browse or edit.
EXCLUDED_TABLES = "spatial_ref_sys,sysdiagrams,alembic_version"


class DirectusStartError(RuntimeError):
    """Directus exited or did not become healthy in time."""


@dataclass(frozen=True)
class DirectusConfig:
    database_url: str
    admin_email: str
    admin_password: str
    key: str
    secret: str
    work_dir: Path
    host: str = "127.0.0.1"
    port: int = 8055
    public_url: str | None = None
    log_level: str = "warn"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


def database_env(database_url: str) -> dict[str, str]:
    """DB_* for Directus from the backend's SQLAlchemy URL (TCP, or a unix-socket directory)."""
    url = make_url(normalize_url(database_url))
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, tuple):
        socket_dir = socket_dir[0]
    env = {
        "DB_CLIENT": "pg",
        # node-postgres takes a directory as host for a unix socket, like libpq does.
        "DB_HOST": str(socket_dir or url.host or "127.0.0.1"),
        "DB_PORT": str(url.port or 5432),
        "DB_DATABASE": url.database or "postgres",
        "DB_USER": url.username or "postgres",
    }
    if url.password:
        env["DB_PASSWORD"] = str(url.password)
    ssl = url.query.get("ssl") or url.query.get("sslmode")
    if ssl in ("require", "true", "verify-ca", "verify-full"):
        env["DB_SSL"] = "true"
        if ssl == "require":
            env["DB_SSL__REJECT_UNAUTHORIZED"] = "false"
    return env


def directus_env(config: DirectusConfig, install: DirectusInstall) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSTHROUGH if name in os.environ}
    env.update(install.env())
    env.update(database_env(config.database_url))
    env.update(
        {
            "DB_EXCLUDE_TABLES": EXCLUDED_TABLES,
            "KEY": config.key,
            "SECRET": config.secret,
            "ADMIN_EMAIL": config.admin_email,
            "ADMIN_PASSWORD": config.admin_password,
            "HOST": config.host,
            "PORT": str(config.port),
            "PUBLIC_URL": config.public_url or config.url,
            "PROJECT_NAME": "LLM Bot Core",
            # An owner set at bootstrap skips the app's onboarding form; no owner reports are sent.
            "PROJECT_OWNER": config.admin_email,
            "PROJECT_OWNER_ENABLED": "false",
            "TELEMETRY": "false",
            "LOG_LEVEL": config.log_level,
            "LOG_STYLE": "pretty",
            "STORAGE_LOCATIONS": "local",
            "STORAGE_LOCAL_ROOT": str(config.work_dir / "uploads"),
            "EXTENSIONS_PATH": str(config.work_dir / "extensions"),
            # Directus loads `.env` from its working directory; ours must not be it.
            "CONFIG_PATH": str(config.work_dir / "directus.env"),
        }
    )
    return env


def load_or_create_secrets(work_dir: Path) -> dict[str, str]:
    """KEY, SECRET and a generated admin password, kept under DATA_DIR so restarts keep sessions."""
    path = work_dir / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    changed = False
    for name in ("key", "secret", "admin_password"):
        if not stored.get(name):
            stored[name] = secrets.token_urlsafe(24)
            changed = True
    if changed:
        work_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2) + "\n")
    return stored


class DirectusServer:
    """One Directus process: `bootstrap` (install or migrate its own tables), then `start`."""

    def __init__(
        self, install: DirectusInstall, config: DirectusConfig, output: IO[bytes] | None = None
    ) -> None:
        self.install = install
        self.config = config
        self.output = output
        self.env = directus_env(config, install)
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return self.config.url

    def bootstrap(self) -> None:
        """Create Directus's system tables and the admin user once; later runs migrate them."""
        for sub in ("uploads", "extensions"):
            (self.config.work_dir / sub).mkdir(parents=True, exist_ok=True)
        manifest = self.config.work_dir / "package.json"
        if not manifest.exists():
            # Directus looks for extensions installed as npm packages in its working directory.
            manifest.write_text('{"name": "llm-bot-core-admin", "private": true}\n')
        result = subprocess.run(
            self.install.command("bootstrap"),
            env=self.env,
            cwd=self.config.work_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if self.output is not None:
            self.output.write(result.stdout)
            self.output.flush()
        if result.returncode != 0:
            raise DirectusStartError(
                f"directus bootstrap failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')[-3000:]}"
            )

    def start(self, timeout: float = 180.0) -> float:
        """Start the server and wait until it answers; returns the seconds it took."""
        began = time.monotonic()
        self.process = subprocess.Popen(
            self.install.command("start"),
            env=self.env,
            cwd=self.config.work_dir,
            stdout=self.output,
            stderr=subprocess.STDOUT if self.output is not None else None,
            start_new_session=True,
        )
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DirectusStartError(f"directus exited with {self.process.returncode}")
            if self.healthy():
                self.startup_seconds = time.monotonic() - began
                return self.startup_seconds
            time.sleep(0.25)
        self.stop()
        raise DirectusStartError(f"directus not answering at {self.url} after {timeout:.0f}s")

    def healthy(self) -> bool:
        # /server/health needs a logged-in user since Directus 12; ping is public and is served
        # once the app (with its database connection and schema) is up.
        try:
            response = httpx.get(f"{self.url}/server/ping", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.text == "pong"

    def rss_bytes(self) -> int:
        """Resident memory of the Directus process and its children (Linux /proc)."""
        if self.process is None:
            return 0
        return sum(_rss(pid) for pid in _process_tree(self.process.pid))

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _process_tree(pid: int) -> list[int]:
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return pids


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
