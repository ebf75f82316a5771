"""The registry client against real registries: docker-registry (plain, htpasswd,
token auth, TLS), a token server, and a fault-injecting proxy in front."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures.images import LayoutWriter, dir, file
from fixtures.proxy import BlobRedirectServer, FaultProxy
from fixtures.pytest_plugin import TLSRegistry, TokenRegistry
from fixtures.registry import RegistryServer
from fixtures.seed import BUSYBOX_TAGS, SeededImage, SeedSet, Target, push, target_for
from ocikit.errors import AuthError, NotFoundError, RegistryError, VerificationError
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import Descriptor, ImageConfig, Index, Manifest, Platform
from ocikit.oci.digest import Digest
from ocikit.oci.reference import Reference
from ocikit.registry.client import RegistryClient
from ocikit.registry.config import Config, load_config
from ocikit.registry.credentials import Credential, Credentials
from ocikit.registry.transport import RetryPolicy

pytestmark = pytest.mark.timeout(120)

QUICK = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.5, max_retry_after=5)


def new_client(config: Config | None = None, creds: Credentials | None = None,
               policy: RetryPolicy = QUICK) -> RegistryClient:
    return RegistryClient(config if config is not None else load_config(),
                          creds if creds is not None else Credentials.from_env(), policy=policy)


def manifest_of(client: RegistryClient, ref: Reference) -> Manifest:
    parsed = client.get_manifest(ref).parsed
    assert isinstance(parsed, Manifest)
    return parsed


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_all_layers(client: RegistryClient, ref: Reference, manifest: Manifest,
                     where: Path) -> None:
    for layer in manifest.layers:
        partial = where / f"{layer.digest.hex}.partial"
        client.fetch_blob(ref, layer, partial)
        assert partial.stat().st_size == layer.size
        assert sha256_file(partial) == str(layer.digest)


def biggest_layer(client: RegistryClient, ref: Reference) -> Descriptor:
    return max(manifest_of(client, ref).layers, key=lambda d: d.size)


def write_docker_config(doc: dict) -> None:
    d = Path(os.environ["DOCKER_CONFIG"])
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(doc))


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def tiny_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small image whose one layer is big enough (about 300 kB) to stream."""
    root = tmp_path_factory.mktemp("tiny") / "layout"
    LayoutWriter(root).image([[dir("etc"), file("etc/hello", "hi\n"),
                               file("etc/noise", os.urandom(300_000))]], tag="latest")
    return root


# -- the plain registry ----------------------------------------------------------------

def test_anonymous_pull_of_manifest_config_and_layers(seeded_registry: SeedSet,
                                                      tmp_path: Path) -> None:
    img = seeded_registry.busybox
    ref = Reference.parse(img.ref)
    with new_client() as client:
        desc = client.resolve(ref)
        assert (str(desc.digest), desc.media_type, desc.size) == \
            (img.digest, mt.OCI_MANIFEST, len(img.manifest))
        blob = client.get_manifest(ref)
        assert blob.data == img.manifest and str(blob.digest) == img.digest
        manifest = blob.parsed
        assert isinstance(manifest, Manifest)
        config = ImageConfig.parse(client.get_blob_bytes(ref, manifest.config))
        assert config.platform == Platform("linux", "amd64")
        fetch_all_layers(client, ref, manifest, tmp_path)
        assert [str(d.digest) for d in manifest.layers] == img.layer_digests


def test_schema2_index_and_digest_references(seeded_registry: SeedSet) -> None:
    with new_client() as client:
        docker = seeded_registry.busybox_docker
        blob = client.get_manifest(Reference.parse(docker.ref))
        assert blob.media_type == mt.DOCKER_MANIFEST and str(blob.digest) == docker.digest
        multi = seeded_registry.multi
        top = client.get_manifest(Reference.parse(multi.ref))
        assert isinstance(top.parsed, Index) and str(top.digest) == multi.digest
        arm = top.parsed.select(Platform("linux", "arm64", "v8"))
        assert arm is not None and str(arm.digest) == multi.platforms["linux/arm64/v8"]
        pinned = Reference.parse(multi.ref).with_digest(arm.digest)
        assert client.resolve(pinned).digest == arm.digest
        assert str(client.get_manifest(pinned).digest) == str(arm.digest)


