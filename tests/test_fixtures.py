"""The test fixtures are real: registries answer, auth bites, faults fire.

Everything here talks HTTP with ``requests`` directly (or skopeo), never with
ocikit's own client, so a bug in the client cannot hide a broken fixture.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

from fixtures.configfile import dump_toml
from fixtures.images import LayoutWriter, dir, file
from fixtures.proxy import BlobRedirectServer, FaultProxy
from fixtures.pytest_plugin import TLSRegistry, TokenRegistry
from fixtures.registry import RegistryServer, RegistryStartError, TokenAuth
from fixtures.seed import (
    SeedSet,
    Target,
    build_layouts,
    push,
    skopeo_copy,
    skopeo_env,
    skopeo_inspect_raw,
    target_for,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST])


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxies or .netrc from the machine
    return s


def challenge(resp: requests.Response) -> dict[str, str]:
    header = resp.headers["WWW-Authenticate"]
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def bearer_get(url: str, auth: tuple[str, str] | None = None,
               headers: dict[str, str] | None = None) -> requests.Response:
    """The token dance a client does: 401, ask the realm, retry with the token."""
    s = session()
    first = s.get(url, headers=headers)
    assert first.status_code == 401
    c = challenge(first)
    tok = s.get(c["realm"], params={"service": c["service"], "scope": c["scope"]}, auth=auth)
    tok.raise_for_status()
    body = tok.json()
    token = body.get("token") or body["access_token"]
    return s.get(url, headers={**(headers or {}), "Authorization": f"Bearer {token}"})


# -- plain, basic and TLS registries --------------------------------------------------

def test_plain_registry_answers(registry: RegistryServer) -> None:
    r = session().get(f"{registry.url}/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert registry.host.startswith("127.0.0.1:") and registry.url == f"http://{registry.host}"
    assert registry.running() and registry.log_path.exists()
    assert "GET /v2/" in registry.log_path.read_text()


def test_basic_registry_needs_credentials(basic_registry: RegistryServer) -> None:
    url = f"{basic_registry.url}/v2/"
    s = session()
    anon = s.get(url)
    assert anon.status_code == 401
    assert anon.headers["WWW-Authenticate"].startswith("Basic ")
    assert s.get(url, auth=("alice", "wrong")).status_code == 401
    assert s.get(url, auth=("alice", "wonderland")).status_code == 200
    assert basic_registry.users == {"alice": "wonderland"}


def test_tls_registry_verifies_with_its_ca_only(tls_registry: TLSRegistry) -> None:
    reg = tls_registry.registry
    assert reg.url.startswith("https://127.0.0.1:")
    assert session().get(f"{reg.url}/v2/", verify=str(tls_registry.ca_file)).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        session().get(f"{reg.url}/v2/")  # the system bundle does not know our CA
    # The certificate names localhost too.
    local = f"https://localhost:{reg.port}/v2/"
    assert session().get(local, verify=str(tls_registry.ca_file)).status_code == 200


def test_skopeo_pushes_into_auth_and_tls_registries(
        basic_registry: RegistryServer, tls_registry: TLSRegistry, seed_layouts: Path) -> None:
    layouts = build_layouts(seed_layouts / "layouts")
    for reg in (basic_registry, tls_registry.registry):
        t = target_for(reg, seed_layouts / reg.root.parent.name)
        img = push(layouts["busybox"], t, "pushed/busybox", "latest", seed_layouts)
        assert img.digest == img.source_digest


# -- token auth -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_images(token_registry: TokenRegistry,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny image pushed (as alice, through the token flow) to a public and a private repo."""
    work = tmp_path_factory.mktemp("token-images")
    LayoutWriter(work / "tiny").image([[dir("etc"), file("etc/hello", "hi\n")]], tag="latest")
    t = Target(token_registry.registry.host, creds=token_registry.creds)
    return {name: push(work / "tiny", t, name, "latest", work).digest
            for name in ("public/tiny", "private/tiny")}


