"""Unit tests of the registry client's parsing and error paths (``responses`` mocks).

The happy paths against real registries are in test_registry_live.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests
import responses

from ocikit.errors import (
    AuthError,
    NotFoundError,
    RegistryError,
    UnsupportedError,
    UsageError,
    VerificationError,
)
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import Descriptor
from ocikit.oci.digest import Digest, sha256_of
from ocikit.oci.reference import Reference
from ocikit.registry.auth import TokenCache, parse_www_authenticate
from ocikit.registry.client import RegistryClient, parse_link_next, same_origin
from ocikit.registry.config import Config, is_loopback, load_config
from ocikit.registry.credentials import (
    DOCKER_HUB_KEY,
    Credential,
    Credentials,
    remove_credentials,
    save_credentials,
)
from ocikit.registry.transport import RetryPolicy, error_summary, parse_retry_after

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.01, max_retry_after=5)
REG = "reg.example"
BASE = f"https://{REG}"
REF = Reference.parse(f"{REG}/team/app:1")

CONFIG_BLOB = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
CONFIG_DESC = Descriptor(mt.OCI_CONFIG, sha256_of(CONFIG_BLOB), len(CONFIG_BLOB))
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
    "config": CONFIG_DESC.to_dict(), "layers": [],
}).encode()
MANIFEST_DIGEST = str(sha256_of(MANIFEST))


def client(config: Config | None = None, creds: dict[str, Credential] | None = None,
           **kw) -> RegistryClient:
    return RegistryClient(config or Config(), Credentials.static(creds or {}), policy=FAST, **kw)


def bearer_challenge(scope: str = "repository:team/app:pull") -> dict[str, str]:
    return {"WWW-Authenticate":
            f'Bearer realm="https://auth.example/token",service="reg",scope="{scope}"'}


def add_manifest(rsps: responses.RequestsMock, body: bytes = MANIFEST,
                 ctype: str = mt.OCI_MANIFEST, url: str = f"{BASE}/v2/team/app/manifests/1",
                 digest: str | None = None, **kw) -> None:
    headers = {"Docker-Content-Digest": digest or str(sha256_of(body))}
    rsps.add(responses.GET, url, body=body, content_type=ctype, headers=headers, **kw)


# -- WWW-Authenticate, Retry-After, Link -------------------------------------------------

def test_parse_bearer_challenge_with_commas_inside_quotes() -> None:
    [ch] = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push repository:other:pull"')
    assert ch.scheme == "bearer"
    assert ch.realm == "https://auth.docker.io/token"
    assert ch.service == "registry.docker.io"
    assert ch.scopes == ("repository:samalba/my-app:pull,push", "repository:other:pull")


def test_parse_several_challenges_escapes_and_tokens() -> None:
    chals = parse_www_authenticate(
        'Basic realm="a \\"quoted\\" realm", charset=UTF-8, '
        'Bearer realm="https://x/token", error="insufficient_scope"')
    assert [c.scheme for c in chals] == ["basic", "bearer"]
    assert chals[0].realm == 'a "quoted" realm'
    assert chals[0].params["charset"] == "UTF-8"
    assert chals[1].params["error"] == "insufficient_scope"
    assert parse_www_authenticate("") == []
    assert parse_www_authenticate("Negotiate abc==")[0].scheme == "negotiate"


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, 1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_link_header_and_origins() -> None:
    assert parse_link_next('</v2/a/tags/list?last=b&n=2>; rel="next"') == \
        "/v2/a/tags/list?last=b&n=2"
    assert parse_link_next('<https://x/p>; rel="prev", <https://x/n>; rel=next') == "https://x/n"
    assert parse_link_next('<https://x/p>; rel="prev"') is None
    assert same_origin("https://r.io/v2/x", "https://r.io:443/y")
    assert same_origin("http://r.io/v2/x", "https://r.io/y")
    assert not same_origin("https://r.io/v2/x", "http://r.io/y")
    assert not same_origin("https://r.io/v2/x", "https://cdn.r.io/y")
    assert not same_origin("http://127.0.0.1:5000/x", "http://127.0.0.1:5001/x")


def test_error_summary_of_json_and_text_bodies() -> None:
    r = requests.Response()
    r.headers["Content-Type"] = "application/json"
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}'
    assert error_summary(r, body) == "MANIFEST_UNKNOWN: manifest unknown"
    r.headers["Content-Type"] = "text/plain"
    assert error_summary(r, b"Too Many Requests\n  slow down\n") == "Too Many Requests slow down"
    r.headers["Content-Type"] = "text/html"
    r.reason = "Bad Gateway"
    assert error_summary(r, b"<html><body>nginx</body></html>") == "Bad Gateway"


# -- config ----------------------------------------------------------------------------

def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[registries."docker.io"]\nmirrors = ["http://127.0.0.1:5000", "mirror.example"]\n'
        '[registries."https://MyReg.example:5000/"]\ninsecure = true\nca_file = "ca.pem"\n')
    cfg = Config.load(path)
    hub = cfg.registry("index.docker.io")
    assert [str(m) for m in hub.mirrors] == ["http://127.0.0.1:5000", "mirror.example"]
    assert cfg.registry("registry-1.docker.io") == hub
    mine = cfg.registry("myreg.example:5000")
    assert mine.insecure and mine.ca_file == tmp_path / "ca.pem"
    other = cfg.registry("quay.io")
    assert other.mirrors == () and not other.insecure and other.ca_file is None
    assert load_config(tmp_path / "absent.toml").registries == {}


@pytest.mark.parametrize("text, message", [
    ("[registries\n", "invalid config"),
    ('[registries."x"]\nmirrors = "http://m"\n', "mirrors must be a list"),
    ('[registries."x"]\ninsecure = "yes"\n', "insecure must be true or false"),
    ('[registries."x"]\nmirror = ["http://m"]\n', "unknown key 'mirror'"),
    ('[registries."x"]\nmirrors = ["ftp://m"]\n', "http:// or https://"),
    ('[registries."x"]\nmirrors = ["http://m/some/path"]\n', "must not have a path"),
])
def test_bad_config_is_a_usage_error_naming_the_file(tmp_path: Path, text: str,
                                                     message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as e:
        Config.load(path)
    assert str(path) in str(e.value)


def test_loopback_hosts() -> None:
    for host in ("localhost", "localhost:5000", "127.0.0.1", "127.3.2.1:80", "[::1]:5000"):
        assert is_loopback(host), host
    for host in ("10.0.0.1:5000", "example.com", "[2001:db8::1]:5000", "localhost.example"):
        assert not is_loopback(host), host


# -- credentials -------------------------------------------------------------------------

def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_docker_config(doc: dict) -> Path:
    d = Path(os.environ["DOCKER_CONFIG"])
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(doc))
    return d / "config.json"


def fake_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                store: dict[str, tuple[str, str]]) -> Path:
    """A ``docker-credential-<name>`` on PATH answering from ``store``, logging its calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    script = bindir / f"docker-credential-{name}"
    script.write_text(f"""#!/usr/bin/env python3
import json, sys
store = {json.dumps(store)}
action, data = sys.argv[1], sys.stdin.read()
with open({str(log)!r}, "a") as f:
    f.write(action + " " + data.strip() + "\\n")
if action == "get":
    if data.strip() not in store:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = store[data.strip()]
    print(json.dumps({{"ServerURL": data.strip(), "Username": user, "Secret": secret}}))
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_auths_entries_and_key_spellings() -> None:
    write_docker_config({"auths": {
        DOCKER_HUB_KEY: {"auth": b64("hubuser:hubpass")},
        "https://ghcr.io": {"auth": b64("gh:tok:en")},
        "http://old.example/v2/": {"username": "u", "password": "p"},
        "quay.io": {"auth": b64("<token>:"), "identitytoken": "refresh-me"},
        "tokuser.example": {"auth": b64("<token>:the-identity-token")},
    }})
    creds = Credentials()
    assert creds.lookup("docker.io") == Credential("hubuser", "hubpass")
    assert creds.lookup("index.docker.io") == Credential("hubuser", "hubpass")
    assert creds.lookup("ghcr.io") == Credential("gh", "tok:en")
    assert creds.lookup("old.example") == Credential("u", "p")
    assert creds.lookup("quay.io") == Credential(identity_token="refresh-me")
    assert creds.lookup("tokuser.example") == Credential(identity_token="the-identity-token")
    assert creds.lookup("other.example") is None
    assert "hubpass" not in repr(creds.lookup("docker.io"))


def test_broken_config_json_names_the_file() -> None:
    path = write_docker_config({})
    path.write_text("{not json")
    with pytest.raises(UsageError, match=r"config\.json"):
        Credentials().lookup("docker.io")
    write_docker_config({"auths": {"x.example": {"auth": "!!!"}}})
    with pytest.raises(UsageError, match=r"x\.example"):
        Credentials().lookup("x.example")


def test_creds_store_and_cred_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_helper(tmp_path, monkeypatch, "test", {
        DOCKER_HUB_KEY: ("hubuser", "hubsecret"),
        "reg.example": ("<token>", "identity-from-store"),
    })
    fake_helper(tmp_path, monkeypatch, "special", {"special.example": ("sp", "sp-secret")})
    write_docker_config({
        "auths": {"reg.example": {}, "inline.example": {"auth": b64("in:line")}},
        "credsStore": "test",
        "credHelpers": {"special.example": "special", "gone.example": "not-installed"},
    })
    creds = Credentials()
    assert creds.lookup("docker.io") == Credential("hubuser", "hubsecret")
    assert creds.lookup("reg.example") == Credential(identity_token="identity-from-store")
    assert creds.lookup("inline.example") == Credential("in", "line")
    assert creds.lookup("special.example") == Credential("sp", "sp-secret")
    assert creds.lookup("unknown.example") is None  # "credentials not found"
    assert creds.lookup("gone.example") is None  # helper not installed: anonymous
    creds.lookup("docker.io")  # cached: the helper is not asked twice
    calls = log.read_text().splitlines()
    assert calls.count(f"get {DOCKER_HUB_KEY}") == 1
    assert "get reg.example" in calls and "get unknown.example" in calls


def test_podman_auth_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / "containers"
    runtime.mkdir(parents=True)
    (runtime / "auth.json").write_text(json.dumps({"auths": {
        "podman.example": {"auth": b64("pod:man")},
        "podman.example/team/app": {"auth": b64("team:specific")},
        "docker.io": {"auth": b64("loser:ignored")},
    }}))
    write_docker_config({"auths": {DOCKER_HUB_KEY: {"auth": b64("hub:wins")}}})
    creds = Credentials()
    assert creds.lookup("podman.example") == Credential("pod", "man")
    assert creds.lookup("podman.example", "team/app") == Credential("team", "specific")
    assert creds.lookup("docker.io") == Credential("hub", "wins")
    explicit = tmp_path / "explicit.json"
    explicit.write_text(json.dumps({"auths": {"docker.io": {"auth": b64("explicit:first")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    assert Credentials().lookup("docker.io") == Credential("explicit", "first")


def test_save_and_remove_credentials() -> None:
    path = write_docker_config({"auths": {"https://keep.example": {"auth": b64("k:k")},
                                          "https://reg.example": {"auth": b64("old:old")}},
                                "HttpHeaders": {"X-Keep": "1"}})
    saved = save_credentials("reg.example", "alice", "wonderland")
    assert saved == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["HttpHeaders"] == {"X-Keep": "1"}
    assert set(doc["auths"]) == {"https://keep.example", "reg.example"}
    assert Credentials().lookup("reg.example") == Credential("alice", "wonderland")
    save_credentials("docker.io", "hub", "pw")
    assert DOCKER_HUB_KEY in json.loads(path.read_text())["auths"]
    assert remove_credentials("reg.example") is True
    assert remove_credentials("reg.example") is False
    assert Credentials().lookup("reg.example") is None
    assert Credentials().lookup("keep.example") == Credential("k", "k")
    assert not list(path.parent.glob(".config.json.*"))


def test_save_credentials_through_a_helper(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_helper(tmp_path, monkeypatch, "test", {})
    path = write_docker_config({"credsStore": "test"})
    save_credentials("reg.example", "alice", "wonderland")
    assert json.loads(path.read_text())["auths"] == {"reg.example": {}}
    stored = json.loads(log.read_text().splitlines()[0].partition(" ")[2])
    assert stored == {"ServerURL": "reg.example", "Username": "alice", "Secret": "wonderland"}


# -- auth flows ----------------------------------------------------------------------------

@responses.activate
def test_anonymous_request_has_no_authorization_header() -> None:
    add_manifest(responses.mock)
    blob = client().get_manifest(REF)
    assert str(blob.digest) == MANIFEST_DIGEST
    [call] = responses.calls
    assert "Authorization" not in call.request.headers
    assert call.request.headers["User-Agent"].startswith("ocikit/")
    assert mt.OCI_INDEX in call.request.headers["Accept"]


@responses.activate
def test_anonymous_bearer_flow_and_token_cache() -> None:
    url = f"{BASE}/v2/team/app/manifests/1"
    responses.add(responses.GET, url, status=401, headers=bearer_challenge(),
                  json={"errors": [{"code": "UNAUTHORIZED", "message": "auth required"}]})
    responses.add(responses.GET, "https://auth.example/token",
                  json={"access_token": "anon-token", "expires_in": 300})
    add_manifest(responses.mock)
    c = client()
    c.get_manifest(REF)
    c.get_manifest(REF)
    calls = [(call.request.method, str(call.request.url).split("?")[0]) for call in responses.calls]
    # one challenge and one token for both requests: the second goes straight with the token
    assert calls == [("GET", url), ("GET", "https://auth.example/token"), ("GET", url),
                     ("GET", url)]
    token_req = responses.calls[1].request
    assert "Authorization" not in token_req.headers
    assert "scope=repository%3Ateam%2Fapp%3Apull" in str(token_req.url)
    assert "service=reg" in str(token_req.url)
    assert responses.calls[2].request.headers["Authorization"] == "Bearer anon-token"
    assert responses.calls[3].request.headers["Authorization"] == "Bearer anon-token"


@responses.activate
def test_credentials_go_to_the_realm_and_expired_token_is_renewed() -> None:
    url = f"{BASE}/v2/team/app/manifests/1"
    responses.add(responses.GET, url, status=401, headers=bearer_challenge())
    responses.add(responses.GET, "https://auth.example/token", json={"token": "t1"})
    add_manifest(responses.mock)
    # the registry refuses t1 later (revoked): re-challenge once, get t2
    responses.add(responses.GET, url, status=401, headers=bearer_challenge())
    responses.add(responses.GET, "https://auth.example/token", json={"token": "t2"})
    add_manifest(responses.mock)
    c = client(creds={REG: Credential("alice", "wonderland")})
    c.get_manifest(REF)
    c.get_manifest(REF)
    tok = responses.calls[1].request
    assert tok.headers["Authorization"] == "Basic " + b64("alice:wonderland")
    assert "account=alice" in str(tok.url)
    assert responses.calls[3].request.headers["Authorization"] == "Bearer t1"
    assert responses.calls[5].request.headers["Authorization"] == "Bearer t2"
    assert len(responses.calls) == 6


@responses.activate
def test_refused_credentials_are_an_auth_error() -> None:
    url = f"{BASE}/v2/team/app/manifests/1"
    responses.add(responses.GET, url, status=401, headers=bearer_challenge())
    responses.add(responses.GET, "https://auth.example/token", status=401,
                  json={"errors": [{"code": "UNAUTHORIZED", "message": "bad password"}]})
    with pytest.raises(AuthError, match=r"unauthorized.*bad password"):
        client(creds={REG: Credential("alice", "nope")}).get_manifest(REF)


@responses.activate
def test_token_still_refused_after_one_rechallenge() -> None:
    url = f"{BASE}/v2/team/app/manifests/1"
    responses.add(responses.GET, url, status=401, headers=bearer_challenge(),
                  json={"errors": [{"code": "UNAUTHORIZED", "message": "access denied"}]})
    responses.add(responses.GET, "https://auth.example/token", json={"token": "useless"})
    with pytest.raises(AuthError, match=f"unauthorized: manifest {REF} on {REG}"):
        client().get_manifest(REF)
    assert len(responses.calls) == 3  # challenge, token, one retry: no loop


@responses.activate
def test_identity_token_uses_oauth_refresh_grant() -> None:
    url = f"{BASE}/v2/team/app/manifests/1"
    responses.add(responses.GET, url, status=401, headers=bearer_challenge())
    responses.add(responses.POST, "https://auth.example/token",
                  json={"access_token": "from-refresh", "expires_in": 60})
    add_manifest(responses.mock)
    client(creds={REG: Credential(identity_token="idt")}).get_manifest(REF)
    post = responses.calls[1].request
    body = post.body.decode() if isinstance(post.body, bytes) else str(post.body)
    form = {k: v[0] for k, v in parse_qs(body).items()}
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "idt"
    assert form["service"] == "reg" and form["client_id"] == "ocikit"
    assert form["scope"] == "repository:team/app:pull"
    assert "Authorization" not in post.headers
    assert responses.calls[2].request.headers["Authorization"] == "Bearer from-refresh"


@responses.activate
def test_basic_auth_challenge() -> None:
    url = f"{BASE}/v2/team/app/manifests/1"
    responses.add(responses.GET, url, status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
    add_manifest(responses.mock)
    add_manifest(responses.mock)
    c = client(creds={REG: Credential("alice", "wonderland")})
    c.get_manifest(REF)
    c.get_manifest(REF)
    want = "Basic " + b64("alice:wonderland")
    assert [call.request.headers.get("Authorization") for call in responses.calls] == \
        [None, want, want]


@responses.activate
def test_basic_challenge_without_credentials() -> None:
    responses.add(responses.GET, f"{BASE}/v2/team/app/manifests/1", status=401,
                  headers={"WWW-Authenticate": 'Basic realm="r"'})
    with pytest.raises(AuthError, match="unauthorized"):
        client().get_manifest(REF)
    assert len(responses.calls) == 1


def test_token_cache_expiry_and_drop() -> None:
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    key = TokenCache.key("realm", "svc", ["b", "a"])
    assert key == TokenCache.key("realm", "svc", ["a", "b"])
    cache.put(key, "tok", 60)
    assert cache.get(key) == "tok"
    now[0] += 55  # within the renewal margin
    assert cache.get(key) is None
    cache.put(key, "tok2", 60)
    cache.drop(key, "other")
    assert cache.get(key) == "tok2"
    cache.drop(key, "tok2")
    assert cache.get(key) is None


# -- manifests ---------------------------------------------------------------------------------

@responses.activate
def test_schema1_is_unsupported() -> None:
    add_manifest(responses.mock, body=b'{"schemaVersion":1,"name":"team/app","fsLayers":[]}',
                 ctype=mt.DOCKER_SCHEMA1_SIGNED)
    with pytest.raises(UnsupportedError, match="schema 1"):
        client().get_manifest(REF)


@responses.activate
def test_content_type_must_match_media_type() -> None:
    add_manifest(responses.mock, ctype=mt.DOCKER_MANIFEST)
    with pytest.raises(VerificationError, match="served as"):
        client().get_manifest(REF)


@responses.activate
def test_docker_content_digest_must_match_the_body() -> None:
    add_manifest(responses.mock, digest="sha256:" + "0" * 64)
    with pytest.raises(VerificationError, match="registry says sha256:0000"):
        client().get_manifest(REF)


@responses.activate
def test_pinned_digest_must_match_the_body() -> None:
    pinned = REF.with_digest(Digest("sha256", "1" * 64))
    add_manifest(responses.mock, url=f"{BASE}/v2/team/app/manifests/{pinned.digest}",
                 digest=str(pinned.digest))
    with pytest.raises(VerificationError, match="digest mismatch"):
        client().get_manifest(pinned)


@responses.activate
def test_oversized_manifest_is_refused() -> None:
    add_manifest(responses.mock, body=b" " * ((4 << 20) + 1))
    with pytest.raises(VerificationError, match="larger than"):
        client().get_manifest(REF)


@responses.activate
def test_manifest_unknown_is_not_found_naming_the_reference() -> None:
    responses.add(responses.GET, f"{BASE}/v2/team/app/manifests/1", status=404,
                  json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown",
                                    "detail": {"Tag": "1"}}]})
    with pytest.raises(NotFoundError, match=f"manifest {REF}.*MANIFEST_UNKNOWN"):
        client().get_manifest(REF)


@responses.activate
def test_resolve_by_head_and_fallback_to_get() -> None:
    url = f"{BASE}/v2/team/app/manifests/1"
    responses.add(responses.HEAD, url, headers={
        "Docker-Content-Digest": MANIFEST_DIGEST, "Content-Type": mt.OCI_MANIFEST,
        "Content-Length": str(len(MANIFEST)), "ratelimit-remaining": "99;w=21600"})
    seen: list[tuple[str, str]] = []
    c = client(progress_rate=lambda reg, value: seen.append((reg, value)))
    desc = c.resolve(REF)
    assert (str(desc.digest), desc.size, desc.media_type) == \
        (MANIFEST_DIGEST, len(MANIFEST), mt.OCI_MANIFEST)
    assert c.last_ratelimit == "99;w=21600" and seen == [(REG, "99;w=21600")]
    assert [call.request.method for call in responses.calls] == ["HEAD"]
    responses.replace(responses.HEAD, url, headers={"Content-Type": mt.OCI_MANIFEST})
    add_manifest(responses.mock)
    assert str(c.resolve(REF).digest) == MANIFEST_DIGEST
    assert [call.request.method for call in responses.calls] == ["HEAD", "HEAD", "GET"]


# -- retries and errors ----------------------------------------------------------------------

@responses.activate
def test_429_with_retry_after_then_success() -> None:
    url = f"{BASE}/v2/team/app/manifests/1"
    responses.add(responses.GET, url, status=429, body="Too Many Requests",
                  headers={"Retry-After": "0"})
    responses.add(responses.GET, url, status=503, body="busy")
    add_manifest(responses.mock)
    assert str(client().get_manifest(REF).digest) == MANIFEST_DIGEST
    assert len(responses.calls) == 3


@responses.activate
def test_429_plain_text_after_retries_is_a_rate_limit_error() -> None:
    responses.add(responses.GET, f"{BASE}/v2/team/app/manifests/1", status=429,
                  body="You have reached your pull rate limit.", content_type="text/plain")
    with pytest.raises(RegistryError, match=r"rate limit.*pull rate limit") as e:
        client().get_manifest(REF)
    assert e.value.status == 429
    assert len(responses.calls) == FAST.attempts


@responses.activate
def test_long_retry_after_is_not_waited_for() -> None:
    responses.add(responses.GET, f"{BASE}/v2/team/app/manifests/1", status=429,
                  body="slow down", headers={"Retry-After": "3600"})
    start = time.monotonic()
    with pytest.raises(RegistryError, match="retry after 3600"):
        client().get_manifest(REF)
    assert time.monotonic() - start < 2 and len(responses.calls) == 1


@responses.activate
def test_5xx_json_error_is_summarised() -> None:
    responses.add(responses.GET, f"{BASE}/v2/team/app/manifests/1", status=500,
                  json={"errors": [{"code": "UNKNOWN", "message": "storage on fire"}]})
    with pytest.raises(RegistryError, match=r"HTTP 500 \(UNKNOWN: storage on fire"):
        client().get_manifest(REF)


def test_unreachable_registry() -> None:
    ref = Reference.parse("127.0.0.1:1/x:latest")
    with pytest.raises(RegistryError,
                       match=r"^cannot reach registry 127\.0\.0\.1:1: connection refused$"):
        client().get_manifest(ref)


# -- blobs ------------------------------------------------------------------------------------

@responses.activate
def test_cross_host_redirect_drops_authorization(tmp_path: Path) -> None:
    data = b"layer bytes" * 1000
    desc = Descriptor(mt.OCI_LAYER_GZIP, sha256_of(data), len(data))
    blob_url = f"{BASE}/v2/team/app/blobs/{desc.digest}"
    responses.add(responses.GET, blob_url, status=401, headers=bearer_challenge())
    responses.add(responses.GET, "https://auth.example/token", json={"token": "secret-token"})
    responses.add(responses.GET, blob_url, status=307,
                  headers={"Location": "https://cdn.example/signed?sig=abc"})
    responses.add(responses.GET, "https://cdn.example/signed", body=data)
    partial = tmp_path / "partial"
    client(creds={REG: Credential("alice", "pw")}).fetch_blob(REF, desc, partial)
    assert partial.read_bytes() == data
    assert responses.calls[2].request.headers["Authorization"] == "Bearer secret-token"
    cdn = responses.calls[3].request
    assert cdn.url == "https://cdn.example/signed?sig=abc"
    assert "Authorization" not in cdn.headers
    assert cdn.headers["Accept-Encoding"] == "identity"


@responses.activate
def test_resume_sends_range_and_if_range_and_handles_200(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    desc = Descriptor(mt.OCI_LAYER_GZIP, sha256_of(data), len(data))
    partial = tmp_path / "sha256-x"
    partial.write_bytes(data[:1000])
    (tmp_path / "sha256-x.etag").write_text('"abc"')
    url = f"{BASE}/v2/team/app/blobs/{desc.digest}"
    # the server ignores the range: a full 200 body must replace what we had
    responses.add(responses.GET, url, body=data, status=200)
    deltas: list[int] = []
    client().fetch_blob(REF, desc, partial, deltas.append)
    assert partial.read_bytes() == data
    req = responses.calls[0].request
    assert req.headers["Range"] == "bytes=1000-" and req.headers["If-Range"] == '"abc"'
    assert 1000 + sum(deltas) == len(data) and min(deltas) == -1000
    assert not (tmp_path / "sha256-x.etag").exists()


@responses.activate
def test_resume_with_206(tmp_path: Path) -> None:
    data = os.urandom(5000)
    desc = Descriptor(mt.OCI_LAYER_GZIP, sha256_of(data), len(data))
    partial = tmp_path / "p"
    partial.write_bytes(data[:1234])
    responses.add(responses.GET, f"{BASE}/v2/team/app/blobs/{desc.digest}", status=206,
                  body=data[1234:], headers={"Content-Range": f"bytes 1234-4999/{len(data)}"})
    deltas: list[int] = []
    client().fetch_blob(REF, desc, partial, deltas.append)
    assert partial.read_bytes() == data and sum(deltas) == len(data) - 1234


@responses.activate
def test_blob_digest_mismatch_deletes_the_partial(tmp_path: Path) -> None:
    data = b"x" * 100
    desc = Descriptor(mt.OCI_LAYER_GZIP, sha256_of(b"y" * 100), 100)
    responses.add(responses.GET, f"{BASE}/v2/team/app/blobs/{desc.digest}", body=data)
    partial = tmp_path / "p"
    with pytest.raises(VerificationError, match=f"blob {desc.digest}: digest mismatch"):
        client().fetch_blob(REF, desc, partial)
    assert not partial.exists()


@responses.activate
def test_blob_longer_than_its_descriptor(tmp_path: Path) -> None:
    data = b"x" * 100
    desc = Descriptor(mt.OCI_LAYER_GZIP, sha256_of(data[:50]), 50)
    responses.add(responses.GET, f"{BASE}/v2/team/app/blobs/{desc.digest}", body=data)
    partial = tmp_path / "p"
    with pytest.raises(VerificationError, match="size mismatch"):
        client().fetch_blob(REF, desc, partial)
    assert not partial.exists()


def test_empty_blob_needs_no_request(tmp_path: Path) -> None:
    desc = Descriptor(mt.OCI_EMPTY, sha256_of(b""), 0)
    with responses.RequestsMock() as rsps:
        client().fetch_blob(REF, desc, tmp_path / "empty")
        assert len(rsps.calls) == 0
    assert (tmp_path / "empty").read_bytes() == b""


@responses.activate
def test_get_blob_bytes_verifies() -> None:
    url = f"{BASE}/v2/team/app/blobs/{CONFIG_DESC.digest}"
    responses.add(responses.GET, url, body=CONFIG_BLOB)
    assert client().get_blob_bytes(REF, CONFIG_DESC) == CONFIG_BLOB
    responses.replace(responses.GET, url, body=CONFIG_BLOB[:-1] + b" ")
    with pytest.raises(VerificationError, match=f"blob {CONFIG_DESC.digest}: digest mismatch"):
        client().get_blob_bytes(REF, CONFIG_DESC)
    with pytest.raises(VerificationError, match="larger than 10 bytes"):
        client().get_blob_bytes(REF, CONFIG_DESC, limit=10)


# -- tags, mirrors, ping ----------------------------------------------------------------------

@responses.activate
def test_tags_follow_link_pagination() -> None:
    url = f"{BASE}/v2/team/app/tags/list"
    responses.add(responses.GET, url, json={"name": "team/app", "tags": ["a", "b"]},
                  headers={"Link": '</v2/team/app/tags/list?last=b&n=2>; rel="next"'},
                  match=[responses.matchers.query_string_matcher("")])
    responses.add(responses.GET, url, json={"name": "team/app", "tags": ["c"]},
                  match=[responses.matchers.query_param_matcher({"last": "b", "n": "2"})])
    assert client().list_tags(REF) == ["a", "b", "c"]


@responses.activate
def test_tag_pagination_loop_is_bounded() -> None:
    url = f"{BASE}/v2/team/app/tags/list"
    responses.add(responses.GET, url, json={"tags": ["a"]},
                  headers={"Link": f'<{url}?last=a>; rel="next"'})
    with pytest.raises(RegistryError, match="loops"):
        client().list_tags(REF)


@responses.activate
def test_mirrors_are_tried_in_order_and_skipped_when_failing() -> None:
    cfg = Config.from_dict({"registries": {REG: {"mirrors": [
        "https://m1.example", "https://m2.example", "https://m3.example"]}}})
    responses.add(responses.GET, "https://m1.example/v2/team/app/manifests/1", status=404)
    responses.add(responses.GET, "https://m2.example/v2/team/app/manifests/1", status=502)
    responses.add(responses.GET, "https://m3.example/v2/team/app/manifests/1",
                  body=requests.ConnectionError("refused"))
    add_manifest(responses.mock)
    c = client(cfg)
    assert str(c.get_manifest(REF).digest) == MANIFEST_DIGEST
    hosts = [str(call.request.url).split("/")[2] for call in responses.calls]
    assert hosts == ["m1.example"] + ["m2.example"] * FAST.attempts + ["m3.example", REG]
    # an unreachable mirror is not asked again in this run
    responses.calls.reset()
    c.get_manifest(REF)
    assert "m3.example" not in [str(call.request.url).split("/")[2] for call in responses.calls]


@responses.activate
def test_mirror_serves_without_touching_the_registry() -> None:
    cfg = Config.from_dict({"registries": {REG: {"mirrors": ["https://m1.example"]}}})
    add_manifest(responses.mock, url="https://m1.example/v2/team/app/manifests/1")
    assert str(client(cfg).get_manifest(REF).digest) == MANIFEST_DIGEST
    assert len(responses.calls) == 1


@responses.activate
def test_ping() -> None:
    responses.add(responses.GET, f"{BASE}/v2/", status=401,
                  headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/token",'
                                               'service="reg"'})
    responses.add(responses.GET, "https://auth.example/token", json={"token": "t"})
    responses.add(responses.GET, f"{BASE}/v2/", json={})
    client().ping(REG, Credential("alice", "pw"))
    tok = responses.calls[1].request
    assert "scope" not in str(tok.url) and tok.headers["Authorization"].startswith("Basic ")
    responses.reset()
    responses.add(responses.GET, f"{BASE}/v2/", status=401,
                  headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/token",'
                                               'service="reg"'})
    responses.add(responses.GET, "https://auth.example/token", status=401,
                  json={"errors": [{"code": "UNAUTHORIZED", "message": "bad creds"}]})
    with pytest.raises(AuthError, match="bad creds"):
        client().ping(REG, Credential("alice", "wrong"))


def test_no_netrc_or_proxy_from_the_environment(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(os.environ["HOME"])
    (home / ".netrc").write_text(f"machine {REG} login netrcuser password netrcpass\n")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    with responses.RequestsMock() as rsps:
        add_manifest(rsps)
        client().get_manifest(REF)
        assert "Authorization" not in rsps.calls[0].request.headers


def test_manifest_blob_digest_is_of_the_body() -> None:
    # the lead stores manifests byte for byte: the digest must be of exactly these bytes
    with responses.RequestsMock() as rsps:
        body = MANIFEST + b"\n"
        add_manifest(rsps, body=body)
        blob = client().get_manifest(REF)
    assert blob.data == body and blob.digest == sha256_of(body)
    assert hashlib.sha256(blob.data).hexdigest() == blob.digest.hex


@responses.activate
def test_failing_mirrors_are_named_in_the_registry_error() -> None:
    cfg = Config.from_dict({"registries": {REG: {"mirrors": ["https://m1.example"]}}})
    responses.add(responses.GET, "https://m1.example/v2/team/app/manifests/1", status=404,
                  json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "not here"}]})
    responses.add(responses.GET, f"{BASE}/v2/team/app/manifests/1", status=404)
    with pytest.raises(NotFoundError, match=r"also tried: mirror m1\.example: .*not here"):
        client(cfg).get_manifest(REF)