def test_resolve_uses_head_only(seeded_registry: SeedSet, fault_proxy: FaultProxy) -> None:
    img = seeded_registry.busybox
    ref = Reference.parse(fault_proxy.ref(f"{img.name}:{img.tag}"))
    with new_client() as client:
        assert str(client.resolve(ref).digest) == img.digest
    assert [r.method for r in fault_proxy.requests_for("/manifests/")] == ["HEAD"]
    assert not any(r.authorization for r in fault_proxy.requests)


def test_tags_and_missing_things(seeded_registry: SeedSet, tmp_path: Path) -> None:
    img = seeded_registry.busybox
    ref = Reference.parse(img.ref)
    with new_client() as client:
        assert sorted(client.list_tags(ref)) == sorted(BUSYBOX_TAGS)
        with pytest.raises(NotFoundError, match=r"manifest .*busybox:nope.*MANIFEST_UNKNOWN"):
            client.get_manifest(ref.with_tag("nope"))
        with pytest.raises(NotFoundError):
            client.resolve(ref.with_tag("nope"))
        ghost = Descriptor(mt.OCI_LAYER_GZIP, Digest("sha256", "ab" * 32), 10)
        with pytest.raises(NotFoundError, match=f"blob {ghost.digest}"):
            client.fetch_blob(ref, ghost, tmp_path / "ghost")
        with pytest.raises(NotFoundError, match="tags of"):
            client.list_tags(Reference.parse(seeded_registry.registry.ref("nothing/here")))


def test_unreachable_registry_is_one_clear_error() -> None:
    with new_client() as client, pytest.raises(
            RegistryError, match=r"^cannot reach registry 127\.0\.0\.1:1: connection refused$"):
        client.get_manifest(Reference.parse("127.0.0.1:1/busybox"))


# -- mirrors -----------------------------------------------------------------------------

def test_docker_hub_mirror_fallback(seeded_registry: SeedSet, write_config) -> None:
    """docker.io through mirrors: the first is down, the second is our registry."""
    registry = seeded_registry.registry
    write_config({"registries": {"docker.io": {
        "mirrors": ["http://127.0.0.1:1", registry.url]}}})
    img = seeded_registry.library_busybox
    ref = Reference.parse("busybox")
    with new_client() as client:
        assert str(client.resolve(ref).digest) == img.digest
        manifest = manifest_of(client, ref)
        assert client.get_blob_bytes(ref, manifest.config)
        assert client.list_tags(ref) == ["latest"]


def test_mirror_is_skipped_for_what_it_lacks(seeded_registry: SeedSet,
                                             fault_proxy: FaultProxy, write_config,
                                             tmp_path: Path) -> None:
    """The proxy is the registry's mirror: its manifests 404 (and then 503), its blobs work."""
    registry = seeded_registry.registry
    write_config({"registries": {registry.host: {"mirrors": [fault_proxy.url]}}})
    fault_proxy.add_fault("status", path_contains="/manifests/", method="*", code=404, times=1)
    fault_proxy.add_fault("status", path_contains="/manifests/", method="*", code=503,
                          times=None)
    img = seeded_registry.busybox
    ref = Reference.parse(img.ref)
    with new_client() as client:
        assert str(client.resolve(ref).digest) == img.digest
        manifest = manifest_of(client, ref)
        fetch_all_layers(client, ref, manifest, tmp_path)
    statuses = [r.status for r in fault_proxy.requests_for("/manifests/")]
    assert statuses[0] == 404 and set(statuses[1:]) == {503}
    blobs = fault_proxy.requests_for("/blobs/")
    assert blobs and all(r.status == 200 for r in blobs)


# -- faults ------------------------------------------------------------------------------

def proxied(fault_proxy: FaultProxy, img: SeededImage) -> Reference:
    return Reference.parse(fault_proxy.ref(f"{img.name}:{img.tag}"))


def test_resume_after_a_cut_connection(seeded_registry: SeedSet, fault_proxy: FaultProxy,
                                       tmp_path: Path) -> None:
    ref = proxied(fault_proxy, seeded_registry.busybox)
    with new_client() as client:
        layer = biggest_layer(client, ref)
        assert layer.size > 100_000
        # positions in the blob: the first answer stops at 50 000, the resumed one at 120 000
        fault_proxy.add_fault("cut", path_contains=str(layer.digest), after=50_000)
        fault_proxy.add_fault("cut", path_contains=str(layer.digest), after=120_000)
        partial = tmp_path / "layer"
        deltas: list[int] = []
        client.fetch_blob(ref, layer, partial, deltas.append)
    assert sha256_file(partial) == str(layer.digest) and sum(deltas) == layer.size
    reqs = fault_proxy.requests_for(str(layer.digest))
    assert [r.range for r in reqs] == [None, "bytes=50000-", "bytes=120000-"]
    assert [r.fault for r in reqs] == ["cut", "cut", None]
    assert [r.bytes_sent for r in reqs] == [50_000, 70_000, layer.size - 120_000]