def test_anonymous_token_is_accepted_by_the_registry(
        token_registry: TokenRegistry, token_images: dict[str, str]) -> None:
    ts = token_registry.token_server
    url = f"{token_registry.registry.url}/v2/public/tiny/manifests/latest"
    c = challenge(session().get(url))
    assert c["realm"] == ts.realm and c["service"] == ts.service
    assert c["scope"] == "repository:public/tiny:pull"
    r = bearer_get(url, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert sha(r.content) == token_images["public/tiny"]
    assert ts.requests[-1].method == "GET" and not ts.requests[-1].had_basic_auth
    assert ts.grants[-1].account == ""
    assert ts.grants[-1].access == [{"type": "repository", "name": "public/tiny",
                                     "actions": ["pull"]}]


def test_private_repository_needs_credentials(
        token_registry: TokenRegistry, token_images: dict[str, str]) -> None:
    url = f"{token_registry.registry.url}/v2/private/tiny/manifests/latest"
    accept = {"Accept": OCI_MANIFEST}
    assert bearer_get(url, headers=accept).status_code == 401
    r = bearer_get(url, auth=("alice", "wonderland"), headers=accept)
    assert r.status_code == 200 and sha(r.content) == token_images["private/tiny"]
    assert token_registry.token_server.requests[-1].had_basic_auth
    bad = session().get(token_registry.token_server.realm, auth=("alice", "nope"),
                        params={"service": "x", "scope": "repository:private/tiny:pull"})
    assert bad.status_code == 401


def test_registry_rejects_tokens_it_should(token_registry: TokenRegistry,
                                           token_images: dict[str, str]) -> None:
    ts = token_registry.token_server
    url = f"{token_registry.registry.url}/v2/public/tiny/tags/list"
    access = [{"type": "repository", "name": "public/tiny", "actions": ["pull"]}]
    s = session()

    def get(token: str) -> int:
        return s.get(url, headers={"Authorization": f"Bearer {token}"}).status_code

    assert get(ts.sign("", access)) == 200
    assert get(ts.sign("", access, audience="another-service")) == 401
    assert get(ts.sign("", access, issuer="someone-else")) == 401
    assert get(ts.sign("", access, expires_in=-3600)) == 401


def test_token_server_oauth_and_options(token_registry: TokenRegistry,
                                        token_images: dict[str, str]) -> None:
    ts = token_registry.token_server
    s = session()
    scope = "repository:private/tiny:pull"
    form = {"grant_type": "password", "username": "alice", "password": "wonderland",
            "service": ts.service, "scope": scope, "access_type": "offline",
            "client_id": "ocikit"}
    r = s.post(ts.realm, data=form)
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"access_token", "refresh_token", "expires_in"}
    refreshed = s.post(ts.realm, data={"grant_type": "refresh_token", "service": ts.service,
                                       "scope": scope, "refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200
    url = f"{token_registry.registry.url}/v2/private/tiny/tags/list"
    tags = s.get(url, headers={"Authorization": f"Bearer {refreshed.json()['access_token']}"})
    assert tags.status_code == 200 and tags.json()["tags"] == ["latest"]
    assert s.post(ts.realm, data={"grant_type": "refresh_token",
                                  "refresh_token": "forged"}).status_code == 401
    assert s.post(ts.realm, data={**form, "password": "x"}).status_code == 401
    assert [f["grant_type"] for f in ts.forms] == ["password", "refresh_token",
                                                   "refresh_token", "password"]

    # Knobs: the answer's field name and lifetime; reset() by the next test.
    ts.token_field, ts.send_expires_in = "access_token", False
    r = s.get(ts.realm, params={"service": ts.service, "scope": scope})
    assert set(r.json()) == {"access_token", "issued_at"}
    ts.token_field = "both"
    assert {"token", "access_token"} <= set(s.get(ts.realm).json())
    # A GET login with offline_token gives an identity token, as `docker login` gets.
    r = s.get(ts.realm, params={"service": ts.service, "offline_token": "true"},
              auth=("alice", "wonderland"))
    assert r.json()["refresh_token"] in ts.refresh_tokens


def test_token_server_is_reset_between_tests(token_registry: TokenRegistry) -> None:
    ts = token_registry.token_server
    assert ts.token_field == "token" and ts.send_expires_in and not ts.refresh_tokens
    assert ts.requests == []


# -- the seed set -------------------------------------------------------------------

def test_seeded_images_have_the_expected_digests(seeded_registry: SeedSet,
                                                 tmp_path: Path) -> None:
    reg = seeded_registry.registry
    t = Target(reg.host)
    for img in seeded_registry.images():
        raw = skopeo_inspect_raw(t, f"{img.name}:{img.tag}", tmp_path)
        assert sha(raw) == img.digest, img.name
        # The registry serves the same bytes to a plain HTTP client.
        r = session().get(f"{reg.url}/v2/{img.name}/manifests/{img.tag}",
                          headers={"Accept": ACCEPT})
        assert r.status_code == 200 and sha(r.content) == img.digest
        assert r.headers["Content-Type"] == img.media_type
        if img is not seeded_registry.busybox_docker:
            assert img.digest == img.source_digest, img.name

    s = seeded_registry
    assert s.busybox_docker.media_type == DOCKER_MANIFEST
    assert s.busybox_docker.digest != s.busybox.digest
    assert s.busybox_docker.layer_digests == s.busybox.layer_digests  # same gzip bytes
    assert s.library_busybox.digest == s.busybox.digest
    assert s.library_busybox.name == "library/busybox"
    assert s.multi.media_type == OCI_INDEX
    assert set(s.multi.platforms) == {"linux/amd64", "linux/arm64/v8"}
    assert len(set(s.multi.platforms.values())) == 2
    assert s.zstd.layer_media_types == ["application/vnd.oci.image.layer.v1.tar+zstd"] * 2
    assert len(s.layers.layer_digests) == 3
    tags = session().get(f"{reg.url}/v2/busybox/tags/list").json()["tags"]
    assert sorted(tags) == sorted(s.busybox.tags)


def test_seeded_platform_manifests_differ(seeded_registry: SeedSet) -> None:
    reg = seeded_registry.registry
    layers = {}
    for plat, digest in seeded_registry.multi.platforms.items():
        r = session().get(f"{reg.url}/v2/multi/manifests/{digest}", headers={"Accept": ACCEPT})
        assert sha(r.content) == digest
        layers[plat] = [layer["digest"] for layer in r.json()["layers"]]
    assert not set(layers["linux/amd64"]) & set(layers["linux/arm64/v8"])


# -- the fault proxy -------------------------------------------------------------------

def blob_url(base: str, seeded: SeedSet, layer: int = 1) -> tuple[str, str]:
    """A small blob (layer 1) or the ~1 MB busybox layer (layer 0)."""
    digest = seeded.layers.layer_digests[layer]
    return f"{base}/v2/layers/blobs/{digest}", digest


def test_proxy_forwards_and_records(seeded_registry: SeedSet, fault_proxy: FaultProxy) -> None:
    url, digest = blob_url(fault_proxy.url, seeded_registry)
    r = session().get(url)
    assert r.status_code == 200 and sha(r.content) == digest
    rec = fault_proxy.requests[-1]
    assert (rec.method, rec.status, rec.bytes_sent, rec.authorization, rec.fault) == \
        ("GET", 200, len(r.content), False, None)
    head = session().head(f"{fault_proxy.url}/v2/busybox/manifests/latest",
                          headers={"Accept": ACCEPT, "Authorization": "Bearer x"})
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == seeded_registry.busybox.digest
    assert int(head.headers["Content-Length"]) == len(seeded_registry.busybox.manifest)
    assert fault_proxy.requests[-1].authorization
    ranged = session().get(url, headers={"Range": "bytes=10-"})
    assert ranged.status_code == 206 and ranged.content == r.content[10:]
    assert fault_proxy.requests[-1].range == "bytes=10-"


def test_proxy_corrupts_one_byte(seeded_registry: SeedSet, fault_proxy: FaultProxy) -> None:
    url, digest = blob_url(fault_proxy.url, seeded_registry)
    fault_proxy.add_fault("corrupt", path_contains=digest, offset=5)
    bad = session().get(url).content
    good = session().get(url).content  # times=1: the second one is clean
    assert sha(good) == digest and len(bad) == len(good)
    assert [i for i in range(len(good)) if bad[i] != good[i]] == [5]
    assert [r.fault for r in fault_proxy.requests] == ["corrupt", None]
    # The offset is a position in the blob, also in a ranged answer.
    fault_proxy.add_fault("corrupt", path_contains=digest, offset=5)
    part = session().get(url, headers={"Range": "bytes=3-"}).content
    assert part[:2] == good[3:5] and part[2] == good[5] ^ 0xFF and part[3:] == good[6:]


def test_proxy_cuts_a_body_and_then_serves_the_rest(seeded_registry: SeedSet,
                                                    fault_proxy: FaultProxy) -> None:
    url, digest = blob_url(fault_proxy.url, seeded_registry, layer=0)
    full = session().get(url).content
    cut = 300_000  # several 64 KiB pieces: the body is streamed, not buffered
    fault_proxy.add_fault("cut", path_contains=digest, after=cut)
    r = session().get(url, stream=True)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(full)
    # The first bytes arrive intact, then the connection ends short.
    assert r.raw.read(cut - 40, decode_content=False) == full[:cut - 40]
    assert r.raw.read(40, decode_content=False) == full[cut - 40:cut]
    with pytest.raises(urllib3.exceptions.ProtocolError):
        r.raw.read(1, decode_content=False)
    assert fault_proxy.requests[-1].bytes_sent == cut
    rest = session().get(url, headers={"Range": f"bytes={cut}-"})
    assert rest.status_code == 206
    assert rest.content == full[cut:] and sha(full) == digest

    # A cut point is a position in the blob: resuming does not get past it.
    fault_proxy.add_fault("cut", path_contains=digest, times=None, after=cut)
    r = session().get(url, headers={"Range": f"bytes={cut - 10}-"}, stream=True)
    assert r.status_code == 206
    assert r.raw.read(10, decode_content=False) == full[cut - 10:cut]
    with pytest.raises(urllib3.exceptions.ProtocolError):
        r.raw.read(1, decode_content=False)
    r = session().get(url, headers={"Range": f"bytes={cut}-"}, stream=True)
    assert r.status_code == 206
    with pytest.raises(urllib3.exceptions.ProtocolError):
        r.raw.read(1, decode_content=False)
    assert [q.bytes_sent for q in fault_proxy.requests[-2:]] == [10, 0]


def test_proxy_status_faults(seeded_registry: SeedSet, fault_proxy: FaultProxy) -> None:
    url = f"{fault_proxy.url}/v2/busybox/manifests/latest"
    fault_proxy.add_fault("status", path_contains="/manifests/", code=503, times=2)
    fault_proxy.add_fault("status", path_contains="/manifests/", code=429, retry_after=1,
                          body="Too Many Requests: slow down\n")
    s = session()
    assert [s.get(url).status_code for _ in range(2)] == [503, 503]
    limited = s.get(url)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.text == "Too Many Requests: slow down\n"
    assert limited.headers["Content-Type"].startswith("text/plain")
    ok = s.get(url, headers={"Accept": ACCEPT})
    assert ok.status_code == 200 and sha(ok.content) == seeded_registry.busybox.digest
    # HEAD is not GET: the default method only matches GET.
    fault_proxy.add_fault("status", path_contains="/manifests/", code=500)
    assert s.head(url, headers={"Accept": ACCEPT}).status_code == 200
    assert s.get(url).status_code == 500


def test_proxy_redirects_to_another_host(seeded_registry: SeedSet, fault_proxy: FaultProxy,
                                         blob_server: BlobRedirectServer) -> None:
    url, digest = blob_url(fault_proxy.url, seeded_registry)
    data = session().get(url).content
    target = blob_server.put(data)
    assert target.startswith("http://localhost:")
    fault_proxy.add_fault("redirect", path_contains=digest, times=None, to=target)
    r = session().get(url, allow_redirects=False, headers={"Authorization": "Bearer secret"})
    assert r.status_code == 307 and r.headers["Location"] == target
    # requests drops Authorization on a cross-host redirect; the blob server would see it.
    followed = session().get(url, headers={"Authorization": "Bearer secret"})
    assert sha(followed.content) == digest
    assert [r.authorization for r in blob_server.requests] == [None]
    session().get(target, headers={"Authorization": "Bearer leaked"})
    assert blob_server.saw_authorization
    assert blob_server.requests[-1].authorization == "Bearer leaked"
    part = session().get(target, headers={"Range": "bytes=7-"})
    assert part.status_code == 206 and part.content == data[7:]


def test_blob_server_is_cleared_between_tests(blob_server: BlobRedirectServer) -> None:
    assert blob_server.requests == [] and blob_server.blobs == {}


def test_proxy_streams_uploads_and_rewrites_location(registry: RegistryServer,
                                                     fault_proxy: FaultProxy) -> None:
    s = session()
    start = s.post(f"{fault_proxy.url}/v2/upload/test/blobs/uploads/")
    assert start.status_code == 202
    location = start.headers["Location"]
    assert location.startswith(fault_proxy.url), location
    payload = os.urandom(300_000)

    def chunks():
        for i in range(0, len(payload), 70_000):
            yield payload[i:i + 70_000]

    patch = s.patch(location, data=chunks(),  # a generator: sent chunked
                    headers={"Content-Type": "application/octet-stream"})
    assert patch.status_code == 202
    location = patch.headers["Location"]
    assert location.startswith(fault_proxy.url)
    put = s.put(location, params={"digest": sha(payload)})
    assert put.status_code == 201
    got = s.get(f"{registry.url}/v2/upload/test/blobs/{sha(payload)}")
    assert got.content == payload
    rec = fault_proxy.requests_for("/blobs/uploads/", method="PATCH")[0]
    assert rec.bytes_received == len(payload)
    assert rec.location is not None and rec.location.startswith(fault_proxy.url)


def test_skopeo_pushes_through_the_proxy(seeded_registry: SeedSet, fault_proxy: FaultProxy,
                                         tmp_path: Path) -> None:
    t = Target(fault_proxy.host)
    digest = skopeo_copy(f"oci:{seeded_registry.zstd.layout}:latest", t, "via-proxy:1", tmp_path)
    assert digest == seeded_registry.zstd.digest
    # Layers the registry already had (zstd repo) were uploaded again: new repository.
    assert any(r.method in ("PATCH", "PUT") and r.bytes_received > 0
               for r in fault_proxy.requests)
    raw = skopeo_inspect_raw(Target(seeded_registry.registry.host), "via-proxy:1", tmp_path)
    assert sha(raw) == digest


# -- config ------------------------------------------------------------------------

def test_write_config_writes_ocikit_config(write_config: Callable[[dict[str, Any]], Path],
                                           registry: RegistryServer) -> None:
    data = {"registries": {"docker.io": {"mirrors": [registry.url]},
                           "127.0.0.1:1": {"insecure": True, "ca_file": "/x/ca.pem"}}}
    path = write_config(data)
    assert path == Path(os.environ["OCIKIT_CONFIG"])
    text = path.read_text()
    assert '[registries."docker.io"]' in text
    assert tomllib.loads(text) == data


def test_dump_toml_quotes_and_escapes() -> None:
    data = {"a": {"b c": {"s": 'q"\\\n\u00e9', "n": 1, "f": 1.5, "t": False, "l": []}}}
    assert tomllib.loads(dump_toml(data)) == data
    with pytest.raises(TypeError):
        dump_toml({"x": object()})


def test_skopeo_env_hides_machine_credentials(tmp_path: Path) -> None:
    env = skopeo_env(tmp_path)
    assert env["HOME"].startswith(str(tmp_path))
    assert "REGISTRY_AUTH_FILE" not in env
    conf = Path(env["CONTAINERS_REGISTRIES_CONF"])
    assert conf.read_text() == ""
    out = subprocess.run(["skopeo", "--version"], env=env, capture_output=True, check=True)
    assert out.stdout.startswith(b"skopeo version")


# -- lifecycle and the demo ------------------------------------------------------------

def test_registry_stops_by_pid_and_reports_start_failures(tmp_path: Path) -> None:
    reg = RegistryServer(tmp_path / "storage").start()
    pid = reg.pid
    assert pid is not None and Path(f"/proc/{pid}").exists()
    assert (tmp_path / "storage.yml").exists()
    reg.stop()
    assert not reg.running() and not Path(f"/proc/{pid}").exists()
    with pytest.raises(RegistryStartError, match="not found"):
        RegistryServer(tmp_path / "x", binary="no-such-registry").start()
    # A config docker-registry refuses: the error carries its log.
    bad = RegistryServer(tmp_path / "bad", token=TokenAuth("", "", "", tmp_path / "none.pem"))
    with pytest.raises(RegistryStartError, match=r"(?s)exited with.*certificate bundle"):
        bad.start()
    assert not bad.running()


def test_demo_pulls_busybox_through_the_mirror(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fixtures.demo", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=240, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "docker.io/library/busybox" in proc.stdout  # the `images` listing
    assert "mirror answered 0" not in proc.stdout
    assert (tmp_path / "store" / "index.json").exists()
