"""`llm-bot-core admin`: install (cached), bootstrap, start and provision Directus, then wait."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from pydantic import SecretStr

from llm_bot_core.admin.install import InstallError, ensure_installed
from llm_bot_core.admin.provision import ProvisioningError, provision
from llm_bot_core.admin.server import (
    DirectusConfig,
    DirectusServer,
    DirectusStartError,
    load_or_create_secrets,
)
from llm_bot_core.config import AdminSettings, Settings

log = logging.getLogger(__name__)

# What `llm-bot-core admin` reports as one line instead of a traceback.
AdminError = (InstallError, DirectusStartError, ProvisioningError)


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def directus_config(settings: Settings, database_url: str) -> DirectusConfig:
    """Directus's settings from ours; secrets not given are generated once under DATA_DIR."""
    work_dir = (settings.storage.data_dir / "directus").resolve()
    given = {
        "admin_password": _secret(settings.admin.admin_password),
        "key": _secret(settings.admin.directus_key),
        "secret": _secret(settings.admin.directus_secret),
    }
    if not all(given.values()):  # only then touch DATA_DIR (it may be read-only in a container)
        stored = load_or_create_secrets(work_dir)
        given = {name: value or stored[name] for name, value in given.items()}
    return DirectusConfig(
        database_url=database_url,
        admin_email=settings.admin.admin_email,
        admin_password=given["admin_password"],
        key=given["key"],
        secret=given["secret"],
        work_dir=work_dir,
        host=settings.admin.directus_host,
        port=settings.admin.directus_port,
        public_url=settings.admin.directus_public_url or None,
        log_level="info" if settings.server.log_level.upper() == "DEBUG" else "warn",
    )


def run_admin(settings: Settings, database_url: str, provision_url: str | None = None) -> int:
    """Serve the admin panel until interrupted, or only provision the Directus at provision_url."""
    if provision_url:
        password = (
            _secret(settings.admin.admin_password)
            or load_or_create_secrets(settings.storage.data_dir / "directus")["admin_password"]
        )
        changes = provision(provision_url, settings.admin.admin_email, password)
        log.info("provisioning done: %d change(s)", len(changes))
        return 0

    config = directus_config(settings, database_url)
    cache_dir = settings.admin.directus_cache_dir
    cache = Path(cache_dir).expanduser() if cache_dir else None
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
        log.info(
            "Directus %s ready: bootstrap %.1fs, start %.1fs, %d provisioning change(s), "
            "RSS %.0f MB",
            install.version,
            bootstrap,
            seconds,
            len(changes),
            server.rss_bytes() / 2**20,
        )
        _announce(settings.admin, config)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _announce(admin: AdminSettings, config: DirectusConfig) -> None:
    log.info("admin panel: %s  (log in as %s)", config.public_url or config.url, config.admin_email)
    if admin.admin_password is None or not admin.admin_password.get_secret_value():
        log.info(
            "ADMIN_PASSWORD is not set: the password is in %s (key admin_password)",
            config.work_dir / "secrets.json",
        )