def test_resume_across_runs(seeded_registry: SeedSet, fault_proxy: FaultProxy,
                            tmp_path: Path) -> None:
    """A run killed mid-blob leaves the partial file; the next run fetches only the rest."""
    ref = proxied(fault_proxy, seeded_registry.busybox)
    partial = tmp_path / "layer"

    class Killed(Exception):
        pass

    def kill_midway(n: int) -> None:
        if partial.stat().st_size > 30_000:
            raise Killed

    with new_client() as client:
        layer = biggest_layer(client, ref)
        # a slow link: the first read returns what came before the cut, then the user kills
        fault_proxy.add_fault("cut", path_contains=str(layer.digest), after=300_000)
        with pytest.raises(Killed):
            client.fetch_blob(ref, layer, partial, kill_midway)
    kept = partial.stat().st_size
    assert kept == 300_000
    with new_client() as client:
        client.fetch_blob(ref, layer, partial)
    assert sha256_file(partial) == str(layer.digest)
    reqs = fault_proxy.requests_for(str(layer.digest))
    assert reqs[-1].range == f"bytes={kept}-" and reqs[-1].status == 206
    assert reqs[-1].bytes_sent == layer.size - kept


def test_503_and_429_with_retry_after_are_retried(seeded_registry: SeedSet,
                                                  fault_proxy: FaultProxy,
                                                  tmp_path: Path) -> None:
    ref = proxied(fault_proxy, seeded_registry.busybox)
    fault_proxy.add_fault("status", path_contains="/manifests/", code=503, times=2,
                          body="upstream busy\n")
    with new_client() as client:
        manifest = manifest_of(client, ref)
        layer = max(manifest.layers, key=lambda d: d.size)
        fault_proxy.add_fault("status", path_contains=str(layer.digest), code=429,
                              retry_after=1, body="Too Many Requests\n")
        start = time.monotonic()
        client.fetch_blob(ref, layer, tmp_path / "layer")
        waited = time.monotonic() - start
    assert sha256_file(tmp_path / "layer") == str(layer.digest)
    assert [r.status for r in fault_proxy.requests_for("/manifests/")] == [503, 503, 200]
    assert [r.status for r in fault_proxy.requests_for(str(layer.digest))] == [429, 200]
    assert waited >= 0.9  # Retry-After: 1 was honoured, not the 50 ms backoff


def test_persistent_503_is_a_registry_error(seeded_registry: SeedSet,
                                            fault_proxy: FaultProxy) -> None:
    ref = proxied(fault_proxy, seeded_registry.busybox)
    fault_proxy.add_fault("status", path_contains="/manifests/", code=503, times=None,
                          body="maintenance window\n")
    with new_client() as client, pytest.raises(
            RegistryError, match=r"HTTP 503 \(maintenance window\)") as e:
        client.get_manifest(ref)
    assert e.value.status == 503
    assert len(fault_proxy.requests_for("/manifests/")) == QUICK.attempts


def test_corrupted_byte_is_refused_and_nothing_is_left(seeded_registry: SeedSet,
                                                       fault_proxy: FaultProxy,
                                                       tmp_path: Path) -> None:
    ref = proxied(fault_proxy, seeded_registry.busybox)
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    partial = ingest / "layer"
    with new_client() as client:
        layer = biggest_layer(client, ref)
        fault_proxy.add_fault("corrupt", path_contains=str(layer.digest), offset=12_345)
        with pytest.raises(VerificationError, match=f"blob {layer.digest}: digest mismatch"):
            client.fetch_blob(ref, layer, partial)
    assert not partial.exists()
    assert list(ingest.iterdir()) == []


