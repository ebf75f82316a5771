"""``ocikit pull`` (the CLI, in a subprocess) through stand-ins shaped like Docker Hub,
GHCR and ECR: token realm on another host, anonymous tokens, blobs answered with a
307 to a CDN host, rate-limit headers and quota 429s, insufficient_scope, mirrors
that need tokens or lack the repository, HEADs without a digest, ECR's Basic auth
with a token as password, and older registries' ``application/json`` manifests.

Docker Hub itself is unreachable here: ``docker.io`` references reach the Hub
stand-in as a mirror in the config, and the registry-level answers (429, 401) are
also checked with the stand-in's own address, where it is the registry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses

from fixtures.hub import HubKnobs, HubProxy, HubStandIn, index_without_media_type
from fixtures.pki import PKI
from fixtures.proxy import BlobRedirectServer, FaultProxy
from fixtures.registry import RegistryServer
from fixtures.seed import SeededImage, SeedSet, Target, build_layouts, push, target_for
from ocikit.commands.common import rate_limit_parts
from ocikit.errors import RegistryError
from ocikit.oci.layout import INDEX_DIGEST, REF_NAME
from ocikit.oci.reference import Reference
from ocikit.registry.client import RegistryClient
from ocikit.registry.config import Config
from ocikit.registry.credentials import Credentials
from ocikit.registry.transport import RetryPolicy
from tests.cli import assert_one_line_error, ocikit

pytestmark = pytest.mark.timeout(60)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def store_root() -> Path:
    return Path(os.environ["OCIKIT_STORE"])


def index_doc() -> dict:
    return json.loads((store_root() / "index.json").read_text())


def blob_path(digest: str) -> Path:
    return store_root() / "blobs" / "sha256" / digest.split(":")[1]


def write_docker_config(doc: dict) -> None:
    d = Path(os.environ["DOCKER_CONFIG"])
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(doc))


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def manifest_requests(proxy: FaultProxy, repo: str) -> list[tuple[str, int]]:
    """(method, status) of each manifest request, leaving out the 401 challenge that
    opens every new process's first request to a token registry."""
    return [(r.method, r.status) for r in proxy.requests_for(f"/v2/{repo}/manifests/")
            if r.status != 401]


# -- the stand-ins -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory, test_pki: PKI,
               seed_layouts: Path) -> Iterator[tuple[HubStandIn, dict[str, SeededImage]]]:
    layouts = build_layouts(seed_layouts / "layouts")
    with HubStandIn(tmp_path_factory.mktemp("hub"), test_pki,
                    users={"alice": "wonderland"}) as hub:
        assert hub.registry is not None
        work = tmp_path_factory.mktemp("hub-push")
        t = Target(hub.registry.host, creds=hub.creds)
        images = {
            "library/nginx": push(layouts["multi"], t, "library/nginx", "latest", work),
            "private/secret": push(layouts["busybox"], t, "private/secret", "latest", work),
        }
        yield hub, images


@pytest.fixture
def hub(hub_server: tuple[HubStandIn, dict[str, SeededImage]]) -> Iterator[HubStandIn]:
    stand_in, _ = hub_server
    stand_in.reset()
    yield stand_in
    stand_in.reset()


@pytest.fixture
def hub_images(hub_server: tuple[HubStandIn, dict[str, SeededImage]]) -> dict[str, SeededImage]:
    return hub_server[1]


def hub_proxy(hub: HubStandIn) -> HubProxy:
    assert hub.proxy is not None
    return hub.proxy


# -- Docker Hub as a mirror of docker.io ---------------------------------------------------

NAME_UNKNOWN = json.dumps({"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not "
                                     "known to registry", "detail": {"name": "library/nginx"}}]})


