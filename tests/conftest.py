"""Test-wide set-up: every test gets its own store, config and docker config.

Tests run as root, so without this a test run would overwrite the real
/root/.docker/config.json and /var/lib/ocikit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["fixtures.pytest_plugin"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OCIKIT_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("OCIKIT_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("OCIKIT_DEBUG", raising=False)
    yield tmp_path
