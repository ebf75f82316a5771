"""``ocikit login``/``logout`` and pushes that need them, on Basic and token registries."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from fixtures.images import write_busybox
from fixtures.pytest_plugin import TokenRegistry
from fixtures.registry import RegistryServer
from tests.cli import assert_one_line_error, ocikit

pytestmark = pytest.mark.timeout(180)


def docker_config() -> Path:
    return Path(os.environ["DOCKER_CONFIG"]) / "config.json"


def login(host: str, user: str, password: str):
    return ocikit("login", "-u", user, "--password-stdin", host, input=password + "\n")


@pytest.fixture
def layout(tmp_path: Path) -> str:
    write_busybox(tmp_path / "layout")
    return f"oci:{tmp_path / 'layout'}:latest"


def _login_then_push(host: str, user: str, password: str, layout: str) -> None:
    dest = f"{host}/{uuid.uuid4().hex[:8]}/bb:1"
    r = ocikit("push", layout, dest)
    assert_one_line_error(r, 1, "unauthorized", host)

    r = login(host, user, "not-" + password)
    assert_one_line_error(r, 1, "unauthorized", host)
    assert not docker_config().exists()

    r = login(host, user, password)
    assert r.code == 0, r
    assert r.out.strip() == "Login Succeeded"
    assert stat.S_IMODE(docker_config().stat().st_mode) == 0o600
    entry = json.loads(docker_config().read_text())["auths"][host]
    assert base64.b64decode(entry["auth"]).decode() == f"{user}:{password}"

    r = ocikit("push", "-q", layout, dest)
    assert r.code == 0, r
    assert r.out.startswith("sha256:")

    r = ocikit("logout", host)
    assert r.code == 0, r
    assert host not in json.loads(docker_config().read_text())["auths"]
    r = ocikit("push", layout, dest.replace(":1", ":2"))
    assert_one_line_error(r, 1, "unauthorized")
    assert "Not logged in" in ocikit("logout", host).out


def test_basic_auth_registry(basic_registry: RegistryServer, layout: str) -> None:
    user, password = next(iter(basic_registry.users.items()))
    _login_then_push(basic_registry.host, user, password, layout)


def test_token_auth_registry(token_registry: TokenRegistry, layout: str) -> None:
    user, password = token_registry.creds
    _login_then_push(token_registry.registry.host, user, password, layout)
    # the login was checked by asking the token server with the credentials
    assert any(g.account == user for g in token_registry.token_server.grants)


def test_password_option_warns_and_usage_errors(basic_registry: RegistryServer) -> None:
    user, password = next(iter(basic_registry.users.items()))
    r = ocikit("login", "-u", user, "-p", password, basic_registry.host)
    assert r.code == 0, r
    assert "insecure" in r.err and "--password-stdin" in r.err
    r = ocikit("login", "--password-stdin", basic_registry.host, input=password)
    assert_one_line_error(r, 2, "--username")
    r = ocikit("login", "-u", user, basic_registry.host, input="")
    assert_one_line_error(r, 2, "--password-stdin")


def test_login_to_something_that_is_not_a_registry(tmp_path: Path) -> None:
    r = login("127.0.0.1:1", "u", "p")
    assert_one_line_error(r, 1, "127.0.0.1:1")
    assert not docker_config().exists()