@pytest.mark.parametrize("first_mirror", ["distribution", "name-unknown"])
def test_pull_nginx_through_token_mirror_after_a_mirror_without_the_repo(
        first_mirror: str, hub: HubStandIn, hub_images: dict[str, SeededImage],
        fault_proxy: FaultProxy, write_config) -> None:
    nginx = hub_images["library/nginx"]
    proxy = hub_proxy(hub)
    # The first mirror answers 200 to /v2/ but has no library/nginx: the next one serves
    # it. docker-registry says MANIFEST_UNKNOWN (and BLOB_UNKNOWN), Harbor, Quay and
    # Artifactory say NAME_UNKNOWN, after which the mirror is not asked again.
    if first_mirror == "name-unknown":
        fault_proxy.add_fault("status", path_contains="/v2/library/nginx/", method="*",
                              times=None, code=404, body=NAME_UNKNOWN,
                              headers={"Content-Type": "application/json"})
    write_config({"registries": {"docker.io": {
        "mirrors": [fault_proxy.url, f"http://{hub.host}"]}}})
    r = ocikit("pull", "--progress=plain", "nginx:latest")
    assert r.code == 0, r
    assert r.out.strip() == "docker.io/library/nginx:latest"
    asked = [(q.method, q.status) for q in fault_proxy.requests]
    if first_mirror == "name-unknown":
        assert asked == [("GET", 404)]
    else:
        assert asked and all(status == 404 for _, status in asked)
    # Hub's ratelimit-remaining (76, then one per manifest GET), shown on stderr
    assert f"{hub.host}: 75 pulls left in this 6-hour rate-limit window" in r.err, r.err
    assert f"{hub.host}: 74 pulls left" in r.err, r.err
    [entry] = index_doc()["manifests"]
    assert entry["annotations"][REF_NAME] == "docker.io/library/nginx:latest"
    assert entry["annotations"][INDEX_DIGEST] == nginx.digest
    assert entry["digest"] == nginx.platforms["linux/amd64"]
    manifest = json.loads(blob_path(entry["digest"]).read_text())
    for d in (manifest["config"]["digest"], *(ly["digest"] for ly in manifest["layers"])):
        data = blob_path(d).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == d
    # tokens came anonymously from the realm on the other host name
    ts = hub.token_server
    assert ts.requests and not any(q.had_basic_auth for q in ts.requests)
    assert all(g.account == "" for g in ts.grants)
    assert {a["name"] for g in ts.grants for a in g.access} == {"library/nginx"}
    # layers came from the CDN, which never saw the registry's token
    assert hub.cdn.requests and not hub.cdn.saw_authorization
    layer_gets = [q for q in proxy.requests_for("/blobs/") if q.method == "GET"]
    assert layer_gets and all(q.authorization and q.status == 307 for q in layer_gets)

    # A second pull of the unchanged tag: one HEAD, which costs no quota, and no blob.
    proxy.clear()
    hub.cdn.clear()
    r = ocikit("pull", "-q", "nginx:latest")
    assert r.code == 0, r
    assert r.out.strip() == nginx.digest
    assert manifest_requests(proxy, "library/nginx") == [("HEAD", 200)]
    assert not hub.cdn.requests and not proxy.requests_for("/blobs/")


def test_quota_429_on_the_only_mirror_names_it(hub: HubStandIn, write_config) -> None:
    proxy = hub_proxy(hub)
    proxy.rate_limit_quota()
    write_config({"registries": {"docker.io": {"mirrors": [f"http://{hub.host}"]}}})
    r = ocikit("pull", "nginx:latest", timeout=45)
    # Docker Hub itself cannot be reached here; what the mirror said is in the line.
    assert_one_line_error(r, 1, "registry-1.docker.io", hub.host, "rate limit")
    assert len(manifest_requests(proxy, "library/nginx")) == 1


# -- the Hub stand-in as the registry --------------------------------------------------------

def test_quota_429_is_one_clear_line_and_not_retried(hub: HubStandIn) -> None:
    proxy = hub_proxy(hub)
    proxy.rate_limit_quota(times=None)
    started = time.monotonic()
    r = ocikit("pull", "--progress=plain", hub.ref("library/nginx:latest"))
    assert_one_line_error(r, 1, "rate limit", hub.host, "pull rate limit")
    # the quota window is hours: asking again at once only wastes time
    assert manifest_requests(proxy, "library/nginx") == [("GET", 429)]
    assert time.monotonic() - started < 10
    assert not (store_root() / "index.json").exists() or index_doc()["manifests"] == []


def test_overall_429_without_retry_after_is_retried_a_bounded_number_of_times(
        hub: HubStandIn, hub_images: dict[str, SeededImage]) -> None:
    # Hub's "overall" limit: a bare 429, no JSON, no quota headers; it passes.
    proxy = hub_proxy(hub)
    proxy.add_fault("status", path_contains="/manifests/", method="GET", code=429, times=1)
    r = ocikit("pull", "-q", hub.ref("library/nginx:latest"))
    assert r.code == 0, r
    assert r.out.strip() == hub_images["library/nginx"].digest


def test_private_repo_is_denied_with_the_repo_named(hub: HubStandIn) -> None:
    r = ocikit("pull", hub.ref("private/secret:latest"))
    assert_one_line_error(r, 1, "private/secret", "requested access to the resource is denied")
    assert "unauthorized" in r.err
    # with the owner's credentials the same pull works
    write_docker_config({"auths": {hub.host: basic_auth(*hub.creds)}})
    r = ocikit("pull", "-q", hub.ref("private/secret:latest"))
    assert r.code == 0, r
    assert hub.token_server.grants[-1].account == "alice"
    assert not hub.cdn.saw_authorization


def test_head_without_digest_falls_back_to_get(hub: HubStandIn,
                                               hub_images: dict[str, SeededImage]) -> None:
    proxy = hub_proxy(hub)
    proxy.knobs.head_digest = False
    ref = hub.ref("library/nginx:latest")
    r = ocikit("pull", "-q", ref)
    assert r.code == 0, r
    proxy.clear()
    hub.cdn.clear()
    r = ocikit("pull", "-q", ref)
    assert r.code == 0, r
    assert r.out.strip() == hub_images["library/nginx"].digest
    assert manifest_requests(proxy, "library/nginx") == [("HEAD", 200), ("GET", 200)]
    assert not hub.cdn.requests


# -- ECR: Basic auth, the user "AWS" and a token as password; blobs from S3 ----------------

