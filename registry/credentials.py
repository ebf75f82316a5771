"""Registry credentials from docker's ``config.json`` and podman's ``auth.json``.

Lookup order for a registry host, first hit wins:

1. ``$REGISTRY_AUTH_FILE`` (an explicit choice, as podman honours it first);
2. docker's ``config.json`` in ``$DOCKER_CONFIG`` (``~/.docker``):
   ``credHelpers[host]``, then an ``auths`` entry with ``auth`` or
   ``identitytoken``, then ``credsStore`` (an empty ``auths`` entry is only a
   marker saying the store has it);
3. podman's ``$XDG_RUNTIME_DIR/containers/auth.json``, then
   ``~/.config/containers/auth.json``.

Helpers are docker's ``docker-credential-<name>`` programs: ``get`` reads the
server URL on stdin and prints ``{"ServerURL","Username","Secret"}``; the
username ``<token>`` means the secret is an identity (refresh) token. A helper
that is not installed (a ``credsStore: desktop`` copied from a Mac) gives no
credentials rather than an error, so public images still pull.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocikit import settings
from ocikit.errors import AuthError, UsageError
from ocikit.oci.reference import DOCKER_HUB
from ocikit.registry.config import normalize_host

# The key docker writes for Docker Hub, and what its helpers are asked for.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
TOKEN_USERNAME = "<token>"
_HELPER_TIMEOUT = 60.0


@dataclass(frozen=True)
class Credential:
    """What to authenticate with: a username and password, or an identity token."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token)


def server_key(host: str) -> str:
    """The key docker uses in config.json (and asks helpers for) for ``host``."""
    host = normalize_host(host)
    return DOCKER_HUB_KEY if host == DOCKER_HUB else host


def _decode_auth(value: str, where: str) -> tuple[str, str]:
    try:
        text = base64.b64decode(value.strip() + "=" * (-len(value.strip()) % 4),
                                validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise UsageError(f"{where}: invalid base64 in auth") from None
    user, sep, password = text.partition(":")
    if not sep:
        raise UsageError(f"{where}: auth is not user:password")
    return user, password


def _entry_credential(entry: Mapping[str, Any], where: str) -> Credential | None:
    """An ``auths`` entry's inline credential; None if it defers to a store."""
    user, password = "", ""
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        user, password = _decode_auth(auth, where)
    else:
        u, p = entry.get("username"), entry.get("password")
        if isinstance(u, str) and isinstance(p, str) and u:
            user, password = u, p
    token = entry.get("identitytoken")
    token = token if isinstance(token, str) else ""
    if user == TOKEN_USERNAME:
        user, token, password = "", token or password, ""
    cred = Credential(user, password, token)
    return None if cred.empty else cred


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"invalid JSON in {path}: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"invalid {path}: not a JSON object")
    return doc


def _auths(doc: Mapping[str, Any], path: Path) -> dict[str, Any]:
    auths = doc.get("auths", {})
    if not isinstance(auths, dict):
        raise UsageError(f"invalid {path}: auths is not an object")
    return auths


def _matching_keys(auths: Mapping[str, Any], host: str, repository: str) -> list[str]:
    """Keys of ``auths`` that name ``host``: most specific (podman's host/repo) first."""
    want = normalize_host(host)
    scored: list[tuple[int, str]] = []
    for key in auths:
        k = key.strip()
        if "://" in k:
            # docker writes https://host, old clients http://host/v1/ or /v2/
            norm, path = normalize_host(k), ""
        else:
            first, _, path = k.partition("/")
            norm = normalize_host(first)
        if norm != want:
            continue
        path = path.strip("/")
        if "://" in k or not path:
            scored.append((0, key))
        elif repository == path or repository.startswith(path + "/"):
            scored.append((len(path), key))
    return [k for _, k in sorted(scored, key=lambda s: -s[0])]


def run_helper(name: str, action: str, payload: str) -> str | None:
    """Run ``docker-credential-<name> <action>``; None if the helper is not installed."""
    exe = shutil.which(f"docker-credential-{name}")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, action], input=payload.encode(), capture_output=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper docker-credential-{name} timed out") from None
    except OSError as e:
        raise AuthError(f"cannot run docker-credential-{name}: {e.strerror or e}") from None
    out = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        if action == "get" and "credentials not found" in out.lower():
            return ""
        if action == "erase" and "not found" in out.lower():
            return ""
        detail = (out or proc.stderr.decode("utf-8", "replace").strip()).splitlines()
        raise AuthError(f"credential helper docker-credential-{name} {action} failed: "
                        f"{detail[0] if detail else f'exit {proc.returncode}'}")
    return out


def helper_get(name: str, server: str) -> Credential | None:
    out = run_helper(name, "get", server)
    if not out:
        return None
    try:
        doc = json.loads(out)
        user, secret = str(doc.get("Username") or ""), str(doc.get("Secret") or "")
    except (ValueError, AttributeError):
        raise AuthError(f"credential helper docker-credential-{name} printed invalid JSON"
                        ) from None
    if user == TOKEN_USERNAME:
        return Credential(identity_token=secret) if secret else None
    cred = Credential(user, secret)
    return None if cred.empty else cred