def test_corrupted_manifest_is_refused(seeded_registry: SeedSet,
                                       fault_proxy: FaultProxy) -> None:
    img = seeded_registry.busybox
    ref = Reference.parse(fault_proxy.ref(f"{img.name}@{img.digest}"))
    fault_proxy.add_fault("corrupt", path_contains="/manifests/", offset=40)
    with new_client() as client, pytest.raises(VerificationError, match="manifest"):
        client.get_manifest(ref)


def test_parallel_blob_fetches_share_one_client(seeded_registry: SeedSet,
                                                tmp_path: Path) -> None:
    images = [seeded_registry.layers, seeded_registry.zstd, seeded_registry.busybox]
    with new_client() as client:
        jobs: dict[Digest, tuple[Reference, Descriptor]] = {}
        for img in images:
            ref = Reference.parse(img.ref)
            m = manifest_of(client, ref)
            jobs.update({d.digest: (ref, d) for d in (m.config, *m.layers)})
        assert len(jobs) >= 6
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda j: client.fetch_blob(j[0], j[1], tmp_path / j[1].digest.hex),
                          jobs.values()))
    for digest in jobs:
        assert sha256_file(tmp_path / digest.hex) == str(digest)


# -- token auth ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_images(token_registry: TokenRegistry, tiny_layout: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, SeededImage]:
    work = tmp_path_factory.mktemp("token-push")
    t = Target(token_registry.registry.host, creds=token_registry.creds)
    return {name: push(tiny_layout, t, name, "latest", work)
            for name in ("public/tiny", "private/tiny")}


def test_token_auth_anonymous_pull(token_registry: TokenRegistry,
                                   token_images: dict[str, SeededImage],
                                   tmp_path: Path) -> None:
    ts = token_registry.token_server
    img = token_images["public/tiny"]
    ref = Reference.parse(img.ref)
    with new_client() as client:
        assert str(client.resolve(ref).digest) == img.digest
        manifest = manifest_of(client, ref)
        client.get_blob_bytes(ref, manifest.config)
        fetch_all_layers(client, ref, manifest, tmp_path)
    # one anonymous token served every request of the pull
    assert len(ts.requests) == 1 and not ts.requests[0].had_basic_auth
    assert ts.grants[0].access == [{"type": "repository", "name": "public/tiny",
                                    "actions": ["pull"]}]
    with new_client() as client, pytest.raises(AuthError, match="unauthorized"):
        client.get_manifest(Reference.parse(token_images["private/tiny"].ref))


def test_token_auth_with_credentials_from_docker_config(
        token_registry: TokenRegistry, token_images: dict[str, SeededImage],
        tmp_path: Path) -> None:
    ts = token_registry.token_server
    img = token_images["private/tiny"]
    ref = Reference.parse(img.ref)
    write_docker_config({"auths": {token_registry.registry.host:
                                   basic_auth("alice", "wonderland")}})
    with new_client() as client:
        manifest = manifest_of(client, ref)
        fetch_all_layers(client, ref, manifest, tmp_path)
    assert ts.requests and all(r.had_basic_auth for r in ts.requests)
    assert ts.grants[-1].account == "alice"
    write_docker_config({"auths": {f"https://{token_registry.registry.host}":
                                   basic_auth("alice", "wrong")}})
    with new_client() as client, pytest.raises(AuthError, match="invalid username or password"):
        client.get_manifest(ref)


def test_token_auth_with_identity_token(token_registry: TokenRegistry,
                                        token_images: dict[str, SeededImage]) -> None:
    ts = token_registry.token_server
    idt = ts.issue_refresh_token("alice")
    write_docker_config({"auths": {token_registry.registry.host: {
        "auth": base64.b64encode(b"<token>:").decode(), "identitytoken": idt}}})
    img = token_images["private/tiny"]
    with new_client() as client:
        assert str(client.get_manifest(Reference.parse(img.ref)).digest) == img.digest
    assert ts.forms[-1]["grant_type"] == "refresh_token"
    assert ts.forms[-1]["refresh_token"] == idt
    assert ts.grants[-1].account == "alice"


def test_access_token_field_and_default_lifetime(token_registry: TokenRegistry,
                                                 token_images: dict[str, SeededImage]) -> None:
    ts = token_registry.token_server
    ts.send_expires_in = False  # the spec's 60 s default applies
    ts.token_field = "access_token"
    ref = Reference.parse(token_images["public/tiny"].ref)
    with new_client() as client:
        client.get_manifest(ref)
        client.get_manifest(ref)
    assert len(ts.requests) == 1
    ts.send_expires_in = True
    ts.expires_in = 5  # shorter than the renewal margin: never reused
    with new_client() as client:
        client.get_manifest(ref)
        client.get_manifest(ref)
    assert len(ts.requests) == 3