@pytest.fixture
def ecr(seeded_registry: SeedSet,
        blob_server: BlobRedirectServer) -> Iterator[tuple[HubProxy, str]]:
    # ECR's get-login-password: a base64 JSON document of a few kB
    token = base64.b64encode(json.dumps({
        "payload": secrets.token_urlsafe(1500), "datakey": secrets.token_urlsafe(300),
        "version": "2", "type": "DATA_KEY", "expiration": 1_900_000_000}).encode()).decode()
    knobs = HubKnobs(ratelimit=False, basic_gate=("AWS", token))
    with HubProxy(seeded_registry.registry.url, cdn=blob_server, knobs=knobs) as proxy:
        yield proxy, token


def test_ecr_basic_auth_with_a_token_as_password(ecr: tuple[HubProxy, str],
                                                 seeded_registry: SeedSet,
                                                 blob_server: BlobRedirectServer) -> None:
    proxy, token = ecr
    img = seeded_registry.busybox
    ref = proxy.ref(f"{img.name}:{img.tag}")
    r = ocikit("pull", ref)
    assert_one_line_error(r, 1, "unauthorized", proxy.host)
    write_docker_config({"auths": {proxy.host: basic_auth("AWS", token)}})
    r = ocikit("pull", "-q", ref)
    assert r.code == 0, r
    assert r.out.strip() == img.digest
    assert blob_server.requests and not blob_server.saw_authorization
    for d in img.layer_digests:
        assert blob_path(d).is_file()


# -- older registries: application/json for an index without mediaType ---------------------

@pytest.fixture(scope="module")
def older_index(registry: RegistryServer, seed_layouts: Path,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes, dict[str, str]]:
    """``older/multi:latest``: the seed's index, re-pushed without its mediaType."""
    layouts = build_layouts(seed_layouts / "layouts")
    work = tmp_path_factory.mktemp("older-push")
    base = push(layouts["multi"], target_for(registry, work), "older/multi", "base", work)
    body = index_without_media_type(base.manifest)
    resp = requests.put(f"{registry.url}/v2/older/multi/manifests/latest", data=body,
                        headers={"Content-Type": OCI_INDEX}, timeout=30)
    assert resp.status_code == 201, resp.text
    return "sha256:" + hashlib.sha256(body).hexdigest(), body, base.platforms


def test_index_served_as_application_json_without_media_type(
        registry: RegistryServer, older_index: tuple[str, bytes, dict[str, str]]) -> None:
    digest, body, platforms = older_index
    knobs = HubKnobs(ratelimit=False, manifest_content_type="application/json")
    with HubProxy(registry.url, knobs=knobs) as proxy:
        r = ocikit("pull", "-q", proxy.ref("older/multi:latest"))
        assert r.code == 0, r
        assert r.out.strip() == digest
        [entry] = index_doc()["manifests"]
        assert entry["digest"] == platforms["linux/amd64"]
        assert entry["annotations"][INDEX_DIGEST] == digest
        assert blob_path(digest).read_bytes() == body
        insp = ocikit("inspect", proxy.ref("older/multi:latest"))
        assert insp.code == 0, insp
        # and again: the HEAD says application/json, so the GET decides
        proxy.clear()
        r = ocikit("pull", "-q", proxy.ref("older/multi:latest"))
        assert r.code == 0 and r.out.strip() == digest, r
        assert [q.method for q in proxy.requests_for("/manifests/")] == ["HEAD", "GET"]
        assert not proxy.requests_for("/blobs/")


# -- the quota 429 rule on its own (error paths, mocked) -------------------------------------

QUICK = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.02)
MOCK_URL = "https://registry.example/v2/team/app/manifests/1"


@pytest.mark.parametrize(("headers", "body", "calls"), [
    ({"ratelimit-remaining": "0;w=21600"}, "slow down", 1),        # quota headers only
    ({}, json.dumps({"errors": [{"code": "toomanyrequests", "message": "quota"}]}), 1),
    ({}, "Too Many Requests", QUICK.attempts),                      # Hub's overall limit
    ({"ratelimit-remaining": "12;w=21600"}, "Too Many Requests", QUICK.attempts),
])
@responses.activate
def test_which_429s_are_retried(headers: dict[str, str], body: str, calls: int) -> None:
    responses.add(responses.GET, MOCK_URL, status=429, body=body, headers=headers)
    client = RegistryClient(Config(), Credentials.static({}), policy=QUICK)
    with pytest.raises(RegistryError, match=r"rate limited by registry\.example") as e:
        client.get_manifest(Reference.parse("registry.example/team/app:1"))
    assert len(responses.calls) == calls
    # the body read ahead to decide is still the one the message quotes
    assert body.split('"message": ')[-1].strip('"}]') in str(e.value)


@pytest.mark.parametrize(("value", "parts"), [
    ("76;w=21600", ("76", "6-hour ")), ("5;w=90", ("5", "90-second ")),
    ("3;w=120", ("3", "2-minute ")), ("9", ("9", "")), ("1; w=x", ("1", "")),
])
def test_rate_limit_window_is_shown_readably(value: str, parts: tuple[str, str]) -> None:
    assert rate_limit_parts(value) == parts