class Credentials:
    """Resolves credentials per registry host, reading files and helpers lazily.

    Results are cached per (host, repository) so a helper runs once per run;
    lookups are thread-safe.
    """

    def __init__(self, docker_config: Path | None = None,
                 auth_files: Iterable[Path] | None = None,
                 static: Mapping[str, Credential] | None = None) -> None:
        self._docker_config = docker_config
        self._auth_files = list(auth_files) if auth_files is not None else None
        self._static = {normalize_host(k): v for k, v in (static or {}).items()}
        self._cache: dict[tuple[str, str], Credential | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Credentials:
        """docker's config.json and podman's auth.json as the environment locates them."""
        return cls()

    @classmethod
    def static(cls, creds: Mapping[str, Credential]) -> Credentials:
        """Only these credentials (host -> Credential); no files, no helpers."""
        return cls(docker_config=Path(os.devnull), auth_files=(), static=creds)

    @classmethod
    def anonymous(cls) -> Credentials:
        return cls.static({})

    def _docker_config_path(self) -> Path:
        if self._docker_config is not None:
            return self._docker_config
        return settings.docker_config_dir() / "config.json"

    def _podman_files(self) -> tuple[list[Path], list[Path]]:
        """(files before docker's config, files after it)."""
        if self._auth_files is not None:
            return [], self._auth_files
        before: list[Path] = []
        env = os.environ.get("REGISTRY_AUTH_FILE")
        if env:
            before.append(Path(env))
        after: list[Path] = []
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            after.append(Path(runtime) / "containers" / "auth.json")
        conf = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        after.append(Path(conf) / "containers" / "auth.json")
        return before, after

    def lookup(self, host: str, repository: str = "") -> Credential | None:
        """Credentials for registry ``host`` (``docker.io`` for Docker Hub), or None."""
        key = (normalize_host(host), repository)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        cred = self._resolve(key[0], repository)
        with self._lock:
            self._cache[key] = cred
        return cred

    def _resolve(self, host: str, repository: str) -> Credential | None:
        if host in self._static:
            return self._static[host]
        before, after = self._podman_files()
        for path in before:
            cred = self._from_file(path, host, repository, helpers=False)
            if cred is not None:
                return cred
        cred = self._from_file(self._docker_config_path(), host, repository, helpers=True)
        if cred is not None:
            return cred
        for path in after:
            cred = self._from_file(path, host, repository, helpers=False)
            if cred is not None:
                return cred
        return None

    def _from_file(self, path: Path, host: str, repository: str, *,
                   helpers: bool) -> Credential | None:
        if str(path) == os.devnull:
            return None
        doc = _load_json(path)
        if doc is None:
            return None
        auths = _auths(doc, path)
        if helpers:
            cred_helpers = doc.get("credHelpers") or {}
            if isinstance(cred_helpers, dict):
                for k, name in cred_helpers.items():
                    if normalize_host(k) == host and isinstance(name, str) and name:
                        return helper_get(name, server_key(host))
        for k in _matching_keys(auths, host, repository):
            entry = auths[k]
            if isinstance(entry, dict):
                cred = _entry_credential(entry, f"{path}: auths[{k!r}]")
                if cred is not None:
                    return cred
        store = doc.get("credsStore") if helpers else None
        if isinstance(store, str) and store:
            return helper_get(store, server_key(host))
        return None


# --- writing, for `login` and `logout` ------------------------------------

def _config_file(config_dir: Path | None) -> Path:
    path = (config_dir if config_dir is not None else settings.docker_config_dir()) / "config.json"
    # Write through a symlinked config.json (dotfile managers) instead of replacing the link.
    return path.resolve() if path.is_symlink() else path


def _write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (json.dumps(doc, indent="\t") + "\n").encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.json.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _helper_for(doc: Mapping[str, Any], host: str) -> str:
    helpers = doc.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for k, name in helpers.items():
            if normalize_host(k) == host and isinstance(name, str) and name:
                return name
    store = doc.get("credsStore")
    return store if isinstance(store, str) else ""


def save_credentials(host: str, username: str, password: str, *,
                     config_dir: Path | None = None) -> Path:
    """Store credentials for ``host`` as ``docker login`` does; returns the file written.

    With a helper configured for the host the secret goes to the helper and
    config.json gets an empty marker entry; otherwise a base64 ``auth``. The
    username ``<token>`` stores the password as an identity token.
    """
    path = _config_file(config_dir)
    host = normalize_host(host)
    key = server_key(host)
    doc = _load_json(path) or {}
    auths = _auths(doc, path)
    for k in _matching_keys(auths, host, ""):
        if k != key:
            del auths[k]
    helper = _helper_for(doc, host)
    if helper:
        payload = json.dumps({"ServerURL": key, "Username": username, "Secret": password})
        if run_helper(helper, "store", payload) is None:
            raise AuthError(f"credential helper docker-credential-{helper} is not installed")
        auths[key] = {}
    elif username == TOKEN_USERNAME:
        auths[key] = {"identitytoken": password}
    else:
        auths[key] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    doc["auths"] = auths
    try:
        _write_json_atomic(path, doc)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def remove_credentials(host: str, *, config_dir: Path | None = None) -> bool:
    """Forget ``host``'s credentials; True if there were any."""
    path = _config_file(config_dir)
    host = normalize_host(host)
    doc = _load_json(path)
    if doc is None:
        return False
    auths = _auths(doc, path)
    keys = _matching_keys(auths, host, "")
    helper = _helper_for(doc, host)
    if helper:
        run_helper(helper, "erase", server_key(host))
    if not keys:
        return False
    for k in keys:
        del auths[k]
    doc["auths"] = auths
    try:
        _write_json_atomic(path, doc)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    return True