def test_cross_host_redirect_drops_authorization(
        token_registry: TokenRegistry, token_images: dict[str, SeededImage],
        blob_server: BlobRedirectServer, tmp_path: Path) -> None:
    img = token_images["private/tiny"]
    write_docker_config({"auths": {token_registry.registry.host:
                                   basic_auth("alice", "wonderland")}})
    with FaultProxy(token_registry.registry.url) as proxy:
        write_docker_config({"auths": {proxy.host: basic_auth("alice", "wonderland")}})
        ref = Reference.parse(proxy.ref(f"{img.name}:{img.tag}"))
        partial = tmp_path / "layer"
        with new_client() as client:
            layer = biggest_layer(client, ref)
            data = client.get_blob_bytes(ref, layer, limit=layer.size)
            proxy.clear()
            # a real registry sends the client to blob storage with a signed URL
            proxy.add_fault("redirect", path_contains=str(layer.digest),
                            to=blob_server.put(data) + "?X-Amz-Signature=abc")
            client.fetch_blob(ref, layer, partial)
        assert sha256_file(partial) == str(layer.digest)
        [redirected] = proxy.requests_for(str(layer.digest))
        assert redirected.authorization  # the registry got the bearer token...
        assert blob_server.requests and not blob_server.saw_authorization  # ...storage not


# -- basic auth and TLS ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def basic_image(basic_registry: RegistryServer, tiny_layout: Path,
                tmp_path_factory: pytest.TempPathFactory) -> SeededImage:
    work = tmp_path_factory.mktemp("basic-push")
    return push(tiny_layout, target_for(basic_registry, work), "team/tiny", "latest", work)


def test_basic_auth(basic_registry: RegistryServer, basic_image: SeededImage,
                    tmp_path: Path) -> None:
    ref = Reference.parse(basic_image.ref)
    with new_client() as client, pytest.raises(AuthError, match="unauthorized"):
        client.get_manifest(ref)
    creds = Credentials.static({basic_registry.host: Credential("alice", "wonderland")})
    with new_client(creds=creds) as client:
        manifest = manifest_of(client, ref)
        fetch_all_layers(client, ref, manifest, tmp_path)
        assert client.list_tags(ref) == ["latest"]
        client.ping(basic_registry.host)
    with new_client() as client:
        client.ping(basic_registry.host, Credential("alice", "wonderland"))
        with pytest.raises(AuthError):
            client.ping(basic_registry.host, Credential("alice", "wrong"))


@pytest.fixture(scope="module")
def tls_image(tls_registry: TLSRegistry, tiny_layout: Path,
              tmp_path_factory: pytest.TempPathFactory) -> SeededImage:
    work = tmp_path_factory.mktemp("tls-push")
    return push(tiny_layout, target_for(tls_registry.registry, work), "tiny", "latest", work)


def test_tls_with_ca_file_in_the_config(tls_registry: TLSRegistry, tls_image: SeededImage,
                                        write_config, tmp_path: Path) -> None:
    ref = Reference.parse(tls_image.ref)
    # unconfigured: loopback tries plain HTTP, sees TLS, and then cannot verify the server
    with new_client() as client, pytest.raises(RegistryError, match="TLS certificate not trusted"):
        client.get_manifest(ref)
    write_config({"registries": {tls_registry.registry.host: {
        "ca_file": str(tls_registry.ca_file)}}})
    with new_client() as client:
        manifest = manifest_of(client, ref)
        fetch_all_layers(client, ref, manifest, tmp_path)
        client.ping(tls_registry.registry.host)
    write_config({"registries": {tls_registry.registry.host: {"insecure": True}}})
    with new_client() as client:
        assert str(client.resolve(ref).digest) == tls_image.digest


def test_loopback_plain_http_needs_no_config(registry: RegistryServer) -> None:
    with new_client(Config()) as client:
        client.ping(registry.host)
        client.ping(f"localhost:{registry.port}")
    with new_client(Config()) as client, pytest.raises(RegistryError, match="does not serve"):
        # a web server that is not a registry: the blob server answers 404 to /v2/
        server = BlobRedirectServer().start()
        try:
            client.ping(server.host)
        finally:
            server.stop()
