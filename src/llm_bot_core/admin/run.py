"""`llm-bot-core admin`: install (cached), bootstrap, start and provision Directus, then wait."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from llm_bot_core.admin.install import ensure_installed
from llm_bot_core.admin.provision import provision
from llm_bot_core.admin.server import DirectusConfig, DirectusServer, load_or_create_secrets
from llm_bot_core.config import Settings

log = logging.getLogger(__name__)


def directus_config(settings: Settings, database_url: str) -> DirectusConfig:
    """Directus's settings from ours; secrets not given are generated once under DATA_DIR."""
    work_dir = (settings.data_dir / "directus").resolve()
    stored = load_or_create_secrets(work_dir)

    def pick(value: object, fallback: str) -> str:
        secret = getattr(value, "get_secret_value", lambda: value)()
        return str(secret) if secret else fallback

    return DirectusConfig(
        database_url=database_url,
        admin_email=settings.admin_email,
        admin_password=pick(settings.admin_password, stored["admin_password"]),
        key=pick(settings.directus_key, stored["key"]),
        secret=pick(settings.directus_secret, stored["secret"]),
        work_dir=work_dir,
        host=settings.directus_host,
        port=settings.directus_port,
        public_url=settings.directus_public_url or None,
        log_level="info" if settings.log_level.upper() == "DEBUG" else "warn",
    )


def run_admin(settings: Settings, database_url: str, provision_url: str | None = None) -> int:
    """Serve the admin panel until interrupted, or only provision the Directus at provision_url."""
    config = directus_config(settings, database_url)
    if provision_url:
        changes = provision(provision_url, config.admin_email, config.admin_password)
        log.info("provisioning done: %d change(s)", len(changes))
        return 0

    cache = Path(settings.directus_cache_dir).expanduser() if settings.directus_cache_dir else None
    install = ensure_installed(cache)
    server = DirectusServer(install, config, output=sys.stdout.buffer)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    began = time.monotonic()
    server.bootstrap()
    bootstrap = time.monotonic() - began
    seconds = server.start()

    def _stop(signum: int, _: FrameType | None) -> None:
        # Only unwind here: `finally` stops Directus once the pending wait() has returned.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    try:
        changes = provision(server.url, config.admin_email, config.admin_password)
        log.info("Directus %s ready: bootstrap %.1fs, start %.1fs, %d provisioning change(s), "
                 "RSS %.0f MB", install.version, bootstrap, seconds, len(changes),
                 server.rss_bytes() / 2**20)
        _announce(settings, config)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _announce(settings: Settings, config: DirectusConfig) -> None:
    log.info("admin panel: %s  (log in as %s)", config.public_url or config.url,
             config.admin_email)
    if settings.admin_password is None or not settings.admin_password.get_secret_value():
        log.info("ADMIN_PASSWORD is not set: the password is in %s (key admin_password)",
                 config.work_dir / "secrets.json")
